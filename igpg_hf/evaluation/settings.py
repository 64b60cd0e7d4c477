"""How evaluations (and ``igpg-hf generate``) sample from a pipeline: a plain dataclass, no torch import."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["GenerationSettings"]


@dataclass
class GenerationSettings:
    """How experiments sample from a pipeline: the plain row and the "new only" row (copies excluded).

    Plain sampling is nucleus (top-p 0.9) at temperature 1: measured on the demo zoo it gave working nets for every
    task, while T = 0.8 without top-p drew broken ones (README, Results). "New only" draws ``novel_candidates`` x
    ``num_samples`` sequences at a hotter setting, drops token-for-token copies of training checkpoints and keeps
    the most likely under the prior (``novel_candidates=0`` disables it).
    """

    num_samples: int = 10
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = 0.9
    seed: int = 0
    novel_candidates: int = 8
    novel_temperature: float = 1.5
    novel_top_k: int | None = 3
