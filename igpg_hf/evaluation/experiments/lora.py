"""LoRA adapters for a shared base (paper Sec. 4.6, Table 2 in small): generated adapters against a linear probe,
full fine-tuning, the trained adapters of the zoo and retrieval, on seen tasks at step 0 and on held-out tasks
after the first LoRA fine-tuning steps from the generated adapter vs from peft's default initialization.

Everything is built here, offline: the base network and its adapter zoo (`ZooConfig` kind ``"lora"``, resumable),
the pipeline (`train_pipeline`), then the evaluation. Accuracies are test accuracy in percent; every method has
its trainable-parameter count.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch

from ...training.pipeline import PipelineRecipe
from ..metrics import finite_mean, finite_std
from .base import Experiment, ExperimentResult, fmt

__all__ = ["LoraExperimentConfig", "LoraResult", "LoraExperiment"]

SEEN_METHODS = (
    "base",
    "linear_probe",
    "full_finetune",
    "trained_lora",
    "generated",
    "generated_best_of_5",
    "nearest_by_embedding",
    "best_on_500",
)
RETRIEVALS = ("nearest_by_embedding", "best_on_500")
CURVE_METHODS = ("peft_init", "generated", "generated_best_of_5", *RETRIEVALS)
LABELS = {
    "base": "base model, no adaptation",
    "linear_probe": "base + linear probe (head trained)",
    "full_finetune": "full fine-tuning",
    "trained_lora": "trained LoRA (mean over the zoo)",
    "generated": "generated LoRA (mean)",
    "generated_best_of_5": "generated LoRA, best of 5 on 500 labelled",
    "nearest_by_embedding": "retrieval: nearest task by instruction embedding",
    "best_on_500": "retrieval: best zoo adapter on 500 labelled",
    "peft_init": "peft's default LoRA init (B = 0)",
}
COLORS = {
    "peft_init": "#999999",
    "generated": "#c44e52",
    "generated_best_of_5": "#dd8452",
    "nearest_by_embedding": "#55a868",
    "best_on_500": "#8172b3",
}


def _default_recipe() -> PipelineRecipe:
    return PipelineRecipe.from_preset("lora")  # FSQ VQ-VAE, balanced SVD factors (README, "LoRA adapters")


@dataclass
class LoraExperimentConfig:
    """The zoo (builder preset + changes), the pipeline recipe, sampling, and how held-out tasks are fine-tuned."""

    zoo_preset: str = "lora"
    zoo_changes: dict[str, Any] = field(default_factory=dict)
    recipe: PipelineRecipe = field(default_factory=_default_recipe)
    num_samples: int = 5  # generated adapters per (task, rank); best-of-5 picks among them
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = 0.9
    seed: int = 0
    labelled_examples: int = 500
    held_out_tasks: list[str] = field(
        default_factory=lambda: ["mnist_rot45", "mnist_rot135", "mnist_permute4"]
    )
    finetune_rank: int | None = None  # rank of the held-out fine-tuning curves (None: the zoo's largest)
    steps: list[int] = field(default_factory=lambda: [0, 5, 10, 25, 50])
    head_start_step: int = 10  # the summary's "after the first fine-tuning steps"
    finetune_lr: float = 3e-3
    curves: int = 3  # peft inits / generated samples fine-tuned per held-out task
    baseline_epochs: int | None = None  # linear probe and full fine-tuning (None: the adapters' epochs)
    baseline_lr: float = 3e-3

    def __post_init__(self):
        if isinstance(self.recipe, dict):
            self.recipe = PipelineRecipe(**self.recipe)
        if self.head_start_step not in self.steps or 0 not in self.steps:
            raise ValueError(
                f"steps must hold 0 and head_start_step {self.head_start_step}, got {self.steps}"
            )

    @classmethod
    def from_preset(cls, name: str) -> LoraExperimentConfig:
        """ "smoke": the tiny adapter zoo and the smoke recipe; otherwise the defaults (the ``lora`` zoo)."""
        if name == "smoke":
            return cls(
                zoo_preset="lora_tiny",
                recipe=PipelineRecipe.from_preset("smoke", vqvae_overrides={"lora_factors": "balanced"}),
                num_samples=2,
                held_out_tasks=["mnist_rot45"],
                steps=[0, 5],
                head_start_step=5,
                curves=1,
                labelled_examples=100,
            )
        return cls()


@dataclass
class LoraResult(ExperimentResult):
    """``seen[task][rank][method]`` (accuracy %, and ``params``), ``held_out[task]`` (curves per method), the
    adapters' settings, copies and seconds."""

    base: dict[str, Any]
    ranks: list[int]
    params: dict[str, int]
    seen: dict[str, dict]
    held_out: dict[str, dict]
    vqvae_fidelity: dict[str, Any]
    copies: dict[str, int]
    seconds: dict[str, float]
    settings: dict[str, Any]

    def _seen_mean(self, method: str) -> float:
        """Mean accuracy of a method over the seen tasks (and over ranks for adapter methods)."""
        if method in ("base", "linear_probe", "full_finetune"):  # one figure per task
            return finite_mean(t[method] for t in self.seen.values())
        return finite_mean(v[method] for t in self.seen.values() for v in t["ranks"].values())

    def summary(self) -> dict[str, Any]:
        trained = self._seen_mean("trained_lora")
        out: dict[str, Any] = {
            "seen_ratio": self._seen_mean("generated") / trained,
            "seen_ratio_best_of_5": self._seen_mean("generated_best_of_5") / trained,
            "meets_seen_target": self._seen_mean("generated") / trained >= 0.95,
            "seen_generated_mean": self._seen_mean("generated"),
            "seen_trained_lora_mean": trained,
            "generated_copies": self.copies.get("copies", 0),
            "generated_samples": self.copies.get("samples", 0),
            "head_start_step": self.settings.get("head_start_step"),
            "lora_factors": self.settings.get("lora_factors"),
            "vqvae_reconstructed_ratio": self.vqvae_fidelity.get("ratio"),
            "seconds_total": self.seconds.get("total"),
        }
        for task, h in self.held_out.items():
            out[f"{task}/head_start"] = h["head_start"]["over_peft_init"]
            out[f"{task}/gap_to_best_retrieval"] = h["head_start"]["gap_to_best_retrieval"]
        return out

    def summary_lines(self) -> list[str]:
        s = self.summary()
        lines = [
            f"lora seen tasks: generated / trained adapters = {s['seen_ratio']:.3f} (best of 5: "
            f"{s['seen_ratio_best_of_5']:.3f}; target 0.95 {'met' if s['meets_seen_target'] else 'NOT met'})"
        ]
        for task, h in self.held_out.items():
            hs = h["head_start"]
            lines.append(
                f"lora held-out {task} after {hs['step']} steps: generated {hs['generated']:.1f}, peft init "
                f"{hs['peft_init']:.1f} (head start {hs['over_peft_init']:+.1f}), best retrieval "
                f"{hs['best_retrieval']:.1f} (gap {hs['gap_to_best_retrieval']:+.1f})"
            )
        return lines


# ------------------------------------------------------------------------------------ jobs (process pool)
@lru_cache(maxsize=4)
def _base(folder: str):
    from ...adapters import load_base_model

    return load_base_model(folder)


def _curve_job(job: tuple) -> dict[int, float]:
    """LoRA fine-tuning curve: (base folder, peft config, start state dict or None, task, steps, lr, seed)."""
    from ...zoo.lora import finetune_lora

    base_dir, peft_config, sd, task, steps, lr, seed = job
    if sd is not None and not all(torch.isfinite(v).all() for v in sd.values()):
        return {s: float("nan") for s in steps}
    return finetune_lora(_base(base_dir).module, peft_config, sd, task, steps, lr=lr, seed=seed)


def _baseline_job(job: tuple) -> float:
    """Linear probe (head only) or full fine-tuning of the base: (base folder, head module, mode, task, epochs,
    lr, seed) -> test accuracy %."""
    import torch.nn.functional as F

    from ...zoo.tasks import load_task_data
    from ...zoo.training import evaluate

    base_dir, head, mode, task, epochs, lr, seed = job
    model = copy.deepcopy(_base(base_dir).module)
    model.requires_grad_(mode == "full_finetune")
    model.get_submodule(head).requires_grad_(True)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=lr)
    data, g = load_task_data(task), torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(len(data.x_train), generator=g)
        for i in range(0, len(perm), 64):
            idx = perm[i : i + 64]
            loss = F.cross_entropy(model(data.x_train[idx]), data.y_train[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return 100.0 * evaluate(model, data.x_test, data.y_test)[0]


# ------------------------------------------------------------------------------------ the experiment
class LoraExperiment(Experiment):
    name, title = "lora", "LoRA adapters for a shared base (paper Table 2)"
    Config, Result = LoraExperimentConfig, LoraResult

    def run(self, ctx) -> LoraResult:
        from ...adapters import AdapterSpec, load_base_model
        from ...training.pipeline import train_pipeline
        from ...training.zoo_builder import BASE_MODEL_DIR, ZooConfig

        c, t0 = self.config, time.perf_counter()
        zoo_config = ZooConfig.from_preset(c.zoo_preset, **copy.deepcopy(c.zoo_changes))
        checkpoints = ctx.build_zoo(zoo_config.name, zoo_config)
        t_zoo = time.perf_counter()
        base_dir = str(ctx.out / f"zoo_{zoo_config.name}" / BASE_MODEL_DIR)
        base = load_base_model(base_dir)
        form = c.recipe.vqvae_config().lora_factors  # one pipeline folder per factor form (they are compared)
        name = f"{zoo_config.name}_{form}"
        pipe = train_pipeline(checkpoints, c.recipe, ctx.out / f"pipeline_{name}", progress=ctx.progress)
        ctx.timings[f"pipeline_{name}_seconds"] = time.perf_counter() - t_zoo
        t_pipe = time.perf_counter()
        specs = {s.r: s for s in pipe.adapter_specs(base.identity)}
        by_task: dict[str, dict[int, list]] = {}
        for ck in sorted(checkpoints, key=lambda ck: ck.metadata.model_id):
            r = ck.metadata.hyperparams["lora"]["r"]
            by_task.setdefault(ck.metadata.task, {}).setdefault(r, []).append(ck)
        ranks = sorted(specs)
        head = zoo_config.lora.get("modules_to_save", ["head.fc2"])[0]
        epochs = c.baseline_epochs or zoo_config.finetune_epochs
        evaluator = _Evaluator(self.config, ctx, pipe, base, base_dir, specs, by_task)
        fidelity = ctx.cache(f"lora-{name}-fidelity", evaluator.fidelity)
        seen = {
            t: ctx.cache(f"lora-{name}-seen-{t}", lambda t=t: evaluator.seen_task(t, head, epochs))
            for t in by_task
        }
        rank = c.finetune_rank or max(ranks)
        held = {
            t: ctx.cache(f"lora-{name}-held-{t}-r{rank}", lambda t=t: evaluator.held_out_task(t, rank))
            for t in c.held_out_tasks
        }
        samples = sum(v["samples"] for t in seen.values() for v in t["ranks"].values())
        copies = sum(v["copies"] for t in seen.values() for v in t["ranks"].values())
        end = time.perf_counter()
        n_full = sum(p.numel() for p in base.module.parameters())
        n_head = sum(p.numel() for p in base.module.get_submodule(head).parameters())
        params = {"base": 0, "linear_probe": n_head, "full_finetune": n_full}
        params.update({f"lora_r{r}": s.num_parameters for r, s in specs.items()})
        return LoraResult(
            base={"identity": base.identity, "architecture": base.text(), "parameters": n_full, **base.info},
            ranks=ranks,
            params=params,
            seen=seen,
            held_out=held,
            vqvae_fidelity=fidelity,
            copies={"copies": copies, "samples": samples},
            seconds={
                "zoo_and_base": t_zoo - t0,
                "pipeline": t_pipe - t_zoo,
                "evaluation": end - t_pipe,
                "total": end - t0,
            },
            settings={
                **asdict(c),
                "zoo": zoo_config.to_dict(),
                "adapter_specs": {str(r): s.text() for r, s in specs.items()},
                "lora_factors": form,
                "finetune_rank": rank,
                "baseline_epochs": epochs,
                "num_adapters": len(checkpoints),
                "spec_type": AdapterSpec.__name__,
            },
        )

    # -------------------------------------------------------------------------------- report
    def report(self, r: LoraResult) -> list[str]:
        s, cfg = r.summary(), r.settings
        tasks = list(r.seen)
        lines = [
            f"## 7. {self.title}",
            "",
            f"Base: {r.base['architecture']} ({r.base['parameters']:,} parameters, trained on "
            f"{r.base.get('task')}, test accuracy {100 * r.base.get('test_acc', float('nan')):.1f} %; identity "
            f"`{r.base['identity'][:19]}…`). Zoo: {cfg['num_adapters']} peft LoRA adapters "
            f"(ranks {', '.join(cfg['adapter_specs'])}, alpha 2r, on "
            f"{', '.join(cfg['zoo']['lora'].get('target_modules', []))}, head "
            f"{', '.join(cfg['zoo']['lora'].get('modules_to_save', []))} trained in full) over {len(tasks)} seen "
            "tasks, trained "
            f"{cfg['zoo']['finetune_epochs']} epochs from peft's initialization. The pipeline generates "
            f"{cfg['num_samples']} adapters per task and rank (top-p {cfg['top_p']}, T {cfg['temperature']}); "
            f"{s['generated_copies']} of {s['generated_samples']} repeat a training adapter token for token. "
            "Linear probe and full fine-tuning train the base's head / all of it for "
            f"{cfg['baseline_epochs']} epochs (lr {cfg['baseline_lr']}). Test accuracy in %, step 0 (no "
            "fine-tuning) for every adapter row.",
            "",
            "LoRA factors enter the VQ-VAE "
            + (
                "as the balanced SVD factors of each update B·A"
                if cfg["lora_factors"] == "balanced"
                else "as stored"
            )
            + f" (`lora_factors={cfg['lora_factors']!r}`). Encoded and decoded by the VQ-VAE, the zoo's adapters keep "
            f"{fmt(r.vqvae_fidelity['reconstructed'])} % against {fmt(r.vqvae_fidelity['original'])} % (ratio "
            f"{fmt(r.vqvae_fidelity['ratio'], 3)}; relative error of the updates B·A "
            f"{fmt(r.vqvae_fidelity['update_rel_error'], 3)}; {r.vqvae_fidelity['adapters']} adapters).",
            "",
            "| method | trainable parameters | mean over seen tasks |",
            "|---|---|---|",
        ]
        for m in SEEN_METHODS:
            if m in ("base", "linear_probe", "full_finetune"):
                lines.append(f"| {LABELS[m]} | {r.params[m]:,} | {fmt(r._seen_mean(m))} |")
                continue
            for rank in r.ranks:
                vals = [t["ranks"][str(rank)][m] for t in r.seen.values()]
                lines.append(
                    f"| {LABELS[m]}, rank {rank} | {r.params[f'lora_r{rank}']:,} | {fmt(finite_mean(vals))} |"
                )
        lines += [
            "",
            f"Generated / trained adapters (seen tasks, all ranks): **{fmt(s['seen_ratio'], 3)}** (target ≥ 0.95: "
            + ("met" if s["meets_seen_target"] else "**NOT met**")
            + f"); best of 5: {fmt(s['seen_ratio_best_of_5'], 3)}.",
            "",
            "| task | rank | base | linear probe | full FT | trained LoRA | generated | best of 5 | nearest | best on 500 |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for task, t in r.seen.items():
            for rank in r.ranks:
                v = t["ranks"][str(rank)]
                lines.append(
                    f"| {task} | {rank} | {fmt(t['base'])} | {fmt(t['linear_probe'])} | {fmt(t['full_finetune'])} | "
                    f"{fmt(v['trained_lora'])} | {fmt(v['generated'])} | {fmt(v['generated_best_of_5'])} | "
                    f"{fmt(v['nearest_by_embedding'])} ({v['nearest_task']}) | {fmt(v['best_on_500'])} |"
                )
        steps = cfg["steps"]
        lines += [
            "",
            f"Held-out tasks (in no zoo), rank {cfg['finetune_rank']}: LoRA fine-tuning (Adam, lr "
            f"{cfg['finetune_lr']}, batch 64) from each start; mean of {cfg['curves']} peft inits and of "
            f"{cfg['curves']} generated samples. Head start: generated − peft init after {cfg['head_start_step']} "
            "steps; gap: generated − best retrieval.",
            "",
            "| task | method | " + " | ".join(f"step {x}" for x in steps) + " |",
            "|---|---|" + "---|" * len(steps),
        ]
        for task, h in r.held_out.items():
            for m in CURVE_METHODS:
                lines.append(
                    f"| {task} | {LABELS[m]} | "
                    + " | ".join(fmt(h["methods"][m]["mean"][str(x)]) for x in steps)
                    + " |"
                )
        lines += ["", *self._where_retrieval_wins(r), "", "![LoRA held-out tasks](lora.png)", ""]
        return lines

    @staticmethod
    def _where_retrieval_wins(r: LoraResult) -> list[str]:
        seen_wins = [
            f"{task} r{rank} ({v['best_retrieval_method']} {fmt(max(v[m] for m in RETRIEVALS))} vs {fmt(v['generated'])})"
            for task, t in r.seen.items()
            for rank, v in t["ranks"].items()
            if max(v[m] for m in RETRIEVALS) > v["generated"]
        ]
        held_wins = [
            f"{task} at step {x} ({h['methods'][best]['mean'][str(x)]:.1f} by {best} vs "
            f"{h['methods']['generated']['mean'][str(x)]:.1f})"
            for task, h in r.held_out.items()
            for x in r.settings["steps"]
            for best in [max(RETRIEVALS, key=lambda m, x=x, h=h: h["methods"][m]["mean"][str(x)])]
            if h["methods"][best]["mean"][str(x)] > h["methods"]["generated"]["mean"][str(x)]
        ]
        return [
            "**Where retrieval wins.** Seen tasks (best retrieval above the generated mean at step 0): "
            + ("; ".join(seen_wins) or "none")
            + ". Held-out tasks: "
            + ("; ".join(held_wins) or "none")
            + "."
        ]

    def plot(self, r: LoraResult, out_dir: Path) -> Path:
        import matplotlib.pyplot as plt

        from ..report import save_figure

        fig, axes = plt.subplots(1, len(r.held_out), figsize=(3.6 * len(r.held_out) + 1, 3.6), squeeze=False)
        for ax, (task, h) in zip(axes[0], r.held_out.items(), strict=True):
            xs = h["steps"]
            for m in CURVE_METHODS:
                ax.plot(
                    xs,
                    [h["methods"][m]["mean"][str(x)] for x in xs],
                    marker="o",
                    ms=3,
                    color=COLORS[m],
                    label=LABELS[m],
                    lw=2 if m == "generated" else 1,
                )
            ax.set_xscale("symlog", linthresh=10)
            ax.set_title(f"{task} (rank {r.settings['finetune_rank']})", fontsize=9)
            ax.set_xlabel("LoRA fine-tuning steps")
            ax.set_ylim(0, 100)
        axes[0][0].set_ylabel("test accuracy (%)")
        axes[0][-1].legend(fontsize=6, loc="lower right")
        fig.suptitle("Held-out tasks: LoRA fine-tuning from generated adapters vs peft's init", fontsize=10)
        return save_figure(fig, out_dir / "lora.png")

    def headline(self, r: LoraResult) -> list[str]:
        return [f"- **{line}**" if i == 0 else f"- {line}" for i, line in enumerate(r.summary_lines())]


def _update(sd: dict[str, torch.Tensor], a: str, b: str) -> torch.Tensor:
    """The update B @ A of one LoRA pair, (fan_out, fan_in) in float64."""
    r = sd[a].shape[0]
    return sd[b].reshape(-1, r).double() @ sd[a].reshape(r, -1).double()


class _Evaluator:
    """The per-task measurements of `LoraExperiment.run` (each task's result is cached on its own)."""

    def __init__(self, config, ctx, pipe, base, base_dir, specs, by_task):
        self.c, self.ctx, self.pipe, self.base, self.base_dir = config, ctx, pipe, base, base_dir
        self.specs, self.by_task = specs, by_task

    def _acc(self, sd: dict, rank: int, x: torch.Tensor, y: torch.Tensor) -> float:
        from ...adapters import load_adapter
        from ..metrics import accuracy

        if not all(torch.isfinite(v).all() for v in sd.values()):
            return float("nan")
        return accuracy(load_adapter(self.base, sd, self.specs[rank]), x, y)

    def _generate(self, task: str, rank: int):
        from ...zoo.tasks import get_task

        c = self.c
        return self.pipe(
            get_task(task).instruction,
            adapter=self.specs[rank],
            dataset=task,
            num_samples=c.num_samples,
            seed=c.seed,
            temperature=c.temperature,
            top_k=c.top_k,
            top_p=c.top_p,
        )

    def _nearest_task(self, task: str) -> str:
        from ...conditioning import encode_text
        from ...zoo.tasks import get_task
        from ..baselines import retrieve_by_embedding

        names = sorted(self.by_task)
        emb = encode_text(
            [get_task(t).instruction for t in [task, *names]], self.pipe.text_encoder, self.pipe.tokenizer
        ).cpu()
        return retrieve_by_embedding(emb[0], dict(zip(names, emb[1:], strict=True)))

    def _starts(self, task: str, rank: int) -> dict[str, Any]:
        """Generated samples and retrieved adapters of one task and rank, with their accuracies."""
        from ...zoo.tasks import load_task_data
        from ..baselines import labelled_subset

        data = load_task_data(task)
        xl, yl = labelled_subset(task, self.c.labelled_examples)
        out = self._generate(task, rank)
        gen = out.state_dicts
        gen_test = [self._acc(sd, rank, data.x_test, data.y_test) for sd in gen]
        gen_lab = [self._acc(sd, rank, xl, yl) for sd in gen]
        best = max(range(len(gen)), key=lambda i: -1 if math.isnan(gen_lab[i]) else gen_lab[i])
        near = self._nearest_task(task)
        near_ck = self.by_task[near][rank][0]  # the lowest seed's adapter of the nearest task
        pool = [ck for t in sorted(self.by_task) for ck in self.by_task[t][rank]]
        pool_lab = [self._acc(ck.state_dict(), rank, xl, yl) for ck in pool]
        best_ck = pool[max(range(len(pool)), key=pool_lab.__getitem__)]
        return {
            "gen": gen,
            "gen_test": gen_test,
            "best": best,
            "copies": sum(out.is_copy or []),
            "near": near,
            "near_ck": near_ck,
            "best_ck": best_ck,
            "data": data,
        }

    def fidelity(self) -> dict[str, Any]:
        """What the VQ-VAE keeps: each zoo adapter (the lowest seed per task and rank) encoded and decoded."""
        from ...weights.lora import lora_pairs
        from ...zoo.tasks import load_task_data

        vq, orig, recon, errs = self.pipe.vqvae, [], [], []
        for task in sorted(self.by_task):
            data = load_task_data(task)
            for rank, cks in sorted(self.by_task[task].items()):
                sd = cks[0].state_dict()
                back = vq.decode(vq.encode(sd, cks[0].layout), cks[0].layout)
                orig.append(100.0 * cks[0].metadata.test_acc)
                recon.append(self._acc(back, rank, data.x_test, data.y_test))
                for a, b in lora_pairs(list(sd)):
                    want = _update(sd, a, b)
                    errs.append(float((_update(back, a, b) - want).norm() / want.norm().clamp_min(1e-12)))
        return {
            "adapters": len(orig),
            "original": finite_mean(orig),
            "reconstructed": finite_mean(recon),
            "ratio": finite_mean(recon) / finite_mean(orig),
            "update_rel_error": finite_mean(errs),
        }

    def seen_task(self, task: str, head: str, epochs: int) -> dict[str, Any]:
        c, ctx = self.c, self.ctx
        jobs = [
            (self.base_dir, head, m, task, epochs, c.baseline_lr, 0)
            for m in ("linear_probe", "full_finetune")
        ]
        probe, full = ctx.pool.map(_baseline_job, jobs)
        from ...zoo.tasks import load_task_data
        from ..metrics import accuracy

        data = load_task_data(task)
        out = {
            "base": accuracy(self.base.module, data.x_test, data.y_test),
            "linear_probe": probe,
            "full_finetune": full,
            "ranks": {},
        }
        for rank in sorted(self.specs):
            s = self._starts(task, rank)
            trained = [100.0 * ck.metadata.test_acc for ck in self.by_task[task][rank]]
            near = self._acc(s["near_ck"].state_dict(), rank, data.x_test, data.y_test)
            best = self._acc(s["best_ck"].state_dict(), rank, data.x_test, data.y_test)
            out["ranks"][str(rank)] = {
                "trained_lora": finite_mean(trained),
                "trained_lora_all": trained,
                "generated": finite_mean(s["gen_test"]),
                "generated_std": finite_std(s["gen_test"]),
                "generated_all": s["gen_test"],
                "generated_best_of_5": s["gen_test"][s["best"]],
                "nearest_by_embedding": near,
                "nearest_task": s["near"],
                "best_on_500": best,
                "best_on_500_model_id": s["best_ck"].metadata.model_id,
                "best_retrieval_method": "nearest_by_embedding" if near >= best else "best_on_500",
                "copies": s["copies"],
                "samples": len(s["gen"]),
            }
        return out

    def held_out_task(self, task: str, rank: int) -> dict[str, Any]:
        from ...progress import progress_bar

        c, ctx, spec = self.c, self.ctx, self.specs[rank]
        s = self._starts(task, rank)
        starts = {
            "peft_init": [None] * c.curves,
            "generated": s["gen"][: c.curves],
            "generated_best_of_5": [s["gen"][s["best"]]],
            "nearest_by_embedding": [s["near_ck"].state_dict()],
            "best_on_500": [s["best_ck"].state_dict()],
        }
        jobs, slots = [], []
        for m, sds in starts.items():
            for i, sd in enumerate(sds):
                jobs.append((self.base_dir, spec.peft_config, sd, task, c.steps, c.finetune_lr, i))
                slots.append(m)
        with progress_bar(len(jobs), f"LoRA fine-tuning ({task})", enabled=ctx.progress) as bar:
            curves = ctx.pool.map(_curve_job, jobs)
            bar.update(len(jobs))
        methods: dict[str, dict] = {m: {"curves": []} for m in starts}
        for m, curve in zip(slots, curves, strict=True):
            methods[m]["curves"].append({str(k): v for k, v in curve.items()})
        for v in methods.values():
            v["mean"] = {str(x): finite_mean(cv[str(x)] for cv in v["curves"]) for x in c.steps}
            v["std"] = {str(x): finite_std([cv[str(x)] for cv in v["curves"]]) for x in c.steps}
        x = str(c.head_start_step)
        best = max(RETRIEVALS, key=lambda m: methods[m]["mean"][x])
        gen, init = methods["generated"]["mean"][x], methods["peft_init"]["mean"][x]
        return {
            "rank": rank,
            "steps": c.steps,
            "methods": methods,
            "nearest_task": s["near"],
            "best_on_500_model_id": s["best_ck"].metadata.model_id,
            "copies": s["copies"],
            "generated_step0_all": s["gen_test"],
            "head_start": {
                "step": c.head_start_step,
                "generated": gen,
                "peft_init": init,
                "over_peft_init": gen - init,
                "best_retrieval": methods[best]["mean"][x],
                "best_retrieval_method": best,
                "gap_to_best_retrieval": gen - methods[best]["mean"][x],
            },
        }


EXPERIMENT = LoraExperiment
