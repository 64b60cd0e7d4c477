"""Novelty: are generated nets copies of training checkpoints, and do they beat checkpoint + noise?

python examples/bench_novelty.py --preset default --out bench_out
"""

import argparse

from igpg_hf.evaluation.benchmark import BenchConfig, run_benchmark

parser = argparse.ArgumentParser(
    description="Benchmark part 5: copies, novelty, disagreement, noise baseline."
)
parser.add_argument("--preset", default="default", help="smoke | default | gpu")
parser.add_argument("--out", default="bench_out")
args = parser.parse_args()

res = run_benchmark(args.out, BenchConfig.from_preset(args.preset), parts=["novelty"])["novelty"]
for key in ("seen", "seen_non_copies", "held_out"):
    s = res[key]
    print(
        f"{key}: {s['copies']}/{s['models']} copies, novelty {s['mean_novelty']:.3f}, accuracy "
        f"{s['mean_accuracy']:.1f}, margin over the noise curve {s['mean_margin_over_noise']:.1f} points"
    )
