"""Everything that trains: zoos (`zoo_builder`), the VQ-VAE, the prior, and whole pipelines (`pipeline`).

    from igpg_hf.training import PipelineRecipe, train_pipeline
    pipe = train_pipeline("zoo/", PipelineRecipe.from_preset("demo"), "runs/demo")

``train_pipeline`` is the one way a pipeline is trained (CLI, demo and benchmark all call it); ``train_vqvae`` and
``train_prior`` are its two stages. Names are imported lazily, so ``igpg_hf.training.zoo_builder`` (the zoo
builder's worker processes) does not pay for transformers and accelerate.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "load_training_state": "checkpointing",
    "save_training_state": "checkpointing",
    "PipelineRecipe": "recipe",
    "RECIPE_PRESETS": "recipe",
    "train_pipeline": "pipeline",
    "PriorTrainingArgs": "args",
    "train_prior": "prior",
    "VQVAETrainingArgs": "args",
    "DecoderTrainingArgs": "args",
    "refine_vqvae_decoder": "vqvae",
    "canonical_order": "vqvae",
    "gumbel_temperature": "vqvae",
    "train_vqvae": "vqvae",
    "ZooConfig": "zoo_builder",
    "build_zoo": "zoo_builder",
}

__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:  # pragma: no cover
    from .args import DecoderTrainingArgs, PriorTrainingArgs, VQVAETrainingArgs  # noqa: F401
    from .checkpointing import load_training_state, save_training_state  # noqa: F401
    from .pipeline import train_pipeline  # noqa: F401
    from .prior import train_prior  # noqa: F401
    from .recipe import RECIPE_PRESETS, PipelineRecipe  # noqa: F401
    from .vqvae import canonical_order, gumbel_temperature, refine_vqvae_decoder, train_vqvae  # noqa: F401
    from .zoo_builder import ZooConfig, build_zoo  # noqa: F401


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'igpg_hf.training' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
