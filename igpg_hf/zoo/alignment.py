"""Permutation alignment of a zoo's checkpoints (weight matching, Ainsworth et al. 2023, "Git Re-Basin").

Hidden units of a net can be reordered without changing its function. Independently trained seeds land in
arbitrary orders, so the same feature sits at different coordinates in each, and a generator of weights has
to learn every order. `align_state_dict` reorders one checkpoint's hidden channels to match a reference as
closely as it can: a `PermutationSpec` names, for every entry of the state dict, the permutation acting on
each axis; `weight_matching` solves one linear assignment per permutation in turn
(`scipy.optimize.linear_sum_assignment`, maximizing the inner product with the reference) until no
assignment improves; `apply_permutations` applies them. Residual connections share one permutation per
ResNet stage (its residual stream); BatchNorm weights, biases and running statistics follow their channels.
The result computes the same function up to float rounding (tests check it).

Architectures of different depths are aligned to one reference through `reference_for`: every block of the
target is matched to the reference's block at the same index (its last block past its depth).
`align_checkpoints` aligns a whole zoo before its VQ-VAE and prior are trained.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from dataclasses import dataclass, field

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from .architectures import ArchSpec

logger = logging.getLogger(__name__)

__all__ = [
    "PermutationSpec",
    "permutation_spec",
    "weight_matching",
    "apply_permutations",
    "align_state_dict",
    "reference_for",
    "align_checkpoints",
    "reference_checkpoint",
    "ALIGNABLE_FAMILIES",
]

ALIGNABLE_FAMILIES = ("resnet", "mlp", "cnn", "cnn1d")


@dataclass
class PermutationSpec:
    """For each state-dict entry, the permutation (by name, or None) acting on each of its axes.

    ``views``: entries reshaped before permuting (a flattened conv output feeding a linear layer: (h, C*S) is
    permuted as (h, C, S)).
    """

    axes: dict[str, tuple[str | None, ...]]
    views: dict[str, tuple[int, ...]] = field(default_factory=dict)

    def sizes(self, sd: dict[str, torch.Tensor]) -> dict[str, int]:
        """Length of every permutation, read from the state dict's shapes."""
        out: dict[str, int] = {}
        for name, axes in self.axes.items():
            shape = self.views.get(name, tuple(sd[name].shape))
            for a, p in enumerate(axes):
                if p is not None:
                    if out.setdefault(p, shape[a]) != shape[a]:
                        raise ValueError(f"permutation {p!r} has length {out[p]} and {shape[a]} ({name!r})")
        return out

    def users(self) -> dict[str, list[tuple[str, int]]]:
        """Every permutation -> the (entry, axis) pairs it acts on."""
        out: dict[str, list[tuple[str, int]]] = {}
        for name, axes in self.axes.items():
            for a, p in enumerate(axes):
                if p is not None:
                    out.setdefault(p, []).append((name, a))
        return out


def _norm_axes(axes: dict, prefix: str, perm: str | None, sd_keys: set[str]) -> None:
    for leaf in ("weight", "bias", "running_mean", "running_var"):
        if f"{prefix}.{leaf}" in sd_keys:
            axes[f"{prefix}.{leaf}"] = (perm,)


def permutation_spec(spec: ArchSpec, sd: dict[str, torch.Tensor]) -> PermutationSpec:
    """The permutation spec of an architecture of family resnet, mlp, cnn or cnn1d (ValueError otherwise)."""
    keys, axes, views = set(sd), {}, {}

    def linear(prefix: str, out_perm: str | None, in_perm: str | None, extra: int = 0) -> None:
        axes[f"{prefix}.weight"] = (out_perm, in_perm) + (None,) * extra
        if f"{prefix}.bias" in keys:
            axes[f"{prefix}.bias"] = (out_perm,)

    p = spec.params
    if spec.family == "resnet":
        linear("conv1", "P1", None, 2)
        _norm_axes(axes, "bn1", "P1", keys)
        for s, n in enumerate(p["blocks"], start=1):
            for b in range(n):
                pre, inner = f"layer{s}.{b}", f"Q{s}.{b}"
                src = f"P{s - 1}" if (b == 0 and s > 1) else f"P{s}"
                linear(f"{pre}.conv1", inner, src, 2)
                _norm_axes(axes, f"{pre}.bn1", inner, keys)
                linear(f"{pre}.conv2", f"P{s}", inner, 2)
                _norm_axes(axes, f"{pre}.bn2", f"P{s}", keys)
                if f"{pre}.shortcut.0.weight" in keys:
                    linear(f"{pre}.shortcut.0", f"P{s}", src, 2)
                    _norm_axes(axes, f"{pre}.shortcut.1", f"P{s}", keys)
        linear("fc", None, f"P{len(p['blocks'])}")
    elif spec.family in ("mlp", "cnn", "cnn1d"):
        prev = None
        if spec.family != "mlp":
            extra = 2 if spec.family == "cnn" else 1
            for i in range(1, len(p["channels"]) + 1):
                linear(f"features.conv{i}", f"C{i}", prev, extra)
                prev = f"C{i}"
        fcs = sorted(
            (int(m.group(1)) for k in keys if (m := re.fullmatch(r"head\.fc(\d+)\.weight", k))),
        )
        for j, i in enumerate(fcs):
            out = None if j == len(fcs) - 1 else f"H{i}"
            name = f"head.fc{i}"
            if j == 0 and prev is not None:  # flattened conv output: (h, C*S) permuted as (h, C, S)
                h, cs = sd[f"{name}.weight"].shape
                c = sd[f"features.conv{len(p['channels'])}.weight"].shape[0]
                views[f"{name}.weight"] = (h, c, cs // c)
                linear(name, out, prev, 1)
            else:
                linear(name, out, prev)
            prev = out
    else:
        raise ValueError(f"no permutation spec for architecture family {spec.family!r}")
    missing = [k for k, v in sd.items() if v.is_floating_point() and k not in axes]
    if missing:
        raise ValueError(f"permutation spec of {spec.family!r} misses entries {missing[:5]}")
    return PermutationSpec(axes, views)


def _permuted(
    ps: PermutationSpec, perms: dict[str, torch.Tensor], name: str, w: torch.Tensor, skip: int = -1
):
    w = w.reshape(ps.views.get(name, w.shape))
    for a, p in enumerate(ps.axes[name]):
        if p is not None and a != skip:
            w = w.index_select(a, perms[p])
    return w


def apply_permutations(
    ps: PermutationSpec, perms: dict[str, torch.Tensor], sd: dict[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """The state dict with every permuted axis reordered (``new[i] = old[perm[i]]``); other entries as they are."""
    out = {}
    for k, v in sd.items():
        out[k] = _permuted(ps, perms, k, v).reshape(v.shape).clone() if k in ps.axes else v.clone()
    return out


def weight_matching(
    ps: PermutationSpec,
    reference: dict[str, torch.Tensor],
    sd: dict[str, torch.Tensor],
    max_iter: int = 100,
    seed: int = 0,
) -> dict[str, torch.Tensor]:
    """Permutations that bring ``sd`` closest to ``reference`` (same shapes), by coordinate ascent on the
    summed inner products of all entries; deterministic for a seed."""
    sizes, users = ps.sizes(sd), ps.users()
    perms = {p: torch.arange(n) for p, n in sizes.items()}
    rng = np.random.default_rng(seed)
    names = sorted(sizes)
    for _ in range(max_iter):
        improved = False
        for p in rng.permutation(names):
            n = sizes[p]
            cost = torch.zeros(n, n, dtype=torch.float64)
            for name, axis in users[p]:
                a = reference[name].double().reshape(ps.views.get(name, reference[name].shape))
                b = _permuted(ps, perms, name, sd[name].double(), skip=axis)
                cost += a.movedim(axis, 0).reshape(n, -1) @ b.movedim(axis, 0).reshape(n, -1).T
            _, cols = linear_sum_assignment(cost.numpy(), maximize=True)
            cols = torch.as_tensor(cols, dtype=torch.long)
            old = cost[torch.arange(n), perms[p]].sum()
            new = cost[torch.arange(n), cols].sum()
            if new > old + 1e-9 * max(1.0, abs(float(old))):
                perms[p], improved = cols, True
        if not improved:
            break
    return perms


def reference_for(
    spec: ArchSpec, ref_spec: ArchSpec, ref_sd: dict[str, torch.Tensor], like: dict[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """A reference in ``spec``'s layout built from a reference of another depth (ResNets; the same spec returns
    ``ref_sd``): block b of a stage takes the reference's block min(b, its blocks - 1); entries the reference
    cannot fill are zeros (they add nothing to the matching)."""
    if spec == ref_spec:
        return ref_sd
    if spec.family != "resnet" or ref_spec.family != "resnet":
        raise ValueError(
            f"cannot align {spec.family!r} to a reference of another architecture ({ref_spec.family!r})"
        )
    ref_blocks = ref_spec.params["blocks"]
    out = {}
    for k, v in like.items():
        m = re.match(r"layer(\d)\.(\d+)\.(.*)", k)
        src = k
        if m:
            s, b, rest = int(m.group(1)), int(m.group(2)), m.group(3)
            src = f"layer{s}.{min(b, ref_blocks[s - 1] - 1)}.{rest}"
        out[k] = ref_sd[src] if src in ref_sd and ref_sd[src].shape == v.shape else torch.zeros_like(v)
    return out


def align_state_dict(
    spec: ArchSpec,
    sd: dict[str, torch.Tensor],
    reference: dict[str, torch.Tensor],
    reference_spec: ArchSpec | None = None,
    seed: int = 0,
) -> dict[str, torch.Tensor]:
    """``sd`` with its hidden channels permuted to match ``reference`` (of ``reference_spec``, default ``spec``):
    the same function, other coordinates."""
    ref = reference_for(spec, reference_spec or spec, reference, sd)
    ps = permutation_spec(spec, sd)
    return apply_permutations(ps, weight_matching(ps, ref, sd, seed=seed), sd)


def align_checkpoints(checkpoints: list, seed: int = 0) -> list:
    """Corpus checkpoints with their channels permuted to one reference per architecture family and task.

    The reference of a group is its deepest, then largest, architecture's last-epoch checkpoint of the smallest
    ``model_id``, so every block of every other depth has a counterpart. Checkpoints of a family
    `permutation_spec` does not know, or without an architecture spec, come back unchanged; metadata and
    layout are kept, only the weights change (same function). Order is kept.
    """
    groups: dict[tuple, list[int]] = {}
    for i, c in enumerate(checkpoints):
        spec = c.arch()
        if spec is not None and spec.family in ALIGNABLE_FAMILIES:
            key = (spec.family, c.metadata.task, spec.to_json() if spec.family != "resnet" else _widths(spec))
            groups.setdefault(key, []).append(i)
    out = list(checkpoints)
    for members in groups.values():
        ref = reference_checkpoint([checkpoints[i] for i in members])
        ref_spec, ref_sd = ref.arch(), ref.state_dict()
        for i in members:
            c = checkpoints[i]
            if c is ref:
                continue
            sd = align_state_dict(c.arch(), c.state_dict(), ref_sd, ref_spec, seed=seed)
            out[i] = dataclasses.replace(c, weights=c.layout.to_bytes(sd))
        logger.info("aligned %d checkpoints to %s", len(members) - 1, ref.metadata.model_id)
    return out


def reference_checkpoint(checkpoints: list):
    """The checkpoint `align_checkpoints` aligns a group to: the deepest, then largest, architecture's
    last-epoch checkpoint of the smallest ``model_id`` (so every block of every other depth has a counterpart)."""

    def rank(c):
        blocks = c.arch().params.get("blocks", [0])
        return (-sum(blocks), -c.layout.num_float, -c.metadata.epoch, c.metadata.model_id)

    return min(checkpoints, key=rank)


def _widths(spec: ArchSpec) -> str:
    return ArchSpec(spec.family, {k: v for k, v in spec.params.items() if k != "blocks"}).to_json()
