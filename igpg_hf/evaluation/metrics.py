"""Accuracy of state dicts on a task, fine-tuning from given weights, and BatchNorm recalibration.

Accuracies are percent (the corpus stores fractions in [0, 1]; results, reports and the CLI use percent).
"""

from __future__ import annotations

import copy
import math
import statistics
from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from ..zoo.architectures import ArchSpec
from ..zoo.tasks import TaskData, load_task_data

__all__ = [
    "accuracy",
    "evaluate_state_dicts",
    "evaluate_recalibrated",
    "accuracies_raw_and_recalibrated",
    "finetune",
    "recalibrate_batchnorm",
    "predictions",
    "finite_mean",
    "finite_std",
]


def finite_mean(xs: Iterable[float | None]) -> float:
    """Mean of the values that are not None or NaN (a broken net scores NaN); NaN if none are left."""
    xs = [x for x in xs if x is not None and not math.isnan(x)]
    return statistics.fmean(xs) if xs else float("nan")


def finite_std(xs: Iterable[float]) -> float:
    """Population std of the non-NaN values; 0 for fewer than two."""
    xs = [x for x in xs if not math.isnan(x)]
    return statistics.pstdev(xs) if len(xs) > 1 else 0.0


@torch.no_grad()
def predictions(module: nn.Module, x: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
    """Predicted classes (N,) of a module in eval mode."""
    module.eval()
    return torch.cat([module(x[i : i + batch_size]).argmax(-1) for i in range(0, len(x), batch_size)])


def accuracy(module: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """Top-1 accuracy in percent."""
    return 100.0 * (predictions(module, x) == y).float().mean().item()


def _load(spec: ArchSpec, sd: dict[str, torch.Tensor]) -> nn.Module:
    m = spec.build()
    m.load_state_dict(sd, strict=True)
    return m


def evaluate_state_dicts(spec: ArchSpec, state_dicts: list[dict], task, split: str = "test") -> list[float]:
    """Test (or train) accuracy in percent of every state dict; non-finite weights score NaN."""
    data = load_task_data(task)
    x, y = (data.x_test, data.y_test) if split == "test" else (data.x_train, data.y_train)
    out = []
    for sd in state_dicts:
        if not all(torch.isfinite(v).all() for v in sd.values() if v.is_floating_point()):
            out.append(float("nan"))
            continue
        out.append(accuracy(_load(spec, sd), x, y))
    return out


def evaluate_recalibrated(spec: ArchSpec, state_dicts: list[dict], task) -> list[float]:
    """Test accuracy (%) after recomputing BatchNorm statistics on the task's training inputs; non-finite: NaN."""
    data, out = load_task_data(task), []
    for sd in state_dicts:
        finite = all(torch.isfinite(v).all() for v in sd.values() if v.is_floating_point())
        out.append(
            accuracy(recalibrate_batchnorm(_load(spec, sd), data.x_train), data.x_test, data.y_test)
            if finite
            else float("nan")
        )
    return out


def accuracies_raw_and_recalibrated(spec: ArchSpec, state_dicts: list[dict], task) -> dict:
    """``{"raw", "recalibrated"}`` test accuracies (%) of every state dict and their means (NaN ignored)."""
    raw, recal = evaluate_state_dicts(spec, state_dicts, task), evaluate_recalibrated(spec, state_dicts, task)
    return {
        "raw": raw,
        "recalibrated": recal,
        "raw_mean": finite_mean(raw),
        "recalibrated_mean": finite_mean(recal),
    }


@torch.no_grad()
def recalibrate_batchnorm(module: nn.Module, x: torch.Tensor, batch_size: int = 256) -> nn.Module:
    """Recompute BatchNorm running statistics on inputs x (needed after averaging or generating weights)."""
    bns = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return module
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative average over the pass
    module.train()
    for i in range(0, len(x), batch_size):
        module(x[i : i + batch_size])
    return module.eval()


def finetune(
    spec: ArchSpec,
    state_dict: dict | None,
    task,
    steps: list[int],
    lr: float = 1e-3,
    batch_size: int = 64,
    seed: int = 0,
    data: TaskData | None = None,
    recalibrate: bool = False,
) -> dict[int, float]:
    """Fine-tune from ``state_dict`` (None: random init) with Adam; test accuracy after each step count in ``steps``.

    ``recalibrate``: BatchNorm statistics are recomputed on the training inputs before the first step and before
    every measurement (on a copy, so training keeps its usual running averages), as for nets measured unchanged.
    """
    data = data or load_task_data(task)
    torch.manual_seed(seed)
    m = spec.build() if state_dict is None else _load(spec, copy.deepcopy(state_dict))

    def measure() -> float:
        if not recalibrate:
            return accuracy(m, data.x_test, data.y_test)
        return accuracy(recalibrate_batchnorm(copy.deepcopy(m), data.x_train), data.x_test, data.y_test)

    if recalibrate:
        momentum = {b: b.momentum for b in m.modules() if isinstance(b, nn.modules.batchnorm._BatchNorm)}
        recalibrate_batchnorm(m, data.x_train)
        for b, mom in momentum.items():
            b.momentum = mom
    opt = torch.optim.Adam(m.parameters(), lr=lr)
    g = torch.Generator().manual_seed(seed)
    out, step, n = {}, 0, len(data.x_train)
    todo = sorted(steps)
    if todo and todo[0] == 0:
        out[0] = measure()
    while step < todo[-1]:
        perm = torch.randperm(n, generator=g)
        for i in range(0, n, batch_size):
            m.train()
            idx = perm[i : i + batch_size]
            loss = F.cross_entropy(m(data.x_train[idx]), data.y_train[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            step += 1
            if step in todo:
                out[step] = measure()
            if step >= todo[-1]:
                break
    return out
