"""The one way a pipeline is trained: a `PipelineRecipe` and `train_pipeline` (VQ-VAE, then prior, then assemble).

    recipe = PipelineRecipe.from_preset("demo")              # or "related", "resnet", "smoke", "gpu"
    pipe = train_pipeline("zoo/", recipe, "runs/demo")        # runs/demo/vqvae, runs/demo/prior
    pipe.save_pretrained("runs/demo/pipeline")

The CLI (`igpg-hf train vqvae|prior|pipeline`), the demo and every benchmark zoo call it. Every stage resumes:
a finished model in ``output_dir/{vqvae,prior}/final`` is reused, a killed run resumes from its last checkpoint.
``output_dir/{vqvae,prior}/recipe.json`` record the settings of each stage, and a stage trained with other
settings is refused instead of silently reused. The checkpoints' order does not matter (the trainers sort them by ``model_id``).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from ..conditioning import load_text_encoder
from ..files import atomic_write_json
from ..modeling_prior import IGPGPriorModel
from ..modeling_vqvae import IGPGVQVAEModel
from ..pipeline_igpg import IGPGPipeline
from .prior import train_prior
from .recipe import CHECKPOINT_SELECTIONS, RECIPE_PRESETS, PipelineRecipe
from .vqvae import refine_vqvae_decoder, train_vqvae

logger = logging.getLogger(__name__)

__all__ = ["PipelineRecipe", "train_pipeline", "train_pipeline_vqvae", "select_checkpoints", "RECIPE_PRESETS"]

WeightCorpusLike = (
    Iterable | str | os.PathLike
)  # a WeightCorpus, its checkpoints, or a corpus folder / Hub id


def _checkpoints(corpus_or_checkpoints: Any) -> list:
    """A list of corpus checkpoints from a corpus, an iterable of checkpoints, or a corpus folder / Hub id."""
    if isinstance(corpus_or_checkpoints, (str, os.PathLike)):
        from ..corpus import WeightCorpus

        corpus_or_checkpoints = WeightCorpus.load(str(corpus_or_checkpoints))
    checkpoints = list(corpus_or_checkpoints)
    if not checkpoints:
        raise ValueError("the corpus has no checkpoints to train a pipeline on")
    return checkpoints


def select_checkpoints(
    checkpoints: list, selection: str = "all", runs_per_architecture: int | None = None
) -> list:
    """The checkpoints a recipe trains on (`PipelineRecipe.checkpoints`, ``runs_per_architecture``), in their
    given order.

    ``selection``: ``"all"``, every one; ``"last_epoch"``, per training run (``run_id``; a checkpoint without one
    is its own run) the one of the highest epoch. ``runs_per_architecture``: keep the runs of the N lowest
    (seed, run id) per (task, architecture text). Raises ValueError on another selection.
    """
    if selection not in CHECKPOINT_SELECTIONS:
        raise ValueError(
            f"unknown checkpoint selection {selection!r}; known: {', '.join(CHECKPOINT_SELECTIONS)}"
        )
    checkpoints = list(checkpoints)

    def run_of(c) -> str:
        return c.metadata.run_id or c.metadata.model_id

    keep = {id(c) for c in checkpoints}
    if selection == "last_epoch":
        last: dict[str, Any] = {}
        for c in checkpoints:
            run = run_of(c)
            if run not in last or c.metadata.epoch > last[run].metadata.epoch:
                last[run] = c
        keep = {id(c) for c in last.values()}
    if runs_per_architecture is not None:
        runs: dict[tuple, set] = {}
        for c in checkpoints:
            runs.setdefault((c.metadata.task, c.metadata.arch_text), set()).add((c.metadata.seed, run_of(c)))
        kept_runs = {r for rs in runs.values() for _, r in sorted(rs)[:runs_per_architecture]}
        keep &= {id(c) for c in checkpoints if run_of(c) in kept_runs}
    return [c for c in checkpoints if id(c) in keep]


def _training_set(corpus_or_checkpoints: Any, recipe: PipelineRecipe) -> Callable[[], list]:
    """The checkpoints the stages train on (ValueError now if there are none), permutation-aligned on first use
    if the recipe says so: stages that are reused need no alignment."""
    loaded = select_checkpoints(
        _checkpoints(corpus_or_checkpoints), recipe.checkpoints, recipe.runs_per_architecture
    )
    memo: list[list] = []

    def get() -> list:
        if not memo:
            checkpoints = loaded
            if recipe.align_checkpoints:
                from ..zoo.alignment import align_checkpoints

                checkpoints = align_checkpoints(checkpoints)
            memo.append(checkpoints)
        return memo[0]

    return get


def _check_stage(stage_dir: Path, recipe: PipelineRecipe, stage: str) -> None:
    """Refuse to reuse or resume a stage trained with other settings; record the settings of a stage to train.

    Only a folder holding a trained model or a training checkpoint is checked: settings recorded for a run that
    never got that far (it failed on a bad config) are simply replaced.
    """
    path = stage_dir / "recipe.json"
    new = recipe.weights_key(stage)
    trained = (stage_dir / "final" / "config.json").exists() or (stage_dir / "checkpoint").exists()
    if not trained:
        atomic_write_json(path, new)
        return
    if not path.exists():
        logger.warning("%s holds a %s but no recipe.json; reusing it unchecked", stage_dir, stage)
        return
    stored = json.loads(path.read_text())
    changed = sorted(k for k in new if stored.get(k) != new[k])
    if changed:
        raise ValueError(
            f"{stage_dir} holds a {stage} trained with other settings ({', '.join(changed)}: stored "
            f"{ {k: stored.get(k) for k in changed} }, asked { {k: new[k] for k in changed} }); "
            "use another output folder or delete this one"
        )


def train_pipeline_vqvae(
    corpus_or_checkpoints: WeightCorpusLike,
    recipe: PipelineRecipe,
    output_dir: str | os.PathLike,
    progress: bool = True,
) -> IGPGVQVAEModel:
    """The first stage of `train_pipeline` alone: the VQ-VAE in ``output_dir/vqvae`` (reused or resumed)."""
    return _vqvae_stage(_training_set(corpus_or_checkpoints, recipe), recipe, Path(output_dir), progress)


def _vqvae_stage(training_set: Callable[[], list], recipe: PipelineRecipe, out: Path, progress: bool):
    stage = out / "vqvae"
    config = recipe.vqvae_config()  # a bad preset or field is a ValueError before anything is written
    _check_stage(stage, recipe, "vqvae")
    if (stage / "final" / "config.json").exists():
        logger.info("reusing the VQ-VAE in %s", stage / "final")
        return IGPGVQVAEModel.from_pretrained(stage / "final").eval()
    return train_vqvae(training_set(), config, stage, recipe.vqvae_training, progress=progress).eval()


def train_pipeline(
    corpus_or_checkpoints: WeightCorpusLike,
    recipe: PipelineRecipe,
    output_dir: str | os.PathLike,
    progress: bool = True,
    vqvae: IGPGVQVAEModel | str | os.PathLike | None = None,
) -> IGPGPipeline:
    """Train (or reuse, or resume) the VQ-VAE and the prior of ``recipe`` on a corpus; return the pipeline.

    ``corpus_or_checkpoints``: a `WeightCorpus`, any iterable of its checkpoints (order does not matter), or a
    corpus folder / Hub dataset id. Writes ``output_dir/vqvae/final`` and ``output_dir/prior/final`` (and, when
    the recipe refines the decoder, ``output_dir/vqvae_decoder/final``: the VQ-VAE the pipeline decodes with; the
    prior trains on the same tokens either way), each stage folder with the ``recipe.json`` of its settings; the
    pipeline itself is not saved (``pipe.save_pretrained``). ``vqvae``: a trained VQ-VAE (model or folder) to use
    as it is instead of training ``output_dir/vqvae`` (no decoder refinement). Raises ValueError on an empty
    corpus, a bad preset or config field, a stage folder trained with other settings, or a VQ-VAE that cannot
    encode the corpus.
    """
    out = Path(output_dir)
    training_set = _training_set(corpus_or_checkpoints, recipe)
    if vqvae is None:
        vqvae = _vqvae_stage(training_set, recipe, out, progress)
        if recipe.vqvae_decoder_training.steps > 0:  # same tokens, closer decoding: the prior needs no change
            stage = out / "vqvae_decoder"
            _check_stage(stage, recipe, "vqvae_decoder")
            vqvae = refine_vqvae_decoder(
                training_set(), vqvae, stage, recipe.vqvae_decoder_training, progress=progress
            )
    elif not isinstance(vqvae, IGPGVQVAEModel):
        vqvae = IGPGVQVAEModel.from_pretrained(vqvae)
    vqvae = vqvae.eval()
    _check_stage(out / "prior", recipe, "prior")
    text_encoder, tokenizer = load_text_encoder(recipe.text_encoder or None)
    final = out / "prior" / "final"
    if (final / "config.json").exists():
        logger.info("reusing the prior in %s", final)
        prior = IGPGPriorModel.from_pretrained(final)
    else:
        checkpoints = training_set()
        longest = max(vqvae.num_tokens(c.layout) for c in checkpoints)
        config = recipe.prior_config(vqvae, longest)
        config.training_summary = {"recipe": recipe.to_dict()}
        prior = train_prior(
            checkpoints,
            vqvae,
            text_encoder,
            tokenizer,
            config,
            out / "prior",
            recipe.prior_training,
            progress=progress,
        )
    return IGPGPipeline(vqvae=vqvae, prior=prior.eval(), text_encoder=text_encoder, tokenizer=tokenizer)
