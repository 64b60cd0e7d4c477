"""The paper's Table-1 layout, shared by the seen and unseen experiments: per task, every start (random init,
zoo, generated, retrieval, noise, average; label-aligned ones on held-out tasks) and its test accuracy after
0..N fine-tuning steps. Not an experiment itself; `seen` and `unseen` call `tables`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ...zoo.tasks import get_task, load_task_data
from ..baselines import (
    add_noise,
    average_state_dicts,
    finetune_job,
    labelled_subset,
    random_init_state_dicts,
    select_best,
)
from ..metrics import finite_mean, finite_std
from ..zoos import Zoo
from .base import fmt

__all__ = ["FinetuneSettings", "tables", "find_losses", "method_table", "loss_lines", "plot_curves", "LABELS"]

METHODS = (
    "random_init",
    "zoo",
    "generated",
    "generated_best_of_5",
    "nearest_by_embedding",
    "best_on_500",
    "noise",
    "average",
    "generated_aligned",
    "nearest_by_embedding_aligned",
    "best_on_500_aligned",
)
RETRIEVALS = ("nearest_by_embedding", "best_on_500")
ALIGNED_RETRIEVALS = ("nearest_by_embedding_aligned", "best_on_500_aligned")
GENERATORS = ("generated", "generated_best_of_5", "generated_aligned")
LABELS = {
    "random_init": "random init",
    "zoo": "zoo checkpoints (mean)",
    "generated": "generated (mean ± std)",
    "generated_best_of_5": "generated, best of 5 on 500 labelled",
    "nearest_by_embedding": "retrieval: nearest by instruction embedding",
    "best_on_500": "retrieval: best zoo checkpoint on 500 labelled",
    "noise": "checkpoint + Gaussian noise",
    "average": "average of checkpoints",
    "generated_aligned": "generated, label-aligned on 500 labelled (mean ± std)",
    "nearest_by_embedding_aligned": "retrieval by embedding, label-aligned",
    "best_on_500_aligned": "retrieval: best zoo checkpoint on 500 labelled after label alignment",
    "transplant": "transplant of the nearest trained depth",
}
COLORS = {
    "random_init": "#999999",
    "zoo": "#4c72b0",
    "generated": "#c44e52",
    "generated_best_of_5": "#dd8452",
    "nearest_by_embedding": "#55a868",
    "best_on_500": "#8172b3",
    "noise": "#937860",
    "average": "#da8bc3",
    "generated_aligned": "#8c0000",
    "nearest_by_embedding_aligned": "#2d6b3c",
    "best_on_500_aligned": "#4b3f80",
}


@dataclass
class FinetuneSettings:
    """How the tables fine-tune and pick: step counts, Adam lr, starts fine-tuned per method, the labelled budget."""

    epochs: list[int] | None = None  # None: [1, 5, N] with N the zoo's training epochs
    steps: list[int] = field(default_factory=lambda: [10, 25, 50])
    lr: float = 1e-3
    samples: int = 3  # generated samples, zoo checkpoints and random inits fine-tuned per task
    best_of: int = 5
    labelled_examples: int = 500
    noise_scale: float = 0.1
    # held-out tasks also get label-aligned rows: generated and retrieved nets with their output units reordered
    # on the same labelled examples as best_on_500 (`igpg_hf.label_alignment`)
    align_labels: bool = True

    @classmethod
    def from_preset(cls, name: str) -> FinetuneSettings:
        """ "smoke": two short schedules and two starts per method; "gpu": ten starts; "default": the defaults."""
        if name == "smoke":
            return cls(epochs=[1, 2], steps=[5, 10], samples=2, best_of=2)
        if name == "gpu":
            return cls(samples=10)
        return cls()


def _schedule(z: Zoo, task: str, cfg: FinetuneSettings) -> tuple[list[int], dict[str, int], int]:
    """All fine-tuning step counts, the epoch -> step map, and steps per epoch (batch 64, as `finetune`)."""
    per_epoch = math.ceil(len(load_task_data(task).x_train) / 64)
    epochs = cfg.epochs or sorted({1, 5, z.epochs})
    steps = sorted({0, *cfg.steps, *(e * per_epoch for e in epochs)})
    return steps, {str(e): e * per_epoch for e in [0, *epochs]}, per_epoch


def _task_starts(z: Zoo, task: str, cfg: FinetuneSettings) -> tuple[dict, dict, Any]:
    """Per method: (start state dicts, how many of them to fine-tune); per method: what was picked; the spec."""
    near = z.nearest_task(task)
    ref = z.by_task[near][0]  # the last-epoch checkpoint of the lowest seed
    spec, data = ref.arch(), load_task_data(task)
    x, y = labelled_subset(task, cfg.labelled_examples)
    gen = z.generate(task, spec).state_dicts
    best, _ = select_best(spec, gen[: cfg.best_of], x, y)
    pool = [c for c in z.checkpoints if c.layout == ref.layout]
    best_zoo, _ = select_best(spec, [c.state_dict() for c in pool], x, y)
    own = z.by_task.get(task, [])
    last = [
        c for c in (own or z.by_task[near]) if c.metadata.epoch == (own or z.by_task[near])[0].metadata.epoch
    ]
    k = cfg.samples
    starts = {
        "random_init": (random_init_state_dicts(spec, max(k, z.setup.num_random_init), seed=1000), k),
        "zoo": ([c.state_dict() for c in own], k),
        "generated": (gen, k),
        "generated_best_of_5": ([gen[best]], 1),
        "nearest_by_embedding": ([ref.state_dict()], 1),
        "best_on_500": ([pool[best_zoo].state_dict()], 1),
        "noise": ([add_noise(ref.state_dict(), cfg.noise_scale, seed=0)], 1),
        "average": ([average_state_dicts([c.state_dict() for c in last], spec, data.x_train)], 1),
    }
    picked = {
        "nearest_by_embedding": {"task": near, "model_id": ref.metadata.model_id},
        "best_on_500": {"task": pool[best_zoo].metadata.task, "model_id": pool[best_zoo].metadata.model_id},
        "generated_best_of_5": {"sample": best},
        "noise": {"model_id": ref.metadata.model_id, "scale": cfg.noise_scale},
        "average": {
            "task": last[0].metadata.task,
            "num_averaged": len(last),
            "bn_recalibrated": any("running_mean" in e.name for e in ref.layout.entries),
        },
    }
    if cfg.align_labels and not own:  # a held-out task: reorder output units on the 500 labelled examples
        from ...label_alignment import align_labels

        scratch = spec.build()
        align = lambda sd: align_labels(scratch, sd, x, y)  # noqa: E731
        gen_al = [align(sd) for sd in gen]
        near_al = align(ref.state_dict())
        pool_al = [align(c.state_dict()) for c in pool]
        # alignment already scored every checkpoint on (x, y) after reordering: pick the best from those records
        best_al = max(range(len(pool_al)), key=lambda i: pool_al[i][1].accuracy_after)
        starts |= {
            "generated_aligned": ([sd for sd, _ in gen_al], k),
            "nearest_by_embedding_aligned": ([near_al[0]], 1),
            "best_on_500_aligned": ([pool_al[best_al][0]], 1),
        }
        record = lambda a: {"alignment_applied": a.applied, "permutation": a.permutation, "z": a.z}  # noqa: E731
        picked |= {
            "generated_aligned": {
                "alignments_applied": sum(a.applied for _, a in gen_al),
                "alignments": [record(a) for _, a in gen_al],
            },
            "nearest_by_embedding_aligned": {**picked["nearest_by_embedding"], **record(near_al[1])},
            "best_on_500_aligned": {
                "task": pool[best_al].metadata.task,
                "model_id": pool[best_al].metadata.model_id,
                **record(pool_al[best_al][1]),
            },
        }
    return {m: v for m, v in starts.items() if v[0]}, picked, spec


def _table(z: Zoo, task: str, cfg: FinetuneSettings, ctx) -> dict:
    """One task's table: every method's accuracy after each fine-tuning step count."""
    from ...progress import progress_bar
    from ..metrics import evaluate_state_dicts

    steps, epoch_steps, per_epoch = _schedule(z, task, cfg)
    starts, picked, spec = _task_starts(z, task, cfg)
    r = {
        "instruction": get_task(task).instruction,
        "held_out": task not in z.by_task,
        "architecture": spec.text(),
        "steps": steps,
        "epoch_steps": epoch_steps,
        "steps_per_epoch": per_epoch,
        "methods": {},
    }
    jobs, slots = [], []
    for m, (sds, k) in starts.items():
        r["methods"][m] = {"acc0": evaluate_state_dicts(spec, sds, task), "curves": [], **picked.get(m, {})}
        jobs += [(spec.to_json(), sd, task, steps, cfg.lr, i) for i, sd in enumerate(sds[:k])]
        slots += [m] * len(sds[:k])
    results, chunk = [], max(1, ctx.workers * 4)
    with progress_bar(len(jobs), f"fine-tuning ({z.name}, {task})", enabled=ctx.progress) as bar:
        for i in range(0, len(jobs), chunk):
            results += ctx.pool.map(finetune_job, jobs[i : i + chunk])
            bar.update(len(jobs[i : i + chunk]))
    for m, curve in zip(slots, results, strict=True):
        r["methods"][m]["curves"].append({str(s): a for s, a in curve.items()})
    for m in r["methods"].values():
        at = lambda s, m=m: m["acc0"] if s == 0 else [c[str(s)] for c in m["curves"]]  # noqa: E731
        m["mean"], m["std"] = (
            {str(s): finite_mean(at(s)) for s in steps},
            {str(s): finite_std(at(s)) for s in steps},
        )
        finite = [v for v in m["acc0"] if not math.isnan(v)] or [float("nan")]
        m["min0"], m["max0"] = min(finite), max(finite)
    return r


def tables(z: Zoo, tasks: list[str], cfg: FinetuneSettings, ctx) -> dict[str, dict]:
    """The Table-1 layout for each task (each cached on its own as ``{zoo}-{task}``, so a killed run loses one)."""
    return {t: ctx.cache(f"{z.name}-{t}", lambda t=t: _table(z, t, cfg, ctx)) for t in tasks}


def find_losses(table: dict, part: str, generator: str = "generated") -> list[dict]:
    """Every (task, step, baseline) where a baseline's mean beats the generator's mean."""
    out = []
    for task, r in table.items():
        if generator not in r["methods"]:
            continue
        gen = r["methods"][generator]["mean"]
        for m, v in r["methods"].items():
            if m in GENERATORS:
                continue
            for s, acc in v["mean"].items():
                if not math.isnan(acc) and not acc <= gen[s]:
                    out.append(
                        {
                            "part": part,
                            "task": task,
                            "step": int(s),
                            "baseline": m,
                            "baseline_acc": acc,
                            "generated_acc": gen[s],
                            "deficit": acc - gen[s],
                            "generator": generator,
                        }
                    )
    return out


# ------------------------------------------------------------------------------------------- report and plot
def _cols(r: dict) -> list[tuple[str, str]]:
    """(step key, column title): the epochs first, then the small step counts."""
    by_step = {str(s): f"ep {e}" for e, s in r["epoch_steps"].items()}
    return [
        (str(s), by_step.get(str(s), f"{s} steps"))
        for s in sorted(r["steps"], key=lambda s: (str(s) not in by_step, s))
    ]


def method_table(r: dict) -> list[str]:
    """One task's table as markdown: a row per method, a column per fine-tuning step count."""
    cols = _cols(r)
    lines = ["| method | " + " | ".join(t for _, t in cols) + " |", "|---|" + "---|" * len(cols)]
    for m, v in r["methods"].items():
        cells = []
        for s, _ in cols:
            cell = fmt(v["mean"][s])
            if m in ("generated", "generated_aligned"):
                cell += f" ± {fmt(v['std'][s])}" + (
                    f" ({fmt(v['min0'])}-{fmt(v['max0'])})" if s == "0" else ""
                )
            cells.append(cell)
        note = {
            "nearest_by_embedding": f" → {v.get('model_id', '')}",
            "best_on_500": f" → {v.get('model_id', '')}",
            "noise": f" (σ = {v.get('scale')} × entry std)",
            "average": f" ({v.get('num_averaged')} of {v.get('task')}"
            + (", BN recalibrated" if v.get("bn_recalibrated") else "")
            + ")",
            "generated_aligned": f" ({v.get('alignments_applied')} of {len(v['acc0'])} reordered)",
            "nearest_by_embedding_aligned": " ("
            + ("reordered" if v.get("alignment_applied") else "unchanged")
            + ")",
            "best_on_500_aligned": f" → {v.get('model_id', '')}"
            + (", reordered" if v.get("alignment_applied") else ""),
        }.get(m, "")
        n = (
            f" [n={len(v['acc0'])}, fine-tuned {len(v['curves'])}]"
            if m in ("random_init", "zoo", "generated", "generated_aligned")
            else ""
        )
        lines.append(f"| {LABELS[m]}{note}{n} | " + " | ".join(cells) + " |")
    return lines


def loss_lines(losses: list[dict], limit: int = 12, generator: str = "generated") -> list[str]:
    """Markdown bullets: where a baseline beats the generator, the largest deficits first."""
    name = "generated" if generator == "generated" else "label-aligned generated"
    if not losses:
        return [f"- none: the {name} mean is at least as accurate as every baseline at every step."]
    worst = sorted(losses, key=lambda x: -x["deficit"])
    tasks = sorted({x["task"] for x in losses})
    lines = [
        f"- {len(losses)} (task, step, baseline) cells where a baseline beats the {name} mean, on "
        f"{', '.join(tasks)}; the largest:"
    ]
    for x in worst[:limit]:
        lines.append(
            f"  - {x.get('zoo', x['part'])} / {x['task']} at step {x['step']}: {LABELS[x['baseline']]} "
            f"{fmt(x['baseline_acc'])} vs {name} {fmt(x['generated_acc'])} (−{fmt(x['deficit'])} points)"
        )
    return lines


def plot_curves(tables: list[tuple[str, dict]], path: Path, title: str) -> Path:
    """One panel per table: every method's mean accuracy against fine-tuning steps (the generated band ± std)."""
    import matplotlib.pyplot as plt

    from ..report import save_figure

    fig, axes = plt.subplots(1, len(tables), figsize=(3.6 * len(tables) + 1, 3.6), squeeze=False)
    for ax, (name, r) in zip(axes[0], tables, strict=True):
        xs = r["steps"]
        for m, v in r["methods"].items():
            ys = [v["mean"][str(s)] for s in xs]
            ax.plot(
                xs,
                ys,
                marker="o",
                ms=3,
                color=COLORS[m],
                label=LABELS[m],
                ls="--" if m.endswith("_aligned") else "-",
                lw=2 if m.startswith("generated") and m != "generated_best_of_5" else 1,
            )
            if m == "generated":
                sd = [v["std"][str(s)] for s in xs]
                ax.fill_between(
                    xs,
                    [y - d for y, d in zip(ys, sd, strict=True)],
                    [y + d for y, d in zip(ys, sd, strict=True)],
                    color=COLORS[m],
                    alpha=0.15,
                )
        ax.set_xscale("symlog", linthresh=10)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("fine-tuning steps")
        ax.set_ylim(0, 100)
    axes[0][0].set_ylabel("test accuracy (%)")
    axes[0][-1].legend(fontsize=6, loc="lower right")
    fig.suptitle(title, fontsize=10)
    return save_figure(fig, path)
