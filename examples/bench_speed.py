"""Speed and memory: generating 1 and 100 models, KV cache, generation vs training, tokenizer cost by size.

python examples/bench_speed.py --preset default --out bench_out
"""

import argparse

from igpg_hf.evaluation.benchmark import BenchConfig, run_benchmark

parser = argparse.ArgumentParser(description="Benchmark part 6: speed and memory.")
parser.add_argument("--preset", default="default", help="smoke | default | gpu")
parser.add_argument("--out", default="bench_out")
args = parser.parse_args()

res = run_benchmark(args.out, BenchConfig.from_preset(args.preset), parts=["speed"])["speed"]
print(
    f"generate 1 model {res['generate_1']['seconds']:.2f} s; train it {res['train_one_model']['seconds']:.1f} s; "
    f"KV cache speed-up {res['kv_cache_speedup']:.1f}x"
)
for r in res["tokenizer_by_size"]:
    print(f"{r['parameters']:>11,} params: encode+decode {r['seconds']:.3f} s, peak {r['peak_mb']:.0f} MB")
