"""Unseen architectures (paper Fig. 3): ResNets of depths the prior never saw, generated from the instruction
and the architecture text, against random init and the same recipe trained; no fine-tuning."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..baselines import random_init_state_dicts
from ..metrics import accuracies_raw_and_recalibrated
from .base import Experiment, ExperimentResult, fmt


@dataclass
class CrossArchConfig:
    """The ResNet zoo (its ``arch_grid`` holds the trained depths), held-out depths and depths it trained on to
    show, and how many of the zoo's seeds train each held-out depth as a reference (with the zoo's recipe)."""

    zoo: str = "resnet"
    test_blocks: list[list[int]] = field(default_factory=lambda: [[1, 1, 2], [2, 2, 3], [4, 4, 4]])
    seen_blocks: list[list[int]] = field(default_factory=lambda: [[1, 2, 1], [2, 2, 2]])
    reference_seeds: int = 2

    @classmethod
    def from_preset(cls, name: str) -> CrossArchConfig:
        if name == "smoke":
            return cls(test_blocks=[[1, 1, 2]], seen_blocks=[[1, 1, 1]])
        if name == "gpu":
            return cls(test_blocks=[[1, 1, 4], [2, 4, 2], [4, 4, 4], [5, 5, 5]])
        return cls()


@dataclass
class CrossArchResult(ExperimentResult):
    """Per block configuration (``configs[str(blocks)]``): generated, random init and trained accuracy (%), each
    raw and after recomputing BatchNorm statistics on the training inputs."""

    task: str
    train_blocks: list[list[int]]
    recipe: dict[str, Any]
    n_positions: int
    configs: dict[str, dict]

    def summary(self) -> dict[str, Any]:
        out = {}
        for kind in ("held_out", "trained"):
            rows = [r for r in self.configs.values() if r["kind"] == kind]
            if rows:
                gen = [r["generated"]["recalibrated_mean"] for r in rows]
                ref = [r["trained"]["recalibrated_mean"] for r in rows]
                out[f"{kind}_generated_mean"] = sum(gen) / len(gen)
                out[f"{kind}_trained_mean"] = sum(ref) / len(ref)
        return out

    def summary_lines(self) -> list[str]:
        return [
            f"unseen architectures {r['blocks']} ({r['kind']}): generated {fmt(r['generated']['recalibrated_mean'])}"
            f", random init {fmt(r['random_init']['recalibrated_mean'])}, trained "
            f"{fmt(r['trained']['recalibrated_mean'])} (BN recalibrated)"
            for r in self.configs.values()
        ]


class CrossArch(Experiment):
    name, title, Config, Result = (
        "cross_arch",
        "Unseen architectures (paper Fig. 3)",
        CrossArchConfig,
        CrossArchResult,
    )

    def run(self, ctx) -> CrossArchResult:
        from ...sampling import block_windows
        from ...zoo.architectures import architecture_for_task

        cfg, z = self.config, ctx.zoo(self.config.zoo)
        zc = z.setup.zoo_config()
        task = zc.tasks[0]
        spec = lambda b: architecture_for_task(task, zc.arch_name(task), blocks=b)  # noqa: E731
        # the held-out depths trained with the zoo's own recipe, by the zoo builder: the reference to reach
        reference = dataclasses.replace(
            zc,
            name=f"{zc.name}_reference",
            arch_grid={**zc.arch_grid, "blocks": cfg.test_blocks},
            seeds=zc.seeds[: cfg.reference_seeds],
        )
        refs = ctx.build_zoo(f"{z.name}_reference", reference)
        pc = z.pipe.prior.config
        rows = {}
        for kind, blocks in (("held_out", cfg.test_blocks), ("trained", cfg.seen_blocks)):
            pool = refs if kind == "held_out" else z.checkpoints
            for b in blocks:
                s = spec(b)
                gen = z.generate(task, s, dataset=None)  # instruction + architecture text only
                trained = [
                    c.state_dict()
                    for c in sorted(pool, key=lambda c: (c.metadata.seed, c.metadata.model_id))
                    if c.metadata.arch_text == s.text() and c.metadata.epoch == zc.epochs
                ]
                n_tok = gen.token_ids.shape[1]
                rows[str(b)] = {
                    "blocks": b,
                    "kind": kind,
                    "parameters": s.num_parameters(),
                    "tokens": n_tok,
                    "prior_blocks": len(
                        block_windows(n_tok, pc.max_weight_tokens, pc.block_overlap, pc.tokens_per_chunk)
                    ),
                    "generated": accuracies_raw_and_recalibrated(s, gen.state_dicts, task),
                    "random_init": accuracies_raw_and_recalibrated(
                        s, random_init_state_dicts(s, z.setup.num_random_init, seed=1000), task
                    ),
                    "trained": accuracies_raw_and_recalibrated(s, trained, task),
                    "trained_count": len(trained),
                }
        trained_blocks = {tuple(c.arch().params["blocks"]) for c in z.checkpoints}
        (opt, lrs), *_ = zc.optimizers.items()
        return CrossArchResult(
            task=task,
            train_blocks=sorted(map(list, trained_blocks)),
            recipe={"epochs": zc.epochs, "lr": lrs[0], "optimizer": opt, "seeds": zc.seeds},
            n_positions=pc.n_positions,
            configs=rows,
        )

    def report(self, r: CrossArchResult) -> list[str]:
        lines = [
            f"## 3. {self.title}",
            "",
            f"Small ResNets on `{r.task}`, zoo blocks {r.train_blocks}, trained {r.recipe['epochs']} epochs "
            f"({r.recipe['optimizer']}, lr {r.recipe['lr']}, seeds {r.recipe['seeds']}). The generator is conditioned "
            f"on the instruction and the architecture text only (no dataset samples); its context holds "
            f"{r.n_positions} positions, so longer models are generated block by block. No fine-tuning. Accuracy is "
            "given as generated (raw BatchNorm statistics) / after recomputing BatchNorm statistics on the training "
            "inputs. Trained reference: the zoo's last-epoch checkpoints for trained configs, the same recipe (same "
            "epochs, lr, first seeds, built by the zoo builder) for held-out ones.",
            "",
            "| blocks | kind | params | tokens | prior blocks | random init | generated mean | generated best | trained |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for x in r.configs.values():
            g = x["generated"]
            lines.append(
                f"| {x['blocks']} | {x['kind']} | {x['parameters']:,} | {x['tokens']} | {x['prior_blocks']} | "
                f"{fmt(x['random_init']['raw_mean'])} / {fmt(x['random_init']['recalibrated_mean'])} | "
                f"{fmt(g['raw_mean'])} / {fmt(g['recalibrated_mean'])} | {fmt(max(g['raw']))} / "
                f"{fmt(max(g['recalibrated']))} | {fmt(x['trained']['raw_mean'])} / "
                f"{fmt(x['trained']['recalibrated_mean'])} |"
            )
        return lines + ["", "![unseen architectures](cross_arch.png)", ""]

    def plot(self, r: CrossArchResult, out_dir: Path) -> Path:
        """Bars per block config: random init, generated, trained (BN recalibrated); dots: raw."""
        import matplotlib.pyplot as plt

        from ..report import save_figure

        rows = list(r.configs.values())
        fig, ax = plt.subplots(figsize=(1.4 * len(rows) + 2, 3.8))
        for i, x in enumerate(rows):
            for j, (key, c) in enumerate(
                (("random_init", "#999999"), ("generated", "#c44e52"), ("trained", "#4c72b0"))
            ):
                ax.bar(
                    i + (j - 1) * 0.27,
                    x[key]["recalibrated_mean"],
                    0.25,
                    color=c,
                    label=key.replace("_", " ") if i == 0 else None,
                )
                ax.scatter(
                    [i + (j - 1) * 0.27] * len(x[key]["raw"]),
                    x[key]["raw"],
                    color="k",
                    s=8,
                    zorder=3,
                    label="raw BN statistics" if i == 0 and j == 0 else None,
                )
        ax.set_xticks(range(len(rows)), [f"{x['blocks']}\n{x['kind']}" for x in rows], fontsize=7)
        ax.set_ylabel("test accuracy (%)")
        ax.set_ylim(0, 100)
        ax.set_title("Unseen architectures: bars after BN recalibration, dots raw", fontsize=9)
        ax.legend(fontsize=7)
        return save_figure(fig, out_dir / "cross_arch.png")

    def headline(self, r: CrossArchResult) -> list[str]:
        held = [x for x in r.configs.values() if x["kind"] == "held_out"]
        return [
            "- **Unseen architectures, no fine-tuning (BN recalibrated):** "
            + "; ".join(
                f"{x['blocks']}: generated {fmt(x['generated']['recalibrated_mean'])} (best "
                f"{fmt(max(x['generated']['recalibrated']))}) vs random init "
                f"{fmt(x['random_init']['recalibrated_mean'])} and trained {fmt(x['trained']['recalibrated_mean'])}"
                for x in held
            )
            + "."
        ]


EXPERIMENT = CrossArch
