"""Cross-architecture generation (paper Fig. 3): ResNet depths the prior trained on and depths it never saw,
against the transplant of the nearest trained depth, random init and the same recipe trained.

The zoo (`ZooSetup` "resnet") trains the small ResNet on one task over a grid of block configurations; the
experiment holds out depths *inside* the grid (interior) and *outside* it (shallower or deeper than every trained
one, exterior). Every configuration gets, at epoch 0 and after one epoch of fine-tuning, with BatchNorm statistics
recomputed on the training inputs for every net alike:

- **trained**: the zoo's last-epoch checkpoints (trained depths) or the same recipe run by the zoo builder for the
  first seeds (held-out depths): the reference;
- **generated**: samples from the instruction and the architecture text only (mean, best of them, and the one
  the prior finds likeliest);
- **transplant**: the last-epoch checkpoints of the nearest trained configuration moved to the target depth
  (`igpg_hf.evaluation.baselines.transplant_depth`: blocks cut from a stage's end, or added as identity maps;
  for a trained depth the nearest *other* one);
- **random init**.

Ablations retrain the pipeline on the same zoo with one lever changed (``absolute``: absolute block positions
instead of structure-aware ones; ``unaligned``: no permutation alignment) and generate the ablation depths.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..metrics import finite_mean
from .base import Experiment, ExperimentResult, fmt

METHODS = ("trained", "generated", "transplant", "random_init")
KINDS = ("trained", "interior", "exterior")
# the targets: generated mean / trained mean at epoch 0
TARGETS = {"in_distribution": 0.9, "held_out_interior": 0.7, "held_out_exterior": 0.5}


@dataclass
class CrossArchConfig:
    """Depths to measure and how.

    ``held_out``: block configurations the zoo must not train (ValueError if it does); each is classed interior
    (every stage within the trained range) or exterior (shallower / deeper). ``trained_shown``: depths of the zoo
    to report. ``reference_seeds``: the zoo's first seeds, trained on every held-out depth as its reference.
    ``finetune_epochs``: fine-tuning after generation (the zoo's optimizer and learning rate, batch 64).
    ``ablations``: pipelines retrained on the same zoo with one lever changed ("absolute", "unaligned"), measured
    on ``ablation_blocks`` (None: every row).
    """

    zoo: str = "resnet"
    held_out: list[list[int]] = field(
        default_factory=lambda: [[3, 3, 3], [2, 4, 3], [4, 3, 2], [1, 1, 1], [2, 1, 2], [5, 5, 5], [4, 5, 4]]
    )
    trained_shown: list[list[int]] = field(default_factory=lambda: [[2, 2, 2], [3, 4, 3], [4, 4, 4]])
    reference_seeds: int = 2
    finetune_epochs: int = 1
    ablations: list[str] = field(default_factory=lambda: ["absolute", "unaligned"])
    ablation_blocks: list[list[int]] | None = field(
        default_factory=lambda: [[3, 4, 3], [3, 3, 3], [1, 1, 1], [5, 5, 5]]
    )

    def __post_init__(self):
        bad = sorted(set(self.ablations) - set(ABLATIONS))
        if bad:
            raise ValueError(f"unknown ablation(s) {bad}; known: {', '.join(ABLATIONS)}")

    @classmethod
    def from_preset(cls, name: str) -> CrossArchConfig:
        if name == "smoke":
            return cls(  # the smoke zoo trains [1, 1, 1] and [1, 2, 1]
                held_out=[[1, 1, 2], [2, 2, 2]],
                trained_shown=[[1, 1, 1]],
                reference_seeds=1,
                ablations=["absolute"],
                ablation_blocks=[[2, 2, 2]],
            )
        if name == "gpu":  # the gpu zoo trains n in 2..5 per stage
            return cls(
                held_out=[
                    [3, 3, 3],
                    [2, 4, 3],
                    [4, 3, 2],
                    [4, 5, 3],
                    [1, 1, 1],
                    [2, 1, 2],
                    [6, 6, 6],
                    [5, 7, 5],
                ],
                trained_shown=[[2, 2, 2], [3, 4, 3], [5, 5, 5]],
                ablation_blocks=[[3, 4, 3], [3, 3, 3], [1, 1, 1], [6, 6, 6]],
            )
        return cls()


# lever -> recipe changes that undo it
ABLATIONS = {
    "absolute": {"prior_overrides": {"position_scheme": "absolute"}},
    "unaligned": {"fields": {"align_checkpoints": False}},
}


@dataclass
class CrossArchResult(ExperimentResult):
    """Per block configuration (``configs[str(blocks)]``): each method's test accuracies (%) at epoch 0 (raw and
    BN-recalibrated) and after fine-tuning (recalibrated), with means and bests; ablation rows alike."""

    task: str
    train_blocks: list[list[int]]
    recipe: dict[str, Any]
    pipeline: dict[str, Any]
    configs: dict[str, dict]
    ablations: dict[str, dict]
    seconds: dict[str, float] = field(default_factory=dict)

    def ratios(
        self, method: str = "generated", stat: str = "recalibrated_mean", rows=None
    ) -> dict[str, float]:
        """``{kind}_ratio``: ``method``'s ``stat`` averaged over the rows of a kind, divided by the trained mean of
        the same rows (epoch 0, recalibrated); NaN where a kind has no row."""
        names = {
            "trained": "in_distribution",
            "interior": "held_out_interior",
            "exterior": "held_out_exterior",
        }
        out = {}
        for kind in KINDS:
            rs = [r for r in (self.configs if rows is None else rows).values() if r["kind"] == kind]
            rs = [r for r in rs if r["methods"].get("trained")]
            got = finite_mean(r["methods"][method][stat] for r in rs)
            ref = finite_mean(r["methods"]["trained"]["recalibrated_mean"] for r in rs)
            out[f"{names[kind]}_ratio"] = got / ref if rs and ref > 0 else float("nan")
        return out

    def summary(self) -> dict[str, Any]:
        out = dict(self.ratios())
        out.update({f"transplant_{k}": v for k, v in self.ratios("transplant").items()})
        out.update({f"best_of_5_{k}": v for k, v in self.ratios("generated", "recalibrated_best").items()})
        out.update({f"finetuned_{k}": v for k, v in self.ratios("generated", "finetuned_mean").items()})
        for name, ab in self.ablations.items():
            out.update({f"{name}_{k}": v for k, v in self.ratios("generated", rows=ab["configs"]).items()})
        rows = [x for x in self.configs.values() if "copies" in x]
        if rows:
            out["copies"] = sum(x["copies"] for x in rows)
            out["samples"] = sum(x["num_samples"] for x in rows)
        for target, level in TARGETS.items():
            v = out.get(f"{target}_ratio")
            out[f"{target}_target_met"] = bool(v is not None and not math.isnan(v) and v >= level)
        return out

    def summary_lines(self) -> list[str]:
        s = self.summary()
        return [
            "cross-architecture, generated mean / trained mean (epoch 0, BN recalibrated): "
            + ", ".join(
                f"{k.removesuffix('_ratio')} {fmt(s[k + ''], 2)} (transplant {fmt(s['transplant_' + k], 2)})"
                for k in ("in_distribution_ratio", "held_out_interior_ratio", "held_out_exterior_ratio")
            )
        ]


def _evaluate(spec, sds: list[dict], task: str, steps: int, lr: float, pool) -> dict:
    """Accuracies (%) of state dicts: raw and recalibrated at epoch 0, recalibrated after ``steps`` of fine-tuning."""
    from ..metrics import evaluate_recalibrated, evaluate_state_dicts

    raw, recal = evaluate_state_dicts(spec, sds, task), evaluate_recalibrated(spec, sds, task)
    tuned = pool.map(_finetune_job, [(spec.to_json(), sd, task, steps, lr, i) for i, sd in enumerate(sds)])
    best = lambda xs: max((x for x in xs if not math.isnan(x)), default=float("nan"))  # noqa: E731
    return {
        "raw": raw,
        "recalibrated": recal,
        "finetuned": tuned,
        "raw_mean": finite_mean(raw),
        "recalibrated_mean": finite_mean(recal),
        "recalibrated_best": best(recal),
        "finetuned_mean": finite_mean(tuned),
        "finetuned_best": best(tuned),
    }


def _finetune_job(job: tuple) -> float:
    """Test accuracy (%) after ``steps`` of fine-tuning a state dict, BN recalibrated before and after (NaN if the
    weights are not finite); picklable for the benchmark's process pool."""
    import torch

    from ...zoo.architectures import ArchSpec
    from ..metrics import finetune

    spec_json, sd, task, steps, lr, seed = job
    if not all(torch.isfinite(v).all() for v in sd.values() if v.is_floating_point()):
        return float("nan")
    return finetune(ArchSpec.from_json(spec_json), sd, task, [steps], lr=lr, seed=seed, recalibrate=True)[
        steps
    ]


def classify(blocks: list[int], trained: list[list[int]]) -> str:
    """ "trained", "interior" (every stage within the trained range), or "shallower" / "deeper" / "outside"."""
    if blocks in trained:
        return "trained"
    lo = [min(b[i] for b in trained) for i in range(len(blocks))]
    hi = [max(b[i] for b in trained) for i in range(len(blocks))]
    if all(lo[i] <= blocks[i] <= hi[i] for i in range(len(blocks))):
        return "interior"
    total = sum(blocks)
    if total < min(map(sum, trained)):
        return "shallower"
    if total > max(map(sum, trained)):
        return "deeper"
    return "outside"


class CrossArch(Experiment):
    name, title, Config, Result = (
        "cross_arch",
        "Cross-architecture generation (paper Fig. 3)",
        CrossArchConfig,
        CrossArchResult,
    )

    def run(self, ctx) -> CrossArchResult:
        from ...training.pipeline import train_pipeline
        from ...zoo.alignment import align_state_dict, reference_checkpoint
        from ...zoo.architectures import architecture_for_task
        from ..baselines import nearest_depth, random_init_state_dicts, transplant_depth
        from ..metrics import evaluate_recalibrated

        cfg, z = self.config, ctx.zoo(self.config.zoo)
        zc = z.setup.zoo_config()
        task = zc.tasks[0]
        trained_grid = [list(b) for b in zc.arch_grid.get("blocks", [])]
        clash = [b for b in cfg.held_out if b in trained_grid]
        if clash or not trained_grid:
            raise ValueError(
                f"held-out depths {clash} are in the zoo's arch_grid (or the zoo has no block grid)"
            )
        spec = lambda b: architecture_for_task(task, zc.arch_name(task), blocks=b)  # noqa: E731
        (opt, lrs), *_ = zc.optimizers.items()
        steps = cfg.finetune_epochs * math.ceil(len(_train_inputs(task)) / zc.batch_size)
        # a lineage zoo (finetuned, `resnet_lineage`): its runs end after finetune_epochs; its base is not a run's end
        lineage = zc.zoo_kind == "finetuned"
        final_epoch = zc.finetune_epochs if lineage else zc.epochs
        last = lambda cs, b: [  # noqa: E731
            c
            for c in sorted(cs, key=lambda c: (c.metadata.seed, c.metadata.model_id))
            if c.arch().params["blocks"] == b
            and c.metadata.epoch == final_epoch
            and c.metadata.hyperparams.get("role") != "base"
        ]
        # the held-out depths trained with the zoo's own recipe, by the zoo builder: the reference to reach (a
        # lineage's reference descends from the same base, so its grid starts with the base's depth)
        reference = dataclasses.replace(
            zc,
            name=f"{zc.name}_reference",
            arch_grid={
                **zc.arch_grid,
                "blocks": [trained_grid[0], *cfg.held_out] if lineage else cfg.held_out,
            },
            seeds=zc.seeds[: cfg.reference_seeds],
            keep_epochs=[zc.epochs],
        )
        refs = ctx.build_zoo(f"{z.name}_reference", reference)
        align_ref = reference_checkpoint(z.checkpoints) if z.setup.recipe.align_checkpoints else None
        pc = z.pipe.prior.config

        def row(b: list[int], pipe_zoo, methods: tuple[str, ...]) -> dict:
            s = spec(b)
            kind = classify(b, trained_grid)
            t0 = time.perf_counter()
            gen = pipe_zoo.generate(task, s, dataset=None)  # instruction + architecture text only
            out = {
                "blocks": b,
                "kind": "exterior" if kind in ("shallower", "deeper", "outside") else kind,
                "where": kind,
                "parameters": s.num_parameters(),
                "tokens": int(gen.token_ids.shape[1]),
                "generation_seconds": time.perf_counter() - t0,
                # token-for-token copies of a training sequence (possible at trained depths only)
                "copies": sum(gen.is_copy or []),
                "num_samples": len(gen.state_dicts),
                "methods": {},
            }
            g = _evaluate(s, gen.state_dicts, task, steps, lrs[0], ctx.pool)
            ll = gen.log_likelihood or []
            g["log_likelihood"] = ll
            g["likeliest"] = (
                g["recalibrated"][max(range(len(ll)), key=ll.__getitem__)] if ll else float("nan")
            )
            out["methods"]["generated"] = g
            if "trained" in methods:
                trained = [c.state_dict() for c in last(refs if kind != "trained" else z.checkpoints, b)]
                out["methods"]["trained"] = _evaluate(s, trained, task, steps, lrs[0], ctx.pool)
                # what the VQ-VAE keeps of them (aligned as the pipeline's zoo was): the generator's ceiling
                if align_ref is not None:
                    trained = [
                        align_state_dict(s, sd, align_ref.state_dict(), align_ref.arch()) for sd in trained
                    ]
                rec = [z.pipe.vqvae.reconstruct(sd) for sd in trained]
                out["reconstructed"] = {"recalibrated": (r := evaluate_recalibrated(s, rec, task))}
                out["reconstructed"]["recalibrated_mean"] = finite_mean(r)
            if "transplant" in methods:
                src = nearest_depth(b, [x for x in trained_grid if x != b])
                sds = [transplant_depth(spec(src), c.state_dict(), s) for c in last(z.checkpoints, src)]
                out["transplant_from"] = src
                out["methods"]["transplant"] = _evaluate(s, sds, task, steps, lrs[0], ctx.pool)
            if "random_init" in methods:
                rand = random_init_state_dicts(s, z.setup.num_random_init, seed=1000)
                out["methods"]["random_init"] = _evaluate(s, rand, task, steps, lrs[0], ctx.pool)
            return out

        blocks = [*cfg.trained_shown, *cfg.held_out]
        rows = {str(b): ctx.cache(f"cross_arch_{_tag(b)}", lambda b=b: row(b, z, METHODS)) for b in blocks}
        ablations = {}
        # what alignment changes on this zoo: none of a lineage's checkpoints (they descend from one base), many of
        # independent runs'. When it changes none, the unaligned pipeline trains on the same bytes with the same
        # seeds as this one: it is this pipeline, and its rows are this pipeline's rows (said in the report)
        moved = (
            _alignment_changes(z.checkpoints)
            if z.setup.recipe.align_checkpoints and "unaligned" in cfg.ablations
            else None
        )
        for name in cfg.ablations:
            recipe = z.setup.recipe.with_changes(**ABLATIONS[name])
            if name == "unaligned" and moved == 0:
                ab = {}
                for b in cfg.ablation_blocks or blocks:
                    x = rows.get(str(b)) or ctx.cache(f"cross_arch_{_tag(b)}", lambda b=b: row(b, z, METHODS))
                    ab[str(b)] = {**x, "same_pipeline_as_main": True}
                ablations[name] = {
                    "recipe_changes": ABLATIONS[name],
                    "configs": ab,
                    "checkpoints_changed_by_alignment": 0,
                    "same_pipeline_as_main": True,
                }
                continue
            same_vqvae = recipe.weights_key("vqvae") == z.setup.recipe.weights_key("vqvae")

            def load(name=name, recipe=recipe, same_vqvae=same_vqvae):  # trained or loaded on first use only
                t0 = time.perf_counter()
                pipe = train_pipeline(
                    z.checkpoints,
                    recipe,
                    ctx.out / f"pipeline_{z.name}_{name}",
                    progress=ctx.progress,
                    vqvae=z.pipe.vqvae if same_vqvae else None,  # only the prior changes: reuse the VQ-VAE
                )
                ctx.timings[f"pipeline_{z.name}_{name}_seconds"] = time.perf_counter() - t0
                return pipe.to(ctx.config.device)

            variant = _Variant(z, load)
            ab = {}
            for b in cfg.ablation_blocks or blocks:
                r = ctx.cache(f"cross_arch_{name}_{_tag(b)}", lambda b=b, v=variant: row(b, v, ()))
                r["methods"]["trained"] = rows[str(b)]["methods"]["trained"] if str(b) in rows else None
                ab[str(b)] = r
            ablations[name] = {"recipe_changes": ABLATIONS[name], "configs": ab}
            if name == "unaligned":
                ablations[name]["checkpoints_changed_by_alignment"] = moved
        return CrossArchResult(
            task=task,
            train_blocks=trained_grid,
            recipe={
                "epochs": zc.epochs,
                "zoo_kind": zc.zoo_kind,
                "finetune_epochs": zc.finetune_epochs if lineage else None,
                "lr": lrs[0],
                "optimizer": opt,
                "seeds": zc.seeds,
                "keep_epochs": zc.keep_epochs,
            },
            pipeline={
                "n_positions": pc.n_positions,
                "position_scheme": pc.position_scheme,
                "align_checkpoints": z.setup.recipe.align_checkpoints,
                "vqvae_preset": z.setup.recipe.vqvae_preset,
                "prior_steps": z.setup.recipe.prior_training.steps,
                "num_samples": z.settings.num_samples,
                "temperature": z.settings.temperature,
                "top_p": z.settings.top_p,
                "finetune_steps": steps,
            },
            configs=rows,
            ablations=ablations,
            seconds={k: v for k, v in ctx.timings.items() if z.name in k},
        )

    # ------------------------------------------------------------------------------------------ report
    def report(self, r: CrossArchResult) -> list[str]:
        s = r.summary()
        p = r.pipeline
        rec = r.recipe
        if rec.get("zoo_kind") == "finetuned":
            how = (
                f"a lineage: one base trained {rec['epochs']} epochs at {r.train_blocks[0]}, every configuration "
                f"started from it moved to its depth (blocks cut, or added as identity maps) and fine-tuned "
                f"{rec['finetune_epochs']} epochs per seed ({rec['optimizer']}, lr {rec['lr']}, seeds {rec['seeds']}, "
                f"every fine-tuning epoch kept) — descendants of one network, far fewer distinct weights than "
                "independent runs"
            )
        else:
            how = (
                f"trained {rec['epochs']} epochs ({rec['optimizer']}, lr {rec['lr']}, seeds {rec['seeds']}, epochs "
                f"{rec['keep_epochs']} kept)"
            )
        lines = [
            f"## 3. {self.title}",
            "",
            f"Small ResNets on `{r.task}`, {len(r.train_blocks)} block configurations in the zoo (every stage "
            f"{_range(r.train_blocks)}), {how}. The generator is "
            "conditioned on the instruction and the architecture text only; its tokens carry their place in the "
            f"architecture (`position_scheme={p['position_scheme']}`); zoo permutation-aligned: "
            f"{p['align_checkpoints']}; context {p['n_positions']} positions (longer models block by block); "
            f"{p['num_samples']} samples at temperature {p['temperature']}, top-p {p['top_p']}. **Every net's "
            "BatchNorm statistics are recomputed on the training inputs** before it is measured (generated, "
            f"transplanted, trained and random alike); fine-tuning: {p['finetune_steps']} Adam steps (one epoch, the "
            "zoo's lr), recalibrated again. Trained: the zoo's last-epoch checkpoints (trained depths) or the same "
            "recipe run for the first seeds by the zoo builder (held-out depths). Transplant: the last-epoch "
            "checkpoints of the nearest trained configuration (for a trained depth the nearest other one), blocks "
            "cut from the end of a stage or added as identity maps (last BatchNorm at zero). VQ-VAE round trip: "
            "the trained nets encoded and decoded (aligned first where the zoo was), what sampling can at best "
            "reproduce. Accuracy in %, mean (best).",
            "",
            "| blocks | kind | params | tokens | random init | transplant (from) | generated | likeliest | trained "
            "| VQ-VAE round trip | random +1 ep | transplant +1 ep | generated +1 ep | trained +1 ep |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for x in r.configs.values():
            m = x["methods"]

            def cell(k: str, m=m) -> str:
                return f"{fmt(m[k]['recalibrated_mean'])} ({fmt(m[k]['recalibrated_best'])})"

            lines.append(
                f"| {x['blocks']} | {x['where']} | {x['parameters']:,} | {x['tokens']} | {cell('random_init')} | "
                f"{cell('transplant')} {x.get('transplant_from')} | **{cell('generated')}** | "
                f"{fmt(m['generated']['likeliest'])} | {cell('trained')} | "
                f"{fmt(x.get('reconstructed', {}).get('recalibrated_mean'))} | {fmt(m['random_init']['finetuned_mean'])} | "
                f"{fmt(m['transplant']['finetuned_mean'])} | {fmt(m['generated']['finetuned_mean'])} | "
                f"{fmt(m['trained']['finetuned_mean'])} |"
            )
        lines += [
            "",
            "| ratio to trained (epoch 0) | target | generated | best of samples | transplant | generated +1 ep |",
            "|---|---|---|---|---|---|",
        ]
        for key, target in TARGETS.items():
            k = f"{key}_ratio"
            lines.append(
                f"| {key.replace('_', ' ')} | {target} | **{fmt(s[k], 2)}** | {fmt(s['best_of_5_' + k], 2)} | "
                f"{fmt(s['transplant_' + k], 2)} | {fmt(s['finetuned_' + k], 2)} |"
            )
        shown_copies = [x for x in r.configs.values() if "copies" in x]
        if shown_copies:
            lines += [
                "",
                f"Copies: {s['copies']} of {s['samples']} generated nets repeat a training checkpoint token "
                "for token (per depth: "
                + ", ".join(f"{x['blocks']} {x['copies']}/{x['num_samples']}" for x in shown_copies)
                + "; at a held-out depth a copy is impossible: no training sequence has its length).",
            ]
        lines += ["", *self._where_transplant_wins(r), ""]
        if r.ablations:
            lines += [
                "Ablation: the same zoo and recipe with one lever undone (generated mean at epoch 0, recalibrated; "
                "trained for reference).",
                "",
                "| blocks | kind | trained | this recipe | " + " | ".join(r.ablations) + " |",
                "|---|---|---|---|" + "---|" * len(r.ablations),
            ]
            shown = next(iter(r.ablations.values()))["configs"]
            for key in shown:
                x = r.configs.get(key)
                base = x["methods"]["generated"]["recalibrated_mean"] if x else float("nan")
                ref = x["methods"]["trained"]["recalibrated_mean"] if x else float("nan")
                cells = " | ".join(
                    fmt(a["configs"][key]["methods"]["generated"]["recalibrated_mean"])
                    for a in r.ablations.values()
                )
                lines.append(
                    f"| {shown[key]['blocks']} | {shown[key]['where']} | {fmt(ref)} | {fmt(base)} | {cells} |"
                )
            un = r.ablations.get("unaligned")
            if un is not None and un.get("checkpoints_changed_by_alignment") is not None:
                n = un["checkpoints_changed_by_alignment"]
                lines += [
                    "",
                    f"Alignment changed {n} of the zoo's checkpoints"
                    + (
                        ": on this zoo it is the identity, so the unaligned pipeline trains on the same bytes with "
                        "the same seeds, i.e. it is this recipe's pipeline, and its column repeats this recipe's "
                        "(not retrained). Alignment matters for zoos of independent runs, not for a lineage."
                        if un.get("same_pipeline_as_main")
                        else "."
                    ),
                ]
        return lines + ["", "![cross-architecture generation](cross_arch.png)", ""]

    def _where_transplant_wins(self, r: CrossArchResult) -> list[str]:
        wins = self.losses(r)["generated"]
        if not wins:
            return [
                "The transplant baseline wins nowhere: the generated mean is ahead at every depth, before and "
                "after fine-tuning."
            ]
        where = "; ".join(
            f"{w['blocks']} ({w['where']}, {'epoch 0' if w['step'] == 0 else '+1 epoch'}: "
            f"{fmt(w['baseline_acc'])} vs {fmt(w['generated_acc'])})"
            for w in wins
        )
        return [f"**Where the transplant wins** (its mean above the generated mean): {where}."]

    def losses(self, r: CrossArchResult) -> dict[str, list[dict]]:
        """Depths where the transplant's mean beats the generated mean, at epoch 0 and after fine-tuning."""
        out = []
        for x in r.configs.values():
            m = x["methods"]
            for step, st in ((0, "recalibrated_mean"), (r.pipeline["finetune_steps"], "finetuned_mean")):
                t, g = m["transplant"][st], m["generated"][st]
                if not math.isnan(t) and (math.isnan(g) or t > g):
                    out.append(
                        {
                            "part": "cross_arch",
                            "task": f"{r.task} {x['blocks']}",
                            "blocks": x["blocks"],
                            "where": x["where"],
                            "step": step,
                            "baseline": "transplant",
                            "baseline_acc": t,
                            "generated_acc": g,
                            "deficit": t - g if not math.isnan(g) else t,
                        }
                    )
        return {"generated": out}

    def plot(self, r: CrossArchResult, out_dir: Path) -> Path:
        """Bars per configuration (epoch 0 and +1 epoch, recalibrated): random init, transplant, generated, trained;
        dots: every net; a tick: the best generated sample."""
        import matplotlib.pyplot as plt

        from ..report import save_figure

        rows = list(r.configs.values())
        colors = {
            "random_init": "#999999",
            "transplant": "#dd8452",
            "generated": "#c44e52",
            "trained": "#4c72b0",
        }
        order = ("random_init", "transplant", "generated", "trained")
        fig, axes = plt.subplots(2, 1, figsize=(max(6.0, 1.1 * len(rows) + 2), 6.6), sharex=True)
        for ax, (st, title) in zip(
            axes, (("recalibrated", "epoch 0"), ("finetuned", "after one epoch")), strict=True
        ):
            for i, x in enumerate(rows):
                for j, key in enumerate(order):
                    pos = i + (j - 1.5) * 0.2
                    vals = x["methods"][key][st]
                    ax.bar(
                        pos,
                        x["methods"][key][f"{st}_mean"],
                        0.19,
                        color=colors[key],
                        label=key.replace("_", " ") if i == 0 else None,
                    )
                    ax.scatter([pos] * len(vals), vals, color="k", s=5, zorder=3)
            ax.set_ylabel(f"test accuracy (%), {title}", fontsize=8)
            ax.set_ylim(0, 100)
        axes[0].legend(fontsize=7, ncol=4, loc="lower center", bbox_to_anchor=(0.5, 1.0), frameon=False)
        fig.suptitle(
            "ResNet depths: trained, held out inside and outside the grid (BN recalibrated)", fontsize=9
        )
        axes[1].set_xticks(range(len(rows)), [f"{x['blocks']}\n{x['where']}" for x in rows], fontsize=7)
        return save_figure(fig, out_dir / "cross_arch.png")

    def headline(self, r: CrossArchResult) -> list[str]:
        s = r.summary()
        parts = []
        for key, target in TARGETS.items():
            k = f"{key}_ratio"
            met = "met" if s[f"{key}_target_met"] else "not met"
            parts.append(
                f"{key.replace('_', ' ')} {fmt(s[k], 2)} of trained (target {target}, {met}; transplant "
                f"{fmt(s['transplant_' + k], 2)})"
            )
        return [
            "- **Cross-architecture, generated mean at epoch 0 (BN recalibrated):** " + "; ".join(parts) + "."
        ]


class _Variant:
    """A zoo's sampling settings with another pipeline (an ablation; ``load()`` gives it on first use), memoizing
    samples like `Zoo.generate`."""

    def __init__(self, zoo, load):
        self.zoo, self.load, self.pipe, self._gen = zoo, load, None, {}

    def generate(self, task: str, spec, dataset=None):
        from ...zoo.tasks import get_task

        s = self.zoo.settings
        key = (task, spec.to_json())
        if self.pipe is None:
            self.pipe = self.load()
        if key not in self._gen:
            self._gen[key] = self.pipe(
                get_task(task).instruction,
                architecture=spec,
                dataset=dataset,
                num_samples=s.num_samples,
                seed=s.seed,
                temperature=s.temperature,
                top_k=s.top_k,
                top_p=s.top_p,
            )
        return self._gen[key]


def _alignment_changes(checkpoints: list) -> int:
    """How many checkpoints `align_checkpoints` changes (weights not byte-identical after alignment)."""
    from ...zoo.alignment import align_checkpoints

    return sum(
        a.weights != c.weights for a, c in zip(align_checkpoints(checkpoints), checkpoints, strict=True)
    )


def _train_inputs(task: str):
    from ...zoo.tasks import load_task_data

    return load_task_data(task).x_train


def _tag(blocks: list[int]) -> str:
    return "".join(map(str, blocks))


def _range(grid: list[list[int]]) -> str:
    lo, hi = min(min(b) for b in grid), max(max(b) for b in grid)
    return f"{lo}..{hi} blocks"


EXPERIMENT = CrossArch
