"""Conditions of the prior: instruction and architecture text, dataset samples."""

from .dataset import DatasetSetEncoder, prepare_support_set
from .text import DEFAULT_TEXT_ENCODER, encode_text, load_text_encoder

__all__ = [
    "DatasetSetEncoder",
    "prepare_support_set",
    "DEFAULT_TEXT_ENCODER",
    "encode_text",
    "load_text_encoder",
]
