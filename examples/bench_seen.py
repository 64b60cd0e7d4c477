"""Seen tasks (paper Table 1): generated weights vs random init, the zoo, retrieval, noise and averaging.

python examples/bench_seen.py --preset default --out bench_out    # or --preset smoke (about a minute)
"""

import argparse

from igpg_hf.evaluation.benchmark import BenchConfig, run_benchmark

parser = argparse.ArgumentParser(description="Benchmark part 1: seen tasks.")
parser.add_argument("--preset", default="default", help="smoke | default | gpu")
parser.add_argument("--out", default="bench_out")
args = parser.parse_args()

res = run_benchmark(args.out, BenchConfig.from_preset(args.preset), parts=["seen"])["seen"]
for task, r in res["tasks"].items():
    m = r["methods"]
    print(
        f"{task}: epoch 0 — generated {m['generated']['mean']['0']:.1f} (zoo {m['zoo']['mean']['0']:.1f}, "
        f"retrieval {m['nearest_by_embedding']['mean']['0']:.1f}, random init {m['random_init']['mean']['0']:.1f})"
    )
print(f"generated / zoo at epoch 0: {res['mean_generated_over_zoo']:.3f}; tables in {args.out}/report.md")
