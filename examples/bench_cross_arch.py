"""Unseen architectures (paper Fig. 3): ResNets of held-out depths from architecture text, no fine-tuning.

python examples/bench_cross_arch.py --preset default --out bench_out
"""

import argparse

from igpg_hf.evaluation.benchmark import BenchConfig, run_benchmark

parser = argparse.ArgumentParser(description="Benchmark part 3: held-out ResNet depths.")
parser.add_argument("--preset", default="default", help="smoke | default | gpu")
parser.add_argument("--out", default="bench_out")
args = parser.parse_args()

res = run_benchmark(args.out, BenchConfig.from_preset(args.preset), parts=["cross_arch"])["cross_arch"]
for r in res["configs"].values():
    print(
        f"blocks {r['blocks']} ({r['kind']}, {r['parameters']:,} params): generated "
        f"{r['generated']['recalibrated_mean']:.1f} after BN recalibration ({r['generated']['raw_mean']:.1f} raw), "
        f"random init {r['random_init']['recalibrated_mean']:.1f}, trained {r['trained']['recalibrated_mean']:.1f}"
    )
