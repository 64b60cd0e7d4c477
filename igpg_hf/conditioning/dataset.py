"""Dataset condition: a set encoder over a few labelled samples of the task.

The paper mean-pools CLIP image features of about 5 samples per class. CLIP cannot be loaded
offline here and our inputs are not all images (1-D signals, tabular rows), so each sample is
flattened and resampled to a fixed length F, paired with its one-hot label, embedded by a small
MLP and mean-pooled (DeepSets): invariant to sample order, sensitive to which label goes with which
input (so label permutations are distinguishable). It is trained with the prior.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["DatasetSetEncoder", "prepare_support_set"]


def prepare_support_set(x: torch.Tensor, y: torch.Tensor, feature_dim: int) -> torch.Tensor:
    """Samples (S, *shape) and labels (S,) -> features (S, F): flattened, resampled to length F."""
    if x.shape[0] != y.shape[0] or x.shape[0] == 0:
        raise ValueError(
            f"dataset condition needs matching, non-empty samples and labels; got {x.shape[0]} and {y.shape[0]}"
        )
    flat = x.reshape(x.shape[0], 1, -1).float()  # (S, 1, D)
    if flat.shape[-1] != feature_dim:
        flat = F.interpolate(flat, size=feature_dim, mode="linear", align_corners=False)
    return flat.squeeze(1)  # (S, F)


class DatasetSetEncoder(nn.Module):
    """DeepSets over (features, one-hot label) pairs -> one embedding (B, n_embd)."""

    def __init__(self, feature_dim: int, max_classes: int, hidden: int, out_dim: int):
        super().__init__()
        self.max_classes = max_classes
        self.phi = nn.Sequential(
            nn.Linear(feature_dim + max_classes, hidden), nn.GELU(), nn.Linear(hidden, hidden)
        )
        self.rho = nn.Sequential(nn.GELU(), nn.Linear(hidden, out_dim))

    def forward(
        self, feats: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """feats (B, S, F), labels (B, S), mask (B, S) True for real samples -> (B, out_dim)."""
        if labels.max() >= self.max_classes:
            raise ValueError(
                f"dataset condition has label {int(labels.max())}; this prior supports at most "
                f"{self.max_classes} classes"
            )
        h = self.phi(torch.cat([feats, F.one_hot(labels.clamp_min(0), self.max_classes).to(feats.dtype)], -1))
        if mask is None:
            mask = torch.ones(labels.shape, dtype=torch.bool, device=labels.device)
        m = mask.unsqueeze(-1).to(h.dtype)
        return self.rho((h * m).sum(1) / m.sum(1).clamp_min(1))  # (B, out_dim)
