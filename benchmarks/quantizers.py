"""Which quantizer should the tokenizer use? Gumbel-softmax (the paper's) vs EMA VQ and FSQ (vector-quantize-pytorch).

Trains one tokenizer per quantizer on the same corpus with the same budget, then measures on every checkpoint:
accuracy lost by the reconstruction (points, test set), relative L2 error of the reconstructed weights, and
codebook use (distinct codes, perplexity). Writes a JSON file and prints a table.

    python benchmarks/quantizers.py --corpus demo_out/zoo [--steps 3000] [--out benchmarks/results/quantizers.json]

The corpus is any igpg_hf corpus folder or Hub dataset (``igpg-hf demo`` leaves one in ``demo_out/zoo``).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import tempfile
import time
from pathlib import Path

import torch

from igpg_hf import IGPGVQVAEConfig
from igpg_hf.corpus import WeightCorpus
from igpg_hf.evaluation.metrics import evaluate_state_dicts
from igpg_hf.training import VQVAETrainingArgs, atomic_write_json, train_vqvae

# same sizes (K = 64, 4 tokens per chunk, d = 64, 512 hidden) and budget; only the quantizer changes
VARIANTS = {
    "gumbel": dict(quantizer="gumbel"),
    "vq": dict(quantizer="vq", commitment_weight=0.25),  # EMA codebook, k-means init, dead-code reset
    "fsq": dict(quantizer="fsq", fsq_levels=[8, 5, 5, 5]),  # 1,000 implicit codes
}
# the "fsq" preset (FSQ 8-8-8 = 512 codes, 1,024 hidden) at lr 3e-3: what the benchmark uses for its related and
# ResNet zoos, whose many distinct chunks the "demo" Gumbel tokenizer cannot memorize in the same budget
PRESET_VARIANTS = {"fsq-preset": ("fsq", {}, 3e-3)}


def measure(vq, checkpoints) -> dict:
    """Reconstruction accuracy loss, relative L2 and code usage over all checkpoints (grouped by task)."""
    lost, rel, codes = [], [], []
    groups: dict[tuple, list] = {}
    for c in checkpoints:
        groups.setdefault((c.metadata.task, c.metadata.arch_text), []).append(c)
    for (task, _), cs in groups.items():
        recon = [vq.reconstruct(c.state_dict(), c.layout) for c in cs]
        orig = evaluate_state_dicts(cs[0].arch(), [c.state_dict() for c in cs], task)
        rec = evaluate_state_dicts(cs[0].arch(), recon, task)
        lost += [o - r for o, r in zip(orig, rec, strict=True)]
        for c, sd in zip(cs, recon, strict=True):
            v, r = c.vector().float(), c.layout.vectorize(sd).float()
            rel.append(((v - r).norm() / v.norm()).item())
            codes.append(vq.encode(c.state_dict(), c.layout))
    ids = torch.cat(codes)
    p = torch.bincount(ids, minlength=vq.config.vocab_size).float()
    p = p[p > 0] / p.sum()
    return {
        "recon_loss_points_mean": statistics.fmean(lost),
        "recon_loss_points_max": max(lost),
        "relative_l2_mean": statistics.fmean(rel),
        "codes_used": int((p > 0).sum()),
        "vocab_size": vq.config.vocab_size,
        "perplexity": math.exp(-(p * p.log()).sum().item()),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--corpus", required=True, help="corpus folder or Hub dataset id (e.g. demo_out/zoo)")
    ap.add_argument("--steps", type=int, default=3000, help="tokenizer training steps for every quantizer")
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=[*VARIANTS, *PRESET_VARIANTS])
    ap.add_argument(
        "--threads", type=int, default=1, help="torch threads (1 keeps timings comparable on a busy box)"
    )
    ap.add_argument("--out", default="benchmarks/results/quantizers.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    checkpoints = list(WeightCorpus.load(args.corpus))
    results = {
        "corpus": args.corpus,
        "checkpoints": len(checkpoints),
        "steps": args.steps,
        "batch_size": args.batch_size,
        "threads": args.threads,
        "variants": {},
    }
    old = json.loads(Path(args.out).read_text()) if Path(args.out).exists() else {}
    if all(old.get(k) == results[k] for k in ("checkpoints", "steps", "batch_size")):
        results["variants"] = old.get(
            "variants", {}
        )  # same setting: add to (or redo) the variants measured before
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.variants:
            preset, changes, lr = PRESET_VARIANTS.get(name, ("demo", VARIANTS.get(name), 1e-3))
            cfg = IGPGVQVAEConfig.from_preset(preset, **changes)
            t = time.perf_counter()
            vq = train_vqvae(
                checkpoints,
                cfg,
                Path(tmp) / name,
                VQVAETrainingArgs(
                    steps=args.steps, batch_size=args.batch_size, lr=lr, checkpoint_every=10**9
                ),
                progress=True,
            ).eval()
            seconds = time.perf_counter() - t
            settings = {"preset": preset, **changes, "lr": lr}
            with torch.no_grad():
                results["variants"][name] = {
                    "settings": settings,
                    "train_seconds": seconds,
                    **measure(vq, checkpoints),
                }
            print(name, json.dumps(results["variants"][name]), flush=True)
            atomic_write_json(args.out, results)
    print(
        f"{'quantizer':<8} {'lost pts':>9} {'max':>6} {'rel L2':>7} {'codes':>11} {'perplexity':>10} {'train s':>8}"
    )
    for name, r in results["variants"].items():
        print(
            f"{name:<8} {r['recon_loss_points_mean']:>9.2f} {r['recon_loss_points_max']:>6.1f} {r['relative_l2_mean']:>7.3f} "
            f"{r['codes_used']:>5}/{r['vocab_size']:<5} {r['perplexity']:>10.1f} {r['train_seconds']:>8.0f}"
        )
    print(f"written {args.out}")


if __name__ == "__main__":
    main()
