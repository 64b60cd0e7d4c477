"""The benchmark: seen and unseen tasks, unseen architectures, tokenizer fidelity, novelty, speed and memory.

``igpg-hf bench --preset default --out DIR`` runs `run_benchmark`, which writes ``DIR/results.json`` (one
top-level key per part: ``seen``, ``unseen``, ``cross_arch``, ``fidelity``, ``novelty``, ``speed``),
``DIR/report.md`` and PNG plots. Zoos and trained pipelines in DIR are reused, and every finished part is
cached in ``DIR/parts/`` (keyed by the config), so a killed run resumes. Every generated net is compared
with the baselines of Zeng et al. 2025 (`igpg_hf.evaluation.baselines`), not only with random init.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
import resource
import statistics
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import torch

from ..training import PriorTrainingArgs, VQVAETrainingArgs, atomic_write_json
from ..zoo.tasks import get_task, load_task_data
from .baselines import (
    add_noise,
    average_state_dicts,
    finetune_job,
    labelled_subset,
    random_init_state_dicts,
    retrieve_by_embedding,
    select_best,
)
from .demo import DemoConfig

logger = logging.getLogger(__name__)

__all__ = ["BenchConfig", "run_benchmark", "measure_peak"]

PARTS = ("seen", "unseen", "cross_arch", "fidelity", "novelty", "speed")
_SMALL = dict(
    vqvae_preset="tiny",
    prior_preset="tiny",
    num_samples=3,
    num_random_init=2,
    tokenizer=VQVAETrainingArgs(steps=60, batch_size=64, checkpoint_every=1000, log_every=20),
    prior=PriorTrainingArgs(steps=40, batch_size=8, checkpoint_every=1000, log_every=10),
)


@dataclass
class BenchConfig:
    """Zoos, pipelines and evaluation settings of one benchmark run (`from_preset`: smoke, default, gpu)."""

    name: str = "default"
    seen: DemoConfig = field(default_factory=DemoConfig)
    seen_zoo_changes: dict[str, Any] = field(default_factory=dict)
    # related and ResNet zoos hold more distinct weights than the "demo" tokenizer memorizes in 3,000 steps (its
    # reconstructions lost 4.8 and 85 accuracy points): they use the "fsq" tokenizer preset at lr 3e-3
    related: DemoConfig = field(
        default_factory=lambda: DemoConfig(
            zoo_preset="related",
            vqvae_preset="fsq",
            tokenizer=VQVAETrainingArgs(lr=3e-3),
            prior=PriorTrainingArgs(steps=800),
        )
    )
    related_zoo_changes: dict[str, Any] = field(default_factory=lambda: {"seeds": list(range(8))})
    unseen_tasks: list[str] = field(default_factory=lambda: ["mnist_rot45", "mnist_rot135", "mnist_permute4"])
    unseen_related_tasks: list[str] = field(default_factory=lambda: ["mnist_rot45", "mnist_rot135"])
    cross: DemoConfig = field(
        default_factory=lambda: DemoConfig(
            zoo_preset="",
            num_samples=5,
            num_random_init=3,
            vqvae_preset="fsq",
            tokenizer=VQVAETrainingArgs(lr=3e-3),
            prior=PriorTrainingArgs(steps=1000, use_dataset_condition=False),
        )
    )
    cross_task: str = "digits"
    cross_train_blocks: list[list[int]] = field(
        default_factory=lambda: [[1, 1, 1], [1, 2, 1], [2, 1, 2], [2, 2, 2], [2, 3, 2], [3, 3, 3]]
    )
    cross_test_blocks: list[list[int]] = field(default_factory=lambda: [[1, 1, 2], [2, 2, 3], [4, 4, 4]])
    cross_seen_blocks: list[list[int]] = field(default_factory=lambda: [[1, 2, 1], [2, 2, 2]])
    cross_seeds: list[int] = field(default_factory=lambda: list(range(8)))
    cross_epochs: int = 20
    cross_keep_epochs: list[int] = field(
        default_factory=lambda: [20]
    )  # one per run: fewer chunks, better fidelity
    cross_lr: float = 3e-3
    cross_n_positions: int = 256
    finetune_epochs: list[int] | None = None  # None: [1, 5, N] with N the zoo's training epochs
    finetune_steps: list[int] = field(default_factory=lambda: [10, 25, 50])
    finetune_lr: float = 1e-3
    finetune_samples: int = 3  # generated samples, zoo checkpoints and random inits fine-tuned per task
    best_of: int = 5
    labelled_examples: int = 500
    noise_scale: float = 0.1
    noise_curve_scales: list[float] = field(
        default_factory=lambda: [0, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1, 1.5]
    )
    noise_curve_checkpoints: int = 3
    speed_samples: int = 100
    speed_kv_samples: int = 10
    speed_sizes: list[dict] = field(
        default_factory=lambda: [
            {"family": "cnn"},
            {"family": "resnet", "input_size": 8, "width": 4},
            {"family": "resnet", "blocks": [3, 3, 3], "width": 16},
            {"family": "resnet", "blocks": [3, 3, 3], "width": 32},
            {"family": "resnet", "blocks": [5, 5, 5], "width": 56},
            {"family": "resnet", "blocks": [9, 9, 9], "width": 88},
        ]
    )
    workers: int = 2
    threads: int | None = None
    device: str = "cpu"  # where the pipelines generate ("cuda" for the gpu preset); evaluation stays on CPU
    # held-out tasks also get label-aligned rows: generated and retrieved nets with their output units reordered
    # on the same labelled examples as best_on_500 (`igpg_hf.label_alignment`)
    align_labels: bool = True

    @classmethod
    def from_preset(cls, name: str, **changes: Any) -> BenchConfig:
        """ "smoke" (CI, about a minute), "default" (the README's figures, < 1 h on 2 cores), "gpu" (larger)."""
        if name == "default":
            return cls(**changes)
        if name == "smoke":
            digits = ["digits", "digits_rot90", "digits_rot180"]
            small = dict(
                finetune_steps=[5, 10],
                finetune_epochs=[1, 2],
                finetune_samples=2,
                best_of=2,
                noise_curve_checkpoints=1,
                noise_curve_scales=[0, 0.1, 0.5],
                speed_samples=5,
                speed_kv_samples=2,
                workers=1,
                seen=DemoConfig(zoo_preset="tiny", **_SMALL),
                seen_zoo_changes={"tasks": digits[:2]},
                related=DemoConfig(zoo_preset="related", **_SMALL),
                unseen_tasks=["digits_rot270"],
                related_zoo_changes={"tasks": digits, "seeds": [0, 1], "epochs": 2, "keep_epochs": [2]},
                unseen_related_tasks=["digits_rot270"],
                cross=DemoConfig(zoo_preset="", **_SMALL),
                cross_train_blocks=[[1, 1, 1], [1, 2, 1]],
                cross_test_blocks=[[1, 1, 2]],
                cross_seen_blocks=[[1, 1, 1]],
                cross_seeds=[0],
                cross_epochs=2,
                cross_keep_epochs=[2],
                cross_n_positions=128,
                speed_sizes=[{"family": "cnn"}, {"family": "resnet", "width": 16}],
                threads=1,
            )
            return cls(name="smoke", **{**small, **changes})
        if name == "gpu":
            big = dict(
                vqvae_preset="base",
                prior_preset="small",
                num_samples=20,
                tokenizer=VQVAETrainingArgs(steps=20000),
                prior=PriorTrainingArgs(steps=20000, batch_size=64),
            )
            gpu = dict(
                seen=DemoConfig(**big),
                related=DemoConfig(zoo_preset="related", **big),
                related_zoo_changes={},
                cross=DemoConfig(zoo_preset="", **big),
                cross_seeds=list(range(20)),
                cross_train_blocks=[[a, b, c] for a in (1, 2, 3) for b in (1, 2, 3) for c in (1, 2, 3)],
                cross_test_blocks=[[1, 1, 4], [2, 4, 2], [4, 4, 4], [5, 5, 5]],
                cross_epochs=40,
                cross_keep_epochs=[36, 38, 40],
                cross_n_positions=1024,
                finetune_samples=10,
                workers=8,
                device="cuda",
                speed_sizes=[*cls().speed_sizes, {"family": "resnet", "blocks": [9, 9, 9], "width": 176}],
            )
            return cls(name="gpu", **{**gpu, **changes})
        raise ValueError(f"unknown benchmark preset {name!r}; known: smoke, default, gpu")


# ----------------------------------------------------------------------------------------- helpers
def _mean(xs) -> float:
    xs = [x for x in xs if x is not None and not math.isnan(x)]
    return statistics.fmean(xs) if xs else float("nan")


def _std(xs) -> float:
    xs = [x for x in xs if not math.isnan(x)]
    return statistics.pstdev(xs) if len(xs) > 1 else 0.0


def _rss_mb(field_name: str) -> float:
    text = Path("/proc/self/status").read_text()
    return int(re.search(rf"{field_name}:\s+(\d+)", text).group(1)) / 1024


def measure_peak(fn: Callable[[], Any]) -> tuple[Any, float, float, str]:
    """(result, seconds, peak resident memory above the start in MB, method) of calling ``fn``."""
    try:  # Linux: reset the high-water mark, so VmHWM - VmRSS is this call's peak growth
        Path("/proc/self/clear_refs").write_text("5")
        start, method = (
            _rss_mb("VmRSS"),
            "peak RSS (VmHWM after reset via /proc/self/clear_refs) minus RSS at start",
        )
    except OSError:
        start, method = (
            resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "ru_maxrss delta (growth only)",
        )
    t = time.perf_counter()
    out = fn()
    seconds = time.perf_counter() - t
    peak = (
        _rss_mb("VmHWM")
        if method.startswith("peak")
        else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    )
    return out, seconds, max(0.0, peak - start), method


class _Pool:
    """Fine-tuning / training jobs in ``workers`` single-threaded processes (in-process when workers <= 1)."""

    def __init__(self, workers: int):
        self.workers, self._ex = workers, None

    def map(self, fn, jobs: list) -> list:
        if self.workers <= 1 or len(jobs) <= 1:
            return [fn(j) for j in jobs]
        if self._ex is None:
            import multiprocessing as mp

            self._ex = ProcessPoolExecutor(
                self.workers,
                mp_context=mp.get_context("spawn"),
                initializer=torch.set_num_threads,
                initargs=(1,),
            )
        return list(self._ex.map(fn, jobs, chunksize=1))

    def close(self) -> None:
        if self._ex is not None:
            self._ex.shutdown()


@dataclass
class _Zoo:
    """A corpus with its trained pipeline and what the parts share (accuracies, tokens, embeddings, samples)."""

    name: str
    pipe: Any
    checkpoints: list
    epochs: int
    settings: DemoConfig

    def __post_init__(self):
        self.groups: dict[
            tuple[str, str], list
        ] = {}  # (task, architecture text) -> checkpoints, last epochs first
        for c in sorted(
            self.checkpoints, key=lambda c: (-c.metadata.epoch, c.metadata.seed, c.metadata.model_id)
        ):
            self.groups.setdefault((c.metadata.task, c.metadata.arch_text), []).append(c)
        self.by_task = {t: cs for (t, _), cs in self.groups.items()}  # zoos with one architecture per task
        self._gen: dict[tuple, Any] = {}

    @cached_property
    def accuracy(self) -> dict[str, float]:
        """Test accuracy (%) of every checkpoint, measured here (model_id -> accuracy)."""
        from .metrics import evaluate_state_dicts

        return {
            c.metadata.model_id: a
            for cs in self.groups.values()
            for c, a in zip(
                cs,
                evaluate_state_dicts(cs[0].arch(), [c.state_dict() for c in cs], cs[0].metadata.task),
                strict=True,
            )
        }

    @cached_property
    def tokens(self) -> dict[str, torch.Tensor]:
        return {
            c.metadata.model_id: self.pipe.vqvae.encode(c.state_dict(), c.layout) for c in self.checkpoints
        }

    def embed(self, text: str) -> torch.Tensor:
        from ..conditioning import encode_text

        return encode_text([text], self.pipe.text_encoder, self.pipe.tokenizer)[0].cpu()

    @cached_property
    def task_embeddings(self) -> dict[str, torch.Tensor]:
        return {
            t: self.embed(cs[0].metadata.instruction or get_task(t).instruction)
            for t, cs in self.by_task.items()
        }

    def nearest_task(self, task: str) -> str:
        return retrieve_by_embedding(self.embed(get_task(task).instruction), self.task_embeddings)

    def generate(self, task: str, spec, dataset: Any = "task", n: int | None = None):
        """Seeded samples for a task (memoized: every part sees the same samples)."""
        s, n = self.settings, n or self.settings.num_samples
        key = (task, spec.to_json(), dataset, n)
        if key not in self._gen:
            self._gen[key] = self.pipe(
                get_task(task).instruction,
                architecture=spec,
                dataset=task if dataset == "task" else dataset,
                num_samples=n,
                seed=s.seed,
                temperature=s.temperature,
                top_k=s.top_k,
                top_p=s.top_p,
            )
        return self._gen[key]

    def generate_new(self, task: str, spec):
        """Seeded samples with token-for-token copies of training checkpoints excluded (DemoConfig's new-only setting)."""
        s = self.settings
        key = ("new", task, spec.to_json())
        if key not in self._gen:
            self._gen[key] = self.pipe(
                get_task(task).instruction,
                architecture=spec,
                dataset=task,
                num_samples=s.num_samples,
                seed=s.seed,
                temperature=s.novel_temperature,
                top_k=s.novel_top_k,
                candidates_per_sample=s.novel_candidates,
                exclude_copies=True,
            )
        return self._gen[key]


# ----------------------------------------------------------------------------------------- zoos and pipelines
def _load_zoo(
    name: str,
    settings: DemoConfig,
    changes: dict,
    out: Path,
    cfg: BenchConfig,
    corpus: str | None,
    pipeline: str | None,
    timings: dict,
    progress: bool,
) -> _Zoo:
    from ..corpus import WeightCorpus
    from ..pipeline_igpg import IGPGPipeline
    from ..zoo.builder import ZooConfig, build_zoo
    from .demo import train_pipeline

    t = time.perf_counter()
    zc = ZooConfig.from_preset(settings.zoo_preset, **changes)
    if corpus:
        checkpoints = list(WeightCorpus.load(corpus))
    else:  # zoo_builds.json keeps the stats of the build that trained the zoo (a resumed build trains nothing)
        stats = out / f"zoo_{name}" / "build_stats.json"
        before = [json.loads(stats.read_text())] if stats.exists() else []
        checkpoints = list(build_zoo(zc, out / f"zoo_{name}", num_workers=cfg.workers, progress=progress))
        for st in [*before, json.loads(stats.read_text())]:
            _record_build(out, name, st)
    timings[f"zoo_{name}_seconds"] = time.perf_counter() - t
    t = time.perf_counter()
    pipe = (
        IGPGPipeline.from_pretrained(pipeline)
        if pipeline
        else train_pipeline(checkpoints, out / f"pipeline_{name}", settings, progress=progress)
    )
    timings[f"pipeline_{name}_seconds"] = time.perf_counter() - t
    epochs = max(c.metadata.hyperparams.get("epochs", zc.epochs) for c in checkpoints)
    return _Zoo(name, pipe.to(cfg.device), checkpoints, int(epochs), settings)


def _record_build(out: Path, name: str, stats: dict) -> None:
    """Keep in ``zoo_builds.json`` the stats of the build that trained the most runs of a zoo (resumes train few)."""
    path = out / "zoo_builds.json"
    builds = json.loads(path.read_text()) if path.exists() else {}
    if stats.get("runs_trained", 0) > builds.get(name, {}).get("runs_trained", 0):
        builds[name] = stats
        atomic_write_json(path, builds)


def _resnet_zoo(cfg: BenchConfig, out: Path, pool: _Pool, timings: dict, progress: bool) -> _Zoo:
    """A zoo of small ResNets of several depths on one task (one run per block config and seed), and its pipeline."""
    from ..configuration_igpg import IGPGPriorConfig, IGPGVQVAEConfig
    from ..corpus import CheckpointMetadata, CorpusWriter
    from ..modeling_prior import IGPGPriorModel
    from ..modeling_vqvae import IGPGVQVAEModel
    from ..pipeline_igpg import IGPGPipeline
    from ..training import train_prior, train_vqvae
    from ..zoo.architectures import architecture_for_task
    from ..zoo.training import HyperParams
    from .baselines import train_job

    t = time.perf_counter()
    task, s = cfg.cross_task, cfg.cross
    writer = CorpusWriter(out / "zoo_resnet")
    runs = [
        (b, seed, f"{task}-resnet{''.join(map(str, b))}-s{seed}")
        for b in cfg.cross_train_blocks
        for seed in cfg.cross_seeds
    ]
    todo = [r for r in runs if not {f"{r[2]}-e{e}" for e in cfg.cross_keep_epochs} <= writer.done_ids]
    hp = lambda seed: HyperParams(seed=seed, lr=cfg.cross_lr, epochs=cfg.cross_epochs)  # noqa: E731
    spec = lambda b: architecture_for_task(task, "resnet_small", blocks=b)  # noqa: E731
    jobs = [(spec(b).to_json(), task, hp(seed).to_dict(), cfg.cross_keep_epochs) for b, seed, _ in todo]
    for (b, seed, run_id), result in zip(todo, pool.map(train_job, jobs), strict=True):
        for epoch, sd, metrics in result:
            writer.add(
                sd,
                CheckpointMetadata(
                    model_id=f"{run_id}-e{epoch}",
                    run_id=run_id,
                    task=task,
                    instruction=get_task(task).instruction,
                    arch_spec=spec(b),
                    hyperparams=hp(seed).to_dict(),
                    seed=seed,
                    epoch=epoch,
                    **metrics,
                ),
            )
    planned = {f"{r[2]}-e{e}" for r in runs for e in cfg.cross_keep_epochs}
    checkpoints = [c for c in writer.close() if c.metadata.model_id in planned]
    timings["zoo_resnet_seconds"] = time.perf_counter() - t
    _record_build(
        out,
        "resnet",
        {
            "runs_trained": len(todo),
            "seconds": timings["zoo_resnet_seconds"],
            "num_workers": cfg.workers,
            "runs_total": len(runs),
        },
    )
    t, base = time.perf_counter(), out / "pipeline_resnet"
    from ..conditioning import load_text_encoder

    enc, tok = load_text_encoder()
    if (base / "tokenizer" / "final" / "config.json").exists():
        vq = IGPGVQVAEModel.from_pretrained(base / "tokenizer" / "final")
    else:
        vq = train_vqvae(
            checkpoints,
            IGPGVQVAEConfig.from_preset(s.vqvae_preset),
            base / "tokenizer",
            s.tokenizer,
            progress=progress,
        )
    if (base / "prior" / "final" / "config.json").exists():
        prior = IGPGPriorModel.from_pretrained(base / "prior" / "final")
    else:  # a context shorter than the models: trained and sampled block by block, as in the paper
        pc = IGPGPriorConfig.from_preset(
            s.prior_preset,
            vocab_size=vq.config.vocab_size,
            n_positions=cfg.cross_n_positions,
            tokens_per_chunk=vq.config.tokens_per_chunk,
            text_encoder_name="sentence-transformers/all-MiniLM-L6-v2",
        )
        prior = train_prior(checkpoints, vq, enc, tok, pc, base / "prior", s.prior, progress=progress)
    timings["pipeline_resnet_seconds"] = time.perf_counter() - t
    return _Zoo(
        "resnet",
        IGPGPipeline(vqvae=vq, prior=prior, text_encoder=enc, tokenizer=tok).to(cfg.device),
        checkpoints,
        cfg.cross_epochs,
        s,
    )


# ----------------------------------------------------------------------------------------- parts 1 and 2
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


def _schedule(z: _Zoo, task: str, cfg: BenchConfig) -> tuple[list[int], dict[str, int], int]:
    """All fine-tuning step counts, the epoch -> step map, and steps per epoch (batch 64, as `finetune`)."""
    per_epoch = math.ceil(len(load_task_data(task).x_train) / 64)
    epochs = cfg.finetune_epochs or sorted({1, 5, z.epochs})
    steps = sorted({0, *cfg.finetune_steps, *(e * per_epoch for e in epochs)})
    return steps, {str(e): e * per_epoch for e in [0, *epochs]}, per_epoch


def _task_starts(z: _Zoo, task: str, cfg: BenchConfig) -> tuple[dict, dict, Any]:
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
    k = cfg.finetune_samples
    starts = {
        "random_init": (random_init_state_dicts(spec, max(k, z.settings.num_random_init), seed=1000), k),
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
        from ..label_alignment import align_labels

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


def _tables(
    z: _Zoo, tasks: list[str], cfg: BenchConfig, pool: _Pool, progress: bool, cache: Callable
) -> dict:
    """The Table-1 layout for each task (each cached on its own): accuracy after 0..N fine-tuning steps per method."""
    return {t: cache(f"{z.name}-{t}", lambda t=t: _table(z, t, cfg, pool, progress)) for t in tasks}


def _table(z: _Zoo, task: str, cfg: BenchConfig, pool: _Pool, progress: bool) -> dict:
    """One task's table: every method's accuracy after each fine-tuning step count."""
    from ..progress import progress_bar
    from .metrics import evaluate_state_dicts

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
        jobs += [(spec.to_json(), sd, task, steps, cfg.finetune_lr, i) for i, sd in enumerate(sds[:k])]
        slots += [m] * len(sds[:k])
    results, chunk = [], max(1, cfg.workers * 4)
    with progress_bar(len(jobs), f"fine-tuning ({z.name}, {task})", enabled=progress) as bar:
        for i in range(0, len(jobs), chunk):
            results += pool.map(finetune_job, jobs[i : i + chunk])
            bar.update(len(jobs[i : i + chunk]))
    for m, curve in zip(slots, results, strict=True):
        r["methods"][m]["curves"].append({str(s): a for s, a in curve.items()})
    for m in r["methods"].values():
        at = lambda s, m=m: m["acc0"] if s == 0 else [c[str(s)] for c in m["curves"]]  # noqa: E731
        m["mean"], m["std"] = {str(s): _mean(at(s)) for s in steps}, {str(s): _std(at(s)) for s in steps}
        finite = [v for v in m["acc0"] if not math.isnan(v)] or [float("nan")]
        m["min0"], m["max0"] = min(finite), max(finite)
    return r


def _losses(table: dict, part: str, generator: str = "generated") -> list[dict]:
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


def _part_seen(z: _Zoo, cfg: BenchConfig, pool: _Pool, progress: bool, cache: Callable) -> dict:
    tables = _tables(z, sorted(z.by_task), cfg, pool, progress, cache)
    ratios = {
        t: r["methods"]["generated"]["mean"]["0"] / r["methods"]["zoo"]["mean"]["0"]
        for t, r in tables.items()
    }
    mean_ratio = _mean(list(ratios.values()))
    return {
        "zoo": z.name,
        "zoo_epochs": z.epochs,
        "tasks": tables,
        "generated_over_zoo": ratios,
        "mean_generated_over_zoo": mean_ratio,
        "meets_95_percent_of_zoo": mean_ratio >= 0.95,
        "losses": _losses(tables, "seen"),
    }


def _head_start(r: dict, generator: str = "generated", retrievals: tuple[str, ...] = RETRIEVALS) -> dict:
    """A generator vs random init and the best retrieval at every fine-tuning step where random init is below 50 %."""
    meth, rows = r["methods"], []
    steps = [s for s in r["steps"] if s > 0 and meth["random_init"]["mean"][str(s)] < 50] or [
        min(s for s in r["steps"] if s)
    ]
    for s in steps:
        gen, rand = meth[generator]["mean"][str(s)], meth["random_init"]["mean"][str(s)]
        best = max(retrievals, key=lambda m: meth[m]["mean"][str(s)])
        rows.append(
            {
                "step": s,
                "generated": gen,
                "random_init": rand,
                "best_retrieval": meth[best]["mean"][str(s)],
                "best_retrieval_method": best,
                "gap_to_random_init": gen - rand,
                "gap_to_best_retrieval": gen - meth[best]["mean"][str(s)],
                "random_init_below_50": rand < 50,
            }
        )
    best_row = max(rows, key=lambda x: x["gap_to_random_init"])
    return {
        **best_row,
        "steps": rows,
        "meets_20_points": best_row["gap_to_random_init"] >= 20 and best_row["random_init_below_50"],
    }


def _part_unseen(
    zoos: dict[str, tuple[_Zoo, list[str]]], cfg: BenchConfig, pool: _Pool, progress: bool, cache: Callable
) -> dict:
    out: dict[str, Any] = {"zoos": {}, "losses": [], "losses_aligned": []}
    for kind, (z, tasks) in zoos.items():
        tables = _tables(z, tasks, cfg, pool, progress, cache)
        for r in tables.values():
            r["head_start"] = _head_start(r)
            if "generated_aligned" in r["methods"]:  # against the best retrieval, aligned or not
                r["head_start_aligned"] = _head_start(r, "generated_aligned", RETRIEVALS + ALIGNED_RETRIEVALS)
        out["zoos"][kind] = {"zoo": z.name, "zoo_epochs": z.epochs, "tasks": tables}
        out["losses"] += [{**x, "zoo": kind} for x in _losses(tables, "unseen")]
        out["losses_aligned"] += [{**x, "zoo": kind} for x in _losses(tables, "unseen", "generated_aligned")]
    for suffix in ("", "_aligned"):
        hs = [
            r[f"head_start{suffix}"]
            for v in out["zoos"].values()
            for r in v["tasks"].values()
            if f"head_start{suffix}" in r
        ]
        if hs:
            out[f"all_meet_20_points{suffix}"] = all(h["meets_20_points"] for h in hs)
            out[f"all_ahead_of_retrieval{suffix}"] = all(h["gap_to_best_retrieval"] > 0 for h in hs)
    return out


# ----------------------------------------------------------------------------------------- parts 3 and 4
def _accuracies(spec, sds: list[dict], task: str, recalibrate: bool) -> list[float]:
    """Test accuracy (%) of state dicts, optionally after recomputing BatchNorm statistics on the training inputs."""
    from .metrics import _load, accuracy, evaluate_state_dicts, recalibrate_batchnorm

    if not recalibrate:
        return evaluate_state_dicts(spec, sds, task)
    data, out = load_task_data(task), []
    for sd in sds:
        finite = all(torch.isfinite(v).all() for v in sd.values() if v.is_floating_point())
        out.append(
            accuracy(recalibrate_batchnorm(_load(spec, sd), data.x_train), data.x_test, data.y_test)
            if finite
            else float("nan")
        )
    return out


def _both(spec, sds: list[dict], task: str) -> dict:
    raw, recal = _accuracies(spec, sds, task, False), _accuracies(spec, sds, task, True)
    return {"raw": raw, "recalibrated": recal, "raw_mean": _mean(raw), "recalibrated_mean": _mean(recal)}


def _part_cross(z: _Zoo, cfg: BenchConfig, pool: _Pool) -> dict:
    from ..sampling import block_windows
    from ..zoo.architectures import architecture_for_task
    from ..zoo.training import HyperParams
    from .baselines import train_job

    task, rows = cfg.cross_task, {}
    spec = lambda b: architecture_for_task(task, "resnet_small", blocks=b)  # noqa: E731
    ref_seeds = cfg.cross_seeds[:2]
    jobs = [
        (
            spec(b).to_json(),
            task,
            HyperParams(seed=s, lr=cfg.cross_lr, epochs=cfg.cross_epochs).to_dict(),
            [cfg.cross_epochs],
        )
        for b in cfg.cross_test_blocks
        for s in ref_seeds
    ]
    trained = iter(pool.map(train_job, jobs))
    pc = z.pipe.prior.config
    for kind, blocks in (("held_out", cfg.cross_test_blocks), ("trained", cfg.cross_seen_blocks)):
        for b in blocks:
            s = spec(b)
            gen = z.generate(task, s, dataset=None)  # instruction + architecture text only
            if kind == "held_out":
                refs = [next(trained)[-1][1] for _ in ref_seeds]
            else:
                refs = [
                    c.state_dict() for c in z.groups[(task, s.text())] if c.metadata.epoch == cfg.cross_epochs
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
                "generated": _both(s, gen.state_dicts, task),
                "random_init": _both(
                    s, random_init_state_dicts(s, z.settings.num_random_init, seed=1000), task
                ),
                "trained": _both(s, refs, task),
                "trained_count": len(refs),
            }
    trained_blocks = {tuple(c.arch().params["blocks"]) for c in z.checkpoints}
    return {
        "task": task,
        "train_blocks": sorted(map(list, trained_blocks)),
        "recipe": {
            "epochs": cfg.cross_epochs,
            "lr": cfg.cross_lr,
            "optimizer": "adam",
            "seeds": cfg.cross_seeds,
        },
        "n_positions": pc.n_positions,
        "configs": rows,
    }


def _part_fidelity(zoos: list[_Zoo]) -> dict:
    from .novelty import pairwise_scale

    rows = []
    for z in zoos:
        for (task, _), cs in z.groups.items():
            spec, bn = cs[0].arch(), any("running_mean" in e.name for e in cs[0].layout.entries)
            recon = [
                z.pipe.vqvae.decode(z.tokens[c.metadata.model_id], c.layout, fill=c.state_dict()) for c in cs
            ]
            vec = torch.stack([c.vector() for c in cs])
            err = torch.stack([c.layout.vectorize(r) for c, r in zip(cs, recon, strict=True)]) - vec
            gen = z.generate(task, spec, dataset=None if z.name == "resnet" else "task")
            rec_acc, gen_acc = (
                _accuracies(spec, recon, task, False),
                _accuracies(spec, gen.state_dicts, task, False),
            )
            orig = [z.accuracy[c.metadata.model_id] for c in cs]
            row = {
                "zoo": z.name,
                "task": task,
                "architecture": spec.text(),
                "checkpoints": len(cs),
                "original": _mean(orig),
                "reconstructed": _mean(rec_acc),
                "generated": _mean(gen_acc),
                "recon_loss_points": _mean([o - r for o, r in zip(orig, rec_acc, strict=True)]),
                "recon_relative_l2": (err.norm(dim=1) / vec.norm(dim=1)).mean().item(),
                "recon_novelty": (err.norm(dim=1).mean() / pairwise_scale(vec)).item()
                if len(cs) > 1
                else None,
                "batchnorm_recalibrated": bn,
            }
            if bn:
                row["reconstructed_recalibrated"] = _mean(_accuracies(spec, recon, task, True))
                row["generated_recalibrated"] = _mean(_accuracies(spec, gen.state_dicts, task, True))
            rows.append(row)
    bn_zoos = {r["zoo"] for r in rows if r["batchnorm_recalibrated"]}
    return {
        "rows": rows,
        "mean_recon_loss_points": {
            z.name: _mean([r["recon_loss_points"] for r in rows if r["zoo"] == z.name]) for z in zoos
        },
        # BatchNorm nets: reconstructions with running statistics recomputed on training inputs vs the originals
        "mean_recon_loss_points_recalibrated": {
            z: _mean([r["original"] - r["reconstructed_recalibrated"] for r in rows if r["zoo"] == z])
            for z in bn_zoos
        },
    }


# ----------------------------------------------------------------------------------------- parts 5 and 6
def _novelty_rows(z: _Zoo, task: str, sds: list[dict], token_ids: torch.Tensor, spec) -> list[dict]:
    """Per state dict: copy of a training token sequence?, nearest checkpoint, novelty, disagreement, accuracy."""
    from .metrics import _load, predictions
    from .novelty import count_copies, novelty, pairwise_scale

    layout = z.by_task[z.nearest_task(task)][0].layout
    pool = [c for c in z.checkpoints if c.layout == layout]
    vecs = torch.stack([c.vector() for c in pool])
    near = novelty(torch.stack([layout.vectorize(sd) for sd in sds]), vecs, 1.0)
    copies = (
        count_copies(token_ids, torch.stack([z.tokens[c.metadata.model_id] for c in pool]))
        if token_ids is not None
        else [False] * len(sds)
    )
    data, rows, scales = load_task_data(task), [], {}
    for sd, i, d, copy in zip(sds, near.nearest, near.distance, copies, strict=True):
        c = pool[i]
        t = c.metadata.task
        if t not in scales:
            scales[t] = pairwise_scale(torch.stack([x.vector() for x in z.by_task[t]]))
        finite = all(torch.isfinite(v).all() for v in sd.values() if v.is_floating_point())
        pred = predictions(_load(spec, sd), data.x_test) if finite else None
        ref = predictions(_load(spec, c.state_dict()), data.x_test)
        rows.append(
            {
                "task": task,
                "copy": copy,
                "nearest": c.metadata.model_id,
                "nearest_task": t,
                "novelty": d / scales[t],
                "distance": d,
                "disagreement": 100 * (pred != ref).float().mean().item() if finite else float("nan"),
                "accuracy": 100 * (pred == data.y_test).float().mean().item() if finite else float("nan"),
            }
        )
    return rows


def _part_novelty(seen: _Zoo, unseen: dict[str, tuple[_Zoo, list[str]]], cfg: BenchConfig) -> dict:
    import numpy as np

    from .novelty import adjacent_epoch_novelty, pairwise_scale

    models, curves, adjacent = [], {}, {}
    for task in sorted(seen.by_task):
        spec = seen.by_task[task][0].arch()
        gen = seen.generate(task, spec)
        models += [
            {**r, "zoo": "seen", "held_out": False, "new_only": False}
            for r in _novelty_rows(seen, task, gen.state_dicts, gen.token_ids, spec)
        ]
        if seen.settings.novel_candidates:
            new = seen.generate_new(task, spec)
            models += [
                {**r, "zoo": "seen", "held_out": False, "new_only": True}
                for r in _novelty_rows(seen, task, new.state_dicts, new.token_ids, spec)
            ]
        sources = seen.by_task[task][: cfg.noise_curve_checkpoints]
        points = []
        for scale in cfg.noise_curve_scales:
            sds = [add_noise(c.state_dict(), scale, seed=j) for j, c in enumerate(sources)]
            rows = _novelty_rows(seen, task, sds, None, spec)
            points.append(
                {
                    "scale": scale,
                    "novelty": _mean([r["novelty"] for r in rows]),
                    "accuracy": _mean([r["accuracy"] for r in rows]),
                    "disagreement": _mean([r["disagreement"] for r in rows]),
                }
            )
        curves[task] = points
        # calibration: adjacent kept epochs of one run, in the same novelty units
        scale = pairwise_scale(torch.stack([c.vector() for c in seen.by_task[task]]))
        adjacent[task] = _mean(adjacent_epoch_novelty(seen.by_task[task], scale))
    for m in models:  # the noise baseline's accuracy at the generated model's novelty (linear interpolation)
        pts = sorted(curves[m["task"]], key=lambda p: p["novelty"])
        m["noise_curve_accuracy"] = float(
            np.interp(m["novelty"], [p["novelty"] for p in pts], [p["accuracy"] for p in pts])
        )
        m["margin_over_noise"] = m["accuracy"] - m["noise_curve_accuracy"]
    for kind, (z, tasks) in unseen.items():
        for task in tasks:
            spec = z.by_task[z.nearest_task(task)][0].arch()
            gen = z.generate(task, spec)
            models += [
                {**r, "zoo": kind, "held_out": True, "new_only": False}
                for r in _novelty_rows(z, task, gen.state_dicts, gen.token_ids, spec)
            ]

    def summary(rows: list[dict]) -> dict:
        return {
            "models": len(rows),
            "copies": sum(r["copy"] for r in rows),
            "mean_novelty": _mean([r["novelty"] for r in rows]),
            "mean_disagreement": _mean([r["disagreement"] for r in rows]),
            "mean_accuracy": _mean([r["accuracy"] for r in rows]),
            "mean_margin_over_noise": _mean([r.get("margin_over_noise", float("nan")) for r in rows]),
            "fraction_above_noise_curve": _mean(
                [float(r["margin_over_noise"] > 0) for r in rows if "margin_over_noise" in r]
            ),
        }

    seen_rows = [m for m in models if not m["held_out"] and not m["new_only"]]
    new, new_only = [m for m in seen_rows if not m["copy"]], [m for m in models if m["new_only"]]
    s_new, s_new_only = summary(new), (summary(new_only) if new_only else None)
    return {
        "models": models,
        "noise_curves": curves,
        "adjacent_epochs_novelty": adjacent,
        "seen": summary(seen_rows),
        "seen_non_copies": s_new,
        "seen_copies": summary([m for m in seen_rows if m["copy"]]),
        "seen_new_only": s_new_only,
        "new_only_beat_noise_curve": (s_new_only["mean_margin_over_noise"] > 0) if new_only else None,
        "held_out": summary([m for m in models if m["held_out"]]),
        "non_copies_beat_noise_curve": (s_new["mean_margin_over_noise"] > 0) if new else None,
    }


def _part_speed(z: _Zoo, cfg: BenchConfig, out: Path) -> dict:
    from ..conditioning import encode_text
    from ..modeling_prior import IGPGConditions
    from ..sampling import SamplingConfig, sample_weight_tokens
    from ..zoo.training import HyperParams, train_model

    task = sorted(z.by_task)[0]
    spec, instr, pipe = z.by_task[task][0].arch(), get_task(task).instruction, z.pipe
    pipe(instr, architecture=spec, dataset=task, num_samples=1, seed=0)  # warm-up
    res = {"task": task, "architecture": spec.text(), "threads": torch.get_num_threads()}
    for n in (1, cfg.speed_samples):
        _, sec, mb, method = measure_peak(
            lambda n=n: pipe(instr, architecture=spec, dataset=task, num_samples=n, seed=1)
        )
        res[f"generate_{n}"] = {"seconds": sec, "peak_mb": mb, "seconds_per_model": sec / n}
    res["memory_method"] = method
    emb = encode_text([instr, spec.text()], pipe.text_encoder, pipe.tokenizer)
    cond = IGPGConditions(text_embeds=emb[:1], arch_embeds=emb[1:])
    n_tok = pipe.vqvae.num_tokens(z.by_task[task][0].layout)
    for cache in (True, False):
        _, sec, mb, _ = measure_peak(
            lambda c=cache: sample_weight_tokens(
                pipe.prior,
                cond,
                n_tok,
                cfg.speed_kv_samples,
                SamplingConfig(temperature=z.settings.temperature),
                0,
                c,
            )
        )
        res[f"prior_kv_cache_{str(cache).lower()}"] = {
            "tokens_per_second": n_tok * cfg.speed_kv_samples / sec,
            "seconds": sec,
            "peak_mb": mb,
            "samples": cfg.speed_kv_samples,
            "tokens_per_model": n_tok,
        }
    res["kv_cache_speedup"] = (
        res["prior_kv_cache_true"]["tokens_per_second"] / res["prior_kv_cache_false"]["tokens_per_second"]
    )
    hp = HyperParams(lr=1e-3, epochs=z.epochs)
    _, sec, mb, _ = measure_peak(lambda: train_model(spec, task, hp, [z.epochs]))
    res["train_one_model"] = {"seconds": sec, "peak_mb": mb, "epochs": z.epochs}
    stats_path = out / "zoo_builds.json"
    if stats_path.exists():
        st = json.loads(stats_path.read_text()).get(z.name, {})
        if st.get("runs_trained"):
            res["zoo_build"] = {
                "seconds": st["seconds"],
                "runs": st["runs_trained"],
                "workers": st["num_workers"],
                "cpu_seconds_per_model": st["seconds"] * st["num_workers"] / st["runs_trained"],
            }
    res["generation_over_training"] = {
        "one_model": res["generate_1"]["seconds"] / sec,
        f"per_model_in_batch_of_{cfg.speed_samples}": res[f"generate_{cfg.speed_samples}"][
            "seconds_per_model"
        ]
        / sec,
    }
    res["tokenizer_by_size"] = [_tokenizer_cost(pipe.vqvae, arch) for arch in cfg.speed_sizes]
    return res


def _tokenizer_cost(vq, arch: dict) -> dict:
    """Time and peak memory of encoding and decoding one freshly initialized model of ``arch``."""
    from ..weights import WeightLayout
    from ..zoo.architectures import ArchSpec

    spec = ArchSpec.from_dict(arch)
    module = spec.build()
    sd, params = module.state_dict(), sum(p.numel() for p in module.parameters())
    layout = WeightLayout.from_state_dict(sd)
    toks, t_enc, m_enc, _ = measure_peak(lambda: vq.encode(sd, layout))
    _, t_dec, m_dec, _ = measure_peak(lambda: vq.decode(toks, layout, fill=sd))
    return {
        "architecture": spec.text(),
        "parameters": params,
        "tokens": toks.numel(),
        "encode_seconds": t_enc,
        "decode_seconds": t_dec,
        "seconds": t_enc + t_dec,
        "encode_peak_mb": m_enc,
        "decode_peak_mb": m_dec,
        "peak_mb": max(m_enc, m_dec),
    }


# ----------------------------------------------------------------------------------------- driver
def _cached(path: Path, key: str, fn: Callable[[], dict]) -> dict:
    """A part's result from ``path`` if it was computed with the same config ``key``; else compute and store it."""
    if path.exists():
        stored = json.loads(path.read_text())
        if stored.get("key") == key:
            logger.info("reusing %s", path)
            return stored["result"]
    result = json.loads(json.dumps(fn(), default=str))
    atomic_write_json(path, {"key": key, "result": result})
    return result


def _loading(timings: dict) -> float:
    return sum(v for k, v in timings.items() if k.startswith(("zoo_", "pipeline_")))


def run_benchmark(
    out_dir: str | os.PathLike,
    config: BenchConfig | None = None,
    pipeline: str | None = None,
    corpus: str | None = None,
    parts: list[str] | None = None,
    progress: bool = True,
) -> dict:
    """Run the benchmark's parts (all six by default), reusing zoos, pipelines and finished parts in ``out_dir``.

    ``pipeline`` + ``corpus`` reuse a trained pipeline and its training corpus (e.g. ``igpg-hf demo``'s) for the
    seen-task zoo. Writes ``results.json``, ``report.md`` and plots of the parts run (and of parts an earlier run
    computed with the same config); returns the results.
    """
    from .report import plot_all, write_report

    cfg, parts = config or BenchConfig(), list(parts or PARTS)
    bad = [p for p in parts if p not in PARTS]
    if bad:
        raise ValueError(f"parts must be among {PARTS}, got {bad}")
    if (pipeline is None) != (corpus is None):
        raise ValueError(
            f"pass pipeline and corpus together (the pipeline's training corpus), got pipeline={pipeline!r}, "
            f"corpus={corpus!r}"
        )
    out, threads = Path(out_dir), torch.get_num_threads()
    out.mkdir(parents=True, exist_ok=True)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    start, timings, results, zoos = time.perf_counter(), {}, {}, {}
    settings = {
        k: v for k, v in asdict(cfg).items() if k not in ("workers", "threads", "device")
    }  # not results
    key = hashlib.sha1(
        json.dumps([settings, pipeline, corpus], sort_keys=True, default=str).encode()
    ).hexdigest()
    pool = _Pool(cfg.workers)
    loaders = {
        "seen": lambda: _load_zoo(
            "seen", cfg.seen, cfg.seen_zoo_changes, out, cfg, corpus, pipeline, timings, progress
        ),
        "related": lambda: _load_zoo(
            "related", cfg.related, cfg.related_zoo_changes, out, cfg, None, None, timings, progress
        ),
        "resnet": lambda: _resnet_zoo(cfg, out, pool, timings, progress),
    }

    def cache(name: str, fn: Callable[[], dict]) -> dict:  # a finished piece of a part survives a killed run
        return _cached(out / "parts" / f"{name}.json", key, fn)

    def zoo(name: str) -> _Zoo:  # built or loaded on first use: a part cached on disk needs none
        if name not in zoos:
            zoos[name] = loaders[name]()
        return zoos[name]

    def unseen() -> dict[str, tuple[_Zoo, list[str]]]:
        return {
            "independent": (zoo("seen"), cfg.unseen_tasks),
            "related": (zoo("related"), cfg.unseen_related_tasks),
        }

    run: dict[str, Callable[[], dict]] = {
        "seen": lambda: _part_seen(zoo("seen"), cfg, pool, progress, cache),
        "unseen": lambda: _part_unseen(unseen(), cfg, pool, progress, cache),
        "cross_arch": lambda: _part_cross(zoo("resnet"), cfg, pool),
        "fidelity": lambda: _part_fidelity([zoo("seen"), zoo("related"), zoo("resnet")]),
        "novelty": lambda: _part_novelty(zoo("seen"), unseen(), cfg),
        "speed": lambda: _part_speed(zoo("seen"), cfg, out),
    }
    try:
        for name in parts:  # part timings exclude the zoo builds and pipeline training they trigger
            before, t = _loading(timings), time.perf_counter()
            results[name] = _cached(out / "parts" / f"{name}.json", key, run[name])
            timings[f"{name}_seconds"] = time.perf_counter() - t - (_loading(timings) - before)
            logger.info("part %s done in %.1f s", name, timings[f"{name}_seconds"])
    finally:
        pool.close()
        torch.set_num_threads(threads)
    for name in PARTS:  # parts not asked for but already computed with this config join the report
        cached = out / "parts" / f"{name}.json"
        if name not in results and cached.exists() and json.loads(cached.read_text()).get("key") == key:
            results[name] = json.loads(cached.read_text())["result"]
    timings["total_seconds"] = time.perf_counter() - start
    builds = out / "zoo_builds.json"
    results["zoo_builds"] = json.loads(builds.read_text()) if builds.exists() else {}
    results.update(
        timings=timings,
        config=asdict(cfg),
        meta={
            "preset": cfg.name,
            "reproduce": f"igpg-hf bench --preset {cfg.name} --out {out}",
            "parts": parts,
            "pipeline": pipeline,
            "corpus": corpus,
            "torch_threads": cfg.threads or threads,
            "cpu_count": os.cpu_count(),
            "load_average_at_end": list(os.getloadavg()),
            "torch": torch.__version__,
        },
    )
    results["plots"] = [p.name for p in plot_all(results, out)]
    results = json.loads(json.dumps(results, default=str))
    atomic_write_json(out / "results.json", results)
    write_report(results, out / "report.md")
    return results
