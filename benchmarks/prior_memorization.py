"""How fast the general recipe's prior memorizes, per unit of compute: a pilot on a subset of its nets.

    python benchmarks/prior_memorization.py --corpus zoo_default --vqvae general/vqvae/final --out pilot/B \
        --nets 20 --batch-size 4 --steps 160 [--n-positions 256] [--lr 2e-3] [--threads 1]

Trains the "general" recipe's prior (`PipelineRecipe.from_preset("general")`, its text pooling cut to 50 steps)
on every k-th of the recipe's checkpoints (last epoch of the lowest-seed run per (task, architecture), sorted by
model id) with the given steps, batch size, learning rate and context (``--n-positions``: fixed block length; none:
one context for the longest sequence), then generates each of those nets from its canonical instruction and
architecture (one sample, seed 0, top-p 0.9) and prints the final training loss (mean of the last three logged)
and generated / original test accuracy. Figures quoted in the "general" recipe's comment came from runs of one
thread each, two at a time, on 2 CPU cores (`benchmarks/results/general/prior_pilots.txt`).
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from igpg_hf.corpus import WeightCorpus
from igpg_hf.evaluation.metrics import evaluate_state_dicts
from igpg_hf.modeling_vqvae import IGPGVQVAEModel
from igpg_hf.training import PipelineRecipe
from igpg_hf.training.pipeline import select_checkpoints, train_pipeline
from igpg_hf.zoo.tasks import get_task


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--corpus", required=True, help="corpus folder or Hub dataset id")
    p.add_argument("--vqvae", required=True, help="the trained VQ-VAE of the general recipe")
    p.add_argument("--out", required=True, help="run folder of the pilot pipeline")
    p.add_argument("--nets", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--steps", type=int, default=160)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--n-positions", type=int, default=None)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    recipe = PipelineRecipe.from_preset("general")
    checkpoints = sorted(
        select_checkpoints(
            list(WeightCorpus.load(args.corpus)), recipe.checkpoints, recipe.runs_per_architecture
        ),
        key=lambda c: c.metadata.model_id,
    )
    checkpoints = checkpoints[:: max(1, len(checkpoints) // args.nets)][: args.nets]
    recipe = recipe.with_changes(
        {"n_positions": args.n_positions, "max_n_positions": 1280},
        prior_training={
            "steps": args.steps,
            "batch_size": args.batch_size,
            "lr": args.lr,
            "log_every": 5,
            "checkpoint_every": 10**9,
            "text_pool_steps": 50,
        },
    )
    vqvae = IGPGVQVAEModel.from_pretrained(args.vqvae).eval()
    t = time.perf_counter()
    pipe = train_pipeline(checkpoints, recipe, args.out, vqvae=vqvae, progress=False)
    seconds = time.perf_counter() - t
    with open(f"{args.out}/prior/final/training_log.json") as f:
        losses = [h["loss"] for h in json.load(f)["history"]]
    ratios = []
    for c in checkpoints:
        task = get_task(c.metadata.task)
        out = pipe(task.instruction, architecture=c.arch(), num_samples=1, seed=0, top_p=0.9)
        a, b = evaluate_state_dicts(c.arch(), [c.state_dict(), out.state_dicts[0]], task)
        ratios.append(b / a)
    print(
        f"{len(checkpoints)} nets, {args.steps} steps of {args.batch_size}, lr {args.lr}, context "
        f"{args.n_positions or 'longest'}: trained in {seconds:.0f} s, final loss {sum(losses[-3:]) / 3:.2f}; "
        f"generated / original mean {sum(ratios) / len(ratios):.3f}, min {min(ratios):.3f}, "
        f"{sum(r >= 0.95 for r in ratios)} at or above 0.95"
    )


if __name__ == "__main__":
    main()
