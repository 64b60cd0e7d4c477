"""The zoo builder: expand a `ZooConfig` into training runs, train them, and write their checkpoints to a corpus.

Runs are deterministic (stable ``run_id`` from task, architecture and hyperparameters; model ids
``f"{run_id}-e{epoch}"``), so a killed build resumes where it stopped: runs whose checkpoints are all in the
corpus are skipped, and the writer is flushed every `FLUSH_EVERY_S` seconds, on SIGTERM and on any error. One
build per corpus folder (the writer's lock); pool workers die with the build, even when it is killed. On CPU runs
go to a pool of single-threaded processes; on CUDA runs of one (task, architecture) are trained together with
`train_models_batched`.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import itertools
import json
import logging
import multiprocessing as mp
import os
import random
import signal
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..corpus import ZOO_KINDS, CheckpointMetadata, CorpusWriter, WeightCorpus
from ..files import atomic_write_json, ensure_writable
from ..progress import progress_bar
from ..zoo.architectures import ACTIVATIONS, FAMILIES, ArchSpec, architecture_for_task, list_architectures
from ..zoo.tasks import TaskSpec, get_task, list_tasks, load_task_data, register_task
from ..zoo.training import OPTIMIZERS, HyperParams, KeptEpoch, train_model, train_models_batched
from ..zoo.transplant import transplant_depth
from .zoo_presets import PRESETS

logger = logging.getLogger(__name__)

__all__ = ["ZooConfig", "ZooRun", "build_zoo", "plan_runs", "format_build_stats", "BUILT_KINDS", "PRESETS"]

# the corpus's zoo kinds that a build produces ("ingested" checkpoints come from `igpg_hf.corpus.ingest_folder`)
BUILT_KINDS = tuple(k for k in ZOO_KINDS if k != "ingested")
FLUSH_EVERY_S = 60.0
BASE_MODEL_DIR = "base_model"  # lora zoos: the base network, beside the corpus's data/
MAX_BATCHED_MODELS = 1024
# Fields a per-family / architecture / source / task override may set.
GRID_FIELDS = (
    "seeds",
    "activations",
    "inits",
    "optimizers",
    "weight_decays",
    "dropouts",
    "epochs",
    "keep_epochs",
    "batch_size",
    "finetune_epochs",
    "arch_grid",
)


@dataclass
class ZooConfig:
    """What to train: tasks, architectures, a hyperparameter grid sampled once per (task, seed), and the zoo kind.

    ``optimizers`` maps each optimizer to its learning rates. ``activations=None`` keeps the architecture's
    own. ``overrides`` maps an architecture family, architecture name, task source or task name (applied in
    that order) to grid fields, e.g. ``{"mlp_tabular": {"epochs": 60}}``. ``finetuned`` zoos train one base
    model per architecture on its base task for ``epochs`` and fine-tune it on every task for
    ``finetune_epochs`` (keep epochs shifted to end at ``finetune_epochs``).

    ``arch_grid`` varies the architecture of a task: architecture parameter -> values, every combination is
    trained for every seed, e.g. ``{"blocks": [[1, 1, 1], [2, 2, 2]]}`` for two ResNet depths (empty: the
    architecture as it is; run ids carry the combination, e.g. ``digits-resnet_small-blocks222-s0-...``).
    A ``finetuned`` zoo with a ResNet depth grid (``{"blocks": [...]}`` only) is a lineage: its base trains the
    grid's first configuration, and every configuration starts from that base moved to its depth
    (`igpg_hf.zoo.transplant.transplant_depth`: blocks cut from a stage's end, or added as identity maps), then
    fine-tunes for ``finetune_epochs`` per seed.

    ``lora`` zoos train one base network (the one architecture in ``base_tasks``, on its base task, for
    ``epochs``), save it to ``out_dir/base_model`` (`igpg_hf.adapters.save_base_model`: safetensors + its content
    hash) and train peft LoRA adapters of it on every task for ``finetune_epochs``, one per seed and per rank of
    the ``lora`` grid (`igpg_hf.zoo.lora.lora_grid`: ranks, alpha_ratio, target_modules, modules_to_save,
    lora_dropout). The corpus holds the adapters only (peft's keys; ``hyperparams`` carry the peft config and
    the base's identity); a resumed build reloads the saved base instead of retraining it.
    """

    name: str = "custom"
    tasks: list[str] = field(default_factory=lambda: ["mnist"])
    architectures: dict[str, str] = field(
        default_factory=dict
    )  # task -> architecture name; default: the task's
    seeds: list[int] = field(default_factory=lambda: [0])
    activations: list[str] | None = None
    inits: list[str] = field(default_factory=lambda: ["default"])
    optimizers: dict[str, list[float]] = field(default_factory=lambda: {"adam": [1e-3]})
    weight_decays: list[float] = field(default_factory=lambda: [0.0])
    dropouts: list[float] = field(default_factory=lambda: [0.0])
    epochs: int = 15
    keep_epochs: list[int] = field(default_factory=lambda: [13, 14, 15])
    batch_size: int = 64
    zoo_kind: str = "independent"
    base_tasks: dict[str, str] = field(default_factory=dict)  # finetuned: architecture name -> base task
    finetune_epochs: int = 3
    arch_grid: dict[str, list[Any]] = field(default_factory=dict)
    lora: dict[str, Any] = field(default_factory=dict)  # lora zoos: the adapter grid (`lora_grid`)
    num_runs: int | None = None  # cap on the number of runs (a prefix of the seed-major run order)
    sample_seed: int = 0
    overrides: dict[str, dict[str, Any]] = field(default_factory=dict)

    def __post_init__(self):
        self.validate()

    @classmethod
    def from_preset(cls, name: str, **changes: Any) -> ZooConfig:
        """A preset (see `PRESETS`: "tiny", "demo", "default", "related", "resnet_depths", "gpu") with field changes."""
        if name not in PRESETS:
            raise ValueError(f"unknown zoo preset {name!r}; presets: {', '.join(PRESETS)}")
        unknown = set(changes) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"unknown ZooConfig field(s) {sorted(unknown)}")
        return cls(**{**copy.deepcopy(PRESETS[name]()), **changes})

    def to_dict(self) -> dict[str, Any]:
        """The config as a JSON-able dict."""
        return dataclasses.asdict(self)

    def validate(self) -> None:
        """Raise ValueError naming the first bad field (unknown tasks/architectures come from the registries)."""
        if not self.name or not self.tasks:
            raise ValueError(
                f"name and tasks must be non-empty, got name={self.name!r}, tasks={self.tasks!r}"
            )
        if self.zoo_kind not in BUILT_KINDS:
            raise ValueError(f"zoo_kind must be one of {BUILT_KINDS}, got {self.zoo_kind!r}")
        if self.num_runs is not None and self.num_runs < 1:
            raise ValueError(f"num_runs must be >= 1 or None, got {self.num_runs!r}")
        specs = {t: get_task(t) for t in self.tasks}
        for t in self.architectures:
            if t not in specs:
                raise ValueError(f"architectures names task {t!r}, which is not in tasks")
        for t in self.tasks:
            grid = self._grid(specs[t], self.arch_name(t))
            _check_grid(t, grid)
            if grid["arch_grid"] and self.zoo_kind == "finetuned":
                family = architecture_for_task(t, self.arch_name(t)).family
                if family != "resnet" or set(grid["arch_grid"]) != {"blocks"}:
                    raise ValueError(
                        "a finetuned zoo's arch_grid may vary only the blocks of a ResNet (its runs start from "
                        f"the base moved to their depth), got {sorted(grid['arch_grid'])} for a {family}"
                    )
            for variant in arch_variants(grid["arch_grid"]):
                architecture_for_task(t, self.arch_name(t), **variant)  # ValueError naming a bad field
        keys = {*FAMILIES, *list_architectures(), *list_tasks(), *(get_task(t).source for t in list_tasks())}
        for key, values in self.overrides.items():
            if key not in keys or set(values) - set(GRID_FIELDS):
                raise ValueError(
                    f"overrides[{key!r}] must name an architecture family/name, task source or task "
                    f"and set only {GRID_FIELDS}, got {sorted(values)}"
                )
        for arch, task in self.base_tasks.items():
            architecture_for_task(task, arch)
        if self.zoo_kind == "lora":
            self._validate_lora()
        elif self.lora:
            raise ValueError(f"lora (the adapter grid) needs zoo_kind 'lora', got zoo_kind {self.zoo_kind!r}")

    def _validate_lora(self) -> None:
        from ..zoo.lora import check_task_fits, lora_grid

        lora_grid(self.lora)  # ValueError naming a bad field
        archs = sorted({self.arch_name(t) for t in self.tasks})
        if len(archs) != 1:
            raise ValueError(f"a lora zoo adapts one base architecture, its tasks use {archs}")
        base_task = self.base_tasks.get(archs[0], self.tasks[0])
        base_spec = architecture_for_task(base_task, archs[0])
        for t in self.tasks:
            check_task_fits(base_spec, t)
            if self._grid(get_task(t), archs[0])["arch_grid"]:
                raise ValueError("arch_grid needs an independent or shared_init zoo, got 'lora'")

    def arch_name(self, task: str) -> str:
        """Architecture name used for `task` (a lora zoo with one ``base_tasks`` entry: that architecture)."""
        if task in self.architectures:
            return self.architectures[task]
        if self.zoo_kind == "lora" and len(self.base_tasks) == 1:
            return next(iter(self.base_tasks))
        return get_task(task).default_architecture

    def _grid(self, task: TaskSpec, arch_name: str) -> dict[str, Any]:
        grid = {f: copy.deepcopy(getattr(self, f)) for f in GRID_FIELDS}
        family = architecture_for_task(task, arch_name).family
        for key in (family, arch_name, task.source, task.name):
            grid.update(self.overrides.get(key, {}))
        return grid


def arch_variants(arch_grid: dict[str, list[Any]]) -> list[dict[str, Any]]:
    """Every combination of an ``arch_grid`` (parameter -> values) as parameter dicts; ``[{}]`` when empty."""
    bad = [k for k, v in arch_grid.items() if not isinstance(v, list) or not v]
    if bad:
        raise ValueError(
            f"arch_grid values must be non-empty lists, got { ({k: arch_grid[k] for k in bad})!r}"
        )
    keys = list(arch_grid)
    return [dict(zip(keys, combo, strict=True)) for combo in itertools.product(*(arch_grid[k] for k in keys))]


def _variant_tag(variant: dict[str, Any]) -> str:
    """A readable run-id part for an architecture variant: {"blocks": [1, 2, 1]} -> "-blocks121"."""
    flat = lambda v: "".join(map(str, v)) if isinstance(v, (list, tuple)) else str(v)  # noqa: E731
    return "".join(f"-{k}{flat(v)}" for k, v in variant.items())


def _check_grid(task: str, g: dict[str, Any]) -> None:
    seeds, acts = g["seeds"], g["activations"]
    bad = next(
        (
            f
            for f, ok in (
                ("seeds", seeds and all(isinstance(x, int) for x in seeds) and len(set(seeds)) == len(seeds)),
                ("activations", acts is None or acts and set(acts) <= set(ACTIVATIONS)),
                (
                    "optimizers",
                    g["optimizers"]
                    and set(g["optimizers"]) <= set(OPTIMIZERS)
                    and all(lrs and min(lrs) > 0 for lrs in g["optimizers"].values()),
                ),
                ("inits", bool(g["inits"])),
                ("dropouts", g["dropouts"] and all(0 <= d < 1 for d in g["dropouts"])),
                ("weight_decays", g["weight_decays"] and min(g["weight_decays"]) >= 0),
                ("epochs", g["epochs"] >= 1 and g["finetune_epochs"] >= 1),
                ("keep_epochs", g["keep_epochs"] and all(0 <= e <= g["epochs"] for e in g["keep_epochs"])),
            )
            if not ok
        ),
        None,
    )
    if bad:
        raise ValueError(f"invalid {bad} for task {task!r}: {g[bad]!r}")
    for init in g["inits"]:
        HyperParams(init=init)  # ValueError naming the init


@dataclass
class ZooRun:
    """One training run: task, architecture, hyperparameters and the epochs it keeps."""

    run_id: str
    task: TaskSpec
    arch_name: str
    spec: ArchSpec
    hp: HyperParams
    keep_epochs: tuple[int, ...]
    zoo_kind: str
    grid_seed: int
    role: str = "train"  # "train", "base" or "finetune"
    base_run_id: str | None = None
    adapter: dict[str, Any] | None = None  # lora zoos: the run's `LoraSettings` as a dict
    # finetuned runs: the base's architecture (its weights are moved to `spec` when the depths differ)
    base_spec: ArchSpec | None = None

    @property
    def model_ids(self) -> list[str]:
        """Corpus ids of the checkpoints this run keeps."""
        return [f"{self.run_id}-e{e}" for e in self.keep_epochs]

    def metadata(self, epoch: int, metrics: dict[str, float], adapter_spec=None) -> CheckpointMetadata:
        """Corpus metadata of this run's checkpoint at `epoch` (an adapter run needs its `AdapterSpec`)."""
        if self.adapter is not None:
            return self._adapter_metadata(epoch, metrics, adapter_spec)
        hyper = {
            **self.hp.to_dict(),
            "activation": self.spec.params.get("activation"),
            "dropout": self.spec.params.get("dropout", 0.0),
            "architecture": self.arch_name,
            "role": self.role,
        }
        if self.base_run_id:
            hyper["base_run_id"] = self.base_run_id
        return CheckpointMetadata(
            model_id=f"{self.run_id}-e{epoch}",
            run_id=self.run_id,
            zoo_kind=self.zoo_kind,
            task=self.task.name,
            instruction=self.task.instruction,
            arch_spec=self.spec,
            hyperparams=hyper,
            seed=self.grid_seed,
            epoch=epoch,
            **metrics,
        )

    def _adapter_metadata(self, epoch: int, metrics: dict[str, float], spec) -> CheckpointMetadata:
        if spec is None:
            raise ValueError(f"run {self.run_id!r} trains an adapter: its metadata needs the AdapterSpec")
        hyper = {
            **self.hp.to_dict(),
            "role": self.role,
            "base_run_id": self.base_run_id,
            "lora": self.adapter,
            "peft_config": spec.peft_config,
            "base_model": spec.base_model,
            "base_arch": self.spec.to_dict(),
        }
        return CheckpointMetadata(
            model_id=f"{self.run_id}-e{epoch}",
            run_id=self.run_id,
            zoo_kind=self.zoo_kind,
            task=self.task.name,
            instruction=self.task.instruction,
            arch_text=spec.text(),
            arch_family=f"adapter:{spec.peft_type.lower()}",
            hyperparams=hyper,
            seed=self.grid_seed,
            epoch=epoch,
            **metrics,
        )


def _digest(*parts: Any) -> str:
    return hashlib.sha1(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:10]


def _derived_seed(*parts: Any) -> int:
    return int(_digest(*parts), 16) % 2**31


def _make_run(
    cfg: ZooConfig,
    task: TaskSpec,
    arch: str,
    seed: int,
    role: str,
    base: ZooRun | None = None,
    variant: dict[str, Any] | None = None,
    adapter: dict[str, Any] | None = None,
) -> ZooRun:
    g = cfg._grid(task, arch)
    # an architecture variant of the grid is its own "architecture" for sampling and seeding; a zoo without a
    # grid keeps the ids, samples and seeds it had before grids existed
    arch_key = (arch, json.dumps(variant, sort_keys=True)) if variant else arch
    # independent: each (task, seed) samples its own combination; shared_init/finetuned: one per (arch, seed)
    key = (task.name, arch_key, seed) if cfg.zoo_kind == "independent" else (arch_key, seed)
    rng = random.Random(f"{cfg.sample_seed}|{key}")
    activation = rng.choice(g["activations"]) if g["activations"] else None
    init = rng.choice(g["inits"])
    opt, lr = rng.choice([(o, lr) for o, lrs in g["optimizers"].items() for lr in lrs])
    wd, dropout = rng.choice(g["weight_decays"]), rng.choice(g["dropouts"])
    spec = architecture_for_task(task, arch, **(variant or {}))
    has_dropout = "dropout" in spec.params  # ResNets have BatchNorm and no dropout
    if base is not None:  # fine-tuning keeps the base's activation and dropout
        kept = {k: base.spec.params[k] for k in ("activation", "dropout") if k in base.spec.params}
        spec = spec.replace(**kept)
    else:
        changes = {"dropout": dropout} if has_dropout else {}
        spec = spec.replace(**changes, **({"activation": activation} if activation else {}))
    if adapter is not None:  # an adapter of the base: the base's architecture, whatever the task's classes
        spec = base.spec
    epochs, keep = g["epochs"], g["keep_epochs"]
    if role == "finetune":
        epochs, shift = g["finetune_epochs"], g["epochs"] - g["finetune_epochs"]
        keep = [e - shift for e in keep if e - shift >= 1] or [epochs]
    init_seed = seed if cfg.zoo_kind == "shared_init" else _derived_seed(task.name, arch_key, seed)
    hp = HyperParams(
        seed=seed,
        lr=lr,
        optimizer=opt,
        weight_decay=wd,
        init=init,
        epochs=epochs,
        batch_size=g["batch_size"],
        init_seed=init_seed,
    )
    keep_t = tuple(sorted(set(keep)))
    tag = _variant_tag(variant or {}) + (f"-lora-r{adapter['r']}" if adapter else "")
    parts = [task.name, spec.to_dict(), hp.to_dict(), keep_t, cfg.zoo_kind, base.run_id if base else None]
    run_id = f"{task.name}-{arch}{tag}-{'base-' if role == 'base' else ''}s{seed}-" + _digest(
        *parts, *([adapter] if adapter else [])
    )
    return ZooRun(
        run_id,
        task,
        arch,
        spec,
        hp,
        keep_t,
        cfg.zoo_kind,
        seed,
        role,
        base.run_id if base else None,
        adapter,
        base.spec if base is not None and adapter is None else None,
    )


def plan_runs(config: ZooConfig) -> list[ZooRun]:
    """All runs of a config in seed-major order (bases first for finetuned zoos), capped at ``num_runs``."""
    config.validate()
    tasks = [get_task(t) for t in config.tasks]
    bases: dict[str, ZooRun] = {}
    adapters: list[dict[str, Any] | None] = [None]
    if config.zoo_kind == "lora":
        from ..zoo.lora import lora_grid

        adapters = [s.to_dict() for s in lora_grid(config.lora)]
    if config.zoo_kind in ("finetuned", "lora"):
        for t in tasks:
            arch = config.arch_name(t.name)
            if arch not in bases:
                base_task = get_task(config.base_tasks.get(arch, t.name))
                g = config._grid(base_task, arch)
                # a lineage (finetuned zoo with a depth grid) trains its base at the grid's first configuration
                variant = arch_variants(g["arch_grid"])[0] if g["arch_grid"] else None
                bases[arch] = _make_run(config, base_task, arch, g["seeds"][0], "base", variant=variant)
    items = []
    for ti, t in enumerate(tasks):
        arch = config.arch_name(t.name)
        grid = config._grid(t, arch)
        for vi, variant in enumerate(arch_variants(grid["arch_grid"])):
            for si, seed in enumerate(grid["seeds"]):
                role = "finetune" if bases else "train"
                for ai, a in enumerate(adapters):
                    run = _make_run(config, t, arch, seed, role, bases.get(arch), variant, a)
                    items.append((si, ti, vi, ai, run))
    runs = list(bases.values()) + [r for *_, r in sorted(items, key=lambda x: x[:4])]
    return runs[: config.num_runs] if config.num_runs else runs


# ---------------------------------------------------------------------------------------------
# Execution
# ---------------------------------------------------------------------------------------------


def _die_with_parent(parent: int) -> None:
    """Make this worker die when the build process does, even by SIGKILL (it would train on, orphaned)."""
    if sys.platform.startswith("linux"):
        import ctypes

        try:
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(1)

    def watch() -> None:  # other systems: poll
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)

    if not sys.platform.startswith("linux"):
        threading.Thread(target=watch, daemon=True).start()


def _worker_init(parent: int | None = None) -> None:
    torch.set_num_threads(1)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the build handles Ctrl-C and terminates the pool
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    if parent is not None:
        _die_with_parent(parent)


class _Terminated(SystemExit):
    """SIGTERM, raised in the main thread so that finished runs are flushed before the build exits."""


def _raise_terminated(signum, frame) -> None:
    raise _Terminated(128 + signum)


def _stop_pool(pool) -> None:
    """Terminate `pool` and its workers without replacing the exception that is unwinding the build.

    CPython's ``Pool.terminate`` raises ``AssertionError("Cannot have cache with result_hander not alive")`` when
    its result-handler thread has already exited while results are pending (seen once in CI when SIGTERM arrived
    as a finished run was handed to the writer, on busy cores); that error then hid the SIGTERM exit status and
    left the workers to the parent-death signal. In that case the workers are terminated and joined here.
    """
    try:
        pool.terminate()
    except AssertionError:
        logger.debug("Pool.terminate refused (result handler gone); terminating its workers directly")
        workers = list(getattr(pool, "_pool", []))  # the Pool's worker processes; no public accessor exists
        for proc in workers:
            if proc.exitcode is None:
                proc.terminate()
        for proc in workers:
            proc.join(10)
        return
    pool.join()


def _ensure_task(task: TaskSpec) -> TaskSpec:
    """Register `task` in this process if it is a user task unknown here (spawned workers)."""
    if task.name not in list_tasks() or get_task(task.name) != task:
        register_task(task, overwrite=True)
    return task


def _train_run(
    item: tuple[ZooRun, dict | None], device: str | torch.device = "cpu"
) -> tuple[str, list[KeptEpoch]]:
    run, init_state = item
    task = _ensure_task(run.task)
    if run.adapter is not None:  # a LoRA adapter of the base (`init_state`)
        from ..zoo.lora import LoraSettings, train_lora

        settings = LoraSettings(**run.adapter)
        return run.run_id, train_lora(
            run.spec, init_state, settings, task.name, run.hp, list(run.keep_epochs), device
        )
    return run.run_id, train_model(
        run.spec, task.name, run.hp, list(run.keep_epochs), init_state=init_state, device=device
    )


def _execute(
    runs: list[ZooRun], init_states: dict[str, dict], pool, device: torch.device
) -> Iterator[tuple[ZooRun, list[KeptEpoch]]]:
    def init_of(r: ZooRun) -> dict | None:
        if not r.base_run_id:
            return None
        state = init_states[r.base_run_id]
        if r.base_spec is not None and r.base_spec.params.get("blocks") != r.spec.params.get("blocks"):
            state = transplant_depth(r.base_spec, state, r.spec, seed=r.hp.init_seed)
        return state

    by_id = {r.run_id: r for r in runs}
    starts = {r.run_id: init_of(r) for r in runs}  # once per run: a lineage's start is a transplant
    items = [(r, starts[r.run_id]) for r in runs]
    if device.type == "cuda":
        for r in runs:  # adapters: one at a time (peft models do not stack)
            if r.adapter is not None:
                yield r, _train_run((r, starts[r.run_id]), device)[1]
        groups: dict[str, list[ZooRun]] = {}
        for r in (r for r in runs if r.adapter is None):
            key = _digest(
                r.task.name, r.spec.to_dict(), r.hp.epochs, r.hp.batch_size, r.keep_epochs, r.base_run_id
            )
            groups.setdefault(key, []).append(r)
        for group in groups.values():
            r0 = group[0]
            if any(True for _ in r0.spec.build().buffers()):  # batch norm: one model at a time on the GPU
                for r in group:
                    yield r, train_model(r.spec, r.task, r.hp, list(r.keep_epochs), starts[r.run_id], device)
                continue
            data = load_task_data(_ensure_task(r0.task).name)
            for i in range(0, len(group), MAX_BATCHED_MODELS):
                chunk = group[i : i + MAX_BATCHED_MODELS]
                outs = train_models_batched(
                    r0.spec, data, [r.hp for r in chunk], list(r0.keep_epochs), device, starts[r0.run_id]
                )
                yield from zip(chunk, outs, strict=True)
    elif pool is None:  # in this process, on one thread like the pool's workers (tiny models: fastest)
        threads = torch.get_num_threads()
        try:
            torch.set_num_threads(1)
            for item in items:
                yield item[0], _train_run(item)[1]
        finally:
            torch.set_num_threads(threads)
    else:
        for run_id, result in pool.imap_unordered(_train_run, items, chunksize=1):
            yield by_id[run_id], result


def _train_pending(
    config: ZooConfig, runs: list[ZooRun], writer: CorpusWriter, pool, dev: torch.device, progress: bool
) -> dict[str, Any]:
    """Train the runs whose checkpoints are not all in the corpus yet; write results as they complete."""
    lora = _LoraBase(writer.path, runs) if config.zoo_kind == "lora" else None
    pending = [r for r in runs if not (set(r.model_ids) <= writer.done_ids or (lora and lora.done(r)))]
    pending_ids = {r.run_id for r in pending}
    needed = pending_ids | {r.base_run_id for r in pending if r.base_run_id}  # fine-tuning needs its base
    bases = [r for r in runs if r.role == "base" and r.run_id in needed and not (lora and lora.done(r))]
    rest = [r for r in pending if r.role != "base"]
    stats = {
        "name": config.name,
        "zoo_kind": config.zoo_kind,
        "device": str(dev),
        "runs_total": len(runs),
        "runs_trained": 0,
        "runs_skipped": len(runs) - len(pending),
        "runs_diverged": 0,
        "checkpoints_written": 0,
    }
    logger.info(
        "zoo %r: %d runs, %d already done, training %d on %s",
        config.name,
        len(runs),
        stats["runs_skipped"],
        len(bases) + len(rest),
        dev,
    )
    start = last_flush = time.perf_counter()
    init_states: dict[str, dict] = lora.init_states() if lora else {}
    try:
        with progress_bar(len(bases) + len(rest), f"zoo {config.name}", enabled=progress) as bar:
            for phase in (bases, rest):
                for run, results in _execute(phase, init_states, pool, dev):
                    if run.role == "base" and results:
                        init_states[run.run_id] = results[-1][1]
                    stats["runs_trained"] += 1
                    stats["runs_diverged"] += len(results) < len(run.keep_epochs)
                    if (
                        lora and run.role == "base"
                    ):  # the base is a folder beside the corpus, not a corpus row
                        if results:
                            lora.save(run, results[-1])
                        results = []
                    for epoch, sd, metrics in results:
                        mid = f"{run.run_id}-e{epoch}"
                        if mid in writer.done_ids:
                            continue
                        if not all(torch.isfinite(v).all() for v in sd.values() if v.is_floating_point()):
                            logger.warning("skipping %s: non-finite weights", mid)
                            continue
                        spec = lora.adapter_spec(run) if lora and run.adapter else None
                        writer.add(sd, run.metadata(epoch, metrics, spec))
                        stats["checkpoints_written"] += 1
                    if time.perf_counter() - last_flush > FLUSH_EVERY_S:
                        writer.flush()
                        last_flush = time.perf_counter()
                    bar.update(
                        1, postfix=f"{stats['runs_trained'] / (time.perf_counter() - start):.2f} models/s"
                    )
    except BaseException:
        writer.flush()  # keep every finished run, so a rerun resumes from here
        raise
    return stats


class _LoraBase:
    """The base network of a lora zoo: saved once to ``out_dir/base_model`` by its base run, reloaded on resume."""

    def __init__(self, out_dir: Path, runs: list[ZooRun]):
        from ..adapters import load_base_model

        self.folder = Path(out_dir) / BASE_MODEL_DIR
        self.run = next((r for r in runs if r.role == "base"), None)
        self.base = None
        self._specs: dict[str, Any] = {}
        if self.run is not None and (self.folder / "config.json").exists():
            base = load_base_model(self.folder)  # ValueError if its weights no longer match its hash
            saved_by = base.info.get("run_id")
            if saved_by != self.run.run_id:
                raise ValueError(
                    f"{self.folder} holds the base trained by run {saved_by!r}, this zoo's base run is "
                    f"{self.run.run_id!r}: its adapters would be for another base; build into another folder"
                )
            self.base = base

    def done(self, run: ZooRun) -> bool:
        return run.role == "base" and self.base is not None

    def init_states(self) -> dict[str, dict]:
        return {self.run.run_id: self.base.module.state_dict()} if self.base is not None else {}

    def save(self, run: ZooRun, kept: KeptEpoch) -> None:
        from ..adapters import save_base_model

        module = run.spec.build()
        module.load_state_dict(kept[1], strict=True)
        info = {
            "run_id": run.run_id,
            "task": run.task.name,
            "epoch": kept[0],
            **kept[2],
            "hp": run.hp.to_dict(),
        }
        self.base = save_base_model(module, self.folder, run.spec, str(self.folder.resolve()), info)
        logger.info("saved the base model to %s (%s)", self.folder, self.base.identity)

    def adapter_spec(self, run: ZooRun):
        """The `AdapterSpec` of an adapter run (one per LoRA setting)."""
        from ..adapters import AdapterSpec
        from ..zoo.lora import LoraSettings

        key = json.dumps(run.adapter, sort_keys=True)
        if key not in self._specs:
            config = LoraSettings(**run.adapter).lora_config(self.base.name)
            self._specs[key] = AdapterSpec.from_base(self.base, config)
        return self._specs[key]


def format_build_stats(stats: dict[str, Any]) -> str:
    """One line for people: runs trained (and skipped), checkpoints written and in the corpus, time, speed."""
    skipped = f", {stats['runs_skipped']} already done" if stats.get("runs_skipped") else ""
    speed = stats.get("models_per_second") or 0.0
    return (
        f"trained {stats['runs_trained']} of {stats['runs_total']} runs{skipped}; wrote "
        f"{stats['checkpoints_written']} checkpoints, {stats['checkpoints_total']} in the corpus; "
        f"{stats['seconds']:.0f} s ({speed:.2f} models/s)"
    )


def build_zoo(
    config: ZooConfig,
    out_dir: str | os.PathLike,
    num_workers: int | None = None,
    device: str = "auto",
    progress: bool = True,
) -> WeightCorpus:
    """Train the zoo of `config` into the corpus folder `out_dir` (resuming it) and return the corpus.

    The corpus gets a ``build_stats`` attribute (also written to ``out_dir/build_stats.json``): runs trained and
    skipped, checkpoints written, seconds, models (runs) per second, checkpoints per second.
    """
    runs = plan_runs(config)  # validates tasks, architectures and grid before any training
    if device != "auto" and not str(device).startswith(("cpu", "cuda")):
        raise ValueError(f"device must be 'auto', 'cpu' or 'cuda[:N]', got {device!r}")
    dev = torch.device(
        "cuda" if device == "auto" and torch.cuda.is_available() else "cpu" if device == "auto" else device
    )
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} asked for CUDA, which is not available")
    num_workers = num_workers or os.cpu_count() or 1
    if num_workers < 1:
        raise ValueError(f"num_workers must be >= 1, got {num_workers!r}")
    out_dir = ensure_writable(out_dir)  # a read-only folder is found now, not after training
    pool, writer = None, None
    on_main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _raise_terminated) if on_main else None
    try:
        if dev.type == "cpu" and num_workers > 1:  # fork before the writer and progress bar start threads
            # fork only a single-threaded process: a lock another thread holds at the fork (a server, a logging
            # handler, a progress monitor) stays locked forever in the child, which then hangs (seen in the test
            # suite once its in-process Hub server thread was running); otherwise spawn, slower to start but safe
            single = threading.active_count() == 1
            method = "fork" if single and "fork" in mp.get_all_start_methods() else "spawn"
            pool = mp.get_context(method).Pool(num_workers, initializer=_worker_init, initargs=(os.getpid(),))
        start = time.perf_counter()
        writer = CorpusWriter(out_dir, shard_rows=256)  # refuses a second build on the same folder
        stats = _train_pending(config, runs, writer, pool, dev, progress)
    except BaseException:
        if writer is not None:
            writer.release()  # _train_pending flushed what was finished
        raise
    finally:
        if pool is not None:
            _stop_pool(pool)
        if on_main:
            signal.signal(signal.SIGTERM, previous)
    stats["num_workers"] = num_workers if dev.type == "cpu" else 1
    seconds = time.perf_counter() - start
    corpus = writer.close()
    stats.update(
        checkpoints_total=len(corpus),
        seconds=round(seconds, 3),
        models_per_second=round(stats["runs_trained"] / seconds, 4) if seconds else None,
        checkpoints_per_second=round(stats["checkpoints_written"] / seconds, 4) if seconds else None,
    )
    if stats["runs_diverged"]:
        logger.warning(
            "%d runs diverged; their missing checkpoints are retried on resume", stats["runs_diverged"]
        )
    logger.info(
        "zoo %r built in %.1f s: %d runs (%.3f models/s), %d checkpoints (%.3f/s), %d in corpus",
        config.name,
        seconds,
        stats["runs_trained"],
        stats["models_per_second"] or 0,
        stats["checkpoints_written"],
        stats["checkpoints_per_second"] or 0,
        stats["checkpoints_total"],
    )
    atomic_write_json(out_dir / "build_stats.json", stats)
    corpus.build_stats = stats
    return corpus
