"""The end-to-end demo: build a small offline zoo, train tokenizer and prior, generate, evaluate honestly.

``igpg-hf demo --out DIR`` runs `run_demo`. Every stage resumes: the zoo build continues where it
stopped, trained models are reused from ``DIR/tokenizer/final`` and ``DIR/prior/final``, and a
killed training run resumes from its last checkpoint. Results go to ``DIR/results.json`` (per task:
zoo mean, each generated sample's accuracy, random init, tokenizer reconstruction, copies of
training checkpoints, novelty) and ``DIR/results.png``; the trained pipeline to ``DIR/pipeline``.
"""

from __future__ import annotations

import logging
import math
import os
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from ..conditioning import load_text_encoder
from ..configuration_igpg import IGPGPriorConfig, IGPGVQVAEConfig
from ..corpus import WeightCorpus
from ..files import FolderLock, atomic_directory, atomic_path, recover_directory, remove_stale_temporaries
from ..modeling_prior import IGPGPriorModel
from ..modeling_vqvae import IGPGVQVAEModel
from ..pipeline_igpg import IGPGPipeline
from ..training import (
    PriorTrainingArgs,
    TokenizerTrainingArgs,
    atomic_write_json,
    train_prior,
    train_tokenizer,
)
from ..zoo.builder import ZooConfig, build_zoo
from ..zoo.tasks import get_task
from .metrics import evaluate_state_dicts
from .novelty import adjacent_epoch_novelty, count_copies, novelty, pairwise_scale

logger = logging.getLogger(__name__)

__all__ = ["DemoConfig", "run_demo", "train_pipeline", "plot_demo"]


@dataclass
class DemoConfig:
    """Sizes and settings of one demo run."""

    zoo_preset: str = "demo"
    vqvae_preset: str = "demo"
    prior_preset: str = "demo"
    tokenizer: TokenizerTrainingArgs = field(default_factory=TokenizerTrainingArgs)
    prior: PriorTrainingArgs = field(default_factory=PriorTrainingArgs)
    num_samples: int = 10
    # plain sampling: nucleus (top-p 0.9) at temperature 1; measured on the demo zoo it gave working nets
    # for every task while T = 0.8 without top-p drew broken sequences (see README, Results)
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = 0.9
    seed: int = 0
    num_random_init: int = 10
    # "new only": draw novel_candidates x num_samples sequences at a hotter setting, drop token-for-token
    # copies of training checkpoints, keep the most likely under the prior (0 disables this row)
    novel_candidates: int = 8
    novel_temperature: float = 1.5
    novel_top_k: int | None = 3

    @classmethod
    def from_preset(cls, name: str) -> DemoConfig:
        """ "demo": the README's run (about 10 minutes on 2 cores); "smoke": seconds, for tests."""
        if name == "demo":
            return cls()
        if name == "smoke":
            return cls(
                zoo_preset="tiny",
                vqvae_preset="tiny",
                prior_preset="tiny",
                tokenizer=TokenizerTrainingArgs(steps=60, batch_size=64, checkpoint_every=30, log_every=20),
                prior=PriorTrainingArgs(steps=40, batch_size=8, checkpoint_every=20, log_every=10),
                num_samples=3,
                num_random_init=2,
            )
        raise ValueError(f"unknown demo preset {name!r}; known: demo, smoke")


def train_pipeline(
    corpus: WeightCorpus | list, out_dir: str | os.PathLike, config: DemoConfig, progress: bool = True
) -> IGPGPipeline:
    """Train (or reuse, or resume) tokenizer and prior on a corpus; save and return the pipeline."""
    out = Path(out_dir)
    # a zoo built by several workers stores runs in the order they finished; training follows corpus order, so
    # sort by id: the same zoo then gives the same pipeline (two builds of one zoo gave related-zoo figures
    # 25 points apart before this)
    checkpoints = sorted(corpus, key=lambda c: c.metadata.model_id)
    text_encoder, tokenizer = load_text_encoder()
    tok_final = out / "tokenizer" / "final"
    if (tok_final / "config.json").exists():
        vqvae = IGPGVQVAEModel.from_pretrained(tok_final)
    else:
        vqvae = train_tokenizer(
            checkpoints,
            IGPGVQVAEConfig.from_preset(config.vqvae_preset),
            out / "tokenizer",
            config.tokenizer,
            progress=progress,
        )
    prior_final = out / "prior" / "final"
    if (prior_final / "config.json").exists():
        prior = IGPGPriorModel.from_pretrained(prior_final)
    else:
        # context: the longest sequence in the corpus plus the prefix, as in the paper
        longest = max(vqvae.num_tokens(c.layout) for c in checkpoints)
        preset = IGPGPriorConfig.PRESETS[config.prior_preset]
        n_pos = max(preset["n_positions"], longest + 4)
        pconf = IGPGPriorConfig.from_preset(
            config.prior_preset,
            vocab_size=vqvae.config.vocab_size,
            tokens_per_chunk=vqvae.config.tokens_per_chunk,
            n_positions=n_pos,
            text_encoder_name="sentence-transformers/all-MiniLM-L6-v2",
        )
        prior = train_prior(
            checkpoints, vqvae, text_encoder, tokenizer, pconf, out / "prior", config.prior, progress=progress
        )
    pipe = IGPGPipeline(vqvae=vqvae, prior=prior, text_encoder=text_encoder, tokenizer=tokenizer)
    return pipe


def _mean(xs: list[float]) -> float:
    xs = [x for x in xs if not math.isnan(x)]
    return statistics.fmean(xs) if xs else float("nan")


def run_demo(out_dir: str | os.PathLike, config: DemoConfig | None = None, progress: bool = True) -> dict:
    """Build zoo -> train tokenizer and prior -> generate for every zoo task -> evaluate; returns the results."""
    config = config or DemoConfig()
    out = Path(out_dir)
    lock = FolderLock(out, "demo output folder").acquire()  # one demo per folder; checks it is writable
    recover_directory(out / "pipeline")  # a kill between the two renames of the pipeline save
    remove_stale_temporaries(out)
    t_start = time.perf_counter()
    timings: dict[str, float] = {}

    # 1. the zoo (resumes if a build was interrupted)
    t = time.perf_counter()
    corpus = build_zoo(ZooConfig.from_preset(config.zoo_preset), out / "zoo", progress=progress)
    checkpoints = list(corpus)
    timings["zoo_seconds"] = time.perf_counter() - t

    # 2. tokenizer and prior
    t = time.perf_counter()
    pipe = train_pipeline(checkpoints, out, config, progress=progress)
    timings["training_seconds"] = time.perf_counter() - t
    vqvae = pipe.vqvae

    # 3. per task: zoo, tokenizer reconstruction, generated samples, random init, copies, novelty
    train_tokens = {c.metadata.model_id: vqvae.encode(c.state_dict(), c.layout) for c in checkpoints}
    tasks = sorted({c.metadata.task for c in checkpoints})
    per_task, adjacent = {}, []  # adjacent: distances between kept epochs of one run, the novelty scale
    for task in tasks:
        ck = [c for c in checkpoints if c.metadata.task == task]
        spec = ck[0].arch()
        same_layout = [c for c in checkpoints if c.layout == ck[0].layout]
        recon = evaluate_state_dicts(spec, [vqvae.reconstruct(c.state_dict(), c.layout) for c in ck], task)
        gen = pipe(
            get_task(task).instruction,
            architecture=spec,
            dataset=task,
            num_samples=config.num_samples,
            seed=config.seed,
            temperature=config.temperature,
            top_k=config.top_k,
            top_p=config.top_p,
        )
        gen_acc = evaluate_state_dicts(spec, gen.state_dicts, task)
        train_vec = torch.stack([c.vector() for c in ck])
        scale = pairwise_scale(train_vec)
        adjacent += adjacent_epoch_novelty(ck, scale)
        zoo_acc = [100.0 * c.metadata.test_acc for c in ck]  # the corpus stores fractions; reports use %
        rand = []
        for s in range(config.num_random_init):
            torch.manual_seed(1000 + s)
            rand.append(spec.build().state_dict())
        rand_acc = evaluate_state_dicts(spec, rand, task)
        train_tok = torch.stack([train_tokens[c.metadata.model_id] for c in same_layout])
        own_tok = torch.stack([train_tokens[c.metadata.model_id] for c in ck])
        copies = count_copies(gen.token_ids, train_tok)
        own_copies = count_copies(gen.token_ids, own_tok)
        gen_vec = torch.stack([ck[0].layout.vectorize(sd) for sd in gen.state_dicts])
        nov = novelty(gen_vec, train_vec, scale)
        new_only = {}
        if config.novel_candidates:
            new = pipe(
                get_task(task).instruction,
                architecture=spec,
                dataset=task,
                num_samples=config.num_samples,
                seed=config.seed,
                temperature=config.novel_temperature,
                top_k=config.novel_top_k,
                candidates_per_sample=config.novel_candidates,
                exclude_copies=True,
            )
            new_acc = evaluate_state_dicts(spec, new.state_dicts, task)
            new_vec = torch.stack([ck[0].layout.vectorize(sd) for sd in new.state_dicts])
            new_only = {
                "new_only_acc": new_acc,
                "new_only_mean_acc": _mean(new_acc),
                "new_only_over_zoo": _mean(new_acc) / _mean(zoo_acc),
                "new_only_copies": sum(count_copies(new.token_ids, train_tok)),
                "new_only_candidates": new.num_candidates,
                "new_only_candidate_copies": new.candidate_copies,
                "new_only_novelty": novelty(new_vec, train_vec, scale).novelty,
            }
        per_task[task] = {
            "instruction": get_task(task).instruction,
            "architecture": spec.text(),
            "num_checkpoints": len(ck),
            "zoo_mean_acc": _mean(zoo_acc),
            "zoo_min_acc": min(zoo_acc),
            "zoo_max_acc": max(zoo_acc),
            "recon_acc": _mean(recon),
            "recon_loss_points": _mean([a - r for a, r in zip(zoo_acc, recon, strict=True)]),
            "generated_acc": gen_acc,
            "generated_mean_acc": _mean(gen_acc),
            "generated_best_acc": max(gen_acc),
            "generated_over_zoo": _mean(gen_acc) / _mean(zoo_acc),
            "random_init_acc": _mean(rand_acc),
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

    results = {
        "tasks": per_task,
        "generate_seconds_one": t1,
        "generate_seconds_100": t100,
        "summary": {
            "mean_generated_over_zoo": _mean([r["generated_over_zoo"] for r in per_task.values()]),
            "min_generated_over_zoo": min(r["generated_over_zoo"] for r in per_task.values()),
            "mean_recon_loss_points": _mean([r["recon_loss_points"] for r in per_task.values()]),
            "total_copies": sum(r["copies"] for r in per_task.values()),
            "total_samples": sum(len(r["generated_acc"]) for r in per_task.values()),
            "adjacent_epochs_novelty": _mean(adjacent),
            **(
                {
                    "new_only_mean_over_zoo": _mean([r["new_only_over_zoo"] for r in per_task.values()]),
                    "new_only_min_over_zoo": min(r["new_only_over_zoo"] for r in per_task.values()),
                    "new_only_copies": sum(r["new_only_copies"] for r in per_task.values()),
                    "new_only_mean_novelty": _mean(
                        [x for r in per_task.values() for x in r["new_only_novelty"]]
                    ),
                    "new_only_working": sum(
                        a >= 0.9 * r["zoo_mean_acc"] for r in per_task.values() for a in r["new_only_acc"]
                    ),
                }
                if config.novel_candidates
                else {}
            ),
            "num_checkpoints": len(checkpoints),
            "prior_parameters": sum(p.numel() for p in pipe.prior.parameters()),
            "vqvae_parameters": sum(p.numel() for p in pipe.vqvae.parameters()),
        },
        "timings": {**timings, "total_seconds": time.perf_counter() - t_start},
        "config": asdict(config),
    }
    # 5. save: pipeline (with a card carrying these figures), results, plot
    pipe.prior.config.training_summary = {
        **(pipe.prior.config.training_summary or {}),
        "corpus": f"igpg_hf zoo preset {config.zoo_preset!r}",
        "demo_results": results["summary"],
    }
    with atomic_directory(out / "pipeline") as tmp:  # whole or not at all: a kill leaves no half pipeline
        pipe.save_pretrained(tmp)
    atomic_write_json(out / "results.json", results)
    plot_demo(results, out / "results.png")
    lock.release()
    return results


def plot_demo(results: dict, path: str | os.PathLike) -> Path:
    """Per task: random init, zoo mean, reconstruction, and every generated sample (copies marked)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = list(results["tasks"])
    fig, ax = plt.subplots(figsize=(1.8 * len(tasks) + 4, 4))
    w = 0.2
    for i, t in enumerate(tasks):
        r = results["tasks"][t]
        ax.bar(i - w, r["random_init_acc"], w, color="#bbbbbb", label="random init" if i == 0 else None)
        ax.bar(i, r["zoo_mean_acc"], w, color="#4c72b0", label="zoo mean" if i == 0 else None)
        ax.bar(
            i + w, r["recon_acc"], w, color="#55a868", label="tokenizer reconstruction" if i == 0 else None
        )
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
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)
    return path
