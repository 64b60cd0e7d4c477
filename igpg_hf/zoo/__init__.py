"""What nets and tasks are: task and architecture registries, and how one zoo member trains (`training.py`).

The zoo builder, which writes zoos into a corpus, is `igpg_hf.training.zoo_builder`.
"""

from .architectures import (
    ACTIVATIONS,
    FAMILIES,
    INITIALIZATIONS,
    ArchSpec,
    architecture_for_task,
    get_architecture,
    initialize_weights,
    list_architectures,
)
from .tasks import (
    HELD_OUT_TASKS,
    TaskData,
    TaskSpec,
    get_task,
    list_tasks,
    load_task_data,
    register_task,
    sample_support_set,
)

__all__ = [
    "ACTIVATIONS",
    "FAMILIES",
    "INITIALIZATIONS",
    "ArchSpec",
    "architecture_for_task",
    "get_architecture",
    "initialize_weights",
    "list_architectures",
    "HELD_OUT_TASKS",
    "TaskData",
    "TaskSpec",
    "get_task",
    "list_tasks",
    "load_task_data",
    "register_task",
    "sample_support_set",
]
