"""How should the generator see LoRA factors? As stored, or as the balanced SVD factors of each update B·A?

A LoRA pair (A, B) and (M^-1 A, B M) make the same update for any invertible M, and peft starts A at random: the
stored factors of two adapters of one task can differ by an arbitrary scale, rotation and sign. The VQ-VAE option
``lora_factors="balanced"`` replaces each pair by one representative (`igpg_hf.weights.lora`). This runs the
``lora`` experiment once per form on the same adapter zoo (same base, same recipe otherwise) and writes both
summaries side by side: VQ-VAE fidelity (accuracy kept by encode/decode, error of the updates), generated / trained
adapters on seen tasks, and the held-out head starts.

    python benchmarks/lora_factors.py --out bench_lora [--preset default] [--workers 2]
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import torch

from igpg_hf.evaluation.benchmark import BenchConfig, run_benchmark
from igpg_hf.evaluation.experiments.lora import LoraExperimentConfig
from igpg_hf.files import atomic_write_json

FORMS = ("balanced", "stored")
KEYS = (
    "vqvae_reconstructed_ratio",
    "seen_ratio",
    "seen_ratio_best_of_5",
    "seen_generated_mean",
    "seen_trained_lora_mean",
    "generated_copies",
    "generated_samples",
)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--out", type=Path, required=True, help="benchmark folder (the zoo is shared by both runs)"
    )
    ap.add_argument("--preset", default="default", help="experiment preset: smoke | default")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument(
        "--json",
        type=Path,
        default=None,
        help="where to write the comparison (default: OUT/lora_factors.json)",
    )
    args = ap.parse_args()
    torch.set_num_threads(1)
    rows = {}
    for form in FORMS:
        exp = LoraExperimentConfig.from_preset(args.preset)
        exp.recipe = copy.deepcopy(exp.recipe)
        exp.recipe.vqvae_overrides = {**exp.recipe.vqvae_overrides, "lora_factors": form}
        cfg = BenchConfig.from_preset(
            args.preset if args.preset == "smoke" else "default", workers=args.workers
        )
        cfg.experiments = {"lora": exp}
        t = time.perf_counter()
        res = run_benchmark(args.out, cfg, parts=["lora"], progress=True)
        lora = res.results["lora"]
        rows[form] = {
            **{k: lora["summary"].get(k) for k in KEYS},
            "vqvae_fidelity": lora["vqvae_fidelity"],
            "held_out": {t: h["head_start"] for t, h in lora["held_out"].items()},
            "seconds": time.perf_counter() - t,
        }
    path = args.json or args.out / "lora_factors.json"
    atomic_write_json(path, {"forms": rows, "command": f"python benchmarks/lora_factors.py --out {args.out}"})
    print(f"{'':28}" + "".join(f"{f:>12}" for f in FORMS))
    for k in ("vqvae_reconstructed_ratio", "seen_ratio", "seen_ratio_best_of_5"):
        print(f"{k:28}" + "".join(f"{rows[f][k]:12.3f}" for f in FORMS))
    print(
        f"{'update_rel_error':28}"
        + "".join(f"{rows[f]['vqvae_fidelity']['update_rel_error']:12.3f}" for f in FORMS)
    )
    for task in rows[FORMS[0]]["held_out"]:
        print(
            f"{task + ' head start':28}"
            + "".join(f"{rows[f]['held_out'][task]['over_peft_init']:12.1f}" for f in FORMS)
        )
    print(json.dumps({"written": str(path)}))


if __name__ == "__main__":
    main()
