"""Pad weight vectors to a multiple of the chunk size K, split into chunks, and invert exactly.

Two modes, as in the paper: ``"layer"`` pads every layer's ``vec(W) ⊕ b`` on its own, so a chunk
never straddles two layers (the paper's layer-wise mode, better for new architectures);
``"model"`` pads the concatenation of all layers once (architecture-wise). The mask marks real
values (True) against padding (False) so the padding stays out of the reconstruction loss.
"""

from __future__ import annotations

import torch

from .layout import WeightLayout

__all__ = ["chunk_segments", "chunk_vector", "unchunk_vector", "num_chunks"]


def chunk_segments(layout: WeightLayout, chunk_size: int, mode: str = "layer") -> list[tuple[int, int, int]]:
    """(start, stop, n_chunks) of every padded segment of the vector: one per layer, or one in all."""
    if mode == "model":
        n = layout.num_float
        return [(0, n, -(-n // chunk_size))]
    if mode != "layer":
        raise ValueError(f"chunk mode must be 'layer' or 'model', got {mode!r}")
    return [(s.start, s.stop, -(-(s.stop - s.start) // chunk_size)) for _, s in layout.layer_slices()]


def num_chunks(layout: WeightLayout, chunk_size: int, mode: str = "layer") -> int:
    """Number of chunks (M) the layout's vector splits into."""
    return sum(n for _, _, n in chunk_segments(layout, chunk_size, mode))


def chunk_vector(
    vector: torch.Tensor, layout: WeightLayout, chunk_size: int, mode: str = "layer"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Vector (D,) -> chunks (M, K) zero-padded, and mask (M, K) True on real values."""
    if vector.ndim != 1 or vector.numel() != layout.num_float:
        raise ValueError(
            f"weight vector has shape {tuple(vector.shape)}, layout expects ({layout.num_float},)"
        )
    chunks, masks = [], []
    for start, stop, n in chunk_segments(layout, chunk_size, mode):
        seg = vector[start:stop]
        pad = n * chunk_size - seg.numel()
        chunks.append(torch.cat([seg, seg.new_zeros(pad)]).view(n, chunk_size))
        masks.append(
            torch.cat([torch.ones(seg.numel(), dtype=torch.bool), torch.zeros(pad, dtype=torch.bool)]).view(
                n, chunk_size
            )
        )
    return torch.cat(chunks), torch.cat(masks)


def unchunk_vector(
    chunks: torch.Tensor, layout: WeightLayout, chunk_size: int, mode: str = "layer"
) -> torch.Tensor:
    """Chunks (M, K) -> vector (D,), dropping the padding; exact inverse of ``chunk_vector``."""
    segs = chunk_segments(layout, chunk_size, mode)
    m = sum(n for _, _, n in segs)
    if chunks.shape != (m, chunk_size):
        raise ValueError(f"chunks have shape {tuple(chunks.shape)}, layout expects ({m}, {chunk_size})")
    out, row = [], 0
    for start, stop, n in segs:
        out.append(chunks[row : row + n].reshape(-1)[: stop - start])
        row += n
    return torch.cat(out)
