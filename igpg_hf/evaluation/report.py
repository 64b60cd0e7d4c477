"""The benchmark's markdown report and plots, written from ``results.json`` alone (every figure from the run).

Each experiment renders its own section, headline lines and plot (`igpg_hf.evaluation.experiments`); this module
puts them in order: reproduce command, headline, where the generator loses, sections, stage timings.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..files import atomic_path, atomic_write_text
from .experiments import EXPERIMENTS, ExperimentResult
from .experiments.base import fmt
from .experiments.finetune_tables import loss_lines

__all__ = ["write_report", "plot_all", "save_figure"]


def _typed(results: dict[str, Any]) -> dict[str, tuple[Any, ExperimentResult]]:
    """(experiment, typed result) for every registered experiment present in ``results``, in registry order."""
    return {
        name: (exp(), exp.Result.from_dict(results[name]))
        for name, exp in EXPERIMENTS.items()
        if name in results
    }


def _headline(parts: dict[str, tuple[Any, ExperimentResult]]) -> list[str]:
    """The targets, met or not, and where the generator loses to a baseline."""
    lines = ["## Headline", ""]
    for exp, r in parts.values():
        lines += exp.headline(r)
    losses: dict[str, list[dict]] = {}
    for exp, r in parts.values():
        for generator, cells in exp.losses(r).items():
            losses.setdefault(generator, []).extend(cells)
    if "generated" in losses:
        lines += ["", "### Where the generator loses to a baseline", ""]
        lines += loss_lines(losses["generated"])
        if "generated_aligned" in losses:
            lines += [
                "",
                "Label-aligned generated nets on held-out tasks, against every baseline (aligned ones included):",
                "",
            ]
            lines += loss_lines(losses["generated_aligned"], generator="generated_aligned")
    return lines + [""]


def write_report(results: dict[str, Any], path: str | os.PathLike) -> Path:
    """Render ``report.md``: reproduce command, headline checks, one section per experiment run, stage timings."""
    meta, t = results["meta"], results["timings"]
    extra = f" --pipeline {meta['pipeline']} --corpus {meta['corpus']}" if meta.get("pipeline") else ""
    lines = [
        f"# IGPG benchmark (preset `{meta['preset']}`)",
        "",
        "Reproduce:",
        "",
        "```bash",
        meta.get("reproduce", f"igpg-hf bench --preset {meta['preset']} --out DIR") + extra,
        "```",
        "",
        f"This run: {fmt(t['total_seconds'] / 60)} min in all on {meta['cpu_count']} CPU cores (torch threads "
        f"{meta['torch_threads']}, load average at the end {', '.join(fmt(x, 2) for x in meta['load_average_at_end'])}; "
        "zoos, pipelines and parts reused from an earlier run in the same folder count about 0 s here). Every number "
        "below comes from this run's `results.json`.",
        "",
    ]
    parts = _typed(results)
    lines += _headline(parts)
    for exp, r in parts.values():
        lines += exp.report(r)
    lines += ["## Stage timings (seconds)", "", "| stage | seconds |", "|---|---|"]
    lines += [f"| {k.removesuffix('_seconds')} | {fmt(v)} |" for k, v in t.items()]
    if results.get("zoo_builds"):
        lines += [
            "",
            "Zoo builds (the invocation that trained most of each zoo; a resumed build trains only what is "
            "missing): "
            + "; ".join(
                f"{k}: {b['runs_trained']} runs in {fmt(float(b['seconds']))} s on {b.get('num_workers', '?')} workers"
                for k, b in results["zoo_builds"].items()
            )
            + ".",
        ]
    return atomic_write_text(path, "\n".join(lines) + "\n")


def save_figure(fig, path: Path) -> Path:
    """Lay out, save as PNG atomically and close a matplotlib figure."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return Path(path)


def plot_all(results: dict[str, Any], out_dir: str | os.PathLike) -> list[Path]:
    """Each experiment's figure (those of the experiments in ``results``) in ``out_dir``."""
    import matplotlib

    matplotlib.use("Agg")
    paths = []
    for exp, r in _typed(results).values():
        path = exp.plot(r, Path(out_dir))
        if path is not None:
            paths.append(path)
    return paths
