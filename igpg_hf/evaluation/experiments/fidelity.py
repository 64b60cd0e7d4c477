"""VQ-VAE fidelity (paper Table 3): accuracy of the original checkpoints, their reconstructions (encode ->
decode) and generated samples, per zoo, task and architecture."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..metrics import evaluate_recalibrated, evaluate_state_dicts, finite_mean
from ..novelty import pairwise_scale
from .base import Experiment, ExperimentResult, fmt


@dataclass
class FidelityConfig:
    """The benchmark zoos whose VQ-VAEs are measured."""

    zoos: list[str] = field(default_factory=lambda: ["seen", "related", "resnet"])


@dataclass
class FidelityResult(ExperimentResult):
    """One row per (zoo, task, architecture); accuracy points lost by reconstruction per zoo."""

    rows: list[dict]
    mean_recon_loss_points: dict[str, float]
    # BatchNorm nets: reconstructions with running statistics recomputed on training inputs vs the originals
    mean_recon_loss_points_recalibrated: dict[str, float]

    def summary(self) -> dict[str, Any]:
        out = {f"{z}/recon_loss_points": v for z, v in self.mean_recon_loss_points.items()}
        out |= {
            f"{z}/recon_loss_points_recalibrated": v
            for z, v in self.mean_recon_loss_points_recalibrated.items()
        }
        for z in self.mean_recon_loss_points:
            l2 = [r["recon_relative_l2"] for r in self.rows if r["zoo"] == z]
            out[f"{z}/recon_relative_l2"] = sum(l2) / len(l2)
        return out

    def summary_lines(self) -> list[str]:
        return [
            f"VQ-VAE fidelity, {z}: {fmt(v, 2)} points lost by reconstruction (mean)"
            for z, v in self.mean_recon_loss_points.items()
        ]


def short_architecture(arch: str) -> str:
    """An architecture text without input, classes and norm details."""
    return re.sub(r", (input|classes|batch norm|activation).*", "", arch)


def _tag(arch: str) -> str:
    """A plot label: the family, and the blocks of a ResNet."""
    m = re.search(r"layers (\[[^\]]*\])", arch)
    return arch.split(":")[0] + (f" {m.group(1)}" if m else "")


class Fidelity(Experiment):
    name, title, Config, Result = (
        "fidelity",
        "VQ-VAE fidelity (paper Table 3)",
        FidelityConfig,
        FidelityResult,
    )

    def run(self, ctx) -> FidelityResult:
        zoos, rows = [ctx.zoo(name) for name in self.config.zoos], []
        for z in zoos:
            for (task, _), cs in z.groups.items():
                spec, bn = cs[0].arch(), any("running_mean" in e.name for e in cs[0].layout.entries)
                recon = [
                    z.pipe.vqvae.decode(z.tokens[c.metadata.model_id], c.layout, fill=c.state_dict())
                    for c in cs
                ]
                vec = torch.stack([c.vector() for c in cs])
                err = torch.stack([c.layout.vectorize(r) for c, r in zip(cs, recon, strict=True)]) - vec
                gen = z.generate(task, spec, dataset="task" if z.conditions_on_data else None)
                rec_acc = evaluate_state_dicts(spec, recon, task)
                gen_acc = evaluate_state_dicts(spec, gen.state_dicts, task)
                orig = [z.accuracy[c.metadata.model_id] for c in cs]
                row = {
                    "zoo": z.name,
                    "task": task,
                    "architecture": spec.text(),
                    "checkpoints": len(cs),
                    "original": finite_mean(orig),
                    "reconstructed": finite_mean(rec_acc),
                    "generated": finite_mean(gen_acc),
                    "recon_loss_points": finite_mean([o - r for o, r in zip(orig, rec_acc, strict=True)]),
                    "recon_relative_l2": (err.norm(dim=1) / vec.norm(dim=1)).mean().item(),
                    "recon_novelty": (err.norm(dim=1).mean() / pairwise_scale(vec)).item()
                    if len(cs) > 1
                    else None,
                    "batchnorm_recalibrated": bn,
                }
                if bn:
                    row["reconstructed_recalibrated"] = finite_mean(evaluate_recalibrated(spec, recon, task))
                    row["generated_recalibrated"] = finite_mean(
                        evaluate_recalibrated(spec, gen.state_dicts, task)
                    )
                rows.append(row)
        bn_zoos = {r["zoo"] for r in rows if r["batchnorm_recalibrated"]}
        return FidelityResult(
            rows=rows,
            mean_recon_loss_points={
                z.name: finite_mean([r["recon_loss_points"] for r in rows if r["zoo"] == z.name])
                for z in zoos
            },
            mean_recon_loss_points_recalibrated={
                z: finite_mean(
                    [r["original"] - r["reconstructed_recalibrated"] for r in rows if r["zoo"] == z]
                )
                for z in bn_zoos
            },
        )

    def report(self, r: FidelityResult) -> list[str]:
        lines = [
            f"## 4. {self.title}",
            "",
            "Mean test accuracy of the original checkpoints, their VQ-VAE reconstructions (encode → decode) and "
            "generated samples for the same task and architecture. Relative L2 = ‖reconstruction − original‖ / "
            "‖original‖; recon novelty = reconstruction error / median distance between the group's checkpoints. "
            "BatchNorm nets: raw / recalibrated.",
            "",
            "| zoo | task | architecture | ckpts | original | reconstructed | generated | loss (points) | rel. L2 | recon novelty |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for x in r.rows:
            bn = x["batchnorm_recalibrated"]
            rec = fmt(x["reconstructed"]) + (f" / {fmt(x['reconstructed_recalibrated'])}" if bn else "")
            gen = fmt(x["generated"]) + (f" / {fmt(x['generated_recalibrated'])}" if bn else "")
            lines.append(
                f"| {x['zoo']} | {x['task']} | {short_architecture(x['architecture'])} | {x['checkpoints']} | "
                f"{fmt(x['original'])} | {rec} | {gen} | {fmt(x['recon_loss_points'], 2)} | "
                f"{fmt(x['recon_relative_l2'], 3)} | {fmt(x['recon_novelty'], 3)} |"
            )
        return lines + ["", "![fidelity](fidelity.png)", ""]

    def plot(self, r: FidelityResult, out_dir: Path) -> Path:
        """Original, reconstructed and generated accuracy per zoo group."""
        import matplotlib.pyplot as plt

        from ..report import save_figure

        rows = r.rows
        fig, ax = plt.subplots(figsize=(0.7 * len(rows) + 2, 3.8))
        for j, (key, c) in enumerate(
            (("original", "#4c72b0"), ("reconstructed", "#55a868"), ("generated", "#c44e52"))
        ):
            xs = [i + (j - 1) * 0.27 for i in range(len(rows))]
            ax.bar(xs, [x[key] for x in rows], 0.25, color=c, label=key)
        ax.set_xticks(
            range(len(rows)),
            [f"{x['zoo']}\n{x['task']}\n{_tag(x['architecture'])}" for x in rows],
            fontsize=5,
            rotation=90,
        )
        ax.set_ylabel("test accuracy (%)")
        ax.legend(fontsize=7)
        return save_figure(fig, out_dir / "fidelity.png")


EXPERIMENT = Fidelity
