"""IGPG prior: a GPT-2 over weight tokens whose prefix holds the projected conditions.

Sequence (one block): ``[text, architecture, dataset, block offset] + weight tokens``. The prefix
(P = 4 embeddings) goes in through ``inputs_embeds``; its last position predicts the first weight
token, so there is no BOS. With ``position_scheme="structure"`` every input also carries the place in the
architecture (`igpg_hf.weights.token_structure`) of the token it predicts: the last prefix slot that of the
first token, weight token i that of token i + 1. `IGPGPriorModel.embed_weight_tokens` is the one method that
embeds weight tokens, for training, block-wise sampling and likelihood scoring alike.
``forward(conditions=..., weight_tokens=..., weight_positions=...)`` builds that input itself, so code that only
calls the model (a plain loop, ``Trainer``) trains the conditioning modules too. The class subclasses
`GPT2LMHeadModel`, so ``generate()`` (KV cache, temperature, top-k/top-p, ``num_return_sequences``) and
``from_pretrained`` are transformers' own; ``save_pretrained`` / ``push_to_hub`` add the project's model card and
push through `igpg_hf.hub`. Sampling helpers, including block-wise generation for models longer than the
context, live in `igpg_hf.sampling`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn
from transformers import GPT2LMHeadModel, PreTrainedModel

from .conditioning.dataset import DatasetSetEncoder
from .conditioning.text import TextAttentionPool
from .configuration_igpg import IGPGPriorConfig
from .hub import HubMixin
from .weights.structure import STRUCTURE_FIELDS, token_structure

# diffusers' loader looks up PreTrainedModel *in this module* to find the load method of a
# pipeline component stored as ["igpg_hf.modeling_prior", "IGPGPriorModel"]: keep the name here.
_LOADABLE_BASE = PreTrainedModel

__all__ = ["IGPGPriorModel", "IGPGConditions", "StructureEmbedding"]


@dataclass
class IGPGConditions:
    """Condition inputs for a batch of B sequences; any may be None (-> learned null embedding).

    text_embeds, arch_embeds: (B, E) text-encoder embeddings; text_states (B, L, E) with text_mask (B, L): the
    instruction's token states, which a prior with ``text_pooling="attention"`` pools itself. dataset_feats (B, S, F) and
    dataset_labels (B, S) from `prepare_support_set`, dataset_mask (B, S). block_index (B,) for
    block-wise generation. ``drop`` maps "text"/"arch"/"dataset" to (B,) bool rows to null out
    (condition dropout while training).
    """

    text_embeds: torch.Tensor | None = None
    arch_embeds: torch.Tensor | None = None
    dataset_feats: torch.Tensor | None = None
    dataset_labels: torch.Tensor | None = None
    dataset_mask: torch.Tensor | None = None
    block_index: torch.Tensor | None = None
    drop: dict[str, torch.Tensor] = field(default_factory=dict)
    text_states: torch.Tensor | None = None
    text_mask: torch.Tensor | None = None

    def batch_size(self) -> int | None:
        for t in (self.text_embeds, self.arch_embeds, self.dataset_feats, self.block_index, self.text_states):
            if t is not None:
                return t.shape[0]
        return None

    def _map(self, fn) -> IGPGConditions:
        """The same conditions with ``fn`` applied to every tensor (None stays None)."""
        f = lambda t: None if t is None else fn(t)  # noqa: E731
        return IGPGConditions(
            f(self.text_embeds),
            f(self.arch_embeds),
            f(self.dataset_feats),
            f(self.dataset_labels),
            f(self.dataset_mask),
            f(self.block_index),
            {k: f(v) for k, v in self.drop.items()},
            f(self.text_states),
            f(self.text_mask),
        )

    def to(self, device) -> IGPGConditions:
        return self._map(lambda t: t.to(device))

    def repeat_interleave(self, n: int) -> IGPGConditions:
        return self._map(lambda t: t.repeat_interleave(n, 0))

    def rows(self, index: slice | torch.Tensor) -> IGPGConditions:
        """The conditions of the batch rows ``index`` (a slice or a tensor of row indices), every field alike."""
        return self._map(lambda t: t[index])


class StructureEmbedding(nn.Module):
    """Token places (..., F) int64 (columns `STRUCTURE_FIELDS`; -1 everywhere: no place) -> embeddings (..., d).

    Learned tables for the small categorical fields (``config.structure_tables``), a value past the largest
    seen in training (``config.structure_seen_max``) or past the table sharing that last row; sinusoids of
    ``config.structure_sinusoid_dim`` features per unbounded field (``config.structure_sinusoidal``) through
    one learned projection. The sum is zero where the place is absent.
    """

    def __init__(self, config: IGPGPriorConfig):
        super().__init__()
        unknown = sorted(
            (set(config.structure_tables) | set(config.structure_sinusoidal)) - set(STRUCTURE_FIELDS)
        )
        if unknown:
            raise ValueError(f"unknown structure field(s) {unknown}; known: {', '.join(STRUCTURE_FIELDS)}")
        self.config = config
        d = config.n_embd
        # in STRUCTURE_FIELDS order, not the config dict's: a saved config comes back with its keys sorted, and the
        # module order must not change with a save (state-dict order, order of the sum)
        self.tables = nn.ModuleDict(
            {
                f: nn.Embedding(int(config.structure_tables[f]), d)
                for f in STRUCTURE_FIELDS
                if f in config.structure_tables
            }
        )
        self.sinusoidal = [f for f in STRUCTURE_FIELDS if f in config.structure_sinusoidal]
        self.proj = (
            nn.Linear(config.structure_sinusoid_dim * len(self.sinusoidal), d) if self.sinusoidal else None
        )

    def _cap(self, name: str) -> int:
        cap = self.config.structure_tables[name] - 1
        seen = (self.config.structure_seen_max or {}).get(name)
        return cap if seen is None else max(0, min(cap, int(seen)))

    def forward(self, positions: torch.Tensor) -> torch.Tensor:
        present = positions[..., 0] >= 0  # (...)
        pos = positions.clamp_min(0)
        out = None
        for name, table in self.tables.items():
            e = table(pos[..., STRUCTURE_FIELDS.index(name)].clamp_max(self._cap(name)))
            out = e if out is None else out + e
        if self.proj is not None:
            half = self.config.structure_sinusoid_dim // 2
            freqs = torch.exp(
                torch.arange(half, device=pos.device, dtype=torch.float32) * (-math.log(10000.0) / half)
            )  # (half,)
            feats = []
            for name in self.sinusoidal:
                angle = pos[..., STRUCTURE_FIELDS.index(name)].float()[..., None] * freqs  # (..., half)
                feats += [angle.sin(), angle.cos()]
            e = self.proj(torch.cat(feats, -1).to(self.proj.weight.dtype))
            out = e if out is None else out + e
        return out * present[..., None].to(out.dtype)


class IGPGPriorModel(HubMixin, GPT2LMHeadModel):
    """GPT-2 prior over weight tokens, conditioned by a prefix of instruction, architecture and dataset embeddings."""

    config_class = IGPGPriorConfig

    def _hub_card(self):
        from .cards import prior_card

        return prior_card(self)

    def __init__(self, config: IGPGPriorConfig):
        super().__init__(config)
        d = config.n_embd
        self.text_proj = nn.Linear(config.text_embed_dim, d)
        if config.text_pooling == "attention":  # pools the instruction's token states (TextAttentionPool)
            self.text_pool = TextAttentionPool(config.text_embed_dim, config.text_pool_heads)
        self.arch_proj = nn.Linear(config.text_embed_dim, d)
        self.dataset_encoder = DatasetSetEncoder(
            config.dataset_feature_dim, config.max_classes, config.dataset_hidden_size, d
        )
        self.null_conditions = nn.Parameter(torch.zeros(3, d))  # text, arch, dataset
        # absolute: one row per block index (caps a model at max_blocks blocks); structure: first / continuation
        self.block_embed = nn.Embedding(2 if self.uses_structure else config.max_blocks, d)
        self.structure_embed = StructureEmbedding(config) if self.uses_structure else None
        n_known = len(config.known_wording_tasks)
        if n_known:  # text-encoder embeddings of the known wordings (M, E), filled by train_prior
            self.register_buffer("known_text_embeds", torch.zeros(n_known, config.text_embed_dim))
        self.post_init()

    @property
    def uses_structure(self) -> bool:
        """Whether weight tokens carry their place in the architecture (``position_scheme="structure"``)."""
        return self.config.position_scheme == "structure"

    def decode_step_flops(self, rows: int = 1) -> float:
        """FLOPs of one decode step over ``rows`` sequences: 2 x (GPT-2 block and head parameters) per row."""
        n = sum(p.numel() for p in self.transformer.h.parameters()) + self.lm_head.weight.numel()
        return 2.0 * n * rows

    def weight_positions(self, layout) -> torch.Tensor:
        """The places (N, F) of a `WeightLayout`'s N weight tokens under this prior's chunking (the VQ-VAE's)."""
        cfg = self.config
        return token_structure(layout, cfg.chunk_size, cfg.tokens_per_chunk, cfg.chunk_mode)

    def build_prefix(self, cond: IGPGConditions, batch_size: int | None = None) -> torch.Tensor:
        """Conditions -> prefix embeddings (B, P=4, n_embd)."""
        B = cond.batch_size() or batch_size
        if B is None:
            raise ValueError("cannot infer the batch size: give at least one condition or batch_size")
        dev, dt = self.null_conditions.device, self.null_conditions.dtype
        nulls = self.null_conditions.to(dt).unsqueeze(0).expand(B, -1, -1)  # (B, 3, d)
        parts = []
        for i, (name, emb) in enumerate(
            (
                ("text", self._text(cond, dev, dt)),
                ("arch", None if cond.arch_embeds is None else self.arch_proj(cond.arch_embeds.to(dev, dt))),
                (
                    "dataset",
                    None
                    if cond.dataset_feats is None
                    else self.dataset_encoder(
                        cond.dataset_feats.to(dev, dt),
                        cond.dataset_labels.to(dev),
                        None if cond.dataset_mask is None else cond.dataset_mask.to(dev),
                    ),
                ),
            )
        ):
            if emb is None:
                emb = nulls[:, i]
            elif name in cond.drop:
                emb = torch.where(cond.drop[name].to(dev).unsqueeze(-1), nulls[:, i], emb)
            parts.append(emb)
        block = cond.block_index if cond.block_index is not None else torch.zeros(B, dtype=torch.long)
        if self.uses_structure:  # the tokens' places say where a block lies; the prefix only "first or not"
            block = block.clamp_max(1)
        elif int(block.max()) >= self.config.max_blocks:
            raise ValueError(
                f"block index {int(block.max())} exceeds the prior's max_blocks={self.config.max_blocks}"
            )
        parts.append(self.block_embed(block.to(dev)))
        return torch.stack(parts, 1)  # (B, P, d)

    def _text(self, cond: IGPGConditions, dev, dt) -> torch.Tensor | None:
        """The projected instruction (B, d): pooled from token states by ``text_pool`` if the prior has one."""
        if getattr(self, "text_pool", None) is None:
            return None if cond.text_embeds is None else self.text_proj(cond.text_embeds.to(dev, dt))
        if cond.text_states is not None:
            states, mask = cond.text_states.to(dev, dt), cond.text_mask
            mask = torch.ones(states.shape[:2], dtype=torch.bool) if mask is None else mask
        elif cond.text_embeds is not None:  # no token states given: the embedding as a one-token text
            states, mask = (
                cond.text_embeds.to(dev, dt).unsqueeze(1),
                torch.ones(cond.text_embeds.shape[0], 1).bool(),
            )
        else:
            return None
        return self.text_proj(self.text_pool(states, mask.to(dev)))

    def _places(self, positions: torch.Tensor | None, batch: int, length: int) -> torch.Tensor:
        """Places (B, length, F) from (N, F) or (B, N, F) positions, cut or padded with -1 (no place) to length."""
        if positions is None:
            raise ValueError(
                "this prior embeds token places (position_scheme='structure'): pass positions= "
                "(N, F) from prior.weight_positions(layout)"
            )
        if positions.ndim == 2:
            positions = positions.unsqueeze(0)
        if positions.ndim != 3 or positions.shape[-1] != len(STRUCTURE_FIELDS):
            raise ValueError(
                f"positions must have shape (N, {len(STRUCTURE_FIELDS)}) or (B, N, {len(STRUCTURE_FIELDS)}), "
                f"got {tuple(positions.shape)}"
            )
        positions = positions.to(self.transformer.wte.weight.device).expand(batch, -1, -1)[:, :length]
        if positions.shape[1] < length:
            pad = positions.new_full((batch, length - positions.shape[1], positions.shape[2]), -1)
            positions = torch.cat([positions, pad], 1)
        return positions

    def embed_weight_tokens(
        self, tokens: torch.Tensor, positions: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Weight tokens (B, n) -> input embeddings (B, n, d): the one place weight tokens are embedded.

        With structure positions, ``positions`` (B, n, F) (or (n, F)) holds the place of the token each input
        predicts, i.e. of the *next* token (-1 rows: none, after the last token); absolute priors ignore it.
        Training (`build_inputs`), block-wise sampling and likelihood scoring all go through here.
        """
        x = self.transformer.wte(tokens)  # (B, n, d)
        if self.uses_structure:
            x = x + self.structure_embed(self._places(positions, tokens.shape[0], tokens.shape[1])).to(
                x.dtype
            )
        return x

    def embed_sequence(
        self, prefix: torch.Tensor, tokens: torch.Tensor, positions: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Prefix (B, P, d) and weight tokens (B, n) -> inputs_embeds (B, P+n, d).

        ``positions`` (B, m, F) or (m, F): the places of the window's tokens from its first one on (m >= n; the
        places of tokens still to generate may follow); the last prefix slot gets the place of token 0 and token i
        that of token i + 1 (none past the end). Absolute priors ignore it.
        """
        B, n = tokens.shape
        if not self.uses_structure:
            return torch.cat([prefix, self.embed_weight_tokens(tokens)], 1)
        places = self._places(
            positions, B, n + 1
        )  # (B, n+1, F): targets of the last prefix slot and each token
        first = prefix[:, -1:] + self.structure_embed(places[:, :1]).to(prefix.dtype)
        return torch.cat([prefix[:, :-1], first, self.embed_weight_tokens(tokens, places[:, 1:])], 1)

    def build_inputs(
        self,
        cond: IGPGConditions,
        tokens: torch.Tensor,
        loss_mask: torch.Tensor | None = None,
        positions: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Weight tokens (B, N) + conditions -> (inputs_embeds (B, P+N, d), labels (B, P+N)).

        Labels are -100 on the prefix and where ``loss_mask`` (B, N) is False: tokens that are context
        only (the overlap window of a later block) or padding. ``positions`` (B, N, F): the tokens' places
        (structure priors; see `embed_sequence`).
        """
        B, N = tokens.shape
        P = self.config.num_prefix_tokens
        if P + N > self.config.n_positions:
            raise ValueError(
                f"sequence of {N} tokens + {P} prefix exceeds the context of {self.config.n_positions}"
            )
        embeds = self.embed_sequence(self.build_prefix(cond, B), tokens, positions)
        labels = tokens.masked_fill(~loss_mask, -100) if loss_mask is not None else tokens
        return embeds, torch.cat([tokens.new_full((B, P), -100), labels], 1)

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        *args,
        conditions: IGPGConditions | None = None,
        weight_tokens: torch.Tensor | None = None,
        loss_mask: torch.Tensor | None = None,
        weight_positions: torch.Tensor | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        **kwargs,
    ):
        """GPT-2's forward, plus the conditioned form: ``forward(conditions=..., weight_tokens=(B, N), loss_mask=...)``.

        ``weight_positions`` (B, N, F) or (N, F): the tokens' places, for structure priors (`embed_sequence`).

        The conditioned form builds the prefix inside ``forward`` (`build_inputs`: inputs_embeds (B, P+N, d) and
        labels (B, P+N), -100 on the prefix and where ``loss_mask`` is False), so a generic training loop or
        ``Trainer`` that only calls the model trains every parameter: the text and architecture projections, the
        dataset encoder and the null and block embeddings as well as the GPT-2 body. Without ``weight_tokens``
        this is GPT-2's forward unchanged (``generate()`` uses it with ``inputs_embeds``). ``logits_to_keep`` stays
        in the signature because ``generate()`` looks for it there: without it the prefill computes the logits
        of every prefix position, in another product shape than the one-position head of every later step.
        """
        if weight_tokens is None:
            if conditions is not None or loss_mask is not None or weight_positions is not None:
                raise ValueError(
                    "conditions=, loss_mask= and weight_positions= need weight_tokens= (B, N) to condition"
                )
            return super().forward(input_ids, *args, logits_to_keep=logits_to_keep, **kwargs)
        if input_ids is not None or args or kwargs.get("inputs_embeds") is not None:
            raise ValueError(
                "give either weight_tokens= (with conditions=) or input_ids/inputs_embeds, not both"
            )
        if kwargs.get("labels") is not None:
            raise ValueError(
                "labels are built from weight_tokens and loss_mask; do not pass labels= with them"
            )
        embeds, labels = self.build_inputs(
            conditions or IGPGConditions(), weight_tokens, loss_mask, weight_positions
        )
        kwargs.update(inputs_embeds=embeds, labels=labels)
        return super().forward(logits_to_keep=logits_to_keep, **kwargs)

    def sequence_loss(
        self,
        cond: IGPGConditions,
        tokens: torch.Tensor,
        loss_mask: torch.Tensor | None = None,
        positions: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Next-token cross-entropy on weight tokens (B, N) after the condition prefix."""
        return self(
            conditions=cond,
            weight_tokens=tokens,
            loss_mask=loss_mask,
            weight_positions=positions,
            use_cache=False,
        ).loss
