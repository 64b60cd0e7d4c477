"""The one optimization loop both trainers share: AdamW + one-cycle, progress, logging, checkpoints, resume."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path

import torch
from accelerate import Accelerator
from torch.utils.data import DataLoader

from ..progress import progress_bar
from .checkpointing import load_training_state, save_training_state

logger = logging.getLogger(__name__)

__all__ = ["run_training"]

# step_fn(model, batch, step) -> (loss to back-propagate, record to log, short progress text)
StepFn = Callable[[torch.nn.Module, object, int], tuple[torch.Tensor, dict, str]]


def run_training(
    accelerator: Accelerator,
    model: torch.nn.Module,
    loader: DataLoader,
    step_fn: StepFn,
    output_dir: str | os.PathLike,
    *,
    steps: int,
    lr: float,
    weight_decay: float,
    log_every: int,
    checkpoint_every: int,
    name: str,
    clip_grad_norm: float | None = None,
    progress: bool = True,
) -> tuple[torch.nn.Module, list[dict]]:
    """Train ``steps`` optimizer steps (resuming from ``output_dir/checkpoint``); -> (unwrapped model, history)."""
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    model, opt, loader, sched = accelerator.prepare(model, opt, loader, sched)
    state = load_training_state(accelerator, Path(output_dir))
    step = state["step"] if state else 0
    history = state.get("history", []) if state else []
    model.train()
    with progress_bar(steps, name, enabled=progress and accelerator.is_main_process) as bar:
        bar.update(step)
        while step < steps:
            for batch in loader:
                loss, record, postfix = step_fn(model, batch, step)
                accelerator.backward(loss)
                if clip_grad_norm is not None:
                    accelerator.clip_grad_norm_(model.parameters(), clip_grad_norm)
                opt.step()
                sched.step()
                opt.zero_grad(set_to_none=True)
                step += 1
                if step % log_every == 0 or step == steps:
                    history.append({"step": step, **record})
                    logger.info("%s %s", name, history[-1])
                bar.update(1, postfix=postfix)
                if step % checkpoint_every == 0 and step < steps:
                    save_training_state(accelerator, model, output_dir, step, {"history": history})
                if step >= steps:
                    break
    return accelerator.unwrap_model(model).eval(), history
