"""Quantizers behind one interface: the paper's Gumbel-softmax, and vector-quantize-pytorch's VQ/FSQ.

Every quantizer maps latents (B, l, d) to a `QuantizerOutput` with the same fields whatever the
kind, so the VQ-VAE never branches on the quantizer. The Gumbel quantizer is written here because
no maintained library has one with the paper's annealed soft/hard behaviour; EMA VQ and FSQ come
from vector-quantize-pytorch (its tuple outputs and int32 FSQ indices are normalized here).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["QuantizerOutput", "GumbelQuantizer", "LibraryQuantizer", "build_quantizer"]


@dataclass
class QuantizerOutput:
    """quantized (B, l, d); indices (B, l) int64; aux_loss scalar (commitment/codebook/KL terms); perplexity."""

    quantized: torch.Tensor
    indices: torch.Tensor
    aux_loss: torch.Tensor
    perplexity: torch.Tensor


def _perplexity(indices: torch.Tensor, n: int) -> torch.Tensor:
    """exp(entropy) of code usage in the batch: how many codes are in effective use."""
    p = torch.bincount(indices.flatten(), minlength=n).float()
    p = p / p.sum().clamp_min(1)
    return torch.exp(-(p * torch.log(p.clamp_min(1e-10))).sum())


class GumbelQuantizer(nn.Module):
    """Gumbel-softmax over C codes: soft mixtures while training (temperature ``tau``), argmax at inference."""

    def __init__(
        self,
        code_dim: int,
        codebook_size: int,
        commitment_weight: float,
        codebook_weight: float,
        kl_weight: float,
    ):
        super().__init__()
        self.to_logits = nn.Linear(code_dim, codebook_size)
        self.codebook = nn.Embedding(codebook_size, code_dim)
        self.codebook_size = codebook_size
        self.weights = (commitment_weight, codebook_weight, kl_weight)

    def forward(self, z: torch.Tensor, tau: float = 1.0) -> QuantizerOutput:
        logits = self.to_logits(z)  # (B, l, C)
        indices = logits.argmax(-1)  # (B, l)
        if self.training:
            soft = F.gumbel_softmax(logits, tau=tau, hard=False, dim=-1)
            quantized = soft @ self.codebook.weight  # (B, l, d)
        else:
            quantized = self.codebook(indices)
        commit_w, book_w, kl_w = self.weights
        hard = self.codebook(indices)
        # commitment pulls encoder outputs toward their code; codebook term pulls codes toward outputs
        aux = commit_w * F.mse_loss(z, hard.detach()) + book_w * F.mse_loss(hard, z.detach())
        # KL(q || uniform) keeps the whole codebook in use
        logq = F.log_softmax(logits, -1)
        aux = aux + kl_w * (logq.exp() * (logq + math.log(self.codebook_size))).sum(-1).mean()
        return QuantizerOutput(quantized, indices, aux, _perplexity(indices, self.codebook_size))

    def lookup(self, indices: torch.Tensor) -> torch.Tensor:
        return self.codebook(indices)


class LibraryQuantizer(nn.Module):
    """Adapter over vector-quantize-pytorch's ``VectorQuantize`` (EMA, k-means init) or ``FSQ``."""

    def __init__(
        self,
        kind: str,
        code_dim: int,
        codebook_size: int,
        commitment_weight: float,
        fsq_levels: list[int] | None = None,
    ):
        super().__init__()
        try:
            import vector_quantize_pytorch as vqp
        except ImportError as e:  # optional dependency
            raise ImportError(f"quantizer {kind!r} needs `pip install vector-quantize-pytorch`") from e
        self.kind = kind
        if kind == "fsq":
            self.q = vqp.FSQ(levels=list(fsq_levels), dim=code_dim)
            self.codebook_size = math.prod(fsq_levels)
        else:
            self.q = vqp.VectorQuantize(
                dim=code_dim,
                codebook_size=codebook_size,
                decay=0.9,
                commitment_weight=commitment_weight,
                kmeans_init=True,
                threshold_ema_dead_code=2,
            )
            self.codebook_size = codebook_size

    def forward(self, z: torch.Tensor, tau: float = 1.0) -> QuantizerOutput:
        if self.kind == "fsq":
            quantized, indices = self.q(z)
            aux = z.new_zeros(())
        else:
            quantized, indices, aux = self.q(z)
            aux = aux.sum()
        indices = indices.long()
        return QuantizerOutput(quantized, indices, aux, _perplexity(indices, self.codebook_size))

    def lookup(self, indices: torch.Tensor) -> torch.Tensor:
        if self.kind == "fsq":
            dtype = next(self.q.parameters()).dtype
            # FSQ computes codes in float32 from its level buffers, then projects them with its own (maybe bfloat16)
            # layer: under autocast the projection takes either
            with torch.autocast(indices.device.type, dtype=dtype, enabled=dtype != torch.float32):
                return self.q.indices_to_codes(indices).to(dtype)
        return self.q.get_codes_from_indices(indices)


def build_quantizer(config) -> nn.Module:
    """The quantizer named by ``config.quantizer``."""
    if config.quantizer == "gumbel":
        return GumbelQuantizer(
            config.code_dim,
            config.codebook_size,
            config.commitment_weight,
            config.codebook_weight,
            config.kl_weight,
        )
    return LibraryQuantizer(
        config.quantizer, config.code_dim, config.codebook_size, config.commitment_weight, config.fsq_levels
    )
