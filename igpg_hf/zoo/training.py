"""Training of zoo models: one model with a plain loop, or many same-architecture models at once with torch.func.

`train_model` is the reference (CPU, one thread per process in the zoo builder). `train_models_batched` stacks
the parameters of many models and trains them together with ``vmap(grad(...))`` and a hand-written Adam/SGD
over the stacked tensors; it pays off on a GPU (on a 2-core CPU it was slower than processes). Each model keeps
its own seed, initialization, data order, learning rate and weight decay in both paths, so a model trained
alone and the same model trained in a batch follow the same trajectory up to floating-point differences
(dropout masks are the exception: vmap draws its own).
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from .architectures import INITIALIZATIONS, ArchSpec, initialize_weights
from .tasks import TaskData, TaskSpec, load_task_data

logger = logging.getLogger(__name__)

__all__ = [
    "HyperParams",
    "KeptEpoch",
    "build_model",
    "evaluate",
    "train_model",
    "train_models_batched",
    "OPTIMIZERS",
]

OPTIMIZERS = ("adam", "sgd")
SGD_MOMENTUM = 0.9


class KeptEpoch(NamedTuple):
    """The weights and metrics of one kept epoch of a training run (a corpus row is `igpg_hf.corpus.Checkpoint`).

    Metrics: ``train_acc`` / ``test_acc`` as fractions in [0, 1] (the corpus's unit), ``train_loss``,
    ``test_loss``.
    """

    epoch: int
    state_dict: dict[str, torch.Tensor]
    metrics: dict[str, float]


@dataclass(frozen=True)
class HyperParams:
    """Training hyperparameters of one run (JSON-able via ``dataclasses.asdict``)."""

    seed: int = 0
    lr: float = 1e-3
    optimizer: str = "adam"
    weight_decay: float = 0.0
    init: str = "default"
    epochs: int = 15
    batch_size: int = 64
    init_seed: int | None = None  # seeds the initialization only; None: `seed` (shared-init zoos set it)

    def __post_init__(self):
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        if self.init not in INITIALIZATIONS:
            raise ValueError(f"init must be one of {INITIALIZATIONS}, got {self.init!r}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f"lr must be a positive number, got {self.lr!r}")
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay!r}")
        if self.epochs < 0 or self.batch_size < 1:
            raise ValueError(
                f"epochs must be >= 0 and batch_size >= 1, got {self.epochs!r}, {self.batch_size!r}"
            )

    def to_dict(self) -> dict[str, Any]:
        """The fields as a JSON-able dict."""
        return asdict(self)


def _task_data(task: str | TaskSpec | TaskData) -> TaskData:
    return task if isinstance(task, TaskData) else load_task_data(task)


def _check_keep(keep_epochs: list[int], epochs: int) -> list[int]:
    bad = [e for e in keep_epochs if not 0 <= e <= epochs]
    if bad or not keep_epochs:
        raise ValueError(f"keep_epochs must be a non-empty list within 0..{epochs}, got {keep_epochs!r}")
    return sorted(set(keep_epochs))


def build_model(spec: ArchSpec, hp: HyperParams) -> nn.Module:
    """The module of `spec`, initialized reproducibly from ``hp.init_seed`` (or ``hp.seed``) and ``hp.init``."""
    seed = hp.seed if hp.init_seed is None else hp.init_seed
    torch.manual_seed(seed)
    module = spec.build()
    return initialize_weights(module, hp.init, torch.Generator().manual_seed(seed))


def _load_init(module: nn.Module, init_state: dict[str, torch.Tensor]) -> None:
    """Copy every entry whose name and shape match (a base model's head with other classes stays fresh)."""
    own = module.state_dict()
    match = {k: v for k, v in init_state.items() if k in own and own[k].shape == v.shape}
    if not match:
        raise ValueError("init_state shares no entry (name and shape) with the architecture")
    module.load_state_dict(match, strict=False)


@torch.no_grad()
def evaluate(
    module: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 1000
) -> tuple[float, float]:
    """Accuracy and mean cross-entropy of `module` on (x, y), in eval mode."""
    was_training = module.training
    module.eval()
    correct, loss = 0, 0.0
    for i in range(0, len(x), batch_size):
        out = module(x[i : i + batch_size])
        loss += F.cross_entropy(out, y[i : i + batch_size], reduction="sum").item()
        correct += (out.argmax(1) == y[i : i + batch_size]).sum().item()
    module.train(was_training)
    return correct / len(x), loss / len(x)


def _metrics(module: nn.Module, data: TaskData) -> dict[str, float]:
    train_acc, train_loss = evaluate(module, data.x_train, data.y_train)
    test_acc, test_loss = evaluate(module, data.x_test, data.y_test)
    return {"train_acc": train_acc, "test_acc": test_acc, "train_loss": train_loss, "test_loss": test_loss}


def train_model(
    spec: ArchSpec,
    task: str | TaskSpec | TaskData,
    hp: HyperParams,
    keep_epochs: list[int],
    init_state: dict[str, torch.Tensor] | None = None,
    device: str | torch.device = "cpu",
) -> list[KeptEpoch]:
    """Train one model; return ``(epoch, state_dict, metrics)`` for each kept epoch (0 = before training).

    Stops early (returning the epochs kept so far) if the loss becomes NaN or infinite.
    """
    keep = _check_keep(keep_epochs, hp.epochs)
    data = _task_data(task)
    module = build_model(spec, hp)
    if init_state is not None:
        _load_init(module, init_state)
    module.to(device)
    x, y = data.x_train.to(device), data.y_train.to(device)
    eval_data = TaskData(x, y, data.x_test.to(device), data.y_test.to(device))
    if hp.optimizer == "adam":
        opt: torch.optim.Optimizer = torch.optim.Adam(
            module.parameters(), lr=hp.lr, weight_decay=hp.weight_decay
        )
    else:
        opt = torch.optim.SGD(
            module.parameters(), lr=hp.lr, momentum=SGD_MOMENTUM, weight_decay=hp.weight_decay
        )
    order = torch.Generator().manual_seed(hp.seed)
    out: list[KeptEpoch] = []

    def keep_now(epoch: int) -> None:
        sd = {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}
        out.append(KeptEpoch(epoch, sd, _metrics(module, eval_data)))

    if 0 in keep:
        keep_now(0)
    module.train()
    for epoch in range(1, hp.epochs + 1):
        perm = torch.randperm(len(x), generator=order).to(device)
        for i in range(0, len(x), hp.batch_size):
            idx = perm[i : i + hp.batch_size]
            loss = F.cross_entropy(module(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        if not math.isfinite(loss.item()):
            logger.warning(
                "training diverged (loss %s) at epoch %d with %s; stopping", loss.item(), epoch, hp
            )
            break
        if epoch in keep:
            keep_now(epoch)
    return out


def train_models_batched(
    spec: ArchSpec,
    task: str | TaskSpec | TaskData,
    hps: list[HyperParams],
    keep_epochs: list[int],
    device: str | torch.device = "cuda",
    init_state: dict[str, torch.Tensor] | None = None,
    eval_chunk: int = 2**16,
) -> list[list[KeptEpoch]]:
    """Train many models of one architecture together (vmap over stacked parameters); one list per model.

    All `hps` must share epochs and batch size; seeds, inits, optimizers, learning rates and weight decays may
    differ, and each model gets its own data order. vmap draws dropout masks itself, so only dropout-free models
    replay `train_model` exactly (up to floating point).
    Diverged models (non-finite parameters) are dropped from later checkpoints. `eval_chunk` bounds
    models x samples per evaluation forward pass (memory).
    """
    from torch.func import functional_call, grad, vmap

    if not hps:
        return []
    h0 = hps[0]
    for field in ("epochs", "batch_size"):
        values = sorted({str(getattr(h, field)) for h in hps})
        if len(values) > 1:
            raise ValueError(f"train_models_batched needs one {field} for all models, got {values}")
    keep = _check_keep(keep_epochs, h0.epochs)
    device = torch.device(device)
    modules = [build_model(spec, h) for h in hps]
    if init_state is not None:
        for m in modules:
            _load_init(m, init_state)
    if any(True for _ in modules[0].buffers()):
        raise ValueError(
            f"train_models_batched does not support architectures with buffers ({spec.family}); "
            "use train_model"
        )
    # stack on the CPU first: moving modules[0] alone to the GPU would mix devices in the stack (seen on an H200)
    names = [n for n, _ in modules[0].named_parameters()]
    params = {
        n: torch.stack([dict(m.named_parameters())[n].detach() for m in modules]).to(device) for n in names
    }
    base = modules[0].to(device)
    n_models = len(hps)

    def col(values: list[float], like: torch.Tensor) -> torch.Tensor:  # per-model scalar broadcast to `like`
        return torch.tensor(values, device=device, dtype=like.dtype).view(-1, *[1] * (like.ndim - 1))

    lrs = {n: col([h.lr for h in hps], p) for n, p in params.items()}
    wds = {n: col([h.weight_decay for h in hps], p) for n, p in params.items()}
    adam = {n: col([float(h.optimizer == "adam") for h in hps], p).bool() for n, p in params.items()}
    exp_avg, exp_avg_sq, momentum = ({n: torch.zeros_like(p) for n, p in params.items()} for _ in range(3))

    def loss_fn(p, xb, yb):
        return F.cross_entropy(functional_call(base, p, (xb,)), yb)

    grad_fn = vmap(grad(loss_fn), randomness="different")
    forward = vmap(lambda p, xb: functional_call(base, p, (xb,)), in_dims=(0, None))
    data = _task_data(task)
    x, y = data.x_train.to(device), data.y_train.to(device)
    x_test, y_test = data.x_test.to(device), data.y_test.to(device)
    orders = [torch.Generator().manual_seed(h.seed) for h in hps]
    alive = torch.ones(n_models, dtype=torch.bool)
    out: list[list[KeptEpoch]] = [[] for _ in hps]

    @torch.no_grad()
    def batched_eval(xs: torch.Tensor, ys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        base.eval()
        step = max(1, eval_chunk // n_models)
        correct = torch.zeros(n_models, device=device)
        loss = torch.zeros(n_models, device=device)
        for i in range(0, len(xs), step):
            logits = forward(params, xs[i : i + step])  # (M, B, C)
            yb = ys[i : i + step].expand(n_models, -1)
            loss += (
                F.cross_entropy(logits.flatten(0, 1), yb.flatten(), reduction="none")
                .view(n_models, -1)
                .sum(1)
            )
            correct += (logits.argmax(-1) == yb).sum(1)
        base.train()
        return (correct / len(xs)).cpu(), (loss / len(xs)).cpu()

    def keep_now(epoch: int) -> None:
        finite = torch.stack([torch.isfinite(p).flatten(1).all(1) for p in params.values()]).all(0).cpu()
        alive.mul_(finite)
        tr_acc, tr_loss = batched_eval(x, y)
        te_acc, te_loss = batched_eval(x_test, y_test)
        host = {n: params[n].cpu() for n in names}  # one device-to-host copy per tensor, not per model
        for i in torch.nonzero(alive).flatten().tolist():
            sd = {n: host[n][i].clone() for n in names}
            out[i].append(
                KeptEpoch(
                    epoch,
                    sd,
                    {
                        "train_acc": tr_acc[i].item(),
                        "test_acc": te_acc[i].item(),
                        "train_loss": tr_loss[i].item(),
                        "test_loss": te_loss[i].item(),
                    },
                )
            )

    if 0 in keep:
        keep_now(0)
    beta1, beta2, eps, step = 0.9, 0.999, 1e-8, 0
    base.train()
    for epoch in range(1, h0.epochs + 1):
        perms = torch.stack([torch.randperm(len(x), generator=g) for g in orders]).to(device)  # (M, N)
        for i in range(0, len(x), h0.batch_size):
            idx = perms[:, i : i + h0.batch_size]
            grads = grad_fn(params, x[idx], y[idx])
            step += 1
            with torch.no_grad():
                for n, p in params.items():  # torch.optim.Adam / SGD(momentum) with coupled L2 weight decay
                    g = grads[n] + wds[n] * p
                    exp_avg[n].mul_(beta1).add_(g, alpha=1 - beta1)
                    exp_avg_sq[n].mul_(beta2).addcmul_(g, g, value=1 - beta2)
                    denom = (exp_avg_sq[n] / (1 - beta2**step)).sqrt_().add_(eps)
                    momentum[n].mul_(SGD_MOMENTUM).add_(g)
                    p.sub_(lrs[n] * torch.where(adam[n], exp_avg[n] / (1 - beta1**step) / denom, momentum[n]))
        if epoch in keep:
            keep_now(epoch)
    return out
