"""Seen tasks (paper Table 1): generated weights vs random init, the zoo, retrieval, noise and averaging, at
epoch 0 and after fine-tuning, on every task of the seen zoo."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..metrics import finite_mean
from .base import Experiment, ExperimentResult, fmt
from .finetune_tables import FinetuneSettings, find_losses, method_table, plot_curves, tables


@dataclass
class SeenConfig:
    """The zoo whose tasks are evaluated, and how the tables fine-tune."""

    zoo: str = "seen"
    finetune: FinetuneSettings = field(default_factory=FinetuneSettings)

    @classmethod
    def from_preset(cls, name: str) -> SeenConfig:
        return cls(finetune=FinetuneSettings.from_preset(name))


@dataclass
class SeenResult(ExperimentResult):
    """Per task, the Table-1 layout (``tasks[task]["methods"][method]["mean"][step]``, accuracy %)."""

    zoo: str
    zoo_epochs: int
    tasks: dict[str, dict]
    generated_over_zoo: dict[str, float]  # generated mean / zoo mean at epoch 0, per task
    mean_generated_over_zoo: float
    meets_95_percent_of_zoo: bool
    losses: list[dict]
    finetune: dict[str, Any]

    def summary(self) -> dict[str, Any]:
        return {
            "mean_generated_over_zoo": self.mean_generated_over_zoo,
            "min_generated_over_zoo": min(self.generated_over_zoo.values()),
            "meets_95_percent_of_zoo": self.meets_95_percent_of_zoo,
            "losses": len(self.losses),
        }

    def summary_lines(self) -> list[str]:
        return [
            f"seen tasks: generated / zoo at epoch 0 = {self.mean_generated_over_zoo:.3f} "
            f"({'meets' if self.meets_95_percent_of_zoo else 'misses'} the 0.95 target)"
        ]


class Seen(Experiment):
    name, title, Config, Result = "seen", "Seen tasks (paper Table 1)", SeenConfig, SeenResult

    def run(self, ctx) -> SeenResult:
        z = ctx.zoo(self.config.zoo)
        t = tables(z, sorted(z.by_task), self.config.finetune, ctx)
        ratios = {
            task: r["methods"]["generated"]["mean"]["0"] / r["methods"]["zoo"]["mean"]["0"]
            for task, r in t.items()
        }
        mean_ratio = finite_mean(ratios.values())
        return SeenResult(
            zoo=z.name,
            zoo_epochs=z.epochs,
            tasks=t,
            generated_over_zoo=ratios,
            mean_generated_over_zoo=mean_ratio,
            meets_95_percent_of_zoo=mean_ratio >= 0.95,
            losses=find_losses(t, "seen"),
            finetune=asdict(self.config.finetune),
        )

    def report(self, r: SeenResult) -> list[str]:
        ft, first = r.finetune, next(iter(r.tasks.values()))
        lines = [
            f"## 1. {self.title}",
            "",
            f"Zoo `{r.zoo}`: its checkpoints were trained {r.zoo_epochs} epochs, so fine-tuning is reported after "
            f"{', '.join(first['epoch_steps'])} epochs (N = {r.zoo_epochs}, the zoo's schedule; "
            f"{first['steps_per_epoch']} Adam steps of 64 per epoch, lr {ft['lr']}), and after "
            f"{', '.join(map(str, ft['steps']))} steps. Test accuracy in %. Epoch 0 averages every start (all "
            f"{len(first['methods']['generated']['acc0'])} generated samples, every zoo checkpoint of the task); later "
            "columns average the fine-tuned ones (n in brackets). Retrieval by embedding takes the zoo task whose "
            "instruction embedding is nearest, then its last-epoch checkpoint of the lowest seed; best-on-500 picks, "
            f"among every zoo checkpoint, the most accurate on {ft['labelled_examples']} labelled training examples; "
            "best-of-5 picks among the first 5 samples the same way. Noise is added to the retrieved checkpoint; the "
            "average is over the last-epoch checkpoints of the (nearest) task.",
            "",
        ]
        for task, t in r.tasks.items():
            lines += [f"**{task}** — {t['instruction']}", "", *method_table(t), ""]
        return lines + ["![seen tasks](seen.png)", ""]

    def plot(self, r: SeenResult, out_dir: Path) -> Path:
        return plot_curves(list(r.tasks.items()), out_dir / "seen.png", "Seen tasks: accuracy vs fine-tuning")

    def headline(self, r: SeenResult) -> list[str]:
        return [
            f"- **Seen tasks, no fine-tuning:** generated mean / zoo mean = {fmt(r.mean_generated_over_zoo, 3)} "
            "(target ≥ 0.95: "
            + ("met" if r.meets_95_percent_of_zoo else "**NOT met**")
            + "); per task "
            + ", ".join(f"{k} {fmt(v, 3)}" for k, v in r.generated_over_zoo.items())
            + "."
        ]

    def losses(self, r: SeenResult) -> dict[str, list[dict]]:
        return {"generated": r.losses}


EXPERIMENT = Seen
