"""igpg_hf: instruction-guided neural-network weight generation (IGPG) on the Hugging Face stack.

    from igpg_hf import IGPGPipeline
    pipe = IGPGPipeline.from_pretrained("path/or/repo")
    out = pipe("Classify handwritten digits", architecture="tiny_cnn", num_samples=5, seed=0)

Names are imported lazily (transformers and diffusers take seconds to import), so the CLI starts fast. Importing
the package registers the IGPG configs and models with transformers' Auto classes, also lazily (`igpg_hf._auto`):
``AutoModelForCausalLM.from_pretrained(prior_dir)`` then returns an `IGPGPriorModel`.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from . import _auto

__version__ = "0.1.0"

_EXPORTS = {
    "IGPGPriorConfig": "configuration_igpg",
    "IGPGVQVAEConfig": "configuration_igpg",
    "IGPGConditions": "modeling_prior",
    "IGPGPriorModel": "modeling_prior",
    "IGPGVQVAEModel": "modeling_vqvae",
    "IGPGVQVAEOutput": "modeling_vqvae",
    "IGPGPipeline": "pipeline_igpg",
    "IGPGPipelineOutput": "pipeline_igpg",
    "LabelAlignment": "label_alignment",
    "align_labels": "label_alignment",
    "SampledTokens": "sampling",
    "SamplingConfig": "sampling",
    "sample_weight_tokens": "sampling",
    "WeightLayout": "weights",
    "WeightCorpus": "corpus",
    "CorpusWriter": "corpus",
    "CheckpointMetadata": "corpus",
    "ingest_folder": "corpus",
    "ingest_state_dicts": "corpus",
    "ArchSpec": "zoo",
    "architecture_for_task": "zoo",
    "get_architecture": "zoo",
    "get_task": "zoo",
    "list_architectures": "zoo",
    "list_tasks": "zoo",
}

__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:  # pragma: no cover
    from .configuration_igpg import IGPGPriorConfig, IGPGVQVAEConfig  # noqa: F401
    from .corpus import CheckpointMetadata, CorpusWriter, WeightCorpus, ingest_folder, ingest_state_dicts  # noqa: F401
    from .label_alignment import LabelAlignment, align_labels  # noqa: F401
    from .modeling_prior import IGPGConditions, IGPGPriorModel  # noqa: F401
    from .modeling_vqvae import IGPGVQVAEModel, IGPGVQVAEOutput  # noqa: F401
    from .pipeline_igpg import IGPGPipeline, IGPGPipelineOutput  # noqa: F401
    from .sampling import SampledTokens, SamplingConfig, sample_weight_tokens  # noqa: F401
    from .weights import WeightLayout  # noqa: F401
    from .zoo import (  # noqa: F401
        ArchSpec,
        architecture_for_task,
        get_architecture,
        get_task,
        list_architectures,
        list_tasks,
    )


_auto.install()


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'igpg_hf' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
