"""accelerate training loops for the tokenizer and the prior, with resumable checkpoints."""

from ..files import atomic_write_json  # re-exported for callers of the former helper
from .checkpointing import load_training_state, save_training_state
from .prior import PriorTrainingArgs, train_prior
from .tokenizer import TokenizerTrainingArgs, gumbel_temperature, train_tokenizer

__all__ = [
    "atomic_write_json",
    "load_training_state",
    "save_training_state",
    "PriorTrainingArgs",
    "train_prior",
    "TokenizerTrainingArgs",
    "gumbel_temperature",
    "train_tokenizer",
]
