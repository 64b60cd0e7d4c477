"""Unseen tasks (paper Fig. 2): head start of generated weights over random init and over retrieval.

python examples/bench_unseen.py --preset default --out bench_out
"""

import argparse

from igpg_hf.evaluation.benchmark import BenchConfig, run_benchmark

parser = argparse.ArgumentParser(
    description="Benchmark part 2: held-out tasks, independent and related zoos."
)
parser.add_argument("--preset", default="default", help="smoke | default | gpu")
parser.add_argument("--out", default="bench_out")
args = parser.parse_args()

res = run_benchmark(args.out, BenchConfig.from_preset(args.preset), parts=["unseen"])["unseen"]
for kind, zoo in res["zoos"].items():
    for task, r in zoo["tasks"].items():
        h = r["head_start"]
        print(
            f"{task} ({kind} zoo), {h['step']} steps: generated {h['generated']:.1f}, random init "
            f"{h['random_init']:.1f}, best retrieval {h['best_retrieval']:.1f} ({h['best_retrieval_method']})"
        )
        if "head_start_aligned" in r:  # output units reordered on 500 labelled examples, retrievals too
            a = r["head_start_aligned"]
            print(
                f"  label-aligned, {a['step']} steps: generated {a['generated']:.1f}, random init {a['random_init']:.1f}, "
                f"best retrieval {a['best_retrieval']:.1f} ({a['best_retrieval_method']})"
            )
