"""The end-to-end demo: build a small offline zoo, train VQ-VAE and prior, generate, evaluate honestly.

``igpg-hf demo --out DIR`` runs `run_demo`. Every stage resumes: the zoo build continues where it stopped, the
pipeline is trained by `igpg_hf.training.train_pipeline` into ``DIR/vqvae`` and ``DIR/prior`` (finished models
reused, a killed run resumed). Results go to ``DIR/results.json`` (per task: zoo mean, each generated sample's
accuracy, random init, VQ-VAE reconstruction, copies of training checkpoints, novelty; accuracies in percent)
and ``DIR/results.png``; the trained pipeline to ``DIR/pipeline``.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from ..files import (
    FolderLock,
    atomic_directory,
    atomic_path,
    atomic_write_json,
    recover_directory,
    remove_stale_temporaries,
)
from ..training.pipeline import PipelineRecipe, train_pipeline
from ..training.zoo_builder import build_zoo
from ..zoo.tasks import get_task
from .baselines import random_init_state_dicts
from .metrics import evaluate_state_dicts, finite_mean
from .novelty import adjacent_epoch_novelty, count_copies, novelty, pairwise_scale
from .settings import GenerationSettings
from .zoos import Zoo, ZooSetup

logger = logging.getLogger(__name__)

__all__ = ["DemoConfig", "DemoResult", "run_demo", "plot_demo"]


@dataclass
class DemoConfig(ZooSetup):
    """One demo run: the zoo, the pipeline recipe, and how it samples (`from_preset`: "demo", "smoke")."""

    @classmethod
    def from_preset(cls, name: str) -> DemoConfig:
        """ "demo": the README's run (about 13 minutes on 2 cores); "smoke": seconds, for tests."""
        if name == "demo":
            return cls()
        if name == "smoke":
            return cls(
                zoo_preset="tiny",
                recipe=PipelineRecipe.from_preset("smoke"),
                generation=GenerationSettings(num_samples=3),
                num_random_init=2,
            )
        raise ValueError(f"unknown demo preset {name!r}; known: demo, smoke")


@dataclass
class DemoResult:
    """What `run_demo` measured (accuracies in percent); ``to_dict`` is ``results.json``."""

    tasks: dict[str, dict[str, Any]]
    generate_seconds_one: float
    generate_seconds_100: float
    summary: dict[str, Any]
    timings: dict[str, float]
    config: dict[str, Any]

    COLUMNS = (
        "task",
        "zoo mean",
        "recon",
        "generated mean",
        "best",
        "gen/zoo",
        "random init",
        "copies",
        "new-only mean",
        "new/zoo",
        "new novelty",
    )
    TITLE = "generated weights vs the zoo (test accuracy %, no fine-tuning)"

    def to_dict(self) -> dict[str, Any]:
        """The results as JSON-able data (``results.json``)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DemoResult:
        """Inverse of `to_dict`."""
        return cls(**{f.name: d[f.name] for f in dataclasses.fields(cls)})

    def rows(self) -> list[list[str]]:
        """One row per task under `COLUMNS` (the README's demo table)."""
        out = []
        for task, r in self.tasks.items():
            n = len(r["generated_acc"])
            new = (
                [
                    f"{r['new_only_mean_acc']:.1f}",
                    f"{r['new_only_over_zoo']:.3f}",
                    f"{statistics.median(r['new_only_novelty']):.3f}",
                ]
                if "new_only_acc" in r
                else ["-"] * 3
            )
            copies = f"{r['copies']}/{n}" + (
                f" ({r['copies_of_other_tasks']} of other tasks)" if r["copies_of_other_tasks"] else ""
            )
            out.append(
                [
                    task,
                    f"{r['zoo_mean_acc']:.1f}",
                    f"{r['recon_acc']:.1f}",
                    f"{r['generated_mean_acc']:.1f}",
                    f"{r['generated_best_acc']:.1f}",
                    f"{r['generated_over_zoo']:.3f}",
                    f"{r['random_init_acc']:.1f}",
                    copies,
                    *new,
                ]
            )
        return out

    def summary_lines(self) -> list[str]:
        """The figures under the table, for people."""
        s, lines = self.summary, []
        if s["total_copies"]:
            lines.append(
                f"{s['total_copies']} of {s['total_samples']} samples are token-for-token copies of training "
                "checkpoints: on those, the generator is retrieving, not generating."
            )
        if "new_only_working" in s:
            lines.append(
                f"new-only sampling (copies excluded): {s['new_only_working']} of {s['total_samples']} samples "
                f"reach 90 % of their zoo's mean; their mean novelty is {s['new_only_mean_novelty']:.3f} (for "
                f"scale: adjacent epochs of one training run {s['adjacent_epochs_novelty']:.3f}, a copy 0)"
            )
        lines.append(
            f"generate 1 model: {self.generate_seconds_one:.2f} s; 100 models: {self.generate_seconds_100:.2f} s"
        )
        lines.append(f"total {self.timings['total_seconds']:.0f} s")
        return lines


def run_demo(
    out_dir: str | os.PathLike, config: DemoConfig | None = None, progress: bool = True
) -> DemoResult:
    """Build zoo -> train VQ-VAE and prior -> generate for every zoo task -> evaluate; returns the results."""
    config = config or DemoConfig()
    gen_cfg = config.generation
    out = Path(out_dir)
    lock = FolderLock(out, "demo output folder").acquire()  # one demo per folder; checks it is writable
    recover_directory(out / "pipeline")  # a kill between the two renames of the pipeline save
    remove_stale_temporaries(out)
    t_start = time.perf_counter()
    timings: dict[str, float] = {}

    # 1. the zoo (resumes if a build was interrupted)
    t = time.perf_counter()
    corpus = build_zoo(config.zoo_config(), out / "zoo", progress=progress)
    checkpoints = list(corpus)
    timings["zoo_seconds"] = time.perf_counter() - t

    # 2. VQ-VAE and prior
    t = time.perf_counter()
    pipe = train_pipeline(checkpoints, config.recipe, out, progress=progress)
    timings["training_seconds"] = time.perf_counter() - t
    vqvae = pipe.vqvae
    epochs = max(c.metadata.hyperparams.get("epochs", 0) for c in checkpoints)
    zoo = Zoo("demo", pipe, checkpoints, epochs, config)  # samples exactly as the benchmark's experiments do

    # 3. per task: zoo, VQ-VAE reconstruction, generated samples, random init, copies, novelty
    train_tokens = zoo.tokens
    tasks = sorted({c.metadata.task for c in checkpoints})
    per_task, adjacent = {}, []  # adjacent: distances between kept epochs of one run, the novelty scale
    for task in tasks:
        ck = [c for c in checkpoints if c.metadata.task == task]
        spec = ck[0].arch()
        same_layout = [c for c in checkpoints if c.layout == ck[0].layout]
        recon = evaluate_state_dicts(spec, [vqvae.reconstruct(c.state_dict(), c.layout) for c in ck], task)
        gen = zoo.generate(task, spec)
        gen_acc = evaluate_state_dicts(spec, gen.state_dicts, task)
        train_vec = torch.stack([c.vector() for c in ck])
        scale = pairwise_scale(train_vec)
        adjacent += adjacent_epoch_novelty(ck, scale)
        # the corpus stores fractions; results use percent
        zoo_acc = [100.0 * c.metadata.test_acc for c in ck]
        rand_acc = evaluate_state_dicts(
            spec, random_init_state_dicts(spec, config.num_random_init, 1000), task
        )
        train_tok = torch.stack([train_tokens[c.metadata.model_id] for c in same_layout])
        own_tok = torch.stack([train_tokens[c.metadata.model_id] for c in ck])
        copies = count_copies(gen.token_ids, train_tok)
        own_copies = count_copies(gen.token_ids, own_tok)
        gen_vec = torch.stack([ck[0].layout.vectorize(sd) for sd in gen.state_dicts])
        nov = novelty(gen_vec, train_vec, scale)
        new_only = {}
        if gen_cfg.novel_candidates:
            new = zoo.generate_new(task, spec)
            new_acc = evaluate_state_dicts(spec, new.state_dicts, task)
            new_vec = torch.stack([ck[0].layout.vectorize(sd) for sd in new.state_dicts])
            new_only = {
                "new_only_acc": new_acc,
                "new_only_mean_acc": finite_mean(new_acc),
                "new_only_over_zoo": finite_mean(new_acc) / finite_mean(zoo_acc),
                "new_only_copies": sum(count_copies(new.token_ids, train_tok)),
                "new_only_candidates": new.num_candidates,
                "new_only_candidate_copies": new.candidate_copies,
                "new_only_novelty": novelty(new_vec, train_vec, scale).novelty,
            }
        per_task[task] = {
            "instruction": get_task(task).instruction,
            "architecture": spec.text(),
            "num_checkpoints": len(ck),
            "zoo_mean_acc": finite_mean(zoo_acc),
            "zoo_min_acc": min(zoo_acc),
            "zoo_max_acc": max(zoo_acc),
            "recon_acc": finite_mean(recon),
            "recon_loss_points": finite_mean([a - r for a, r in zip(zoo_acc, recon, strict=True)]),
            "generated_acc": gen_acc,
            "generated_mean_acc": finite_mean(gen_acc),
            "generated_best_acc": max(gen_acc),
            "generated_over_zoo": finite_mean(gen_acc) / finite_mean(zoo_acc),
            "random_init_acc": finite_mean(rand_acc),
            "copies": sum(copies),
            "copies_of_this_task": sum(own_copies),
            "copies_of_other_tasks": sum(c and not o for c, o in zip(copies, own_copies, strict=True)),
            "novelty": nov.novelty,
            **new_only,
        }
        logger.info(
            "%s: zoo %.1f recon %.1f generated %.1f random %.1f copies %d/%d",
            task,
            per_task[task]["zoo_mean_acc"],
            per_task[task]["recon_acc"],
            per_task[task]["generated_mean_acc"],
            per_task[task]["random_init_acc"],
            sum(copies),
            len(copies),
        )

    # 4. speed: one model and 100 models after the pipeline is loaded (one warm-up call first)
    task0 = tasks[0]
    spec0 = next(c for c in checkpoints if c.metadata.task == task0).arch()
    pipe(get_task(task0).instruction, architecture=spec0, num_samples=1, seed=1)
    t1 = pipe(get_task(task0).instruction, architecture=spec0, dataset=task0, num_samples=1, seed=2).seconds
    t100 = pipe(
        get_task(task0).instruction, architecture=spec0, dataset=task0, num_samples=100, seed=3
    ).seconds

    summary = {
        "mean_generated_over_zoo": finite_mean([r["generated_over_zoo"] for r in per_task.values()]),
        "min_generated_over_zoo": min(r["generated_over_zoo"] for r in per_task.values()),
        "mean_recon_loss_points": finite_mean([r["recon_loss_points"] for r in per_task.values()]),
        "total_copies": sum(r["copies"] for r in per_task.values()),
        "total_samples": sum(len(r["generated_acc"]) for r in per_task.values()),
        "adjacent_epochs_novelty": finite_mean(adjacent),
        **(
            {
                "new_only_mean_over_zoo": finite_mean([r["new_only_over_zoo"] for r in per_task.values()]),
                "new_only_min_over_zoo": min(r["new_only_over_zoo"] for r in per_task.values()),
                "new_only_copies": sum(r["new_only_copies"] for r in per_task.values()),
                "new_only_mean_novelty": finite_mean(
                    [x for r in per_task.values() for x in r["new_only_novelty"]]
                ),
                "new_only_working": sum(
                    a >= 0.9 * r["zoo_mean_acc"] for r in per_task.values() for a in r["new_only_acc"]
                ),
            }
            if gen_cfg.novel_candidates
            else {}
        ),
        "num_checkpoints": len(checkpoints),
        "prior_parameters": sum(p.numel() for p in pipe.prior.parameters()),
        "vqvae_parameters": sum(p.numel() for p in pipe.vqvae.parameters()),
    }
    result = DemoResult(
        tasks=per_task,
        generate_seconds_one=t1,
        generate_seconds_100=t100,
        summary=summary,
        timings={**timings, "total_seconds": time.perf_counter() - t_start},
        config=asdict(config),
    )
    # 5. save: pipeline (with a card carrying these figures), results, plot
    pipe.prior.config.training_summary = {
        **(pipe.prior.config.training_summary or {}),
        "corpus": f"igpg_hf zoo preset {config.zoo_preset!r}",
        "demo_results": summary,
    }
    with atomic_directory(out / "pipeline") as tmp:  # whole or not at all: a kill leaves no half pipeline
        pipe.save_pretrained(tmp)
    atomic_write_json(out / "results.json", result.to_dict())
    plot_demo(result, out / "results.png")
    lock.release()
    return result


def plot_demo(result: DemoResult | dict, path: str | os.PathLike) -> Path:
    """Per task: random init, zoo mean, reconstruction, and every generated sample (copies marked)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    per_task = result.tasks if isinstance(result, DemoResult) else result["tasks"]
    tasks = list(per_task)
    fig, ax = plt.subplots(figsize=(1.8 * len(tasks) + 4, 4))
    w = 0.2
    for i, t in enumerate(tasks):
        r = per_task[t]
        ax.bar(i - w, r["random_init_acc"], w, color="#bbbbbb", label="random init" if i == 0 else None)
        ax.bar(i, r["zoo_mean_acc"], w, color="#4c72b0", label="zoo mean" if i == 0 else None)
        ax.bar(i + w, r["recon_acc"], w, color="#55a868", label="VQ-VAE reconstruction" if i == 0 else None)
        xs = [i + 2 * w] * len(r["generated_acc"])
        ax.scatter(
            xs,
            r["generated_acc"],
            color="#c44e52",
            s=14,
            zorder=3,
            label="generated samples" if i == 0 else None,
        )
        ax.annotate(f"{r['copies']}/{len(r['generated_acc'])} copies", (i + 0.1, 3), fontsize=7, ha="center")
        if "new_only_acc" in r:
            ax.scatter(
                [i + 2.8 * w] * len(r["new_only_acc"]),
                r["new_only_acc"],
                color="#8172b2",
                marker="x",
                s=16,
                zorder=3,
                label="generated, copies excluded" if i == 0 else None,
            )
    ax.set_xticks(range(len(tasks)), tasks, rotation=20, fontsize=8)
    ax.set_ylabel("test accuracy (%)")
    ax.set_ylim(0, 100)
    ax.set_title("IGPG demo: generated weights vs zoo, reconstruction and random init")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)
    return Path(path)
