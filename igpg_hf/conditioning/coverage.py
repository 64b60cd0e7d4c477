"""What a prior was trained on, and how close a call's conditions are to it (the out-of-distribution flag).

Training records, in the prior's config, every task it saw (canonical instruction, a sample of its training
wordings, the architectures it has checkpoints for) and the architecture descriptions; the prior keeps the
text-encoder embeddings of those wordings in a buffer. At a call, the instruction's embedding is compared with
them by cosine similarity: the best similarity per known task gives the nearest known tasks, and the best
overall is compared with a threshold. The threshold is calibrated when the prior is trained, on two sets that are
used for nothing else: held-out *calibration* wordings of the corpus's tasks (grammar pieces that neither
training nor evaluation wordings use, `igpg_hf.zoo.instructions`) against the calibration half of the committed
unrelated instructions. The other halves (evaluation wordings, evaluation unrelated instructions) measure the
flag rates in the ``instructions`` experiment.

Similarity is that of the raw text-encoder embeddings (what the pipeline computes anyway), not of anything the
prior learned, so the flag does not depend on how well the prior was trained.
"""

from __future__ import annotations

import difflib
import logging
import warnings
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

logger = logging.getLogger(__name__)

__all__ = [
    "ConditionReport",
    "KnownTask",
    "OutOfDistributionWarning",
    "calibrate_threshold",
    "check_conditions",
    "known_tasks",
    "similarity_to_known",
    "DEFAULT_OOD_THRESHOLD",
]

# used when a corpus has no calibration wordings (tasks the grammar does not describe): the value calibrated on
# the default zoo's wordings with all-MiniLM-L6-v2 (README, Results)
DEFAULT_OOD_THRESHOLD = 0.5


class OutOfDistributionWarning(UserWarning):
    """An instruction or architecture unlike anything the prior was trained on (weights are still generated)."""


@dataclass
class KnownTask:
    """A task the prior was trained on: its canonical instruction, some training wordings, its architectures."""

    name: str
    instruction: str
    wordings: list[str]
    architectures: list[str]
    num_checkpoints: int = 0
    num_training_wordings: int = 0


@dataclass
class ConditionReport:
    """How close one call's instruction and architecture are to what the prior was trained on.

    ``similarity``: cosine similarity (text-encoder embeddings, in [-1, 1]) between the instruction and the nearest
    training wording; ``nearest_tasks``: up to three known tasks as (name, similarity), best first;
    ``out_of_distribution``: ``similarity < threshold`` (None if the prior records no known wordings);
    ``architecture_known``: whether the prior has training checkpoints of exactly this architecture description
    (None if it records none), ``nearest_architecture`` the closest known description otherwise;
    ``warnings``: the warnings this call raised, as text.
    """

    instruction: str
    similarity: float | None
    nearest_tasks: list[tuple[str, float]]
    threshold: float | None
    out_of_distribution: bool | None
    architecture: str | None
    architecture_known: bool | None
    nearest_architecture: str | None = None
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def known_tasks(config: Any) -> dict[str, KnownTask]:
    """The tasks a prior config records (``config.known_tasks``), as `KnownTask` objects (empty if none)."""
    return {
        name: KnownTask(name=name, **d) for name, d in (getattr(config, "known_tasks", None) or {}).items()
    }


def similarity_to_known(prior: Any, text_embeds: torch.Tensor) -> tuple[torch.Tensor, list[str]] | None:
    """(B, E) instruction embeddings -> ((B, T) best cosine similarity to each known task, task names); None
    if the prior records no known wordings."""
    cfg = prior.config
    rows = getattr(cfg, "known_wording_tasks", None)
    buf = getattr(prior, "known_text_embeds", None)
    if not rows or buf is None:
        return None
    return task_similarity(text_embeds, buf, rows)


def task_similarity(
    queries: torch.Tensor, keys: torch.Tensor, key_tasks: list[str]
) -> tuple[torch.Tensor, list[str]]:
    """(B, E) query embeddings against (M, E) embeddings of known wordings, the wording i of task
    ``key_tasks[i]`` -> ((B, T) best cosine similarity per task, the T task names in sorted order)."""
    names = sorted(set(key_tasks))
    col = torch.tensor([names.index(t) for t in key_tasks], device=keys.device)
    e = torch.nn.functional.normalize(queries.to(keys.device, torch.float32), dim=-1)
    sims = e @ torch.nn.functional.normalize(keys.float(), dim=-1).T  # (B, M)
    best = torch.full((e.shape[0], len(names)), -2.0, device=keys.device)
    best = best.scatter_reduce(1, col.expand_as(sims), sims, reduce="amax")  # (B, T)
    return best.cpu(), names


def check_conditions(
    prior: Any,
    instruction: str,
    text_embed: torch.Tensor,
    architecture_text: str | None,
    warn: bool = True,
    stacklevel: int = 3,
) -> ConditionReport:
    """Compare one call's instruction embedding (E,) and architecture description (None: not checked) with what
    ``prior`` knows.

    Raises `OutOfDistributionWarning` (a warning, not an error) when the instruction is out of distribution or the
    architecture was never trained on, unless ``warn=False``; the report holds the same text either way.
    """
    cfg = prior.config
    threshold = getattr(cfg, "ood_threshold", None)
    sim = similarity_to_known(prior, text_embed.reshape(1, -1))
    nearest: list[tuple[str, float]] = []
    best = ood = None
    if sim is not None:
        scores, names = sim
        top = scores[0].topk(min(3, len(names)))
        nearest = [(names[i], round(float(v), 4)) for v, i in zip(top.values, top.indices, strict=True)]
        best = nearest[0][1]
        ood = bool(best < (threshold if threshold is not None else DEFAULT_OOD_THRESHOLD))
    archs = list(getattr(cfg, "known_architectures", None) or [])
    arch_known = (architecture_text in archs) if archs and architecture_text is not None else None
    nearest_arch = None
    if arch_known is False:
        close = difflib.get_close_matches(architecture_text, archs, n=1, cutoff=0.0)
        nearest_arch = close[0] if close else None
    report = ConditionReport(
        instruction, best, nearest, threshold, ood, architecture_text, arch_known, nearest_arch
    )
    if ood:
        report.warnings.append(
            f"instruction {instruction!r} is out of distribution: its similarity to the nearest training wording "
            f"is {best:.3f} < threshold {DEFAULT_OOD_THRESHOLD if threshold is None else threshold:.3f}"
            f" (nearest known tasks: {', '.join(f'{t} {s:.2f}' for t, s in nearest)}); the weights are "
            "unlikely to do what it asks"
        )
    if arch_known is False:
        report.warnings.append(
            f"architecture {architecture_text!r} was never trained on (nearest known: {nearest_arch!r}); "
            "generated weights for it are untested"
        )
    if warn:
        for w in report.warnings:
            warnings.warn(w, OutOfDistributionWarning, stacklevel=stacklevel)  # point at the user's call
    return report


def calibrate_threshold(in_scores: list[float], out_scores: list[float]) -> tuple[float, dict[str, Any]]:
    """The similarity threshold separating known-task wordings (``in_scores``) from unrelated text (``out_scores``).

    Picks, among midpoints between sorted scores, the threshold with the lowest balanced error (the share of
    in-distribution wordings below it plus the share of unrelated texts at or above it; the two sets differ in
    size), ties broken toward the middle; returns it and the calibration's rates. ValueError if either is empty.
    """
    if not in_scores or not out_scores:
        raise ValueError(
            f"calibration needs in-distribution and unrelated scores, got {len(in_scores)} and {len(out_scores)}"
        )
    xs = sorted(set(in_scores) | set(out_scores))
    cands = [(a + b) / 2 for a, b in zip(xs, xs[1:], strict=False)] or [xs[0]]

    def errors(t: float) -> float:
        return sum(s < t for s in in_scores) / len(in_scores) + sum(s >= t for s in out_scores) / len(
            out_scores
        )

    fewest = min(errors(t) for t in cands)
    best = [t for t in cands if errors(t) == fewest]
    t = best[len(best) // 2]
    stats = {
        "threshold": t,
        "heldout_flag_rate": sum(s < t for s in in_scores) / len(in_scores),
        "unrelated_flag_rate": sum(s < t for s in out_scores) / len(out_scores),
        "num_heldout": len(in_scores),
        "num_unrelated": len(out_scores),
    }
    return t, stats


def record_known_conditions(
    prior: Any,
    tasks: dict[str, KnownTask],
    embed: Any,
    calibration_wordings: list[str] | None = None,
    unrelated: list[str] | None = None,
) -> dict[str, Any]:
    """Store what ``prior`` was trained on in its config and buffer, and calibrate the out-of-distribution threshold.

    ``tasks``: the known tasks (their ``wordings`` are embedded into the ``known_text_embeds`` buffer, rows in task
    order); ``embed``: texts -> (N, E) text-encoder embeddings; ``calibration_wordings``: held-out wordings of the
    known tasks used for nothing else; ``unrelated``: the calibration half of the unrelated instructions. Without
    both, the threshold is `DEFAULT_OOD_THRESHOLD` and the calibration says so. Returns the calibration record.
    """
    cfg = prior.config
    cfg.known_tasks = {
        name: {k: v for k, v in asdict(t).items() if k != "name"} for name, t in sorted(tasks.items())
    }
    cfg.known_architectures = sorted({a for t in tasks.values() for a in t.architectures})
    texts = [w for d in cfg.known_tasks.values() for w in d["wordings"]]
    emb = embed(texts).detach().float().cpu() if texts else torch.zeros(0, cfg.text_embed_dim)
    if "known_text_embeds" in prior._buffers and prior.known_text_embeds.shape == emb.shape:
        prior.known_text_embeds.copy_(emb.to(prior.known_text_embeds.device))
    else:
        prior.register_buffer("known_text_embeds", emb.to(next(prior.parameters()).device))
    if calibration_wordings and unrelated and texts:
        in_s = similarity_to_known(prior, embed(list(calibration_wordings)))[0].max(1).values.tolist()
        out_s = similarity_to_known(prior, embed(list(unrelated)))[0].max(1).values.tolist()
        threshold, calib = calibrate_threshold(in_s, out_s)
        calib["method"] = (
            "max cosine similarity to the known wordings; threshold with the lowest balanced error between "
            "held-out calibration wordings of the known tasks and the calibration half of the unrelated instructions"
        )
    else:
        threshold = DEFAULT_OOD_THRESHOLD
        calib = {"threshold": threshold, "method": "default (no calibration wordings for these tasks)"}
    cfg.ood_threshold, cfg.ood_calibration = float(threshold), calib
    logger.info(
        "out-of-distribution threshold %.3f (%s)",
        threshold,
        ", ".join(f"{k} {v:.3f}" for k, v in calib.items() if isinstance(v, float) and k != "threshold"),
    )
    return calib


def known_conditions_markdown(config: Any, max_wordings: int = 3) -> str:
    """The known tasks, a few of their wordings and the known architectures as markdown (for the model card)."""
    tasks = known_tasks(config)
    if not tasks:
        return "This prior records no known tasks (trained before igpg_hf recorded them)."
    cal = getattr(config, "ood_calibration", None) or {}
    lines = [
        f"{len(tasks)} tasks, {len(config.known_architectures or [])} architectures. An instruction whose "
        "text-encoder embedding has cosine similarity below "
        f"**{config.ood_threshold:.3f}** to every known wording is flagged out of distribution "
        f"({cal.get('method', 'uncalibrated')}"
        + (
            f"; on calibration: {cal['heldout_flag_rate']:.1%} of {cal['num_heldout']} held-out wordings and "
            f"{cal['unrelated_flag_rate']:.1%} of {cal['num_unrelated']} unrelated instructions flagged"
            if "heldout_flag_rate" in cal
            else ""
        )
        + ").",
        "",
        "| task | canonical instruction | other wordings (sample) | wordings trained on | checkpoints | architectures |",
        "|---|---|---|---|---|---|",
    ]
    for t in tasks.values():
        sample = "; ".join(w.replace("|", "/") for w in t.wordings[1 : 1 + max_wordings])
        lines.append(
            f"| {t.name} | {t.instruction.replace('|', '/')} | {sample} | {t.num_training_wordings} | "
            f"{t.num_checkpoints} | {len(t.architectures)} |"
        )
    lines += ["", "Architectures:", ""] + [f"- `{a}`" for a in config.known_architectures or []]
    return "\n".join(lines)
