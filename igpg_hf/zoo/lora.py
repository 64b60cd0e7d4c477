"""LoRA adapters of one base network, trained with peft: the members of a ``"lora"`` zoo, and fine-tuning curves.

`LoraSettings` is the adapter grid of a zoo (ranks, alpha per rank, target modules, modules trained in full);
`train_lora` trains one adapter on a task from peft's default initialization (A random, B zero) with the loop of
`train_model`, and returns the adapter's state dict as peft saves it (``get_peft_model_state_dict``, entries in
name order) at each kept epoch; `finetune_lora` continues an adapter (or peft's default init) for a few steps
and records test accuracy, for held-out tasks.
"""

from __future__ import annotations

import copy
import logging
import math
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .architectures import ArchSpec
from .tasks import TaskData, TaskSpec, get_task, load_task_data
from .training import SGD_MOMENTUM, HyperParams, KeptEpoch, _check_keep, evaluate

logger = logging.getLogger(__name__)

__all__ = [
    "LoraSettings",
    "lora_grid",
    "train_lora",
    "finetune_lora",
    "peft_model",
    "adapter_state_dict",
    "check_task_fits",
]


@dataclass(frozen=True)
class LoraSettings:
    """One adapter configuration: rank ``r``, ``lora_alpha`` (None: ``alpha_ratio * r``), the modules that get
    LoRA factors, and the modules trained in full (``modules_to_save``: the classifier head, whose classes
    differ between tasks)."""

    r: int = 4
    lora_alpha: float | None = None
    alpha_ratio: float = 2.0
    target_modules: tuple[str, ...] = ("features.conv2", "head.fc1")
    modules_to_save: tuple[str, ...] = ("head.fc2",)
    lora_dropout: float = 0.0

    def __post_init__(self):
        object.__setattr__(self, "target_modules", tuple(self.target_modules))
        object.__setattr__(self, "modules_to_save", tuple(self.modules_to_save))
        if not isinstance(self.r, int) or self.r < 1:
            raise ValueError(f"LoRA rank r must be a positive integer, got {self.r!r}")
        if not self.target_modules:
            raise ValueError("target_modules must name at least one module")
        if not 0 <= self.lora_dropout < 1:
            raise ValueError(f"lora_dropout must lie in [0, 1), got {self.lora_dropout!r}")

    @property
    def alpha(self) -> float:
        a = self.lora_alpha if self.lora_alpha is not None else self.alpha_ratio * self.r
        return int(a) if float(a).is_integer() else a

    def to_dict(self) -> dict[str, Any]:
        return {
            **asdict(self),
            "target_modules": list(self.target_modules),
            "modules_to_save": list(self.modules_to_save),
        }

    def lora_config(self, base_model_name_or_path: str | None = None):
        """The peft ``LoraConfig``."""
        from peft import LoraConfig

        return LoraConfig(
            r=self.r,
            lora_alpha=self.alpha,
            target_modules=list(self.target_modules),
            modules_to_save=list(self.modules_to_save) or None,
            lora_dropout=self.lora_dropout,
            base_model_name_or_path=base_model_name_or_path,
        )


GRID_FIELDS = ("ranks", "alpha_ratio", "target_modules", "modules_to_save", "lora_dropout")


def lora_grid(grid: dict[str, Any] | None) -> list[LoraSettings]:
    """The adapter settings of a zoo's ``lora`` grid: one `LoraSettings` per rank in ``grid["ranks"]`` (default
    [2, 4]) with the other fields (alpha_ratio, target_modules, modules_to_save, lora_dropout) shared."""
    g = dict(grid or {})
    unknown = set(g) - set(GRID_FIELDS)
    if unknown:
        raise ValueError(f"unknown LoRA grid field(s) {sorted(unknown)}; allowed: {GRID_FIELDS}")
    ranks = list(g.pop("ranks", [2, 4]))
    if not ranks or len(set(ranks)) != len(ranks):
        raise ValueError(f"lora ranks must be distinct positive integers, got {ranks!r}")
    return [LoraSettings(r=r, **g) for r in ranks]


def peft_model(
    base: nn.Module, settings_or_config: Any, state_dict: dict | None = None, trainable: bool = True
):
    """A peft model of a copy of ``base``: fresh adapter (peft's init, from torch's global RNG) or ``state_dict``."""
    from peft import PeftConfig, get_peft_model, set_peft_model_state_dict

    cfg = settings_or_config
    if isinstance(cfg, LoraSettings):
        cfg = cfg.lora_config()
    elif isinstance(cfg, dict):
        cfg = PeftConfig.from_peft_type(**{**cfg, "inference_mode": False})
    cfg = copy.deepcopy(cfg)
    cfg.inference_mode = False
    cfg.base_model_name_or_path = None  # peft warns when it renames it for a plain nn.Module
    model = get_peft_model(copy.deepcopy(base), cfg)
    if state_dict is not None:
        result = set_peft_model_state_dict(model, state_dict)
        if getattr(result, "unexpected_keys", None):
            raise ValueError(f"adapter entries {result.unexpected_keys[:5]} do not fit the base model")
    if not trainable:
        model.requires_grad_(False)
    return model


def adapter_state_dict(model) -> dict[str, torch.Tensor]:
    """The adapter's entries as peft saves them, in name order (the order of a safetensors file)."""
    from peft import get_peft_model_state_dict

    sd = get_peft_model_state_dict(model)
    return {k: sd[k].detach().cpu().clone() for k in sorted(sd)}


def check_task_fits(base_spec: ArchSpec, task: TaskSpec | str) -> None:
    t = get_task(task)
    if tuple(t.input_shape) != tuple(base_spec.input_shape()):
        raise ValueError(
            f"task {t.name!r} has input shape {t.input_shape}, the base model takes {base_spec.input_shape()}"
        )
    if t.num_classes > base_spec.params.get("num_classes", t.num_classes):
        raise ValueError(
            f"task {t.name!r} has {t.num_classes} classes, more than the base model's "
            f"{base_spec.params['num_classes']} outputs"
        )


def _optimizer(params, hp: HyperParams) -> torch.optim.Optimizer:
    if hp.optimizer == "adam":
        return torch.optim.Adam(params, lr=hp.lr, weight_decay=hp.weight_decay)
    return torch.optim.SGD(params, lr=hp.lr, momentum=SGD_MOMENTUM, weight_decay=hp.weight_decay)


def train_lora(
    base_spec: ArchSpec,
    base_state: dict[str, torch.Tensor],
    settings: LoraSettings,
    task: str | TaskSpec,
    hp: HyperParams,
    keep_epochs: list[int],
    device: str | torch.device = "cpu",
) -> list[KeptEpoch]:
    """Train one LoRA adapter of the base (``base_spec`` with ``base_state``) on ``task``.

    peft initializes the adapter from torch's RNG seeded with ``hp.init_seed`` (or ``hp.seed``); data order
    follows ``hp.seed``. Returns ``(epoch, adapter state dict, metrics)`` for each kept epoch (0 = peft's init,
    the base itself); stops early if the loss becomes NaN or infinite.
    """
    keep = _check_keep(keep_epochs, hp.epochs)
    check_task_fits(base_spec, task)
    data = load_task_data(task)
    base = base_spec.build()
    base.load_state_dict(base_state, strict=True)
    torch.manual_seed(hp.seed if hp.init_seed is None else hp.init_seed)
    model = peft_model(base, settings).to(device)
    x, y = data.x_train.to(device), data.y_train.to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = _optimizer(params, hp)
    order = torch.Generator().manual_seed(hp.seed)
    out: list[KeptEpoch] = []

    def keep_now(epoch: int) -> None:
        tr_acc, tr_loss = evaluate(model, x, y)
        te_acc, te_loss = evaluate(model, data.x_test.to(device), data.y_test.to(device))
        metrics = {"train_acc": tr_acc, "test_acc": te_acc, "train_loss": tr_loss, "test_loss": te_loss}
        out.append(KeptEpoch(epoch, adapter_state_dict(model), metrics))

    if 0 in keep:
        keep_now(0)
    model.train()
    for epoch in range(1, hp.epochs + 1):
        perm = torch.randperm(len(x), generator=order).to(device)
        for i in range(0, len(x), hp.batch_size):
            idx = perm[i : i + hp.batch_size]
            loss = F.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        if not math.isfinite(loss.item()):
            logger.warning(
                "LoRA training diverged (loss %s) at epoch %d with %s; stopping", loss.item(), epoch, hp
            )
            break
        if epoch in keep:
            keep_now(epoch)
    return out


def finetune_lora(
    base: nn.Module,
    peft_config: dict[str, Any] | LoraSettings,
    state_dict: dict[str, torch.Tensor] | None,
    task: str | TaskSpec,
    steps: list[int],
    lr: float = 1e-3,
    batch_size: int = 64,
    seed: int = 0,
    data: TaskData | None = None,
) -> dict[int, float]:
    """Fine-tune an adapter of ``base`` (``state_dict``; None: peft's default init seeded with ``seed``) with Adam;
    test accuracy in percent after each step count in ``steps`` (0 = the start)."""
    data = data or load_task_data(task)

    def accuracy(m, x, y) -> float:
        return 100.0 * evaluate(m, x, y)[0]

    torch.manual_seed(seed)
    model = peft_model(base, peft_config, state_dict)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
    g = torch.Generator().manual_seed(seed)
    out, step, n = {}, 0, len(data.x_train)
    todo = sorted(steps)
    if todo and todo[0] == 0:
        out[0] = accuracy(model, data.x_test, data.y_test)
    while todo and step < todo[-1]:
        perm = torch.randperm(n, generator=g)
        for i in range(0, n, batch_size):
            model.train()
            idx = perm[i : i + batch_size]
            loss = F.cross_entropy(model(data.x_train[idx]), data.y_train[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            step += 1
            if step in todo:
                out[step] = accuracy(model, data.x_test, data.y_test)
            if step >= todo[-1]:
                break
    return out
