"""Which quantizer should the VQ-VAE use? Gumbel-softmax (the paper's) vs EMA VQ and FSQ (vector-quantize-pytorch),
one VQ-VAE each on the same zoo with the same budget: accuracy lost by reconstruction, relative L2, code use.

Not in the default run (it trains a VQ-VAE per variant): ``igpg-hf bench --parts quantizers`` (add
``--pipeline demo_out/pipeline --corpus demo_out/zoo`` to measure on the demo's zoo).
"""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass, field
from typing import Any

import torch

from .base import Experiment, ExperimentResult, fmt

# same sizes (K = 64, 4 tokens per chunk, d = 64, 512 hidden) and budget; only the quantizer changes. "fsq-preset":
# the "fsq" preset (FSQ 8-8-8 = 512 codes, 1,024 hidden) at lr 3e-3, what the related and ResNet recipes use
_VARIANTS = {
    "gumbel": {"preset": "demo", "overrides": {"quantizer": "gumbel"}, "lr": 1e-3},
    "vq": {"preset": "demo", "overrides": {"quantizer": "vq", "commitment_weight": 0.25}, "lr": 1e-3},
    "fsq": {"preset": "demo", "overrides": {"quantizer": "fsq", "fsq_levels": [8, 5, 5, 5]}, "lr": 1e-3},
    "fsq-preset": {"preset": "fsq", "overrides": {}, "lr": 3e-3},
}


@dataclass
class QuantizersConfig:
    """The zoo, the variants (name -> VQ-VAE preset, config overrides, lr) and the shared budget."""

    zoo: str = "seen"
    variants: dict[str, dict[str, Any]] = field(default_factory=lambda: dict(_VARIANTS))
    steps: int = 3000
    batch_size: int = 256

    @classmethod
    def from_preset(cls, name: str) -> QuantizersConfig:
        if name == "smoke":
            small = {k: {**v, "preset": "tiny"} for k, v in _VARIANTS.items() if k in ("gumbel", "fsq")}
            small["fsq"]["overrides"] = {"quantizer": "fsq", "fsq_levels": [4, 4]}
            return cls(variants=small, steps=20, batch_size=64)
        return cls()


@dataclass
class QuantizersResult(ExperimentResult):
    """Per variant: settings, training seconds, points lost by reconstruction, relative L2, codes used."""

    checkpoints: int
    steps: int
    batch_size: int
    variants: dict[str, dict[str, Any]]

    def summary(self) -> dict[str, Any]:
        return {f"{k}/recon_loss_points_mean": v["recon_loss_points_mean"] for k, v in self.variants.items()}

    def summary_lines(self) -> list[str]:
        return [
            f"quantizer {k}: {fmt(v['recon_loss_points_mean'], 2)} points lost, relative L2 "
            f"{fmt(v['relative_l2_mean'], 3)}, {v['codes_used']}/{v['vocab_size']} codes"
            for k, v in self.variants.items()
        ]


def measure(vq, checkpoints) -> dict[str, Any]:
    """Reconstruction accuracy loss (points), relative L2 and code usage over all checkpoints (grouped by task)."""
    from ..metrics import evaluate_state_dicts

    lost, rel, codes = [], [], []
    groups: dict[tuple, list] = {}
    for c in checkpoints:
        groups.setdefault((c.metadata.task, c.metadata.arch_text), []).append(c)
    for (task, _), cs in groups.items():
        recon = [vq.reconstruct(c.state_dict(), c.layout) for c in cs]
        orig = evaluate_state_dicts(cs[0].arch(), [c.state_dict() for c in cs], task)
        rec = evaluate_state_dicts(cs[0].arch(), recon, task)
        lost += [o - r for o, r in zip(orig, rec, strict=True)]
        for c, sd in zip(cs, recon, strict=True):
            v, r = c.vector().float(), c.layout.vectorize(sd).float()
            rel.append(((v - r).norm() / v.norm()).item())
            codes.append(vq.encode(c.state_dict(), c.layout))
    p = torch.bincount(torch.cat(codes), minlength=vq.config.vocab_size).float()
    p = p[p > 0] / p.sum()
    return {
        "recon_loss_points_mean": statistics.fmean(lost),
        "recon_loss_points_max": max(lost),
        "relative_l2_mean": statistics.fmean(rel),
        "codes_used": int((p > 0).sum()),
        "vocab_size": vq.config.vocab_size,
        "perplexity": math.exp(-(p * p.log()).sum().item()),
    }


class Quantizers(Experiment):
    name, title, Config, Result = "quantizers", "Which quantizer", QuantizersConfig, QuantizersResult
    default = False

    def _variant(self, ctx, checkpoints, name: str, v: dict) -> dict:
        from ...configuration_igpg import IGPGVQVAEConfig
        from ...training import VQVAETrainingArgs, train_vqvae

        cfg = self.config
        t = time.perf_counter()
        vq = train_vqvae(
            checkpoints,
            IGPGVQVAEConfig.from_preset(v["preset"], **v["overrides"]),
            ctx.out / "quantizers" / name,
            VQVAETrainingArgs(steps=cfg.steps, batch_size=cfg.batch_size, lr=v["lr"]),
            progress=ctx.progress,
        ).eval()
        seconds = time.perf_counter() - t
        with torch.no_grad():
            return {"settings": v, "train_seconds": seconds, **measure(vq, checkpoints)}

    def run(self, ctx) -> QuantizersResult:
        cfg, z = self.config, ctx.zoo(self.config.zoo)
        variants = {
            name: ctx.cache(
                f"quantizers-{name}", lambda name=name, v=v: self._variant(ctx, z.checkpoints, name, v)
            )
            for name, v in cfg.variants.items()
        }
        return QuantizersResult(len(z.checkpoints), cfg.steps, cfg.batch_size, variants)

    def report(self, r: QuantizersResult) -> list[str]:
        lines = [
            f"## {self.title}",
            "",
            f"One VQ-VAE per quantizer on the {r.checkpoints} checkpoints of the seen zoo, {r.steps} steps of "
            f"{r.batch_size} chunks each; accuracy lost by reconstruction in points (test set).",
            "",
            "| quantizer | points lost (mean / max) | relative L2 | codes used | perplexity | train s |",
            "|---|---|---|---|---|---|",
        ]
        for k, v in r.variants.items():
            lines.append(
                f"| {k} | {fmt(v['recon_loss_points_mean'], 2)} / {fmt(v['recon_loss_points_max'])} | "
                f"{fmt(v['relative_l2_mean'], 3)} | {v['codes_used']} / {v['vocab_size']} | "
                f"{fmt(v['perplexity'])} | {fmt(v['train_seconds'], 0)} |"
            )
        return lines + [""]


EXPERIMENT = Quantizers
