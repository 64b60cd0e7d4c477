"""Weight normalization with stored statistics, so decoding restores each layer's scale.

The paper does not normalize; its VQ-VAE sees raw values. Layers of one net differ in scale by
orders of magnitude, so we standardize every state-dict entry with a mean and std measured over the
zoo (``"layer"`` mode). Statistics are keyed by entry name; an entry the zoo never had (a deeper
ResNet block, say) falls back to the statistics of entries with the same *role* (the name with
digits replaced by ``#``, e.g. ``layer#.#.conv#.weight``), then to all weights or all biases.

For zoos fine-tuned from one common base (as LoRA and model-hub zoos are), per-entry scaling keeps
"base + noise" and loses the task adaptation; ``"delta"`` mode first subtracts the per-coordinate
zoo mean (in effect the base) of one layout, then scales the residual per entry.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

import torch

from .layout import WeightLayout

__all__ = ["fit_weight_stats", "normalize_vector", "denormalize_vector", "stats_key_candidates"]

_EPS = 1e-8


def stats_key_candidates(name: str) -> list[str]:
    """Keys tried in order for an entry: exact name, role (digits -> #), then weight/bias globals."""
    kind = "bias" if name.endswith("bias") else "weight"
    return [name, "role:" + re.sub(r"\d+", "#", name), f"global:{kind}"]


def fit_weight_stats(items: Iterable[tuple[WeightLayout, torch.Tensor]]) -> dict[str, list[float]]:
    """Mean and std per entry, per role and per weight/bias kind over (layout, vector) pairs.

    Empty (0-element) entries contribute nothing: their values come from their role or kind at decode time.
    ValueError if a vector holds NaN or infinite values (they would turn every statistic they touch into NaN).
    """
    acc: dict[str, list[float]] = {}  # key -> [count, sum, sum of squares]
    for i, (layout, vec) in enumerate(items):
        layout.check_finite(vec, f"weights {i}")
        for e, s in layout.entry_slices():
            if e.numel == 0:
                continue
            v = vec[s].double()
            for key in stats_key_candidates(e.name):
                a = acc.setdefault(key, [0.0, 0.0, 0.0])
                a[0] += v.numel()
                a[1] += v.sum().item()
                a[2] += (v * v).sum().item()
    stats = {}
    for key, (n, s1, s2) in acc.items():
        mean = s1 / n
        var = max(s2 / n - mean * mean, 0.0)
        stats[key] = [mean, max(var**0.5, 1e-6)]
    return stats


def _lookup(stats: dict[str, list[float]], name: str) -> tuple[float, float]:
    for key in stats_key_candidates(name):
        if key in stats:
            return stats[key][0], stats[key][1]
    return 0.0, 1.0


def _scales(layout: WeightLayout, stats: dict[str, list[float]], like: torch.Tensor):
    mean, std = torch.empty_like(like), torch.empty_like(like)
    for e, s in layout.entry_slices():
        m, sd = _lookup(stats, e.name)
        mean[..., s], std[..., s] = m, sd
    return mean, std


def normalize_vector(
    vec: torch.Tensor, layout: WeightLayout, stats: dict[str, list[float]], base: torch.Tensor | None = None
) -> torch.Tensor:
    """(..., D) raw weights -> standardized values; with ``base`` the residual from it is scaled."""
    if base is not None:
        if base.shape[-1] != vec.shape[-1]:
            raise ValueError(
                f"delta normalization: base has {base.shape[-1]} values, weights have {vec.shape[-1]}"
            )
        return (vec - base) / _scales(layout, stats, vec)[1]
    mean, std = _scales(layout, stats, vec)
    return (vec - mean) / std


def denormalize_vector(
    vec: torch.Tensor, layout: WeightLayout, stats: dict[str, list[float]], base: torch.Tensor | None = None
) -> torch.Tensor:
    """Inverse of ``normalize_vector``."""
    mean, std = _scales(layout, stats, vec)
    if base is not None:
        return vec * std + base
    return vec * std + mean
