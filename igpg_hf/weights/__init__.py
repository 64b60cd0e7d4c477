"""Weights as data: exact layout, chunking with masks, normalization."""

from .layout import LayoutEntry, WeightLayout, layer_name

__all__ = ["LayoutEntry", "WeightLayout", "layer_name"]
