"""Tokenizer fidelity (paper Table 3): original vs VQ-VAE reconstruction vs generated accuracy, per task.

python examples/bench_fidelity.py --preset default --out bench_out
"""

import argparse

from igpg_hf.evaluation.benchmark import BenchConfig, run_benchmark

parser = argparse.ArgumentParser(description="Benchmark part 4: tokenizer fidelity.")
parser.add_argument("--preset", default="default", help="smoke | default | gpu")
parser.add_argument("--out", default="bench_out")
args = parser.parse_args()

res = run_benchmark(args.out, BenchConfig.from_preset(args.preset), parts=["fidelity"])["fidelity"]
for r in res["rows"]:
    print(
        f"{r['zoo']:8s} {r['task']:14s} original {r['original']:.1f}  reconstructed {r['reconstructed']:.1f}  "
        f"generated {r['generated']:.1f}"
    )
