"""Configurations of the IGPG VQ-VAE (weights <-> tokens, over weight chunks) and prior (conditioned GPT-2)."""

from __future__ import annotations

import logging
from typing import Any

from transformers import GPT2Config, PreTrainedConfig

__all__ = ["IGPGVQVAEConfig", "IGPGPriorConfig"]


def _register_auto_models() -> None:
    """The first IGPG config of a process registers the models with transformers' Auto classes (see `_auto`)."""
    from . import _auto

    try:
        _auto.register_models()
    except Exception:  # a config must load even where the model classes cannot be registered
        logging.getLogger(__name__).warning(
            "could not register the IGPG models with AutoModel", exc_info=True
        )


class IGPGVQVAEConfig(PreTrainedConfig):
    """Configuration of `IGPGVQVAEModel`: chunking, normalization, encoder/decoder sizes and quantizer.

    Weights are vectorized (``vec(W) ⊕ b`` per layer), normalized, padded and split into chunks of
    ``chunk_size`` (K) values; each chunk becomes ``tokens_per_chunk`` (l) codes from a codebook of
    ``codebook_size`` (C) vectors of ``code_dim`` (d) dimensions.
    """

    model_type = "igpg_vqvae"

    chunk_size: int = 64
    tokens_per_chunk: int = 4
    codebook_size: int = 512
    code_dim: int = 64
    hidden_size: int = 512
    num_hidden_layers: int = 2
    # "layer": each layer padded to a multiple of K on its own (chunks never straddle layers);
    # "model": the whole vector padded once (the paper's architecture-wise mode).
    chunk_mode: str = "layer"
    # chunk position (modulo max_positions) is fed to encoder and decoder: its index within the model
    # (position_mode "model") or within its layer ("layer": the same for a layer at any depth of a family)
    use_position: bool = True
    position_mode: str = "model"
    max_positions: int = 1024
    # "gumbel" (the paper's), or from vector-quantize-pytorch: "vq" (EMA VQ), "fsq"
    quantizer: str = "gumbel"
    fsq_levels: list[int] | None = None
    tau_start: float = 1.0
    tau_end: float = 0.05
    commitment_weight: float = 0.1
    codebook_weight: float = 0.1
    kl_weight: float = 1e-3
    # weight normalization: "layer" (per-entry mean/std from the zoo), "delta" (subtract the
    # per-coordinate zoo mean of one layout, then per-entry std: for zoos fine-tuned from one base),
    # or "none"
    normalization: str = "layer"
    # LoRA adapters: "stored" encodes the (A, B) factors as they are; "balanced" first replaces every pair by the
    # balanced SVD factors of its product (`igpg_hf.weights.lora`), one representative of the pairs that give the
    # same update, so decoded adapters come out in that form
    lora_factors: str = "stored"
    weight_stats: dict[str, list[float]] | None = None
    base_size: int = 0
    base_layout: str = ""
    # the layouts ([name, shape, dtype] lists, in storage order) normalization was fitted on: the pipeline decodes a
    # known architecture in the order it was trained in and matches entries by name (`igpg_hf.weights.match_layout`)
    trained_layouts: list | None = None
    # what the VQ-VAE was trained on and what it measured (filled by the training loop; goes into the model card)
    training_summary: dict | None = None

    def __post_init__(self, **kwargs: Any):
        if self.chunk_mode not in ("layer", "model"):
            raise ValueError(f"chunk_mode must be 'layer' or 'model', got {self.chunk_mode!r}")
        if self.quantizer not in ("gumbel", "vq", "fsq"):
            raise ValueError(f"quantizer must be 'gumbel', 'vq' or 'fsq', got {self.quantizer!r}")
        if self.lora_factors not in ("stored", "balanced"):
            raise ValueError(f"lora_factors must be 'stored' or 'balanced', got {self.lora_factors!r}")
        if self.position_mode not in ("model", "layer"):
            raise ValueError(f"position_mode must be 'model' or 'layer', got {self.position_mode!r}")
        if self.normalization not in ("layer", "delta", "none"):
            raise ValueError(f"normalization must be 'layer', 'delta' or 'none', got {self.normalization!r}")
        if self.chunk_size < 1 or self.tokens_per_chunk < 1:
            raise ValueError(
                f"chunk_size and tokens_per_chunk must be positive, got {self.chunk_size}, {self.tokens_per_chunk}"
            )
        if self.quantizer == "fsq" and self.fsq_levels is None:
            self.fsq_levels = [8, 5, 5, 5]
        if self.weight_stats is None:
            self.weight_stats = {}
        super().__post_init__(**kwargs)
        _register_auto_models()

    @property
    def vocab_size(self) -> int:
        """Number of distinct token ids."""
        if self.quantizer == "fsq":
            n = 1
            for lv in self.fsq_levels:
                n *= lv
            return n
        return self.codebook_size

    # Gumbel presets train without commitment/codebook terms: at 0.1/0.1 they collapsed the codebook on the demo
    # zoo (perplexity ~2, reconstruction MSE 1.0 after 3,000 steps); at 0/0 reconstructions kept the zoo's accuracy.
    _GUMBEL = dict(commitment_weight=0.0, codebook_weight=0.0)
    PRESETS = {
        "tiny": dict(
            chunk_size=32,
            tokens_per_chunk=2,
            codebook_size=64,
            code_dim=16,
            hidden_size=64,
            max_positions=256,
            **_GUMBEL,
        ),
        # calibrated on 2 CPU cores: K=64, 4 tokens per chunk lost 0.2 accuracy points on the tiny CNN
        "demo": dict(
            chunk_size=64, tokens_per_chunk=4, codebook_size=512, code_dim=64, hidden_size=512, **_GUMBEL
        ),
        "base": dict(
            chunk_size=64,
            tokens_per_chunk=4,
            codebook_size=1024,
            code_dim=64,
            hidden_size=1024,
            num_hidden_layers=3,
            max_positions=4096,
            **_GUMBEL,
        ),
        # 36 bits per 64 values cannot encode weights generically (Gaussian rate-distortion: MSE 0.46); low error comes
        # from the decoder memorizing the zoo's distinct chunks. "demo" does ~2,000 (the seen zoo); for zoos with more
        # (48 ResNets: 8,560; tasks sharing an init: 2,600 near-duplicates) FSQ (no code collapse, no Gumbel noise;
        # vocab 8*8*8 = 512 as "demo") and a wider MLP. 2 CPU cores, 3,000 steps of 256 at lr 3e-3 (~4 min): ResNet
        # zoo relative L2 0.36 -> 0.10, 2.9 points lost after BatchNorm recalibration (was 60); related zoo 0.26 ->
        # 0.09, 0.3 points lost (was 4.8). On the seen zoo "demo" stays better (0.035, -0.1 points vs 0.072, 0.3).
        "fsq": dict(
            chunk_size=64,
            tokens_per_chunk=4,
            quantizer="fsq",
            fsq_levels=[8, 8, 8],
            codebook_size=512,
            code_dim=64,
            hidden_size=1024,
        ),
    }

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> IGPGVQVAEConfig:
        """A named size: "tiny" (tests), "demo" (the CPU demo), "fsq" (CPU, zoos too varied for "demo"), "base" (GPU runs)."""
        if name not in cls.PRESETS:
            raise ValueError(f"unknown IGPGVQVAEConfig preset {name!r}; known: {', '.join(cls.PRESETS)}")
        return cls(**{**cls.PRESETS[name], **overrides})


class IGPGPriorConfig(GPT2Config):
    """Configuration of `IGPGPriorModel`: a GPT-2 over weight tokens with a condition prefix.

    The prefix holds ``num_prefix_tokens`` (P = 4) embeddings, in order: instruction text, architecture
    text, dataset (a set encoder over ``support_per_class`` labelled samples per class) and block offset
    (for block-wise generation of models longer than the context). An absent condition uses a learned
    "null" embedding. Everything training and inference must agree on is a field here, saved in
    config.json and read back by the pipeline: prefix length, support-set size, text encoder name, context.

    ``position_scheme`` says what a weight token knows of its place. ``"structure"`` (every preset): its role,
    stage, block (counted from the start and from the end), layer within the block, chunk within the layer
    (both ways) and token within the chunk (`igpg_hf.weights.token_structure`, computed from the layout with
    the VQ-VAE's ``chunk_size`` / ``chunk_mode`` / ``tokens_per_chunk`` stored here), embedded by learned
    tables (``structure_tables``: field -> rows; values past the largest one seen in training,
    ``structure_seen_max``, share its row) and sinusoids (``structure_sinusoidal``), and added to the input
    that predicts the token; the block offset in the prefix only says "first block" or "continuation", so
    nothing caps the size of a model. ``"absolute"`` (the class default, so priors saved before this field
    load as trained): the block offset is a learned table of ``max_blocks`` rows, which caps a model at
    ``max_blocks`` blocks.
    """

    model_type = "igpg_prior"

    text_embed_dim: int = 384
    dataset_feature_dim: int = 256
    dataset_hidden_size: int = 128
    max_classes: int = 16
    max_blocks: int = 64
    # tokens of the previous block kept as context when generating block by block
    block_overlap: int = 64
    tokens_per_chunk: int = 4
    # condition embeddings before the weight tokens (text, architecture, dataset, block offset)
    num_prefix_tokens: int = 4
    # labelled samples per class in the dataset condition: drawn so at training, and so at inference
    support_per_class: int = 5
    # the text encoder whose embeddings the prior was trained on (a Hub id or path)
    # "structure" (token places from the layout) or "absolute" (block offset table of max_blocks rows)
    position_scheme: str = "absolute"
    # the VQ-VAE's chunking, to compute token places from a layout (set by train_prior)
    chunk_size: int = 64
    chunk_mode: str = "layer"
    # learned fields of the structure embedding -> table rows; sinusoidal fields and their width each
    structure_tables: dict[str, int] | None = None
    structure_sinusoidal: list[str] | None = None
    structure_sinusoid_dim: int = 32
    # the largest value of every learned field in the training sequences (set by train_prior): larger values
    # at inference (a deeper net's extra blocks) share that row instead of an untrained one
    structure_seen_max: dict[str, int] | None = None
    text_encoder_name: str = ""
    # how n_positions was chosen at training ("longest": the longest training sequence + the prefix, at least
    # the preset's; "fixed": set by the recipe, longer models are generated block by block); "" = unknown
    context_rule: str = ""
    # what the prior was trained on and what it measured (filled by the training loop / demo; goes
    # into the model card)
    training_summary: dict | None = None
    # fingerprints (`igpg_hf.sampling.sequence_hash`) of every training token sequence, so that the
    # pipeline can tell a sample that copies a training checkpoint token for token (set by train_prior)
    training_sequence_hashes: list[str] | None = None
    # the adapters among the training checkpoints (`igpg_hf.adapters.AdapterSpec.to_dict`, one per distinct spec;
    # set by train_prior), so the pipeline can generate adapters from a base identity alone
    adapter_specs: list[dict] | None = None
    # what the prior knows (set by train_prior; see `igpg_hf.conditioning.coverage`): per task its canonical
    # instruction, a sample of its training wordings (their text-encoder embeddings are the buffer
    # ``known_text_embeds``, rows in this order), its architectures; every architecture description; the
    # out-of-distribution similarity threshold and how it was calibrated
    known_tasks: dict[str, dict] | None = None
    # how the instruction becomes one vector: "mean" (the text encoder's mean-pooled embedding, projected) or
    # "attention" (the prior's TextAttentionPool over the token states, trained to tell the known tasks apart;
    # text_pool_heads queries). Priors saved before this field existed are "mean".
    text_pooling: str = "mean"
    text_pool_heads: int = 4
    known_architectures: list[str] | None = None
    ood_threshold: float | None = None
    ood_calibration: dict | None = None
    # `IGPGPipeline.identify_task` ranks known tasks by the pooled-text cosine plus this times the TF-IDF cosine of
    # their wordings' words (`igpg_hf.conditioning.lexical`). 0 by default: on the demo's 4 tasks the words' statistics
    # are noise (identification 0.948 -> 0.911 at 3); the "general" recipe sets 3 (chosen on its calibration split)
    identify_lexical_weight: float = 0.0
    # the layouts of the training sequences ([name, shape, dtype] lists, in the order their tokens run; set by
    # train_prior), so generation decodes in that order and maps entries by name
    trained_layouts: list | None = None

    def __post_init__(self, **kwargs: Any):
        # weight tokens have no BOS/EOS: sequences have a known length
        self.bos_token_id = None
        self.eos_token_id = None
        if self.pad_token_id is None:
            self.pad_token_id = 0
        if self.num_prefix_tokens != 4:
            raise ValueError(
                "num_prefix_tokens must be 4 (text, architecture, dataset and block-offset embeddings), "
                f"got {self.num_prefix_tokens!r}"
            )
        if self.support_per_class < 1:
            raise ValueError(f"support_per_class must be >= 1, got {self.support_per_class!r}")
        if self.text_pooling not in ("mean", "attention"):
            raise ValueError(f"text_pooling must be 'mean' or 'attention', got {self.text_pooling!r}")
        if self.context_rule not in ("", "longest", "fixed"):
            raise ValueError(f"context_rule must be 'longest', 'fixed' or '', got {self.context_rule!r}")
        if self.position_scheme not in ("structure", "absolute"):
            raise ValueError(
                f"position_scheme must be 'structure' or 'absolute', got {self.position_scheme!r}"
            )
        if self.chunk_mode not in ("layer", "model"):
            raise ValueError(f"chunk_mode must be 'layer' or 'model', got {self.chunk_mode!r}")
        if self.structure_tables is None:
            self.structure_tables = dict(self.STRUCTURE_TABLES)
        if self.structure_sinusoidal is None:
            self.structure_sinusoidal = list(self.STRUCTURE_SINUSOIDAL)
        if any(int(v) < 1 for v in self.structure_tables.values()):
            raise ValueError(f"structure_tables rows must be >= 1, got {self.structure_tables!r}")
        if self.structure_sinusoid_dim < 2 or self.structure_sinusoid_dim % 2:
            raise ValueError(
                f"structure_sinusoid_dim must be even and >= 2, got {self.structure_sinusoid_dim!r}"
            )
        super().__post_init__(**kwargs)
        _register_auto_models()

    # learned fields and their rows: roles (9), stages and blocks counted both ways, layers in a block, token in
    # a chunk; values past the table share its last row
    STRUCTURE_TABLES = {
        "role": 16,
        "stage": 8,
        "stage_from_end": 8,
        "block": 8,
        "block_from_end": 8,
        "layer": 8,
        "token": 16,
    }
    # unbounded fields: chunk index inside a layer, counted both ways
    STRUCTURE_SINUSOIDAL = ("chunk", "chunk_from_end")

    @property
    def known_wording_tasks(self) -> list[str]:
        """The task of each row of the prior's ``known_text_embeds`` buffer (empty if it records none)."""
        return [t for t, d in (self.known_tasks or {}).items() for _ in d.get("wordings", ())]

    @property
    def max_weight_tokens(self) -> int:
        """Weight tokens that fit in one block after the prefix."""
        return self.n_positions - self.num_prefix_tokens

    # every preset pools the instruction with attention (held-out wordings recognised 0.872 vs 0.630 by the mean
    # embedding, see conditioning/text.py)
    PRESETS = {
        "tiny": dict(
            n_layer=2,
            n_embd=32,
            n_head=2,
            n_positions=128,
            dataset_hidden_size=16,
            dataset_feature_dim=32,
            text_pooling="attention",
            text_pool_heads=2,
        ),
        # calibrated on 2 CPU cores: 4 layers x 128 dims (0.9 M params) learned a 156-token tiny-CNN zoo
        "demo": dict(n_layer=4, n_embd=128, n_head=4, n_positions=256, text_pooling="attention"),
        "small": dict(n_layer=6, n_embd=256, n_head=8, n_positions=1024, text_pooling="attention"),
        # the paper's size (27.8 M parameters)
        "paper": dict(n_layer=12, n_embd=432, n_head=12, n_positions=1024, text_pooling="attention"),
    }

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> IGPGPriorConfig:
        """A named size: "tiny" (tests), "demo" (CPU demo), "small", "paper" (27.8 M, GPU)."""
        if name not in cls.PRESETS:
            raise ValueError(f"unknown IGPGPriorConfig preset {name!r}; known: {', '.join(cls.PRESETS)}")
        # gelu_pytorch_tanh: GPT-2's tanh GELU as one fused op (torch's), not gelu_new's five; the decode loop runs
        # the same op, so its tokens stay generate()'s, and a decode step is ~12 % cheaper (issue 15)
        base = dict(
            resid_pdrop=0.0,
            embd_pdrop=0.0,
            attn_pdrop=0.0,
            position_scheme="structure",
            activation_function="gelu_pytorch_tanh",
        )
        return cls(**{**base, **cls.PRESETS[name], **overrides})
