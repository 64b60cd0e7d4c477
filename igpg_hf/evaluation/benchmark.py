"""The benchmark's driver: run the registered experiments on shared zoos, cache each, write results and report.

``igpg-hf bench --preset default --out DIR [--parts seen,speed]`` runs `run_benchmark`, which writes
``DIR/results.json`` (one top-level key per experiment, each with a ``summary``), ``DIR/report.md`` and PNG
plots. The experiments live in `igpg_hf.evaluation.experiments` (one module each); this module only loads the
zoos they ask for (`BenchContext.zoo`: built by the zoo builder, pipelines by `train_pipeline`, both reused from
DIR) and caches every finished experiment, and every finished piece of one, in ``DIR/parts/`` (keyed by the
config), so a killed run resumes. Every generated net is compared with the baselines of Zeng et al. 2025.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import logging
import os
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..files import atomic_write_json
from ..training.recipe import PipelineRecipe
from ..training.zoo_builder import ZooConfig
from ..training.zoo_presets import resnet_depth_grid
from .experiments import EXPERIMENTS, ExperimentResult, default_parts, get_experiment
from .settings import GenerationSettings
from .zoos import Zoo, ZooSetup, load_zoo, record_build

logger = logging.getLogger(__name__)

__all__ = ["BenchConfig", "BenchContext", "BenchResult", "run_benchmark"]

_DIGITS = ["digits", "digits_rot90", "digits_rot180"]
# n in 2..5 per stage, minus the interior depths the gpu cross_arch experiment holds out (60 configurations)
_RESNET_GPU_BLOCKS = resnet_depth_grid(2, 5, ([3, 3, 3], [2, 4, 3], [4, 3, 2], [4, 5, 3]))


def _recipe(preset: str, prior_changes: dict | None = None, **changes: Any) -> PipelineRecipe:
    return PipelineRecipe.from_preset(preset).with_changes(changes, prior_training=prior_changes)


def _zoo_setups(preset: str) -> dict[str, ZooSetup]:
    """The benchmark's zoos: "seen" (the demo's), "related" (shared-init rotations), "resnet" (ResNet depths)."""
    if preset == "smoke":
        small = dict(generation=GenerationSettings(num_samples=3), num_random_init=2)
        return {
            "seen": ZooSetup("tiny", {"tasks": _DIGITS[:2]}, _recipe("smoke"), **small),
            "related": ZooSetup(
                "related",
                {"tasks": _DIGITS, "seeds": [0, 1], "epochs": 2, "keep_epochs": [2]},
                _recipe("smoke"),
                **small,
            ),
            "resnet": ZooSetup(
                "resnet_lineage",
                {
                    "arch_grid": {"blocks": [[1, 1, 1], [1, 2, 1]]},
                    "seeds": [0],
                    "epochs": 2,
                    "keep_epochs": [2],
                    "finetune_epochs": 1,
                },
                _recipe("smoke", {"use_dataset_condition": False}, n_positions=128),
                **small,
            ),
            "general": ZooSetup("tiny", {"tasks": ["iris", "wine", "digits"]}, _recipe("smoke"), **small),
        }
    if preset == "gpu":
        gen = GenerationSettings(num_samples=20)
        return {
            "seen": ZooSetup("demo", {}, _recipe("gpu"), gen),
            "related": ZooSetup("related", {}, _recipe("gpu"), gen),
            "resnet": ZooSetup(
                "resnet_depths",
                {
                    "arch_grid": {"blocks": _RESNET_GPU_BLOCKS},
                    "seeds": list(range(20)),
                    "epochs": 40,
                    "keep_epochs": [36, 38, 40],
                },
                _recipe("gpu", n_positions=1024),
                gen,
            ),
            "general": ZooSetup("default", {}, _recipe("general-gpu"), gen),
        }
    return {
        "seen": ZooSetup("demo", {}, _recipe("demo")),
        # related and ResNet zoos hold more distinct weights than the "demo" VQ-VAE memorized in 3,000 steps (its
        # reconstructions lost 4.8 and 85 accuracy points): their recipes use the "fsq" VQ-VAE preset at lr 3e-3.
        # The ResNet depths are a lineage (`resnet_lineage`): 96 independent runs (`resnet_depths`) left the prior at
        # chance on every depth (benchmarks/results/cross_arch_grid/)
        "related": ZooSetup("related", {"seeds": list(range(8))}, _recipe("related")),
        "resnet": ZooSetup(
            "resnet_lineage", {}, _recipe("resnet"), GenerationSettings(num_samples=5), num_random_init=3
        ),
        # one pipeline for every trainable task and all three families (the instructions experiment; an existing
        # default zoo: --set instructions.general_corpus=DIR)
        "general": ZooSetup("default", {}, _recipe("general")),
    }


def _experiment_configs(preset: str) -> dict[str, Any]:
    return {name: exp.default_config(preset) for name, exp in EXPERIMENTS.items()}


@dataclass
class BenchConfig:
    """The zoos (each a `ZooSetup`), each registered experiment's config, and how to run (`from_preset`)."""

    name: str = "default"
    zoos: dict[str, ZooSetup] = field(default_factory=lambda: _zoo_setups("default"))
    experiments: dict[str, Any] = field(default_factory=lambda: _experiment_configs("default"))
    workers: int = 2  # processes for fine-tuning and zoo training
    threads: int | None = None  # torch threads in the main process (None: torch's)
    device: str = "cpu"  # where the pipelines generate ("cuda" for the gpu preset); evaluation stays on CPU

    @classmethod
    def from_preset(cls, name: str, **changes: Any) -> BenchConfig:
        """ "smoke" (CI, about a minute), "default" (the README's figures; hours on 2 CPU cores, run parts with ``parts``), "gpu" (larger)."""
        run = {
            "smoke": dict(workers=1, threads=1),
            "default": {},
            "gpu": dict(workers=8, device="cuda"),
        }
        if name not in run:
            raise ValueError(f"unknown benchmark preset {name!r}; known: {', '.join(run)}")
        unknown = set(changes) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"unknown BenchConfig field(s) {sorted(unknown)}")
        return cls(
            name=name,
            zoos=_zoo_setups(name),
            experiments=_experiment_configs(name),
            **{**run[name], **changes},
        )

    def with_changes(self, changes: dict[str, Any]) -> BenchConfig:
        """A copy with experiment config fields changed: ``{"label_alignment.min_z": -100}``."""
        new = copy.deepcopy(self)
        for dotted, value in changes.items():
            name, _, field_name = dotted.partition(".")
            get_experiment(name)
            config = new.experiments.get(name)
            if config is None or not dataclasses.is_dataclass(config):
                raise ValueError(f"experiment {name!r} has no config dataclass in this run")
            if field_name not in {f.name for f in dataclasses.fields(config)}:
                known = ", ".join(f.name for f in dataclasses.fields(config))
                raise ValueError(f"{type(config).__name__} has no field {field_name!r}; fields: {known}")
            new.experiments[name] = dataclasses.replace(config, **{field_name: value})
        return new


def reproduce_command(cfg: BenchConfig, parts: list[str], out: str | os.PathLike) -> str:
    """The ``igpg-hf bench`` command line of a run: preset, parts (when not the default ones), and one ``--set``
    per experiment config field that differs from the preset's (JSON values, shell-quoted)."""
    import shlex

    preset = BenchConfig.from_preset(cfg.name)
    words = ["igpg-hf", "bench", "--preset", cfg.name]
    if list(parts) != list(default_parts()):
        words += ["--parts", ",".join(parts)]
    for name, config in sorted(cfg.experiments.items()):
        base = preset.experiments.get(name)
        if not dataclasses.is_dataclass(config) or not dataclasses.is_dataclass(base):
            continue
        for f in dataclasses.fields(config):
            value = getattr(config, f.name)
            if value != getattr(base, f.name):
                words += ["--set", f"{name}.{f.name}={json.dumps(value)}"]
    for flag, value, default in (
        ("--workers", cfg.workers, preset.workers),
        ("--threads", cfg.threads, preset.threads),
    ):
        if value != default:
            words += [flag, str(value)]
    return " ".join(shlex.quote(w) for w in [*words, "--out", str(out)])


class _Pool:
    """Jobs (fine-tuning, pipeline calls) in ``workers`` single-threaded processes (in-process when workers <= 1)."""

    def __init__(self, workers: int):
        self.workers, self._ex = workers, None

    def map(self, fn, jobs: list) -> list:
        return list(self.imap(fn, jobs))

    def imap(self, fn, jobs: list):
        """``fn(job)`` for every job, yielded in job order (as soon as each and those before it are done)."""
        if self.workers <= 1 or len(jobs) <= 1:
            yield from (fn(j) for j in jobs)
            return
        if self._ex is None:
            import multiprocessing as mp

            self._ex = ProcessPoolExecutor(
                self.workers,
                mp_context=mp.get_context("spawn"),
                initializer=torch.set_num_threads,
                initargs=(1,),
            )
        yield from self._ex.map(fn, jobs, chunksize=1)

    def close(self) -> None:
        if self._ex is not None:
            self._ex.shutdown()


class BenchContext:
    """What experiments share in one run: zoos loaded on first use, a fine-tuning pool, a per-piece cache.

    - ``zoo(name)``: the `Zoo` of ``config.zoos[name]`` (built into ``out/zoo_{name}``, pipeline trained into
      ``out/pipeline_{name}``, both reused and resumed);
    - ``build_zoo(name, zoo_config)``: an extra zoo without a pipeline (e.g. trained references), its checkpoints;
    - ``cache(piece, fn)``: ``fn()``'s JSON result, stored in ``out/parts/{piece}.json`` under the running
      experiment's key (its config, the zoo setups, a given pipeline / corpus; any change recomputes);
    - ``experiment_config(name, cls)``: another experiment's config in this run (to share its settings);
    - ``pool.map(fn, jobs)``, ``workers``, ``progress``, ``out``, ``timings``.
    """

    def __init__(
        self,
        config: BenchConfig,
        out: Path,
        progress: bool = True,
        given: dict[str, tuple[str, str]] | None = None,
    ):
        self.config, self.out, self.progress = config, out, progress
        self.key = ""  # the running experiment's cache key (`key_for`)
        self.workers = config.workers
        self.pool = _Pool(config.workers)
        self.timings: dict[str, float] = {}
        self._given = given or {}  # zoo name -> (corpus, pipeline) to load instead of building
        self._zoos: dict[str, Zoo] = {}

    def zoo(self, name: str) -> Zoo:
        """The benchmark zoo ``name`` with its pipeline (loaded once per run)."""
        if name not in self._zoos:
            if name not in self.config.zoos:
                raise ValueError(
                    f"no zoo {name!r} in the benchmark config; zoos: {', '.join(self.config.zoos)}"
                )
            corpus, pipeline = self._given.get(name, (None, None))
            self._zoos[name] = load_zoo(
                name,
                self.config.zoos[name],
                self.out,
                workers=self.workers,
                device=self.config.device,
                corpus=corpus,
                pipeline=pipeline,
                timings=self.timings,
                progress=self.progress,
            )
        return self._zoos[name]

    def build_zoo(self, name: str, zoo_config: ZooConfig) -> list:
        """Build (or resume) ``out/zoo_{name}`` with the zoo builder; its checkpoints (no pipeline)."""
        from ..training.zoo_builder import build_zoo

        t = time.perf_counter()
        corpus = build_zoo(
            zoo_config, self.out / f"zoo_{name}", num_workers=self.workers, progress=self.progress
        )
        record_build(self.out / "zoo_builds.json", name, corpus.build_stats)
        self.timings[f"zoo_{name}_seconds"] = time.perf_counter() - t
        return list(corpus)

    def key_for(self, name: str) -> str:
        """The cache key of experiment ``name``: its config, every zoo setup, and a given pipeline / corpus."""
        exp = get_experiment(name)
        config = self.experiment_config(name, exp.Config)
        settings = [
            name,
            asdict(config) if dataclasses.is_dataclass(config) else config,
            {k: asdict(v) for k, v in self.config.zoos.items()},
            sorted(self._given.items()),
        ]
        return hashlib.sha1(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()

    def cache(self, piece: str, fn: Callable[[], dict]) -> dict:
        """``fn()`` (JSON-able) from ``out/parts/{piece}.json`` if computed under the current key, else computed."""
        stored = self.cached(piece)
        if stored is not None:
            logger.info("reusing %s", self.out / "parts" / f"{piece}.json")
            return stored
        result = json.loads(json.dumps(fn(), default=str))
        atomic_write_json(self.out / "parts" / f"{piece}.json", {"key": self.key, "result": result})
        return result

    def cached(self, piece: str, key: str | None = None) -> dict | None:
        """A piece computed earlier under ``key`` (default: the running experiment's), or None."""
        path = self.out / "parts" / f"{piece}.json"
        if path.exists():
            stored = json.loads(path.read_text())
            if stored.get("key") == (key or self.key):
                return stored["result"]
        return None

    def experiment_config(self, name: str, cls: type) -> Any:
        """The config experiment ``name`` runs with here (its preset's if the run does not list it)."""
        if name in self.config.experiments:
            return self.config.experiments[name]
        return cls.from_preset(self.config.name) if hasattr(cls, "from_preset") else cls()

    def loading_seconds(self) -> float:
        """Seconds spent building zoos and training pipelines so far."""
        return sum(v for k, v in self.timings.items() if k.startswith(("zoo_", "pipeline_")))

    def close(self) -> None:
        self.pool.close()


@dataclass
class BenchResult:
    """A benchmark run: ``results`` is ``results.json``; ``experiments`` the typed result of each part in it."""

    results: dict[str, Any]
    experiments: dict[str, ExperimentResult]
    out: Path

    def summary_lines(self) -> list[str]:
        """Each experiment's headline figures, then where the report is."""
        lines = [line for r in self.experiments.values() for line in r.summary_lines()]
        total = self.results["timings"]["total_seconds"]
        return [
            *lines,
            f"total {total:.0f} s; report {self.out / 'report.md'}, results {self.out / 'results.json'}",
        ]


def run_benchmark(
    out_dir: str | os.PathLike,
    config: BenchConfig | None = None,
    pipeline: str | None = None,
    corpus: str | None = None,
    parts: list[str] | None = None,
    progress: bool = True,
) -> BenchResult:
    """Run the registered experiments (the default ones, or ``parts``), reusing zoos, pipelines and finished parts.

    ``pipeline`` + ``corpus`` reuse a trained pipeline and its training corpus (e.g. ``igpg-hf demo``'s) for the
    seen zoo. Writes ``results.json``, ``report.md`` and plots of the parts run (and of parts an earlier run
    computed with the same config); returns them. ValueError names an unknown part or a lone pipeline/corpus.
    """
    from .report import plot_all, write_report

    cfg, parts = config or BenchConfig(), list(parts or default_parts())
    for p in parts:
        get_experiment(p)
    if (pipeline is None) != (corpus is None):
        raise ValueError(
            f"pass pipeline and corpus together (the pipeline's training corpus), got pipeline={pipeline!r}, "
            f"corpus={corpus!r}"
        )
    out, threads = Path(out_dir), torch.get_num_threads()
    out.mkdir(parents=True, exist_ok=True)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    given = {"seen": (corpus, pipeline)} if pipeline else {}
    ctx = BenchContext(cfg, out, progress, given)
    start, typed = time.perf_counter(), {}
    try:
        for name in parts:  # part timings exclude the zoo builds and pipeline training they trigger
            exp = EXPERIMENTS[name](copy.deepcopy(ctx.experiment_config(name, EXPERIMENTS[name].Config)))
            before, t = ctx.loading_seconds(), time.perf_counter()
            ctx.key = ctx.key_for(name)  # workers, threads and device change no result
            data = ctx.cache(name, lambda exp=exp: exp.run(ctx).to_dict())
            typed[name] = exp.Result.from_dict(data)
            ctx.timings[f"{name}_seconds"] = time.perf_counter() - t - (ctx.loading_seconds() - before)
            logger.info("part %s done in %.1f s", name, ctx.timings[f"{name}_seconds"])
    finally:
        ctx.close()
        torch.set_num_threads(threads)
    for name, exp in EXPERIMENTS.items():  # parts not asked for but already computed with this config join
        data = ctx.cached(name, ctx.key_for(name)) if name not in typed else None
        if data is not None:
            typed[name] = exp.Result.from_dict(data)
    results: dict[str, Any] = {name: r.to_dict() for name, r in typed.items()}
    ctx.timings["total_seconds"] = time.perf_counter() - start
    builds = out / "zoo_builds.json"
    results["zoo_builds"] = json.loads(builds.read_text()) if builds.exists() else {}
    results.update(
        timings=ctx.timings,
        config=asdict(cfg),
        meta={
            "preset": cfg.name,
            "reproduce": reproduce_command(cfg, parts, "DIR"),
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
    return BenchResult(results, typed, out)
