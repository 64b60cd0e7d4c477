"""accelerate training loops for the tokenizer and the prior, with resumable checkpoints."""

from .checkpointing import atomic_write_json, load_training_state, save_training_state
from .prior import PriorTrainingArgs, train_prior
from .vqvae import VQVAETrainingArgs, gumbel_temperature, train_vqvae

__all__ = [
    "atomic_write_json",
    "load_training_state",
    "save_training_state",
    "PriorTrainingArgs",
    "train_prior",
    "VQVAETrainingArgs",
    "gumbel_temperature",
    "train_vqvae",
]
