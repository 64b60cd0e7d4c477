"""The benchmark's experiments, one module each, behind the small interface of `base.Experiment`.

The registry below is the only list of them: ``igpg-hf bench --parts a,b``, the benchmark's driver, its report
and ``results.json`` (one top-level key per experiment) all loop over it, in this order. To add an experiment,
write ``experiments/<name>.py`` (a config dataclass, a result dataclass, an `Experiment` subclass, and
``EXPERIMENT = ThatClass``; see `base`) and add one line here.
"""

from __future__ import annotations

import importlib

from .base import Experiment, ExperimentResult

__all__ = ["EXPERIMENTS", "Experiment", "ExperimentResult", "register", "get_experiment", "default_parts"]

EXPERIMENTS: dict[str, type[Experiment]] = {}


def register(experiment: type[Experiment]) -> type[Experiment]:
    """Add an experiment class to the registry (after the built-in ones); ValueError on a taken name."""
    if not experiment.name or experiment.name in EXPERIMENTS:
        raise ValueError(f"experiment name must be new and non-empty, got {experiment.name!r}")
    EXPERIMENTS[experiment.name] = experiment
    return experiment


def get_experiment(name: str) -> type[Experiment]:
    """The registered experiment called ``name``; ValueError listing the known ones."""
    if name not in EXPERIMENTS:
        raise ValueError(f"unknown experiment {name!r}; known: {', '.join(EXPERIMENTS)}")
    return EXPERIMENTS[name]


def default_parts() -> list[str]:
    """The experiments a run without ``parts`` runs (those with ``default = True``), in registry order."""
    return [name for name, exp in EXPERIMENTS.items() if exp.default]


def _module(name: str) -> None:
    register(importlib.import_module(f".{name}", __name__).EXPERIMENT)


# the registry: one line per experiment, in report order
_module("seen")
_module("unseen")
_module("cross_arch")
_module("fidelity")
_module("novelty")
_module("speed")
_module("quantizers")
_module("label_alignment")
_module("instructions")
_module("lora")
