"""What every experiment is: a config dataclass, ``run(context) -> result``, its report section and its plot.

An experiment is one paper table or figure, in one module of this package:

    @dataclass
    class MyConfig:                       # its settings; `from_preset(name)` for "smoke", "default", "gpu"
        zoo: str = "seen"
        @classmethod
        def from_preset(cls, name): ...

    @dataclass
    class MyResult(ExperimentResult):     # what it measured; serializes to results.json["my"]
        tasks: dict[str, float]
        def summary(self): return {"mean": ...}           # the headline figures, a flat dict

    class MyExperiment(Experiment):
        name, title, Config, Result = "my", "My experiment", MyConfig, MyResult
        def run(self, ctx): z = ctx.zoo(self.config.zoo); ...; return MyResult(...)
        def report(self, result): return ["## My experiment", "", "| task | ... |", ...]
        def plot(self, result, out_dir): ...; return out_dir / "my.png"

    EXPERIMENT = MyExperiment

and one line naming the module in ``experiments/__init__.py``. The benchmark's driver loops over the registry
and never changes when an experiment is added. Results are percent for accuracies (the corpus's fractions are
converted where checkpoints are read) and say so in field names only where a ratio could be mistaken for one.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:  # pragma: no cover
    from ..benchmark import BenchContext

__all__ = ["Experiment", "ExperimentResult", "fmt"]


def fmt(x: Any, nd: int = 1) -> str:
    """A figure for a report: ``nd`` decimals, "n/a" for None and NaN."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    return f"{x:.{nd}f}" if isinstance(x, float) else str(x)


@dataclass
class ExperimentResult:
    """Base of every experiment's result: a dataclass whose ``to_dict`` (with a top-level ``summary``) is its
    entry in ``results.json``, and which `from_dict` rebuilds from there (a cached result, a report)."""

    def summary(self) -> dict[str, Any]:
        """The headline figures as a flat dict (also ``results.json[name]["summary"]``)."""
        return {}

    def summary_lines(self) -> list[str]:
        """The headline figures for people (what ``igpg-hf bench`` prints)."""
        return [f"{k}: {fmt(v, 3)}" for k, v in self.summary().items()]

    def to_dict(self) -> dict[str, Any]:
        """JSON-able data: ``summary`` first, then every field (nested dicts and lists as they are)."""
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        return json.loads(json.dumps({"summary": self.summary(), **data}, default=str))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ExperimentResult:
        """Inverse of `to_dict` (``summary`` is recomputed, unknown keys are ignored)."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


class Experiment:
    """One paper table or figure: ``Config`` (a dataclass), ``run(ctx) -> Result``, its report section, its plot.

    Subclasses set ``name`` (its key in ``results.json`` and in ``igpg-hf bench --parts``), ``title``,
    ``Config`` and ``Result``, and implement `run`; `report`, `plot`, `headline` and `losses` are optional;
    ``default = False`` keeps an experiment out of the default run (``--parts`` still selects it).
    """

    name: ClassVar[str] = ""
    title: ClassVar[str] = ""
    default: ClassVar[bool] = (
        True  # run when no parts are named (False: only on request, e.g. costly studies)
    )
    Config: ClassVar[type] = dict
    Result: ClassVar[type[ExperimentResult]] = ExperimentResult

    def __init__(self, config: Any = None):
        self.config = config if config is not None else self.default_config("default")

    @classmethod
    def default_config(cls, preset: str) -> Any:
        """The config for a benchmark preset ("smoke", "default", "gpu"): ``Config.from_preset`` if it has one."""
        from_preset = getattr(cls.Config, "from_preset", None)
        return from_preset(preset) if from_preset is not None else cls.Config()

    def run(self, ctx: BenchContext) -> ExperimentResult:
        """Measure; zoos and pipelines come from ``ctx.zoo(name)``, finished pieces may go to ``ctx.cache``."""
        raise NotImplementedError

    def report(self, result: ExperimentResult) -> list[str]:
        """The markdown lines of this experiment's section in ``report.md``."""
        return []

    def plot(self, result: ExperimentResult, out_dir: Path) -> Path | None:
        """Write this experiment's figure into ``out_dir``; return its path (None: no figure)."""
        return None

    def headline(self, result: ExperimentResult) -> list[str]:
        """Markdown bullet lines for the report's headline (targets met or not)."""
        return []

    def losses(self, result: ExperimentResult) -> dict[str, list[dict]]:
        """Cells where a baseline beats a generator, by generator ("generated", "generated_aligned")."""
        return {}
