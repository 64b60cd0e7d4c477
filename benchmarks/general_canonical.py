"""A quick look at a pipeline trained on a whole zoo: canonical instruction, one sample per (task, architecture).

    python benchmarks/general_canonical.py --pipeline general/pipeline --corpus zoo_default [--pairs 24]

Draws ``--pairs`` (task, architecture) pairs of the corpus at random (seed 0), generates one net for each from
the task's canonical instruction (seed 0, top-p 0.9, no samples) and prints its test accuracy beside the zoo
mean of the pair (the stored test accuracies), the ratio, and whether it is a copy of a training checkpoint.
The full measurement (held-out wordings, samples, unrelated text, retrieval) is the benchmark's `instructions`
part; this is its canonical column on a subset, in a minute or two.
"""

from __future__ import annotations

import argparse
import random
import time

import torch

from igpg_hf import IGPGPipeline
from igpg_hf.corpus import WeightCorpus
from igpg_hf.evaluation.metrics import evaluate_state_dicts, finite_mean
from igpg_hf.zoo.tasks import get_task


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--pipeline", required=True)
    p.add_argument("--corpus", required=True)
    p.add_argument("--pairs", type=int, default=24)
    args = p.parse_args()
    torch.set_num_threads(1)
    pipe = IGPGPipeline.from_pretrained(args.pipeline)
    groups: dict[tuple[str, str], list] = {}
    for c in WeightCorpus.load(args.corpus):
        groups.setdefault((c.metadata.task, c.metadata.arch_text), []).append(c)
    keys = sorted(groups)
    random.Random(0).shuffle(keys)
    t, ratios, copies = time.perf_counter(), [], 0
    for task, arch in keys[: args.pairs]:
        cs = groups[(task, arch)]
        zoo = 100 * finite_mean(c.metadata.test_acc for c in cs)
        out = pipe(get_task(task).instruction, architecture=cs[0].arch(), num_samples=1, seed=0, top_p=0.9)
        acc = evaluate_state_dicts(cs[0].arch(), out.state_dicts, get_task(task))[0]
        ratios.append(acc / zoo)
        copies += bool(out.is_copy[0])
        print(
            f"{task:18s} {cs[0].arch().family:6s} zoo {zoo:5.1f}  generated {acc:5.1f}  ratio {acc / zoo:.3f}"
        )
    print(
        f"{len(ratios)} pairs: mean ratio {sum(ratios) / len(ratios):.3f}, at or above 0.95: "
        f"{sum(r >= 0.95 for r in ratios)}, copies {copies}, {time.perf_counter() - t:.0f} s"
    )


if __name__ == "__main__":
    main()
