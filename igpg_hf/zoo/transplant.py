"""Moving a trained ResNet to another depth: the cross-architecture baseline and the start of a lineage zoo's runs.

`transplant_depth` lives in the zoo package because the zoo builder uses it too: a ``finetuned`` zoo with a
ResNet depth grid starts every depth from its base network moved there (`igpg_hf.training.zoo_builder`).
"""

from __future__ import annotations

import re

import torch

from .architectures import ArchSpec

__all__ = ["transplant_depth"]


def transplant_depth(
    spec: ArchSpec, state_dict: dict[str, torch.Tensor], target: ArchSpec, seed: int = 0
) -> dict[str, torch.Tensor]:
    """A trained ResNet's weights moved to the block configuration of ``target`` (same family and widths).

    Per stage: blocks past the target's depth are cut from the end (not function-preserving); missing blocks
    are added after the last one as identity maps: weights copied from the stage's last block where the shapes
    agree (else ``target``'s fresh initialization, seeded), and the last BatchNorm's scale and shift at zero,
    so the residual branch adds nothing and, as the stage's input is already rectified, the net computes the
    same function. ValueError unless both are ResNets of the same widths.
    """
    if spec.family != "resnet" or target.family != "resnet":
        raise ValueError(f"transplant_depth needs two ResNets, got {spec.family!r} and {target.family!r}")
    if {k: v for k, v in spec.params.items() if k != "blocks"} != {
        k: v for k, v in target.params.items() if k != "blocks"
    }:
        raise ValueError(f"transplant_depth changes blocks only: {spec.to_json()} vs {target.to_json()}")
    with torch.random.fork_rng(devices=[]):  # seeded here without moving the caller's global RNG
        torch.manual_seed(seed)
        fresh = target.build().state_dict()
    src_blocks = spec.params["blocks"]
    out = {}
    for k, v in fresh.items():
        m = re.match(r"layer(\d)\.(\d+)\.(.*)", k)
        if not m:
            out[k] = state_dict[k].clone()
            continue
        s, b, rest = int(m.group(1)), int(m.group(2)), m.group(3)
        n = src_blocks[s - 1]
        if b < n:
            out[k] = state_dict[k].clone()
            continue
        src = state_dict.get(f"layer{s}.{n - 1}.{rest}")
        out[k] = src.clone() if src is not None and src.shape == v.shape else v.clone()
        if rest in ("bn2.weight", "bn2.bias") or (
            target.params["norm"] != "batch" and rest.startswith("conv2.")
        ):
            out[k] = torch.zeros_like(v)  # the residual branch of a new block outputs zero: an identity map
    return out
