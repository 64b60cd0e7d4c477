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

import copy
import dataclasses
import json
import logging
import os
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..conditioning import DEFAULT_TEXT_ENCODER, load_text_encoder
from ..configuration_igpg import IGPGPriorConfig, IGPGVQVAEConfig
from ..files import atomic_write_json
from ..modeling_prior import IGPGPriorModel
from ..modeling_vqvae import IGPGVQVAEModel
from ..pipeline_igpg import IGPGPipeline
from .prior import PriorTrainingArgs, train_prior
from .vqvae import VQVAETrainingArgs, train_vqvae

logger = logging.getLogger(__name__)

__all__ = ["PipelineRecipe", "train_pipeline", "train_pipeline_vqvae", "RECIPE_PRESETS"]

# prior config fields the recipe sets itself (from the VQ-VAE, the corpus or its own fields)
_DERIVED_PRIOR_FIELDS = (
    "vocab_size",
    "tokens_per_chunk",
    "n_positions",
    "text_encoder_name",
    "support_per_class",
    "context_rule",
)
# settings that change how often a run logs or saves, never its weights
_BOOKKEEPING = ("checkpoint_every", "log_every")
# the recipe fields each stage depends on (checked when a stage folder is reused or resumed)
_STAGE_FIELDS = {
    "vqvae": ("vqvae_preset", "vqvae_overrides", "vqvae_training"),
    "prior": (
        "prior_preset",
        "prior_overrides",
        "prior_training",
        "text_encoder",
        "support_per_class",
        "n_positions",
        "max_n_positions",
    ),
}
WeightCorpusLike = (
    Iterable | str | os.PathLike
)  # a WeightCorpus, its checkpoints, or a corpus folder / Hub id


@dataclass
class PipelineRecipe:
    """Everything that decides a trained pipeline, and nothing about the corpus it trains on.

    - ``vqvae_preset`` / ``vqvae_overrides``: `IGPGVQVAEConfig.from_preset(preset, **overrides)`;
    - ``prior_preset`` / ``prior_overrides``: `IGPGPriorConfig.from_preset`; vocabulary and tokens per chunk
      come from the VQ-VAE, the fields below from the recipe (overriding them is a ValueError);
    - ``vqvae_training`` / ``prior_training``: steps, batch size, learning rate, seed, ...;
    - ``text_encoder``: Hub id or path of the text encoder (stored in the prior's config);
    - ``support_per_class``: labelled samples per class in the dataset condition, at training and inference;
    - context: ``n_positions=None`` fits the longest training sequence plus the prefix (at least the prior
      preset's context, at most ``max_n_positions``: longer models are generated block by block); an integer
      fixes the context (``context_rule`` "fixed" in the prior's config).
    """

    vqvae_preset: str = "demo"
    vqvae_overrides: dict[str, Any] = field(default_factory=dict)
    prior_preset: str = "demo"
    prior_overrides: dict[str, Any] = field(default_factory=dict)
    vqvae_training: VQVAETrainingArgs = field(default_factory=VQVAETrainingArgs)
    prior_training: PriorTrainingArgs = field(default_factory=PriorTrainingArgs)
    text_encoder: str = DEFAULT_TEXT_ENCODER
    support_per_class: int = IGPGPriorConfig.support_per_class
    n_positions: int | None = None
    max_n_positions: int = 1024

    def __post_init__(self):
        if isinstance(self.vqvae_training, dict):
            self.vqvae_training = VQVAETrainingArgs(**self.vqvae_training)
        if isinstance(self.prior_training, dict):
            self.prior_training = PriorTrainingArgs(**self.prior_training)
        if self.vqvae_preset not in IGPGVQVAEConfig.PRESETS:
            raise ValueError(
                f"vqvae_preset must be one of {list(IGPGVQVAEConfig.PRESETS)}, got {self.vqvae_preset!r}"
            )
        if self.prior_preset not in IGPGPriorConfig.PRESETS:
            raise ValueError(
                f"prior_preset must be one of {list(IGPGPriorConfig.PRESETS)}, got {self.prior_preset!r}"
            )
        derived = sorted(set(self.prior_overrides) & set(_DERIVED_PRIOR_FIELDS))
        if derived:
            raise ValueError(
                f"prior_overrides may not set {derived}: the recipe derives them (use its fields "
                "text_encoder, support_per_class, n_positions)"
            )
        if self.n_positions is not None and self.n_positions <= IGPGPriorConfig.num_prefix_tokens:
            raise ValueError(
                f"n_positions must exceed the prefix of {IGPGPriorConfig.num_prefix_tokens}, got {self.n_positions!r}"
            )

    @classmethod
    def from_preset(cls, name: str, **changes: Any) -> PipelineRecipe:
        """A named recipe (see `RECIPE_PRESETS`) with top-level field changes, e.g. ``n_positions=128``."""
        if name not in RECIPE_PRESETS:
            raise ValueError(f"unknown pipeline recipe preset {name!r}; known: {', '.join(RECIPE_PRESETS)}")
        return dataclasses.replace(copy.deepcopy(RECIPE_PRESETS[name]), **changes)

    def to_dict(self) -> dict[str, Any]:
        """The recipe as JSON-able data (`PipelineRecipe(**d)` rebuilds it)."""
        return asdict(self)

    def vqvae_config(self) -> IGPGVQVAEConfig:
        """The VQ-VAE's config: the preset with the overrides."""
        return IGPGVQVAEConfig.from_preset(self.vqvae_preset, **self.vqvae_overrides)

    def prior_config(self, vqvae: IGPGVQVAEModel, longest_sequence: int) -> IGPGPriorConfig:
        """The prior's config for a VQ-VAE and a corpus whose longest token sequence is ``longest_sequence``."""
        preset = IGPGPriorConfig.from_preset(self.prior_preset, **self.prior_overrides)
        if self.n_positions is not None:
            n_positions, rule = self.n_positions, "fixed"
        else:  # the paper's rule: the whole sequence after the prefix, as far as the context cap allows
            fit = min(longest_sequence + preset.num_prefix_tokens, self.max_n_positions)
            n_positions, rule = max(preset.n_positions, fit), "longest"
        return IGPGPriorConfig.from_preset(
            self.prior_preset,
            **self.prior_overrides,
            vocab_size=vqvae.config.vocab_size,
            tokens_per_chunk=vqvae.config.tokens_per_chunk,
            n_positions=n_positions,
            text_encoder_name=self.text_encoder,
            support_per_class=self.support_per_class,
            context_rule=rule,
        )

    def weights_key(self) -> dict[str, Any]:
        """The recipe without the settings that only change logging and checkpoint frequency."""
        d = self.to_dict()
        for args in ("vqvae_training", "prior_training"):
            d[args] = {k: v for k, v in d[args].items() if k not in _BOOKKEEPING}
        return d


RECIPE_PRESETS: dict[str, PipelineRecipe] = {
    # the README's demo: Gumbel VQ-VAE (3,000 steps of 256 at lr 1e-3), 1.07 M-parameter prior (1,000 steps of 16)
    "demo": PipelineRecipe(),
    # zoos with many more distinct weights than "demo" memorizes (tasks sharing an init: its reconstructions lost
    # 4.8 points): the FSQ VQ-VAE at lr 3e-3; the benchmark's related zoo
    "related": PipelineRecipe(
        vqvae_preset="fsq",
        vqvae_training=VQVAETrainingArgs(lr=3e-3),
        prior_training=PriorTrainingArgs(steps=800),
    ),
    # ResNets of several depths, instruction and architecture text only, a fixed 256-token context (longer models
    # are generated block by block, as in the paper); the benchmark's cross-architecture zoo
    "resnet": PipelineRecipe(
        vqvae_preset="fsq",
        vqvae_training=VQVAETrainingArgs(lr=3e-3),
        prior_training=PriorTrainingArgs(steps=1000, use_dataset_condition=False),
        n_positions=256,
    ),
    # seconds, for tests and the smoke benchmark
    "smoke": PipelineRecipe(
        vqvae_preset="tiny",
        prior_preset="tiny",
        vqvae_training=VQVAETrainingArgs(steps=60, batch_size=64, checkpoint_every=30, log_every=20),
        prior_training=PriorTrainingArgs(steps=40, batch_size=8, checkpoint_every=20, log_every=10),
    ),
    # a GPU: larger VQ-VAE and prior, 20,000 steps each (never run to the end yet)
    "gpu": PipelineRecipe(
        vqvae_preset="base",
        prior_preset="small",
        vqvae_training=VQVAETrainingArgs(steps=20000),
        prior_training=PriorTrainingArgs(steps=20000, batch_size=64),
    ),
}


def _checkpoints(corpus_or_checkpoints: Any) -> list:
    """A list of corpus checkpoints from a corpus, an iterable of checkpoints, or a corpus folder / Hub id."""
    if isinstance(corpus_or_checkpoints, (str, os.PathLike)):
        from ..corpus import WeightCorpus

        corpus_or_checkpoints = WeightCorpus.load(str(corpus_or_checkpoints))
    checkpoints = list(corpus_or_checkpoints)
    if not checkpoints:
        raise ValueError("the corpus has no checkpoints to train a pipeline on")
    return checkpoints


def _check_stage(stage_dir: Path, recipe: PipelineRecipe, stage: str) -> None:
    """Refuse to reuse or resume a stage trained with other settings; record the settings of a new one."""
    path = stage_dir / "recipe.json"
    new = {k: v for k, v in recipe.weights_key().items() if k in _STAGE_FIELDS[stage]}
    if path.exists():
        stored = json.loads(path.read_text())
        changed = sorted(k for k in new if stored.get(k) != new[k])
        if changed:
            raise ValueError(
                f"{stage_dir} holds a {stage} trained with other settings ({', '.join(changed)}: stored "
                f"{ {k: stored.get(k) for k in changed} }, asked { {k: new[k] for k in changed} }); "
                "use another output folder or delete this one"
            )
        return
    if (stage_dir / "final" / "config.json").exists() or (stage_dir / "checkpoint").exists():
        logger.warning("%s holds a %s but no recipe.json; reusing it unchecked", stage_dir, stage)
        return
    atomic_write_json(path, new)


def train_pipeline_vqvae(
    corpus_or_checkpoints: Any, recipe: PipelineRecipe, output_dir: str | os.PathLike, progress: bool = True
) -> IGPGVQVAEModel:
    """The first stage of `train_pipeline` alone: the VQ-VAE in ``output_dir/vqvae`` (reused or resumed)."""
    out = Path(output_dir)
    _check_stage(out / "vqvae", recipe, "vqvae")
    final = out / "vqvae" / "final"
    if (final / "config.json").exists():
        logger.info("reusing the VQ-VAE in %s", final)
        return IGPGVQVAEModel.from_pretrained(final).eval()
    checkpoints = _checkpoints(corpus_or_checkpoints)
    return train_vqvae(
        checkpoints, recipe.vqvae_config(), out / "vqvae", recipe.vqvae_training, progress=progress
    ).eval()


def train_pipeline(
    corpus_or_checkpoints: WeightCorpusLike,
    recipe: PipelineRecipe,
    output_dir: str | os.PathLike,
    progress: bool = True,
    vqvae: IGPGVQVAEModel | str | os.PathLike | None = None,
) -> IGPGPipeline:
    """Train (or reuse, or resume) the VQ-VAE and the prior of ``recipe`` on a corpus; return the pipeline.

    ``corpus_or_checkpoints``: a `WeightCorpus`, any iterable of its checkpoints (order does not matter), or a
    corpus folder / Hub dataset id. Writes ``output_dir/vqvae/final`` and ``output_dir/prior/final`` (each stage
    folder with its ``recipe.json``) (the pipeline itself is not saved: ``pipe.save_pretrained(dir)``). ``vqvae``: a
    trained VQ-VAE (model or folder) to use instead of training ``output_dir/vqvae``. Raises ValueError on an
    empty corpus, a recipe that disagrees with the one ``output_dir`` was trained with, or a VQ-VAE that cannot
    encode the corpus.
    """
    out = Path(output_dir)
    checkpoints = _checkpoints(corpus_or_checkpoints)
    if vqvae is None:
        vqvae = train_pipeline_vqvae(checkpoints, recipe, out, progress=progress)
    elif not isinstance(vqvae, IGPGVQVAEModel):
        vqvae = IGPGVQVAEModel.from_pretrained(vqvae)
    vqvae = vqvae.eval()
    _check_stage(out / "prior", recipe, "prior")
    text_encoder, tokenizer = load_text_encoder(recipe.text_encoder)
    final = out / "prior" / "final"
    if (final / "config.json").exists():
        logger.info("reusing the prior in %s", final)
        prior = IGPGPriorModel.from_pretrained(final)
    else:
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
