"""`PipelineRecipe`: everything that decides a trained pipeline except the corpus, with named presets.

A plain dataclass (importing it imports no torch: the CLI builds its options from these fields). The configs it
describes are built by `vqvae_config` and `prior_config`; `igpg_hf.training.train_pipeline` trains it.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from .args import DecoderTrainingArgs, PriorTrainingArgs, VQVAETrainingArgs

if TYPE_CHECKING:  # pragma: no cover
    from ..configuration_igpg import IGPGPriorConfig, IGPGVQVAEConfig
    from ..modeling_vqvae import IGPGVQVAEModel

__all__ = ["PipelineRecipe", "RECIPE_PRESETS", "STAGE_FIELDS"]

# prior config fields the recipe sets itself (from the VQ-VAE, the corpus or its own fields)
DERIVED_PRIOR_FIELDS = (
    "vocab_size",
    "tokens_per_chunk",
    "chunk_size",
    "chunk_mode",
    "n_positions",
    "text_encoder_name",
    "support_per_class",
    "context_rule",
)
# settings that change how often a run logs or saves, never its weights
_BOOKKEEPING = ("checkpoint_every", "log_every")
# which checkpoints of a corpus a recipe trains on (`PipelineRecipe.checkpoints`)
CHECKPOINT_SELECTIONS = ("all", "last_epoch")
# which runs per (task, architecture) the prior trains on (`PipelineRecipe.prior_runs`)
PRIOR_RUN_CHOICES = ("lowest_seed", "decoded_accuracy")
# the recipe fields each training stage depends on
_VQVAE_STAGE_FIELDS = (
    "checkpoints",
    "runs_per_architecture",
    "vqvae_preset",
    "vqvae_overrides",
    "vqvae_training",
    "align_checkpoints",
)
STAGE_FIELDS = {
    "vqvae": _VQVAE_STAGE_FIELDS,
    # the decoder refines the VQ-VAE stage's model; it changes no token, so the prior does not depend on it
    "vqvae_decoder": (*_VQVAE_STAGE_FIELDS, "vqvae_decoder_training"),
    "prior": (
        "checkpoints",
        "runs_per_architecture",
        "prior_runs",
        "align_checkpoints",
        "prior_preset",
        "prior_overrides",
        "prior_training",
        "text_encoder",
        "support_per_class",
        "n_positions",
        "max_n_positions",
    ),
}


@dataclass
class PipelineRecipe:
    """Everything that decides a trained pipeline, and nothing about the corpus it trains on.

    - ``vqvae_preset`` / ``vqvae_overrides``: `IGPGVQVAEConfig.from_preset(preset, **overrides)`;
    - ``prior_preset`` / ``prior_overrides``: `IGPGPriorConfig.from_preset`; vocabulary and tokens per chunk
      come from the VQ-VAE, the fields below from the recipe (overriding them is a ValueError);
    - ``vqvae_training`` / ``prior_training``: steps, batch size, learning rate, seed, ...;
    - ``vqvae_decoder_training``: a stage between the two that refines the VQ-VAE's decoder alone on the fixed
      tokens (`refine_vqvae_decoder`; ``steps=0``, the default: none), so the prior trains on the same tokens;
    - ``text_encoder``: Hub id or path of the text encoder ("": the packaged all-MiniLM-L6-v2), stored in the
      prior's config as ``text_encoder_name``;
    - ``support_per_class``: labelled samples per class in the dataset condition, at training and at inference
      (None: the prior config's default);
    - context: ``n_positions=None`` fits the longest training sequence plus the prefix (at least the prior
      preset's context, at most ``max_n_positions``; longer models are generated block by block), an integer
      fixes it; the prior's config records which (``context_rule``);
    - ``checkpoints``: which checkpoints of the corpus both stages train on: ``"all"``, or ``"last_epoch"``
      (the last kept epoch of every training run; a run's earlier epochs are near-duplicates of it, which
      cost the VQ-VAE and the prior memorization without adding a task or an architecture);
    - ``runs_per_architecture``: at most this many training runs per (task, architecture), those of the lowest
      seeds (None: every run);
    - ``prior_runs``: which ``runs_per_architecture`` runs the prior trains on: ``"lowest_seed"`` (those the VQ-VAE
      trains on), or ``"decoded_accuracy"``: the runs whose nets, encoded and decoded by the pipeline's VQ-VAE,
      reach the highest accuracy on the task's training split (`choose_runs_by_decoded_accuracy`; the VQ-VAE
      still trains on the lowest seeds). A net the tokenizer keeps badly is then not what the prior learns to
      produce: on the default zoo the lowest-seed tanh cnn1d of mnist1d_noise decodes to 0.59 of its accuracy,
      its other seed to 0.98;
    - ``align_checkpoints``: permute every checkpoint's hidden channels to one reference per family and task
      before both stages (`igpg_hf.zoo.alignment.align_checkpoints`: weight matching; same functions, seeds in
      comparable coordinates).
    """

    vqvae_preset: str = "demo"
    vqvae_overrides: dict[str, Any] = field(default_factory=dict)
    prior_preset: str = "demo"
    prior_overrides: dict[str, Any] = field(default_factory=dict)
    vqvae_training: VQVAETrainingArgs = field(default_factory=VQVAETrainingArgs)
    prior_training: PriorTrainingArgs = field(default_factory=PriorTrainingArgs)
    vqvae_decoder_training: DecoderTrainingArgs = field(default_factory=DecoderTrainingArgs)
    text_encoder: str = ""
    support_per_class: int | None = None
    n_positions: int | None = None
    max_n_positions: int = 1024
    align_checkpoints: bool = False
    checkpoints: str = "all"
    runs_per_architecture: int | None = None
    prior_runs: str = "lowest_seed"

    def __post_init__(self):
        if isinstance(self.vqvae_training, dict):
            self.vqvae_training = VQVAETrainingArgs(**self.vqvae_training)
        if isinstance(self.prior_training, dict):
            self.prior_training = PriorTrainingArgs(**self.prior_training)
        if isinstance(self.vqvae_decoder_training, dict):
            self.vqvae_decoder_training = DecoderTrainingArgs(**self.vqvae_decoder_training)
        derived = sorted(set(self.prior_overrides) & set(DERIVED_PRIOR_FIELDS))
        if derived:
            raise ValueError(
                f"prior_overrides may not set {derived}: the recipe derives them (use its fields "
                "text_encoder, support_per_class, n_positions)"
            )
        if self.support_per_class is not None and self.support_per_class < 1:
            raise ValueError(f"support_per_class must be >= 1 or None, got {self.support_per_class!r}")
        if self.checkpoints not in CHECKPOINT_SELECTIONS:
            raise ValueError(f"checkpoints must be one of {CHECKPOINT_SELECTIONS}, got {self.checkpoints!r}")
        if self.runs_per_architecture is not None and self.runs_per_architecture < 1:
            raise ValueError(
                f"runs_per_architecture must be >= 1 or None, got {self.runs_per_architecture!r}"
            )
        if self.prior_runs not in PRIOR_RUN_CHOICES:
            raise ValueError(f"prior_runs must be one of {PRIOR_RUN_CHOICES}, got {self.prior_runs!r}")
        if self.prior_runs != "lowest_seed" and (
            self.runs_per_architecture is None or self.align_checkpoints
        ):
            raise ValueError(
                f"prior_runs={self.prior_runs!r} chooses among runs: it needs runs_per_architecture (the number to "
                "keep) and no align_checkpoints"
            )
        if self.n_positions is not None and self.n_positions < 2:
            raise ValueError(f"n_positions must be a context length or None, got {self.n_positions!r}")

    @classmethod
    def from_preset(cls, name: str, **changes: Any) -> PipelineRecipe:
        """A named recipe (`RECIPE_PRESETS`) with top-level field changes, e.g. ``n_positions=128``."""
        if name not in RECIPE_PRESETS:
            raise ValueError(f"unknown pipeline recipe preset {name!r}; known: {', '.join(RECIPE_PRESETS)}")
        return dataclasses.replace(copy.deepcopy(RECIPE_PRESETS[name]), **changes)

    def with_changes(
        self,
        fields: dict[str, Any] | None = None,
        vqvae_training: dict[str, Any] | None = None,
        prior_training: dict[str, Any] | None = None,
        vqvae_overrides: dict[str, Any] | None = None,
        prior_overrides: dict[str, Any] | None = None,
        vqvae_decoder_training: dict[str, Any] | None = None,
    ) -> PipelineRecipe:
        """A copy with top-level fields replaced and the training args and config overrides updated."""
        new = dataclasses.replace(copy.deepcopy(self), **(fields or {}))
        new.vqvae_training = dataclasses.replace(new.vqvae_training, **(vqvae_training or {}))
        new.prior_training = dataclasses.replace(new.prior_training, **(prior_training or {}))
        new.vqvae_decoder_training = dataclasses.replace(
            new.vqvae_decoder_training, **(vqvae_decoder_training or {})
        )
        new.vqvae_overrides = {**new.vqvae_overrides, **(vqvae_overrides or {})}
        new.prior_overrides = {**new.prior_overrides, **(prior_overrides or {})}
        new.__post_init__()
        return new

    def to_dict(self) -> dict[str, Any]:
        """The recipe as JSON-able data (`PipelineRecipe(**d)` rebuilds it)."""
        return asdict(self)

    def weights_key(self, stage: str | None = None) -> dict[str, Any]:
        """The recipe (or one stage's fields) without the settings that only change logging and saving."""
        d = self.to_dict()
        for args in ("vqvae_training", "prior_training", "vqvae_decoder_training"):
            d[args] = {k: v for k, v in d[args].items() if k not in _BOOKKEEPING}
        # these two at their defaults are left out: stage folders written before the fields existed lack them
        for k, default in (
            ("checkpoints", "all"),
            ("runs_per_architecture", None),
            ("prior_runs", "lowest_seed"),
        ):
            if d[k] == default:
                del d[k]
        return {k: v for k, v in d.items() if stage is None or k in STAGE_FIELDS[stage]}

    def vqvae_config(self) -> IGPGVQVAEConfig:
        """The VQ-VAE's config: the preset with the overrides (ValueError on an unknown preset or field)."""
        from ..configuration_igpg import IGPGVQVAEConfig

        _check_fields(IGPGVQVAEConfig, self.vqvae_overrides, "vqvae_overrides")
        return IGPGVQVAEConfig.from_preset(self.vqvae_preset, **self.vqvae_overrides)

    def prior_config(self, vqvae: IGPGVQVAEModel, longest_sequence: int) -> IGPGPriorConfig:
        """The prior's config for a VQ-VAE and a corpus whose longest token sequence is ``longest_sequence``."""
        from ..conditioning import DEFAULT_TEXT_ENCODER
        from ..configuration_igpg import IGPGPriorConfig

        _check_fields(IGPGPriorConfig, self.prior_overrides, "prior_overrides")
        preset = IGPGPriorConfig.from_preset(self.prior_preset, **self.prior_overrides)
        if self.n_positions is not None:
            n_positions, rule = self.n_positions, "fixed"
        else:  # the paper's rule: the whole sequence after the prefix, as far as the context cap allows
            fit = min(longest_sequence + preset.num_prefix_tokens, self.max_n_positions)
            n_positions, rule = max(preset.n_positions, fit), "longest"
        support = {} if self.support_per_class is None else {"support_per_class": self.support_per_class}
        return IGPGPriorConfig.from_preset(
            self.prior_preset,
            **self.prior_overrides,
            **support,
            vocab_size=vqvae.config.vocab_size,
            tokens_per_chunk=vqvae.config.tokens_per_chunk,
            chunk_size=vqvae.config.chunk_size,
            chunk_mode=vqvae.config.chunk_mode,
            n_positions=n_positions,
            text_encoder_name=self.text_encoder or DEFAULT_TEXT_ENCODER,
            context_rule=rule,
        )


def _check_fields(config_class: type, overrides: dict[str, Any], what: str) -> None:
    """ValueError naming override keys that are not fields of the config class (a typo would be ignored)."""
    known = {f.name for f in dataclasses.fields(config_class)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ValueError(f"{what} names unknown {config_class.__name__} field(s) {unknown}")


RECIPE_PRESETS: dict[str, PipelineRecipe] = {
    # the README's demo: Gumbel VQ-VAE (2,200 steps of 256 at lr 1e-3), 1.96 M-parameter prior (800 steps of 16).
    # 3,000 and 1,000 steps before: on the demo zoo the VQ-VAE's MSE is 0.003 at step 2,200 of 3,000 and the
    # prior's loss 0.02 at step 750 of 1,000; the cut keeps `igpg-hf demo` within 15 minutes on 2 slow cores
    "demo": PipelineRecipe(
        vqvae_training=VQVAETrainingArgs(steps=2200, checkpoint_every=1100),
        prior_training=PriorTrainingArgs(steps=800, checkpoint_every=400),
    ),
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
        # 16-value chunks, 4 tokens of 9 bits each: 2.25 bits per weight. 64-value chunks (0.56 bits per weight) kept
        # none of 72 aligned ResNets working after decoding (recon MSE 0.20, 9.8 % on [2, 2, 2]): 288 nets have too
        # many distinct chunks to memorize. A chunk's position is its index inside its layer, the same at any depth.
        vqvae_overrides={"chunk_size": 16, "position_mode": "layer"},
        # 2,400 / 800 steps: on the lineage zoo the VQ-VAE's MSE is 0.005 at 3,000 steps and the prior's loss 0.57 at
        # step 750 of 1,000 (0.47 at the end); the cut keeps the cross-architecture part within 30 minutes
        vqvae_training=VQVAETrainingArgs(steps=2400, lr=3e-3, checkpoint_every=800),
        prior_training=PriorTrainingArgs(steps=800, use_dataset_condition=False, checkpoint_every=400),
        n_positions=256,
        align_checkpoints=True,  # seeds in comparable coordinates (weight matching), before both stages
    ),
    # LoRA adapters of one base (the `lora` experiment's zoo, issue 11): 4,400 distinct chunks of near-random factors,
    # more than the "demo" Gumbel VQ-VAE keeps (its codebook collapsed to ~31 codes, MSE 0.28 at step 1,500), so the
    # FSQ VQ-VAE at lr 3e-3; factors enter as balanced SVD factors of each update (`igpg_hf.weights.lora`)
    "lora": PipelineRecipe(
        vqvae_preset="fsq",
        vqvae_overrides={"lora_factors": "balanced"},
        vqvae_training=VQVAETrainingArgs(lr=3e-3),
        prior_training=PriorTrainingArgs(steps=1000),
    ),
    # seconds, for tests and the smoke benchmark (no checkpoints mid-run: a killed run just starts over)
    "smoke": PipelineRecipe(
        vqvae_preset="tiny",
        prior_preset="tiny",
        vqvae_training=VQVAETrainingArgs(steps=60, batch_size=64, checkpoint_every=1000, log_every=20),
        prior_training=PriorTrainingArgs(steps=40, batch_size=8, checkpoint_every=1000, log_every=10),
    ),
    # one pipeline for the whole default zoo (all trainable tasks, three families, `igpg-hf zoo build --preset
    # default`) on 2 CPU cores. What a VQ-VAE keeps of that zoo (`python benchmarks/zoo_fidelity.py`, last epochs,
    # reconstructed / original accuracy of one net per task and architecture): "fsq" (64-value chunks, 0.56 bits
    # per weight; trained on all 404 runs) 0.44, "demo" (Gumbel; one run per architecture, 120 nets) 0.45, Gumbel
    # with a 1,024-wide MLP (two runs per architecture, 227 nets) 0.44: at that rate
    # the decoder must memorize the zoo's distinct chunks, and 120 independent nets are far more than it memorizes
    # (the demo's 48 runs: ~2,000 chunks). 8-value chunks of 4 tokens of 12 bits (FSQ 8x8x8x8, 6 bits per weight)
    # need no memorization: 0.98 after 2,000 steps (16-value chunks, 3 bits: 0.94). The same script's noise form
    # says why: the nets keep 0.996 of their accuracy at 5 % relative noise per tensor, 0.985 at 10 %, 0.95 at 20 %.
    # The prior must then memorize one sequence of ~1,000-1,300 tokens per (task, architecture): the last epoch of
    # the run the VQ-VAE decodes best on the training split (prior_runs; 120 nets; the lowest seeds decode to min
    # 0.834 of the zoo mean per (task, family), these to min 0.965: benchmarks/results/general/). Per unit of compute it memorizes far faster in small steps over short windows:
    # 480 steps of 16 in one 1,272-token context (47 min 37 s) ended at 4.0 nats per token and chance-level nets;
    # on 20 of the nets, equal compute, batch 16 / 4 / 2 gave 6.9 / 4.5 / 3.0 nats, lr 5e-3 and 1e-3 were worse
    # than 2e-3, 256-token blocks (block-wise, as the "resnet" recipe) did as well as batch 2 in two thirds of the
    # time. So: 14,000 steps of 4 blocks of 256 tokens; the prior ends at 0.001-0.007 nats per token (memorized),
    # 54.5 minutes in all on 2 cores (VQ-VAE 330 s, prior stage 49 min 2 s: README, Results)
    "general": PipelineRecipe(
        checkpoints="last_epoch",
        runs_per_architecture=1,
        prior_runs="decoded_accuracy",
        vqvae_preset="fsq",
        vqvae_overrides={"chunk_size": 8, "fsq_levels": [8, 8, 8, 8], "codebook_size": 4096},
        vqvae_training=VQVAETrainingArgs(steps=4000, lr=3e-3, checkpoint_every=1000),
        vqvae_decoder_training=DecoderTrainingArgs(steps=2000),
        # task identification adds the words' TF-IDF (36 tasks: held-out wordings 0.873 -> 0.915 identified)
        prior_overrides={"identify_lexical_weight": 3.0},
        prior_training=PriorTrainingArgs(
            steps=14000, batch_size=4, lr=2e-3, checkpoint_every=2000, log_every=100
        ),
        n_positions=256,
    ),
    # the same zoo on a GPU: every run's last epoch (404 nets), a larger prior, longer (never run to the end yet)
    "general-gpu": PipelineRecipe(
        checkpoints="last_epoch",
        vqvae_preset="fsq",
        vqvae_overrides={"chunk_size": 8, "fsq_levels": [8, 8, 8, 8], "codebook_size": 4096},
        vqvae_training=VQVAETrainingArgs(steps=20000, lr=3e-3),
        prior_preset="small",
        prior_training=PriorTrainingArgs(steps=20000, batch_size=32, lr=1e-3, checkpoint_every=5000),
        max_n_positions=1280,
    ),
    # a GPU: larger VQ-VAE and prior, 20,000 steps each (never run to the end yet)
    "gpu": PipelineRecipe(
        vqvae_preset="base",
        prior_preset="small",
        vqvae_training=VQVAETrainingArgs(steps=20000),
        prior_training=PriorTrainingArgs(steps=20000, batch_size=64),
    ),
}
