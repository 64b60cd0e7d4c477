"""The baselines a generated net must beat (Zeng et al. 2025): retrieval, noise, averaging, random init.

- `retrieve_by_embedding`: the zoo task whose instruction embedding is nearest to the query's;
- `select_best`: the state dict with the best accuracy on a small labelled sample (`labelled_subset`);
- `add_noise`: a checkpoint plus Gaussian noise, scaled per entry by that entry's std;
- `average_state_dicts`: the mean of checkpoints, BatchNorm statistics recomputed on training data;
- `transplant_depth` / `nearest_depth`: a trained ResNet moved to another depth (blocks cut from the end of a
  stage, or added as identity maps), the cross-architecture baseline.

`finetune_job` runs `finetune` on a picklable job, so fine-tuning curves can go to a process pool.
"""

from __future__ import annotations

import torch

from ..zoo.architectures import ArchSpec
from ..zoo.tasks import load_task_data
from ..zoo.transplant import transplant_depth
from .metrics import _load, accuracy, finetune, recalibrate_batchnorm

__all__ = [
    "random_init_state_dicts",
    "add_noise",
    "average_state_dicts",
    "retrieve_by_embedding",
    "select_best",
    "labelled_subset",
    "finetune_job",
    "train_job",
    "transplant_depth",
    "nearest_depth",
    "NOISE_SKIP",
]

# entries that are statistics, not parameters: noise would make running variances negative
NOISE_SKIP = ("running_mean", "running_var", "num_batches_tracked")


def random_init_state_dicts(spec: ArchSpec, n: int, seed: int = 0) -> list[dict[str, torch.Tensor]]:
    """``n`` freshly initialized state dicts (PyTorch default init, seeds ``seed .. seed + n - 1``)."""
    out = []
    for i in range(n):
        torch.manual_seed(seed + i)
        out.append(spec.build().state_dict())
    return out


def add_noise(state_dict: dict[str, torch.Tensor], scale: float, seed: int = 0) -> dict[str, torch.Tensor]:
    """Checkpoint + N(0, (scale * std of the entry)^2) on every float parameter; scale 0 returns an exact copy."""
    if scale < 0:
        raise ValueError(f"noise scale must be >= 0, got {scale!r}")
    g = torch.Generator().manual_seed(seed)
    out = {}
    for k, v in state_dict.items():
        if scale == 0 or not v.is_floating_point() or k.endswith(NOISE_SKIP) or v.numel() < 2:
            out[k] = v.clone()
            continue
        std = v.float().std().clamp_min(1e-8)
        out[k] = (v.float() + scale * std * torch.randn(v.shape, generator=g)).to(v.dtype)
    return out


def average_state_dicts(
    state_dicts: list[dict[str, torch.Tensor]], spec: ArchSpec | None = None, x: torch.Tensor | None = None
) -> dict[str, torch.Tensor]:
    """Mean of the float entries (others from the first); with ``spec`` and inputs ``x``, BatchNorm is recalibrated."""
    if not state_dicts:
        raise ValueError("average_state_dicts needs at least one state dict, got an empty list")
    first = state_dicts[0]
    avg = {
        k: torch.stack([sd[k].float() for sd in state_dicts]).mean(0).to(v.dtype)
        if v.is_floating_point()
        else v.clone()
        for k, v in first.items()
    }
    if spec is None or x is None:
        return avg
    module = recalibrate_batchnorm(_load(spec, avg), x)
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def retrieve_by_embedding(query: torch.Tensor, candidates: dict[str, torch.Tensor]) -> str:
    """The key of ``candidates`` (name -> (E,) embedding) with the highest cosine similarity to ``query`` (E,)."""
    if not candidates:
        raise ValueError("retrieve_by_embedding needs at least one candidate, got none")
    names = list(candidates)
    emb = torch.nn.functional.normalize(torch.stack([candidates[n].float().flatten() for n in names]), dim=-1)
    q = torch.nn.functional.normalize(query.float().flatten(), dim=0)
    return names[int((emb @ q).argmax())]


def labelled_subset(task, n: int = 500, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` random labelled training examples of a task (the budget of the best-on-a-sample baseline)."""
    data = load_task_data(task)
    idx = torch.randperm(len(data.x_train), generator=torch.Generator().manual_seed(seed))[:n]
    return data.x_train[idx], data.y_train[idx]


def select_best(
    spec: ArchSpec, state_dicts: list[dict[str, torch.Tensor]], x: torch.Tensor, y: torch.Tensor
) -> tuple[int, list[float]]:
    """(index of the most accurate state dict on (x, y), every accuracy in percent); non-finite weights score -1."""
    if not state_dicts:
        raise ValueError("select_best needs at least one state dict, got an empty list")
    accs = []
    for sd in state_dicts:
        finite = all(torch.isfinite(v).all() for v in sd.values() if v.is_floating_point())
        accs.append(accuracy(_load(spec, sd), x, y) if finite else -1.0)
    return max(range(len(accs)), key=accs.__getitem__), accs


def finetune_job(job: tuple) -> dict[int, float]:
    """``finetune`` on a picklable (spec json, state dict or None, task, steps, lr, seed); NaN curve if weights aren't finite."""
    spec_json, sd, task, steps, lr, seed = job
    spec = ArchSpec.from_json(spec_json)
    if sd is not None and not all(torch.isfinite(v).all() for v in sd.values() if v.is_floating_point()):
        return {s: float("nan") for s in steps}
    return finetune(spec, sd, task, steps=steps, lr=lr, seed=seed)


def train_job(job: tuple) -> list:
    """`train_model` on a picklable (spec json, task, hyperparameter dict, keep epochs): a trained reference."""
    from ..zoo.training import HyperParams, train_model

    spec_json, task, hp, keep = job
    return train_model(ArchSpec.from_json(spec_json), task, HyperParams(**hp), list(keep))


def nearest_depth(target: list[int], trained: list[list[int]]) -> list[int]:
    """The trained block configuration nearest to ``target`` (L1 over blocks per stage); ties go to the one that
    cuts fewest blocks (adding identity blocks keeps the function, cutting does not), then to the smallest."""
    if not trained:
        raise ValueError("nearest_depth needs at least one trained configuration, got none")

    def key(b):
        return (
            sum(abs(x - y) for x, y in zip(b, target, strict=True)),
            sum(max(x - y, 0) for x, y in zip(b, target, strict=True)),
            list(b),
        )

    return list(min(trained, key=key))
