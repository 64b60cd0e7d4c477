"""Where every weight token sits in its architecture: role, stage, block, layer, chunk and token.

A prior that knows only a token's absolute position cannot tell that the second block of a stage in a deeper
ResNet plays the part the last block played in a shallower one. `token_structure` gives each token of a
`WeightLayout` its place, read from the state-dict names alone, so it works for every architecture family of
`igpg_hf.zoo` and for ingested state dicts (torchvision, timm, transformers naming) alike:

- a layer (module prefix, see `layer_name`) belongs to a **stage** and a **block**: the first purely numeric
  component of its path is the block index and what precedes it the stage (``layer2.1.conv1`` -> stage
  ``layer2``, block ``1``, layer ``conv1``; ``model.layers.5.mlp.up_proj`` -> stage ``model.layers``, block
  ``5``); a layer with no numeric component is a block of its own inside its parent module (``features.conv2``
  -> stage ``features``, block ``conv2``; a ResNet's stem ``conv1``/``bn1`` and head ``fc`` are stages of the
  root module). Stages are maximal runs of layers with the same stage path, blocks maximal runs with the same
  block key inside a stage, so a root-level stem and head are two stages;
- stages and blocks are counted from the start **and from the end** (``stage_from_end``, ``block_from_end``),
  layers from the start of their block;
- ``role``: what the layer is (see `ROLES`): convolution, normalization or linear; weight, bias or running
  statistics; from the entry's name, shape and siblings;
- ``chunk`` / ``chunk_from_end``: the token's chunk inside its layer, counted both ways, and ``token`` its index
  inside the chunk.

Fields are plain non-negative integers, unbounded; how they are embedded (learned tables that clip large
values, or sinusoids) is the prior's business (`IGPGPriorConfig.position_scheme`). A chunk that straddles layers
(``chunk_mode="model"``) takes the place of its first value.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass

import torch

from .chunking import chunk_segments
from .layout import LayoutEntry, WeightLayout, layer_name

__all__ = ["STRUCTURE_FIELDS", "ROLES", "LayerPlace", "layer_places", "token_structure", "entry_role"]

# column order of `token_structure`'s output
STRUCTURE_FIELDS = (
    "role",
    "stage",
    "stage_from_end",
    "block",
    "block_from_end",
    "layer",
    "chunk",
    "chunk_from_end",
    "token",
)
ROLES = (
    "conv_weight",
    "conv_bias",
    "norm_weight",
    "norm_bias",
    "norm_stats",  # BatchNorm running mean / variance
    "linear_weight",
    "linear_bias",
    "other_weight",
    "other_bias",
)
_ROLE = {r: i for i, r in enumerate(ROLES)}


@dataclass(frozen=True)
class LayerPlace:
    """One layer's place: stage and block counted both ways, layer index inside its block."""

    name: str
    stage: int
    stage_from_end: int
    block: int
    block_from_end: int
    layer: int


def _path_keys(layer: str) -> tuple[tuple[str, ...], str]:
    """(stage path, block key) of a layer name."""
    parts = layer.split(".")
    for i, p in enumerate(parts):
        if p.isdigit():
            return tuple(parts[:i]), p
    return tuple(parts[:-1]), parts[-1]


def layer_places(layout: WeightLayout) -> list[LayerPlace]:
    """The place of every layer of ``layout`` with floating-point weights, in vector order."""
    layers: list[str] = []
    for e in layout.float_entries:
        name = layer_name(e.name)
        if not layers or layers[-1] != name:
            layers.append(name)
    # stage runs, then block runs inside each stage run
    stages: list[list[list[str]]] = []  # stage -> block -> layer names
    prev_stage, prev_block = None, None
    for name in layers:
        stage_key, block_key = _path_keys(name)
        if stage_key != prev_stage or not stages:
            stages.append([[name]])
        elif block_key != prev_block:
            stages[-1].append([name])
        else:
            stages[-1][-1].append(name)
        prev_stage, prev_block = stage_key, block_key
    out = []
    for s, blocks in enumerate(stages):
        for b, names in enumerate(blocks):
            for li, name in enumerate(names):
                out.append(LayerPlace(name, s, len(stages) - 1 - s, b, len(blocks) - 1 - b, li))
    return out


def entry_role(entry: LayoutEntry, siblings: list[LayoutEntry]) -> int:
    """Index in `ROLES` of a float entry, from its name, its shape and the other entries of its layer."""
    leaf = entry.name.rsplit(".", 1)[-1]
    is_norm = any(s.name.endswith(("running_mean", "running_var")) for s in siblings)
    weight = next((s for s in siblings if s.name.rsplit(".", 1)[-1] == "weight"), None)
    if is_norm:
        if leaf.startswith("running_"):
            return _ROLE["norm_stats"]
        return _ROLE["norm_bias" if leaf == "bias" else "norm_weight"]
    ndim = len(weight.shape) if weight is not None else len(entry.shape)
    kind = {1: "norm", 2: "linear"}.get(ndim, "conv" if ndim >= 3 else "other")
    if leaf not in ("weight", "bias"):
        return _ROLE["other_weight" if len(entry.shape) >= 2 else "other_bias"]
    return _ROLE[f"{kind}_{leaf}"]


def token_structure(
    layout: WeightLayout, chunk_size: int, tokens_per_chunk: int, chunk_mode: str = "layer"
) -> torch.Tensor:
    """Structure of every weight token of ``layout``: (N, F) int64, columns `STRUCTURE_FIELDS`, N = M * l.

    ``chunk_size`` (K), ``tokens_per_chunk`` (l) and ``chunk_mode`` are the VQ-VAE's, so N equals the length of
    its token sequence for this layout. Raises ValueError on a non-positive chunk size or token count.
    """
    if chunk_size < 1 or tokens_per_chunk < 1:
        raise ValueError(
            f"chunk_size and tokens_per_chunk must be positive, got {chunk_size}, {tokens_per_chunk}"
        )
    places = {p.name: p for p in layer_places(layout)}
    by_layer: dict[str, list[LayoutEntry]] = {}
    for e in layout.float_entries:
        by_layer.setdefault(layer_name(e.name), []).append(e)
    slices = layout.entry_slices()
    starts = [s.start for _, s in slices]
    # the vector offset of every chunk's first value
    firsts = [
        start + i * chunk_size
        for start, _, n in chunk_segments(layout, chunk_size, chunk_mode)
        for i in range(n)
    ]
    rows = []
    for off in firsts:
        entry = slices[bisect.bisect_right(starts, off) - 1][0]
        lname = layer_name(entry.name)
        rows.append((places[lname], entry_role(entry, by_layer[lname])))
    # chunk index inside its layer, both ways
    counts: dict[str, int] = {}
    index = []
    for place, _ in rows:
        index.append(counts.get(place.name, 0))
        counts[place.name] = index[-1] + 1
    chunk_rows = [
        (role, p.stage, p.stage_from_end, p.block, p.block_from_end, p.layer, c, counts[p.name] - 1 - c)
        for (p, role), c in zip(rows, index, strict=True)
    ]
    per_chunk = torch.tensor(chunk_rows, dtype=torch.long).reshape(len(chunk_rows), len(STRUCTURE_FIELDS) - 1)
    tokens = per_chunk.repeat_interleave(tokens_per_chunk, 0)  # (M*l, F-1)
    token = torch.arange(tokens_per_chunk).repeat(len(chunk_rows))[:, None]  # (M*l, 1)
    return torch.cat([tokens, token], 1)
