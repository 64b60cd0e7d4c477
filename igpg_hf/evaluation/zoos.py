"""A zoo with its trained pipeline, as the demo and the benchmark's experiments use it.

`ZooSetup` says how to get one: a zoo-builder preset (+ field changes), a `PipelineRecipe` and the sampling
settings the experiments generate with. `load_zoo` builds the zoo (`build_zoo`, resumable) and trains its
pipeline (`train_pipeline`, resumable) into a run folder; `Zoo` holds both and what experiments share (each
checkpoint's accuracy and tokens, instruction embeddings, memoized samples, so every experiment sees the same).

Units: accuracies here and in every result are percent; the corpus stores fractions (``test_acc``).
"""

from __future__ import annotations

import copy
import json
import logging
import time
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import torch

from ..files import atomic_write_json
from ..training.recipe import PipelineRecipe
from ..training.zoo_builder import ZooConfig
from ..zoo.tasks import get_task
from .baselines import retrieve_by_embedding
from .settings import GenerationSettings

logger = logging.getLogger(__name__)

__all__ = ["ZooSetup", "Zoo", "load_zoo", "record_build"]


@dataclass
class ZooSetup:
    """A zoo (builder preset + field changes), the recipe of its pipeline, and how experiments sample from it."""

    zoo_preset: str = "demo"
    zoo_changes: dict[str, Any] = field(default_factory=dict)
    recipe: PipelineRecipe = field(default_factory=lambda: PipelineRecipe.from_preset("demo"))
    generation: GenerationSettings = field(default_factory=GenerationSettings)
    num_random_init: int = 10  # random-init baselines per task
    corpus: str | None = (
        None  # an existing corpus (folder or Hub id) of this zoo to use instead of building it
    )

    def __post_init__(self):
        if isinstance(self.recipe, dict):
            self.recipe = PipelineRecipe(**self.recipe)
        if isinstance(self.generation, dict):
            self.generation = GenerationSettings(**self.generation)

    def zoo_config(self) -> ZooConfig:
        """The zoo builder's config (ValueError naming a bad preset or field)."""
        return ZooConfig.from_preset(self.zoo_preset, **copy.deepcopy(self.zoo_changes))


@dataclass
class Zoo:
    """A corpus with its trained pipeline and what experiments share (accuracies, tokens, embeddings, samples)."""

    name: str
    pipe: Any
    checkpoints: list
    epochs: int
    setup: ZooSetup

    def __post_init__(self):
        # (task, architecture text) -> checkpoints, last epochs first
        self.groups: dict[tuple[str, str], list] = {}
        for c in sorted(
            self.checkpoints, key=lambda c: (-c.metadata.epoch, c.metadata.seed, c.metadata.model_id)
        ):
            self.groups.setdefault((c.metadata.task, c.metadata.arch_text), []).append(c)
        self.by_task = {t: cs for (t, _), cs in self.groups.items()}  # zoos with one architecture per task
        self._gen: dict[tuple, Any] = {}

    @property
    def settings(self) -> GenerationSettings:
        """The sampling settings of this zoo's experiments."""
        return self.setup.generation

    @property
    def conditions_on_data(self) -> bool:
        """Whether the prior was trained with the dataset condition (else experiments pass no samples)."""
        return self.setup.recipe.prior_training.use_dataset_condition

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
        """Every checkpoint's token ids under this zoo's VQ-VAE (model_id -> (N,))."""
        return {
            c.metadata.model_id: self.pipe.vqvae.encode(c.state_dict(), c.layout) for c in self.checkpoints
        }

    def embed(self, text: str) -> torch.Tensor:
        """The (E,) embedding of a text under the pipeline's text encoder."""
        from ..conditioning import encode_text

        return encode_text([text], self.pipe.text_encoder, self.pipe.tokenizer)[0].cpu()

    @cached_property
    def task_embeddings(self) -> dict[str, torch.Tensor]:
        """Each zoo task's instruction embedding (task -> (E,))."""
        return {
            t: self.embed(cs[0].metadata.instruction or get_task(t).instruction)
            for t, cs in self.by_task.items()
        }

    def nearest_task(self, task: str) -> str:
        """The zoo task whose instruction embedding is nearest to ``task``'s (retrieval by embedding)."""
        return retrieve_by_embedding(self.embed(get_task(task).instruction), self.task_embeddings)

    def generate(self, task: str, spec, dataset: Any = "task", n: int | None = None):
        """Seeded samples for a task (memoized: every experiment sees the same samples)."""
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
        """Seeded samples with token-for-token copies of training checkpoints excluded (the new-only setting)."""
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


def record_build(path: Path, name: str, stats: dict) -> None:
    """Keep in ``path`` (``zoo_builds.json``) the stats of the build that trained the most runs of each zoo."""
    builds = json.loads(path.read_text()) if path.exists() else {}
    if stats.get("runs_trained", 0) > builds.get(name, {}).get("runs_trained", 0):
        builds[name] = stats
        atomic_write_json(path, builds)


def load_zoo(
    name: str,
    setup: ZooSetup,
    out: str | Path,
    workers: int | None = None,
    device: str = "cpu",
    corpus: str | None = None,
    pipeline: str | None = None,
    timings: dict[str, float] | None = None,
    progress: bool = True,
) -> Zoo:
    """Build (or resume) ``out/zoo_{name}`` and train (or reuse) ``out/pipeline_{name}``; or load given ones.

    ``corpus`` / ``pipeline``: an existing corpus and the pipeline trained on it, used instead. Build stats go to
    ``out/zoo_builds.json`` (the build that trained most of the zoo); ``timings`` gets ``zoo_{name}_seconds``
    and ``pipeline_{name}_seconds``.
    """
    from ..corpus import WeightCorpus
    from ..pipeline_igpg import IGPGPipeline
    from ..training.pipeline import train_pipeline
    from ..training.zoo_builder import build_zoo

    out, timings = Path(out), timings if timings is not None else {}
    t = time.perf_counter()
    zc = setup.zoo_config()
    corpus = corpus or setup.corpus
    if corpus:
        checkpoints = list(WeightCorpus.load(corpus))
    else:
        stats = out / f"zoo_{name}" / "build_stats.json"
        before = [json.loads(stats.read_text())] if stats.exists() else []
        checkpoints = list(build_zoo(zc, out / f"zoo_{name}", num_workers=workers, progress=progress))
        for st in [*before, json.loads(stats.read_text())]:  # a resumed build trains nothing: keep the first
            record_build(out / "zoo_builds.json", name, st)
    timings[f"zoo_{name}_seconds"] = time.perf_counter() - t
    t = time.perf_counter()
    pipe = (
        IGPGPipeline.from_pretrained(pipeline)
        if pipeline
        else train_pipeline(checkpoints, setup.recipe, out / f"pipeline_{name}", progress=progress)
    )
    timings[f"pipeline_{name}_seconds"] = time.perf_counter() - t
    epochs = max(c.metadata.hyperparams.get("epochs", zc.epochs) for c in checkpoints)
    return Zoo(name, pipe.to(device), checkpoints, int(epochs), setup)
