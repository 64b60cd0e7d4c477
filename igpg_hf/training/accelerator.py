"""The one place the trainers build their `accelerate.Accelerator`, so that ``accelerate launch`` distributes on CPU.

``accelerate launch --multi_gpu --num_processes N`` starts N processes through torchrun on any machine. A plain
``Accelerator()`` in them uses the CPU only when it is told to: on a machine without a GPU every process then
runs as a separate single-process job (``DistributedType.NO``: N duplicate trainings writing into one folder).
With ``cpu=True`` the same processes form one ``MULTI_CPU`` group (gloo): each trains on its share of the
batches and the gradients are averaged, as ``MULTI_GPU`` does on GPUs. (``accelerate launch --cpu`` starts
several processes only through MPI, with ``--mpirun_hostfile``.)

``batch_size`` and ``steps`` of the trainers are per process: N processes take N times the samples per step.
The learning-rate schedule is counted in optimizer steps, so the scheduler steps once per optimizer step
(accelerate's default steps it N times, which ran the one-cycle schedule N times too fast and, past its end,
crashed it).
"""

from __future__ import annotations

import torch
from accelerate import Accelerator

__all__ = ["make_accelerator"]


def _has_accelerator_device() -> bool:
    probe = getattr(torch, "accelerator", None)  # torch >= 2.6 covers CUDA, XPU, MPS, ...
    if probe is not None and hasattr(probe, "is_available"):
        return bool(probe.is_available())
    return torch.cuda.is_available()


def make_accelerator(**kwargs) -> Accelerator:
    """An `Accelerator` for this process: on the CPU when the machine has no accelerator device (so that
    processes started by ``accelerate launch`` / torchrun form one distributed CPU job), else accelerate's choice.

    ``kwargs`` go to `Accelerator` (explicit values win).
    """
    kwargs.setdefault("cpu", not _has_accelerator_device())
    kwargs.setdefault("step_scheduler_with_optimizer", False)
    return Accelerator(**kwargs)
