"""Does label alignment ever cost accuracy? Test-set change from `align_labels` on generated nets.

For each task and two sampling settings (plain: T 1, top-p 0.9; hot: T 1.5, top-k 3), draws seeded samples, aligns
each on (a) the 5-per-class support set the prior is conditioned on and (b) 500 labelled training examples, and
reports how many were reordered and the change in test accuracy (mean and worst). A held-out label permutation is
where it should help; weak rotation nets are where a careless reorder would hurt; seen tasks should stay as they
are. Not in the default run: ``igpg-hf bench --parts label_alignment --pipeline demo_out/pipeline --corpus
demo_out/zoo`` (``--set label_alignment.min_z=-100``: without the guard).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .base import Experiment, ExperimentResult, fmt


@dataclass
class LabelAlignmentConfig:
    """The zoo whose pipeline generates, the tasks, the architecture, samples per setting, the guard's threshold."""

    zoo: str = "seen"
    tasks: list[str] = field(
        default_factory=lambda: [
            "mnist_permute4",
            "mnist_rot45",
            "mnist_rot135",
            "mnist_permute1",
            "mnist_rot90",
        ]
    )
    architecture: str = "tiny_cnn"
    samples: int = 10
    seed: int = 3
    min_z: float = 2.0
    settings: dict[str, dict[str, Any]] = field(
        default_factory=lambda: {
            "plain": dict(temperature=1.0, top_p=0.9),
            "hot": dict(temperature=1.5, top_k=3),
        }
    )

    @classmethod
    def from_preset(cls, name: str) -> LabelAlignmentConfig:
        if name == "smoke":
            return cls(tasks=["digits_rot270", "digits"], architecture="mlp_small", samples=2)
        return cls()


@dataclass
class LabelAlignmentResult(ExperimentResult):
    """One row per (task, sampling setting, alignment samples); accuracies in percent."""

    rows: list[dict[str, Any]]
    worst_change: float
    min_z: float

    def summary(self) -> dict[str, Any]:
        return {
            "worst_change": self.worst_change,
            "aligned_nets": sum(r["of"] for r in self.rows),
            "reordered": sum(r["reordered"] for r in self.rows),
        }

    def summary_lines(self) -> list[str]:
        return [
            f"label alignment: {sum(r['reordered'] for r in self.rows)} of {sum(r['of'] for r in self.rows)} nets "
            f"reordered; worst test-accuracy change {self.worst_change:+.1f} points (min z {self.min_z})"
        ]


class LabelAlignment(Experiment):
    name, title = "label_alignment", "Does label alignment ever hurt?"
    Config, Result = LabelAlignmentConfig, LabelAlignmentResult
    default = False

    def run(self, ctx) -> LabelAlignmentResult:
        from ...label_alignment import align_labels
        from ...progress import progress_bar
        from ...zoo import get_architecture, get_task
        from ...zoo.tasks import sample_support_set
        from ..baselines import labelled_subset
        from ..metrics import evaluate_state_dicts

        cfg, pipe = self.config, ctx.zoo(self.config.zoo).pipe
        spec = get_architecture(cfg.architecture)
        scratch, rows = spec.build(), []
        per_class = pipe.prior.config.support_per_class
        with progress_bar(len(cfg.tasks) * len(cfg.settings), "label alignment", enabled=ctx.progress) as bar:
            for task in cfg.tasks:
                for setting, kw in cfg.settings.items():
                    out = pipe(
                        get_task(task).instruction,
                        architecture=spec,
                        dataset=task,
                        num_samples=cfg.samples,
                        seed=cfg.seed,
                        **kw,
                    )
                    before = evaluate_state_dicts(spec, out.state_dicts, task)
                    for name, (x, y) in {
                        f"support_{per_class}_per_class": sample_support_set(
                            task, per_class=per_class, seed=0
                        ),
                        "labelled_500": labelled_subset(task, 500),
                    }.items():
                        aligned = [align_labels(scratch, sd, x, y, min_z=cfg.min_z) for sd in out.state_dicts]
                        after = evaluate_state_dicts(spec, [sd for sd, _ in aligned], task)
                        delta = [a - b for a, b in zip(after, before, strict=True)]
                        rows.append(
                            {
                                "task": task,
                                "sampling": setting,
                                "alignment_samples": name,
                                "num_samples": len(x),
                                "reordered": sum(r.applied for _, r in aligned),
                                "of": len(aligned),
                                "accuracy_before": sum(before) / len(before),
                                "accuracy_after": sum(after) / len(after),
                                "mean_change": sum(delta) / len(delta),
                                "worst_change": min(delta),
                            }
                        )
                    bar.update(1)
        return LabelAlignmentResult(rows, min(r["worst_change"] for r in rows), cfg.min_z)

    def report(self, r: LabelAlignmentResult) -> list[str]:
        lines = [
            f"## {self.title}",
            "",
            f"Generated nets aligned on the support set and on 500 labelled examples (McNemar guard z ≥ {r.min_z}); "
            "test accuracy (%) before and after.",
            "",
            "| task | sampling | aligned on | reordered | before | after | mean change | worst change |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for x in r.rows:
            lines.append(
                f"| {x['task']} | {x['sampling']} | {x['alignment_samples']} | {x['reordered']}/{x['of']} | "
                f"{fmt(x['accuracy_before'])} | {fmt(x['accuracy_after'])} | {x['mean_change']:+.1f} | "
                f"{x['worst_change']:+.1f} |"
            )
        return lines + ["", f"Worst change over all aligned nets: {r.worst_change:+.1f} points.", ""]


EXPERIMENT = LabelAlignment
