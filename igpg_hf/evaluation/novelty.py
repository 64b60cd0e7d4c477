"""Is a generated net new? Token copies, distance to the nearest training checkpoint, prediction disagreement.

Zeng et al. 2025 showed weight generators that only replicate their training set. We report, for
every generated model: whether its token sequence equals a training checkpoint's (a *copy*); its L2
distance to the nearest training checkpoint divided by the median pairwise distance between training
checkpoints of the same task (*novelty*: adjacent epochs of one seed sit near 0.016, independent
seeds near 1); and the fraction of test inputs on which it predicts differently from that nearest
checkpoint (*disagreement*).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["NoveltyReport", "adjacent_epoch_novelty", "count_copies", "novelty", "pairwise_scale"]


def count_copies(generated: torch.Tensor, training: torch.Tensor) -> list[bool]:
    """generated (G, N), training (T, N) token ids -> per generated row: equal to some training row."""
    if generated.shape[-1] != training.shape[-1]:
        return [False] * generated.shape[0]
    return [bool((training == g).all(-1).any()) for g in generated]


def pairwise_scale(vectors: torch.Tensor) -> float:
    """Median pairwise L2 distance between rows (T, D): the typical distance between training checkpoints."""
    if vectors.shape[0] < 2:
        return float("nan")
    d = torch.cdist(vectors.double(), vectors.double())
    iu = torch.triu_indices(len(vectors), len(vectors), offset=1)
    return d[iu[0], iu[1]].median().item()


def adjacent_epoch_novelty(checkpoints, scale: float) -> list[float]:
    """For scale: distance between consecutive kept epochs of each training run, divided by ``scale``."""
    runs: dict[str, list] = {}
    for c in sorted(checkpoints, key=lambda c: c.metadata.epoch):
        runs.setdefault(c.metadata.run_id, []).append(c)
    return [
        (a.vector() - b.vector()).norm().item() / scale
        for cs in runs.values()
        for a, b in zip(cs, cs[1:], strict=False)
    ]


@dataclass
class NoveltyReport:
    """Per generated model: nearest training index, raw distance, distance / typical pairwise distance."""

    nearest: list[int]
    distance: list[float]
    novelty: list[float]


def novelty(generated: torch.Tensor, training: torch.Tensor, scale: float | None = None) -> NoveltyReport:
    """generated (G, D) and training (T, D) weight vectors -> nearest checkpoint and relative distance."""
    scale = scale if scale is not None else pairwise_scale(training)
    d = torch.cdist(generated.double(), training.double())  # (G, T)
    dist, idx = d.min(1)
    return NoveltyReport(idx.tolist(), dist.tolist(), (dist / scale).tolist())
