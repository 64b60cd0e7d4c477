"""igpg_hf: instruction-guided neural-network weight generation (IGPG) on the Hugging Face stack.

    from igpg_hf import IGPGPipeline
    pipe = IGPGPipeline.from_pretrained("path/or/repo")
    out = pipe("Classify handwritten digits", architecture="tiny_cnn", num_samples=5, seed=0)
"""

from .configuration_igpg import IGPGPriorConfig, IGPGVQVAEConfig
from .modeling_prior import IGPGConditions, IGPGPriorModel
from .modeling_vqvae import IGPGVQVAEModel, IGPGVQVAEOutput
from .pipeline_igpg import IGPGPipeline, IGPGPipelineOutput
from .sampling import SamplingConfig, sample_weight_tokens
from .weights import WeightLayout
from .zoo import ArchSpec, architecture_for_task, get_architecture, get_task, list_architectures, list_tasks

__version__ = "0.1.0"

__all__ = [
    "IGPGPriorConfig", "IGPGVQVAEConfig", "IGPGConditions", "IGPGPriorModel", "IGPGVQVAEModel", "IGPGVQVAEOutput",
    "IGPGPipeline", "IGPGPipelineOutput", "SamplingConfig", "sample_weight_tokens", "WeightLayout", "ArchSpec",
    "architecture_for_task", "get_architecture", "get_task", "list_architectures", "list_tasks",
]
