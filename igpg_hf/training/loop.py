"""The one optimization loop both trainers share: AdamW + one-cycle, progress, logging, checkpoints, exact resume.

Data order is a pure function of (seed, epoch): step ``s`` of process ``r`` of ``P`` reads global batch
``s * P + r``, whose examples are a slice of a permutation seeded by (seed, epoch). A resumed run therefore
starts at the very batch the killed one would have read next, without replaying anything, and with the
model, optimizer, scheduler and RNG states restored from the checkpoint it ends bit-identical to a run that was
never interrupted. Datasets whose examples are themselves random (the prior's windows and conditions) get the
epoch too: `StepBatchSampler` yields draw keys ``epoch * n + i``, and `Draws` hands ``(i, epoch)`` to a
dataset's ``draw`` method.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import send_to_device
from torch.utils.data import DataLoader, Dataset, Sampler

from ..progress import progress_bar
from .checkpointing import load_training_state, save_training_state

logger = logging.getLogger(__name__)

__all__ = ["run_training", "StepBatchSampler", "Draws", "epoch_permutation"]

# step_fn(model, batch, step) -> (loss to back-propagate, record to log, short progress text)
StepFn = Callable[[torch.nn.Module, object, int], tuple[torch.Tensor, dict, str]]


def epoch_permutation(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The order (n,) of the examples in ``epoch``: a pure function of (seed, epoch)."""
    key = int.from_bytes(hashlib.sha256(f"{seed}|{epoch}".encode()).digest()[:8], "little") % 2**63
    return torch.randperm(n, generator=torch.Generator().manual_seed(key))


class StepBatchSampler(Sampler[list[int]]):
    """Endless batches of draw keys ``epoch * n + i`` from step ``start_step`` on, for one of ``world`` processes.

    Batches never cross an epoch; with ``drop_last`` the last partial batch of an epoch is left out.
    """

    def __init__(
        self,
        n: int,
        batch_size: int,
        seed: int,
        drop_last: bool,
        start_step: int = 0,
        rank: int = 0,
        world: int = 1,
    ):
        if n < 1 or batch_size < 1:
            raise ValueError(
                f"need at least one example and batch_size >= 1, got n={n}, batch_size={batch_size}"
            )
        self.n, self.bs, self.seed, self.start, self.rank, self.world = (
            n,
            batch_size,
            seed,
            start_step,
            rank,
            world,
        )
        self.per_epoch = max(1, n // batch_size if drop_last else math.ceil(n / batch_size))
        self._perm: tuple[int, torch.Tensor] | None = None

    def batch(self, global_index: int) -> list[int]:
        epoch, j = divmod(global_index, self.per_epoch)
        if self._perm is None or self._perm[0] != epoch:
            self._perm = (epoch, epoch_permutation(self.n, self.seed, epoch))
        idx = self._perm[1][j * self.bs : (j + 1) * self.bs]
        return [epoch * self.n + int(i) for i in idx]

    def __iter__(self) -> Iterator[list[int]]:
        step = self.start
        while True:
            yield self.batch(step * self.world + self.rank)
            step += 1


class Draws(Dataset):
    """Draw key ``epoch * n + i`` -> example ``i`` (``data.draw(i, epoch)`` if the dataset draws at random)."""

    def __init__(self, data: Dataset):
        self.data, self.n = data, len(data)

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, key: int):
        epoch, i = divmod(key, self.n)
        draw = getattr(self.data, "draw", None)
        return draw(i, epoch) if draw is not None else self.data[i]


def run_training(
    accelerator: Accelerator,
    model: torch.nn.Module,
    data: Dataset,
    step_fn: StepFn,
    output_dir: str | os.PathLike,
    *,
    steps: int,
    batch_size: int,
    seed: int,
    lr: float,
    weight_decay: float,
    log_every: int,
    checkpoint_every: int,
    name: str,
    collate_fn: Callable | None = None,
    clip_grad_norm: float | None = None,
    progress: bool = True,
    settings: dict | None = None,
) -> tuple[torch.nn.Module, list[dict]]:
    """Train ``steps`` optimizer steps on ``data`` (resuming from ``output_dir/checkpoint``); -> (model, history).

    ``settings`` (see `run_settings`) are stored with every checkpoint; resuming one written with other settings
    is a ValueError. A non-finite loss stops training with a ValueError instead of saving a broken model.
    """
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    model, opt, sched = accelerator.prepare(model, opt, sched)
    state = load_training_state(accelerator, Path(output_dir), settings)
    step = state["step"] if state else 0
    history = state.get("history", []) if state else []
    sampler = StepBatchSampler(
        len(data),
        batch_size,
        seed,
        drop_last=len(data) >= batch_size,
        start_step=step,
        rank=accelerator.process_index,
        world=accelerator.num_processes,
    )
    # its own generator: iterating a DataLoader draws a base seed, which from the global RNG would shift every
    # random number after a resume (the Gumbel noise of the VQ-VAE) against an uninterrupted run
    loader = DataLoader(
        Draws(data), batch_sampler=sampler, collate_fn=collate_fn, generator=torch.Generator()
    )
    extra = {"settings": settings} if settings is not None else {}
    model.train()
    with progress_bar(steps, name, enabled=progress and accelerator.is_main_process) as bar:
        bar.update(step)
        batches = iter(loader)
        while step < steps:
            batch = send_to_device(next(batches), accelerator.device)
            loss, record, postfix = step_fn(model, batch, step)
            if not torch.isfinite(loss.detach()).all():
                raise ValueError(
                    f"{name}: the loss is {loss.item()} at step {step + 1}; stopping instead of saving a model "
                    "trained into NaN (lower the learning rate, or check the data)"
                )
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
                save_training_state(accelerator, model, output_dir, step, {"history": history, **extra})
    return accelerator.unwrap_model(model).eval(), history
