"""What a VQ-VAE keeps of a zoo's nets, and how much weight noise they tolerate: sizing the general recipe.

    python benchmarks/zoo_fidelity.py --corpus zoo_default --out pilot/fsq8 --preset fsq \
        --set chunk_size=8 --set 'fsq_levels=[8,8,8,8]' --set codebook_size=4096 --steps 2000 --lr 3e-3
    python benchmarks/zoo_fidelity.py --corpus zoo_default --noise 0.05,0.1,0.15,0.2,0.3
    python benchmarks/zoo_fidelity.py --corpus zoo_default --vqvae general/vqvae/final
    python benchmarks/zoo_fidelity.py --corpus zoo_default --vqvae general/vqvae_decoder/final --prior-runs decoded_accuracy

The first form trains a VQ-VAE (`igpg_hf.training.train_vqvae`) on the last epoch of every run of the corpus (at
most ``--runs-per-architecture`` runs per (task, architecture), the lowest seeds, as `PipelineRecipe` selects
them), then reconstructs one net per (task, architecture) and prints reconstructed / original test accuracy: mean,
minimum and the share at or above 0.95, and the worst eight. The second form adds Gaussian noise of the given
relative standard deviations to every tensor (std times the ratio) of 40 nets, one per (task, architecture) of the
last epochs, and prints the same ratios. The third reconstructs every selected net with a trained VQ-VAE and also
prints the benchmark's canonical ratio (`igpg-hf bench --parts instructions`) for a prior that reproduced its
training tokens exactly: per (task, family), mean reconstructed accuracy / mean stored accuracy of all the corpus's
checkpoints of that pair — the ceiling the VQ-VAE puts on the generated nets. Figures quoted in the "general" recipe's comment
(`igpg_hf/training/recipe.py`) came from these runs, one thread each, two at a time, on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import json
import random
import time

import torch

from igpg_hf.configuration_igpg import IGPGVQVAEConfig
from igpg_hf.corpus import WeightCorpus
from igpg_hf.evaluation.metrics import evaluate_state_dicts, finite_mean
from igpg_hf.modeling_vqvae import IGPGVQVAEModel
from igpg_hf.training.args import VQVAETrainingArgs
from igpg_hf.training.pipeline import choose_runs_by_decoded_accuracy, select_checkpoints
from igpg_hf.training.vqvae import train_vqvae
from igpg_hf.zoo.tasks import get_task


def _one_per_architecture(checkpoints: list) -> list:
    seen, out = set(), []
    for c in sorted(checkpoints, key=lambda c: c.metadata.model_id):
        key = (c.metadata.task, c.metadata.arch_text)
        if key not in seen:
            seen.add(key)
            out.append(c)
    return out


def _report(rows: list[tuple[str, float, float]], label: str) -> None:
    ratios = [b / a for _, a, b in rows]
    print(
        f"{label}: {len(rows)} nets, mean ratio {sum(ratios) / len(ratios):.4f}, min {min(ratios):.4f}, "
        f"share >= 0.95 {sum(r >= 0.95 for r in ratios) / len(ratios):.3f}"
    )
    print(
        "worst:", [(t, round(a, 1), round(b, 1)) for t, a, b in sorted(rows, key=lambda r: r[2] / r[1])[:8]]
    )


def _ceiling(vq, checkpoints: list, corpus: list) -> None:
    """Reconstructed / original per net, and per (task, family) reconstructed mean / zoo mean."""
    zoo: dict[tuple, list] = {}
    for c in corpus:
        zoo.setdefault((c.metadata.task, c.arch().family), []).append(c.metadata.test_acc)
    rows, pairs = [], {}
    for c in checkpoints:
        sd = c.state_dict()
        a, b = evaluate_state_dicts(c.arch(), [sd, vq.reconstruct(sd)], get_task(c.metadata.task))
        rows.append((c.metadata.task, a, b))
        pairs.setdefault((c.metadata.task, c.arch().family), []).append(b)
    _report(rows, "reconstructed / original")
    ratios = {k: finite_mean(v) / (100 * finite_mean(zoo[k])) for k, v in sorted(pairs.items())}
    r = list(ratios.values())
    print(
        f"reconstructed mean / zoo mean: {len(r)} (task, family) pairs, min {min(r):.3f}, mean "
        f"{sum(r) / len(r):.3f}, share >= 0.95 {sum(x >= 0.95 for x in r) / len(r):.3f}, share >= 0.9 "
        f"{sum(x >= 0.9 for x in r) / len(r):.3f}"
    )
    print("worst:", [(k, round(v, 3)) for k, v in sorted(ratios.items(), key=lambda kv: kv[1])[:8]])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--corpus", required=True, help="corpus folder or Hub dataset id")
    p.add_argument("--out", help="VQ-VAE run folder (the VQ-VAE form)")
    p.add_argument("--preset", default="fsq", help="IGPGVQVAEConfig preset")
    p.add_argument("--set", action="append", default=[], help="config field change FIELD=JSON (repeatable)")
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--runs-per-architecture", type=int, default=1)
    p.add_argument("--noise", help="comma-separated relative noise levels (the noise form)")
    p.add_argument("--vqvae", help="a trained VQ-VAE folder to measure (the ceiling form)")
    p.add_argument(
        "--prior-runs",
        default="lowest_seed",
        choices=["lowest_seed", "decoded_accuracy"],
        help="with --vqvae: which run per architecture to measure (PipelineRecipe.prior_runs; the prior's copies)",
    )
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    corpus = list(WeightCorpus.load(args.corpus))
    checkpoints = select_checkpoints(corpus, "last_epoch", args.runs_per_architecture)
    print(
        f"{len(checkpoints)} checkpoints (last epochs, {args.runs_per_architecture} run(s) per architecture)"
    )
    if args.noise:
        nets = _one_per_architecture(checkpoints)
        random.Random(0).shuffle(nets)
        nets, g = nets[:40], torch.Generator().manual_seed(0)
        for level in (float(x) for x in args.noise.split(",")):
            rows = []
            for c in nets:
                sd = c.state_dict()
                noisy = {
                    k: v + level * v.std() * torch.randn(v.shape, generator=g)
                    if v.is_floating_point() and v.numel() > 1
                    else v
                    for k, v in sd.items()
                }
                a, b = evaluate_state_dicts(c.arch(), [sd, noisy], get_task(c.metadata.task))
                rows.append((c.metadata.task, a, b))
            _report(rows, f"relative noise {level}")
        return
    if args.vqvae:
        vq = IGPGVQVAEModel.from_pretrained(args.vqvae).eval()
        if args.prior_runs == "decoded_accuracy":  # the runs the general recipe's prior trains on
            pool = select_checkpoints(corpus, "last_epoch", None)
            checkpoints = choose_runs_by_decoded_accuracy(
                pool, vq, args.runs_per_architecture, progress=False
            )[0]
            print(f"{len(checkpoints)} checkpoints chosen by decoded training-split accuracy")
        _ceiling(vq, checkpoints, corpus)
        return
    if not args.out:
        p.error("--out is needed to train a VQ-VAE (or pass --noise or --vqvae)")
    overrides = {k: json.loads(v) for k, _, v in (s.partition("=") for s in args.set)}
    t = time.perf_counter()
    vq = train_vqvae(
        checkpoints,
        IGPGVQVAEConfig.from_preset(args.preset, **overrides),
        args.out,
        VQVAETrainingArgs(steps=args.steps, lr=args.lr, checkpoint_every=10**9),
        progress=False,
    ).eval()
    print(f"VQ-VAE trained in {time.perf_counter() - t:.0f} s")
    rows = []
    for c in _one_per_architecture(checkpoints):
        sd = c.state_dict()
        a, b = evaluate_state_dicts(c.arch(), [sd, vq.reconstruct(sd)], get_task(c.metadata.task))
        rows.append((c.metadata.task, a, b))
    _report(rows, "reconstructed / original")


if __name__ == "__main__":
    main()
