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

import torch

from ..conditioning import load_text_encoder
from ..files import atomic_write_json
from ..modeling_prior import IGPGPriorModel
from ..modeling_vqvae import IGPGVQVAEModel
from ..pipeline_igpg import IGPGPipeline
from .prior import train_prior
from .recipe import CHECKPOINT_SELECTIONS, RECIPE_PRESETS, PipelineRecipe
from .vqvae import refine_vqvae_decoder, train_vqvae

logger = logging.getLogger(__name__)

__all__ = [
    "PipelineRecipe",
    "train_pipeline",
    "train_pipeline_vqvae",
    "select_checkpoints",
    "choose_runs_by_decoded_accuracy",
    "RECIPE_PRESETS",
]

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


@torch.no_grad()
def choose_runs_by_decoded_accuracy(
    checkpoints: list, vqvae: IGPGVQVAEModel, runs_per_architecture: int = 1, progress: bool = True
) -> tuple[list, dict[str, float]]:
    """Per (task, architecture text), the ``runs_per_architecture`` checkpoints whose nets, encoded and decoded by
    ``vqvae`` (`IGPGVQVAEModel.reconstruct`), reach the highest accuracy on the task's training split; ties go to
    the lower (seed, model id). ``checkpoints``: one per run (``select_checkpoints(..., "last_epoch")``).

    Returns (the kept checkpoints in their given order, {model_id: decoded training accuracy in %} of every
    checkpoint). The test split is never used. ValueError naming a task whose data is not registered (a corpus
    of ingested state dicts: use ``prior_runs="lowest_seed"``).
    """
    from ..evaluation.metrics import evaluate_state_dicts
    from ..progress import progress_bar
    from ..zoo.tasks import get_task

    groups: dict[tuple, list] = {}
    for c in checkpoints:
        groups.setdefault((c.metadata.task, c.metadata.arch_text), []).append(c)
    scores: dict[str, float] = {}
    keep: set[int] = set()
    with progress_bar(len(checkpoints), "decoded accuracy", enabled=progress) as bar:
        for (task, _), group in sorted(groups.items()):
            try:
                spec = get_task(task)
            except ValueError as e:
                raise ValueError(
                    f"prior_runs='decoded_accuracy' evaluates decoded nets on their task's training data, and task "
                    f"{task!r} is not registered ({e}); use prior_runs='lowest_seed'"
                ) from None
            for c in group:
                sd = c.state_dict()
                acc = evaluate_state_dicts(c.arch(), [vqvae.reconstruct(sd, c.layout)], spec, split="train")[
                    0
                ]
                scores[c.metadata.model_id] = acc if acc == acc else float("-inf")  # NaN (non-finite) last
                bar.update(1)
            ranked = sorted(
                group, key=lambda c: (-scores[c.metadata.model_id], c.metadata.seed, c.metadata.model_id)
            )
            keep |= {id(c) for c in ranked[:runs_per_architecture]}
    return [c for c in checkpoints if id(c) in keep], scores


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
    corpus_checkpoints = _checkpoints(corpus_or_checkpoints)
    training_set = _training_set(corpus_checkpoints, recipe)
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
        checkpoints, decoded = training_set(), None
        if recipe.prior_runs == "decoded_accuracy":  # among every run, those the VQ-VAE keeps best
            pool = select_checkpoints(corpus_checkpoints, recipe.checkpoints, None)
            checkpoints, decoded = choose_runs_by_decoded_accuracy(
                pool, vqvae, recipe.runs_per_architecture or 1, progress=progress
            )
            chosen = {c.metadata.model_id for c in checkpoints} - {
                c.metadata.model_id for c in training_set()
            }
            logger.info(
                "prior runs by decoded accuracy: %d of %d differ from the lowest seeds",
                len(chosen),
                len(checkpoints),
            )
        longest = max(vqvae.num_tokens(c.layout) for c in checkpoints)
        config = recipe.prior_config(vqvae, longest)
        config.training_summary = {"recipe": recipe.to_dict()}
        if decoded is not None:  # provenance: what every candidate run decoded to, which were kept
            config.training_summary["prior_runs"] = {
                "decoded_train_accuracy": {k: round(v, 2) for k, v in sorted(decoded.items())},
                "kept": sorted(c.metadata.model_id for c in checkpoints),
            }
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
