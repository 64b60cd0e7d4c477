"""Conditions of the prior: instruction and architecture text, dataset samples."""

from .dataset import DatasetSetEncoder, prepare_support_set
from .text import (
    DEFAULT_TEXT_ENCODER,
    TextAttentionPool,
    encode_text,
    encode_text_states,
    load_text_encoder,
    pad_text_states,
)

__all__ = [
    "DatasetSetEncoder",
    "prepare_support_set",
    "DEFAULT_TEXT_ENCODER",
    "encode_text",
    "encode_text_states",
    "pad_text_states",
    "TextAttentionPool",
    "load_text_encoder",
]
