"""Novelty: are generated nets copies? Token copies, distance to the nearest training checkpoint, prediction
disagreement, and a checkpoint-plus-noise baseline traced at the same distances (Zeng et al. 2025)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ...zoo.tasks import load_task_data
from ..baselines import add_noise
from ..metrics import finite_mean
from .base import Experiment, ExperimentResult, fmt


@dataclass
class NoveltyConfig:
    """The seen zoo, the noise baseline's scales and sources, and the held-out tasks to include (None: those of
    the unseen experiment, so both look at the same samples)."""

    zoo: str = "seen"
    noise_curve_scales: list[float] = field(
        default_factory=lambda: [0, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1, 1.5]
    )
    noise_curve_checkpoints: int = 3
    held_out_zoos: dict[str, str] | None = None
    held_out_tasks: dict[str, list[str]] | None = None

    @classmethod
    def from_preset(cls, name: str) -> NoveltyConfig:
        from .unseen import UnseenConfig

        unseen = UnseenConfig.from_preset(name)  # the same held-out tasks as the unseen experiment's preset
        held_out = dict(held_out_zoos=unseen.zoos, held_out_tasks=unseen.tasks)
        if name == "smoke":
            return cls(noise_curve_scales=[0, 0.1, 0.5], noise_curve_checkpoints=1, **held_out)
        return cls(**held_out)


@dataclass
class NoveltyResult(ExperimentResult):
    """Per generated model (``models``) and summarized per group (seen, copies, non-copies, new-only, held-out)."""

    models: list[dict]
    noise_curves: dict[str, list[dict]]
    adjacent_epochs_novelty: dict[str, float]
    seen: dict[str, Any]
    seen_non_copies: dict[str, Any]
    seen_copies: dict[str, Any]
    seen_new_only: dict[str, Any] | None
    new_only_beat_noise_curve: bool | None
    held_out: dict[str, Any]
    non_copies_beat_noise_curve: bool | None
    noise_curve_scales: list[float] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        out = {
            "seen_copies": self.seen["copies"],
            "seen_models": self.seen["models"],
            "seen_mean_novelty": self.seen["mean_novelty"],
            "non_copies_beat_noise_curve": self.non_copies_beat_noise_curve,
            "held_out_copies": self.held_out["copies"],
            "held_out_models": self.held_out["models"],
        }
        if self.seen_new_only:
            out |= {
                "new_only_mean_novelty": self.seen_new_only["mean_novelty"],
                "new_only_mean_accuracy": self.seen_new_only["mean_accuracy"],
                "new_only_mean_margin_over_noise": self.seen_new_only["mean_margin_over_noise"],
                "new_only_beat_noise_curve": self.new_only_beat_noise_curve,
            }
        return out

    def summary_lines(self) -> list[str]:
        return [f"copies of training checkpoints: {self.seen['copies']}/{self.seen['models']} (seen tasks)"]

    def verdict(self) -> str:
        """Do the generated models that are not copies beat the noise baseline at their novelty?"""
        if self.non_copies_beat_noise_curve is None:
            return "no generated model on a seen task is new: every one is a token-for-token copy of a training checkpoint"
        return (
            "the non-copies **are** more accurate than the noise baseline at their novelty"
            if self.non_copies_beat_noise_curve
            else "the non-copies are **not** more accurate than the noise baseline at their novelty"
        )

    def verdict_new_only(self) -> str:
        """The same question for new-only sampling (copies excluded)."""
        s = self.seen_new_only
        return (
            f"{s['models']} models at mean novelty {fmt(s['mean_novelty'], 3)} and accuracy {fmt(s['mean_accuracy'])}, "
            f"{fmt(s['mean_margin_over_noise'])} points over the noise curve on average, "
            + ("**above** it" if self.new_only_beat_noise_curve else "**not above** it")
        )


def novelty_rows(z, task: str, sds: list[dict], token_ids: torch.Tensor | None, spec) -> list[dict]:
    """Per state dict: copy of a training token sequence?, nearest checkpoint, novelty, disagreement, accuracy."""
    from ..metrics import _load, predictions
    from ..novelty import count_copies, novelty, pairwise_scale

    layout = z.by_task[z.nearest_task(task)][0].layout
    pool = [c for c in z.checkpoints if c.layout == layout]
    vecs = torch.stack([c.vector() for c in pool])
    near = novelty(torch.stack([layout.vectorize(sd) for sd in sds]), vecs, 1.0)
    copies = (
        count_copies(token_ids, torch.stack([z.tokens[c.metadata.model_id] for c in pool]))
        if token_ids is not None
        else [False] * len(sds)
    )
    data, rows, scales = load_task_data(task), [], {}
    for sd, i, d, copy in zip(sds, near.nearest, near.distance, copies, strict=True):
        c = pool[i]
        t = c.metadata.task
        if t not in scales:
            scales[t] = pairwise_scale(torch.stack([x.vector() for x in z.by_task[t]]))
        finite = all(torch.isfinite(v).all() for v in sd.values() if v.is_floating_point())
        pred = predictions(_load(spec, sd), data.x_test) if finite else None
        ref = predictions(_load(spec, c.state_dict()), data.x_test)
        rows.append(
            {
                "task": task,
                "copy": copy,
                "nearest": c.metadata.model_id,
                "nearest_task": t,
                "novelty": d / scales[t],
                "distance": d,
                "disagreement": 100 * (pred != ref).float().mean().item() if finite else float("nan"),
                "accuracy": 100 * (pred == data.y_test).float().mean().item() if finite else float("nan"),
            }
        )
    return rows


def _group(rows: list[dict]) -> dict:
    return {
        "models": len(rows),
        "copies": sum(r["copy"] for r in rows),
        "mean_novelty": finite_mean([r["novelty"] for r in rows]),
        "mean_disagreement": finite_mean([r["disagreement"] for r in rows]),
        "mean_accuracy": finite_mean([r["accuracy"] for r in rows]),
        "mean_margin_over_noise": finite_mean([r.get("margin_over_noise", float("nan")) for r in rows]),
        "fraction_above_noise_curve": finite_mean(
            [float(r["margin_over_noise"] > 0) for r in rows if "margin_over_noise" in r]
        ),
    }


class Novelty(Experiment):
    name, title, Config, Result = (
        "novelty",
        "Novelty: are generated nets copies?",
        NoveltyConfig,
        NoveltyResult,
    )

    def _held_out(self, ctx) -> dict[str, tuple[str, list[str]]]:
        cfg = self.config
        if cfg.held_out_zoos is not None and cfg.held_out_tasks is not None:
            zoos, tasks = cfg.held_out_zoos, cfg.held_out_tasks
        else:
            from .unseen import UnseenConfig

            unseen = ctx.experiment_config("unseen", UnseenConfig)
            zoos, tasks = unseen.zoos, unseen.tasks
        return {kind: (zoos[kind], tasks[kind]) for kind in zoos}

    def run(self, ctx) -> NoveltyResult:
        import numpy as np

        from ..novelty import adjacent_epoch_novelty, pairwise_scale

        cfg, seen = self.config, ctx.zoo(self.config.zoo)
        models, curves, adjacent = [], {}, {}
        for task in sorted(seen.by_task):
            spec = seen.by_task[task][0].arch()
            gen = seen.generate(task, spec)
            models += [
                {**r, "zoo": "seen", "held_out": False, "new_only": False}
                for r in novelty_rows(seen, task, gen.state_dicts, gen.token_ids, spec)
            ]
            if seen.settings.novel_candidates:
                new = seen.generate_new(task, spec)
                models += [
                    {**r, "zoo": "seen", "held_out": False, "new_only": True}
                    for r in novelty_rows(seen, task, new.state_dicts, new.token_ids, spec)
                ]
            sources = seen.by_task[task][: cfg.noise_curve_checkpoints]
            points = []
            for scale in cfg.noise_curve_scales:
                sds = [add_noise(c.state_dict(), scale, seed=j) for j, c in enumerate(sources)]
                rows = novelty_rows(seen, task, sds, None, spec)
                points.append(
                    {
                        "scale": scale,
                        "novelty": finite_mean([r["novelty"] for r in rows]),
                        "accuracy": finite_mean([r["accuracy"] for r in rows]),
                        "disagreement": finite_mean([r["disagreement"] for r in rows]),
                    }
                )
            curves[task] = points
            # calibration: adjacent kept epochs of one run, in the same novelty units
            scale = pairwise_scale(torch.stack([c.vector() for c in seen.by_task[task]]))
            adjacent[task] = finite_mean(adjacent_epoch_novelty(seen.by_task[task], scale))
        for (
            m
        ) in models:  # the noise baseline's accuracy at the generated model's novelty (linear interpolation)
            pts = sorted(curves[m["task"]], key=lambda p: p["novelty"])
            m["noise_curve_accuracy"] = float(
                np.interp(m["novelty"], [p["novelty"] for p in pts], [p["accuracy"] for p in pts])
            )
            m["margin_over_noise"] = m["accuracy"] - m["noise_curve_accuracy"]
        for kind, (zoo_name, tasks) in self._held_out(ctx).items():
            z = ctx.zoo(zoo_name)
            for task in tasks:
                spec = z.by_task[z.nearest_task(task)][0].arch()
                gen = z.generate(task, spec)
                models += [
                    {**r, "zoo": kind, "held_out": True, "new_only": False}
                    for r in novelty_rows(z, task, gen.state_dicts, gen.token_ids, spec)
                ]
        seen_rows = [m for m in models if not m["held_out"] and not m["new_only"]]
        new, new_only = [m for m in seen_rows if not m["copy"]], [m for m in models if m["new_only"]]
        s_new, s_new_only = _group(new), (_group(new_only) if new_only else None)
        return NoveltyResult(
            models=models,
            noise_curves=curves,
            adjacent_epochs_novelty=adjacent,
            seen=_group(seen_rows),
            seen_non_copies=s_new,
            seen_copies=_group([m for m in seen_rows if m["copy"]]),
            seen_new_only=s_new_only,
            new_only_beat_noise_curve=(s_new_only["mean_margin_over_noise"] > 0) if new_only else None,
            held_out=_group([m for m in models if m["held_out"]]),
            non_copies_beat_noise_curve=(s_new["mean_margin_over_noise"] > 0) if new else None,
            noise_curve_scales=list(cfg.noise_curve_scales),
        )

    def report(self, r: NoveltyResult) -> list[str]:
        lines = [
            "## 5. Novelty: are generated nets copies?",
            "",
            "Copy: the sampled token sequence equals a training checkpoint's. Novelty: L2 distance to the nearest "
            "training checkpoint / median pairwise distance between the checkpoints of that checkpoint's task (adjacent "
            "epochs of one seed sit near 0.016 in PROTOTYPE.md, independent seeds near 1). Disagreement: % of test inputs "
            "where the prediction differs from that nearest checkpoint's. The noise baseline (a checkpoint + Gaussian "
            f"noise of σ × each entry's std, σ in {r.noise_curve_scales}) traces accuracy against novelty; a "
            "generated model's margin is its accuracy minus the curve's at its novelty.",
            "",
            "| models | n | copies | mean novelty | disagreement (%) | accuracy | margin over noise curve | above the curve |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for key, label in (
            ("seen", "seen tasks, all"),
            ("seen_copies", "seen, copies"),
            ("seen_non_copies", "seen, not copies"),
            ("seen_new_only", "seen, new-only sampling (copies excluded)"),
            ("held_out", "held-out tasks"),
        ):
            s = getattr(r, key)
            if not s:
                continue
            lines.append(
                f"| {label} | {s['models']} | {s['copies']} | {fmt(s['mean_novelty'], 3)} | "
                f"{fmt(s['mean_disagreement'])} | {fmt(s['mean_accuracy'])} | {fmt(s['mean_margin_over_noise'])} | "
                f"{fmt(s['fraction_above_noise_curve'], 2)} |"
            )
        first = next(iter(r.noise_curves.values()))
        lines += [
            "",
            "Noise baseline (mean over its source checkpoints): scale → novelty / accuracy",
            "",
            "| task | " + " | ".join(f"σ={p['scale']}" for p in first) + " |",
            "|---|" + "---|" * len(first),
        ]
        for task, pts in r.noise_curves.items():
            lines.append(
                f"| {task} | "
                + " | ".join(f"{fmt(p['novelty'], 3)} / {fmt(p['accuracy'])}" for p in pts)
                + " |"
            )
        if r.adjacent_epochs_novelty:
            lines += [
                "",
                "For scale: adjacent kept epochs of one training run sit at novelty "
                + ", ".join(f"{fmt(v, 3)} ({t})" for t, v in r.adjacent_epochs_novelty.items())
                + ".",
            ]
        lines += ["", f"Verdict: {r.verdict()}.", ""]
        if r.seen_new_only:
            lines += [
                "New-only sampling draws several candidates per sample at a hotter setting, drops token-for-token "
                "copies of training checkpoints and keeps the ones the prior finds most likely (no labels used): "
                + r.verdict_new_only()
                + ".",
                "",
            ]
        return lines + ["![novelty](novelty.png)", ""]

    def plot(self, r: NoveltyResult, out_dir: Path) -> Path:
        """Accuracy vs novelty: the noise baseline's curve and the generated models per seen task."""
        import matplotlib.pyplot as plt

        from ..report import save_figure

        tasks = list(r.noise_curves)
        fig, axes = plt.subplots(1, len(tasks), figsize=(3.4 * len(tasks) + 1, 3.4), squeeze=False)
        for ax, task in zip(axes[0], tasks, strict=True):
            pts = sorted(r.noise_curves[task], key=lambda p: p["novelty"])
            ax.plot(
                [p["novelty"] for p in pts],
                [p["accuracy"] for p in pts],
                "-o",
                color="#937860",
                ms=3,
                label="checkpoint + noise",
            )
            for copy, mk in ((True, "x"), (False, "o")):
                ms = [
                    m
                    for m in r.models
                    if m["task"] == task and m["copy"] == copy and not m["held_out"] and not m.get("new_only")
                ]
                ax.scatter(
                    [m["novelty"] for m in ms],
                    [m["accuracy"] for m in ms],
                    marker=mk,
                    color="#c44e52",
                    s=18,
                    label="generated, copy" if copy else "generated, not a copy",
                    zorder=3,
                )
            ms = [m for m in r.models if m["task"] == task and m.get("new_only")]
            if ms:
                ax.scatter(
                    [m["novelty"] for m in ms],
                    [m["accuracy"] for m in ms],
                    marker="^",
                    color="#8172b2",
                    s=16,
                    label="generated, copies excluded",
                    zorder=3,
                )
            ax.set_xscale("symlog", linthresh=0.01)
            ax.set_title(task, fontsize=9)
            ax.set_xlabel("novelty (distance to nearest / typical)")
            ax.set_ylim(0, 100)
        axes[0][0].set_ylabel("test accuracy (%)")
        axes[0][-1].legend(fontsize=6)
        return save_figure(fig, out_dir / "novelty.png")

    def headline(self, r: NoveltyResult) -> list[str]:
        ns = r.seen_non_copies
        return [
            f"- **Novelty:** {r.seen['copies']} of {r.seen['models']} generated models on seen tasks are "
            f"token-for-token copies of training checkpoints; {r.verdict()} (non-copies: {ns['models']}, mean "
            f"novelty {fmt(ns['mean_novelty'], 3)}, mean margin over the noise curve {fmt(ns['mean_margin_over_noise'])} "
            "points)."
            + (f" New-only sampling (copies excluded): {r.verdict_new_only()}." if r.seen_new_only else "")
        ]


EXPERIMENT = Novelty
