"""Weights as data: exact layout, chunking with masks, normalization."""

from .chunking import chunk_segments, chunk_vector, num_chunks, unchunk_vector
from .layout import LayoutEntry, WeightLayout, layer_name, match_layout
from .normalization import denormalize_vector, fit_weight_stats, normalize_vector, stats_key_candidates
from .structure import ROLES, STRUCTURE_FIELDS, LayerPlace, layer_places, token_structure

__all__ = [
    "LayoutEntry",
    "WeightLayout",
    "layer_name",
    "match_layout",
    "chunk_segments",
    "chunk_vector",
    "num_chunks",
    "unchunk_vector",
    "denormalize_vector",
    "fit_weight_stats",
    "normalize_vector",
    "stats_key_candidates",
    "ROLES",
    "STRUCTURE_FIELDS",
    "LayerPlace",
    "layer_places",
    "token_structure",
]
