"""IGPG prior: a GPT-2 over weight tokens whose prefix holds the projected conditions.

Sequence (one block): ``[text, architecture, dataset, block offset] + weight tokens``. The prefix
(P = 4 embeddings) goes in through ``inputs_embeds``; its last position predicts the first weight
token, so there is no BOS. The class subclasses `GPT2LMHeadModel`, so ``generate()`` (KV cache,
temperature, top-k/top-p, ``num_return_sequences``), ``save_pretrained`` and ``push_to_hub`` are
transformers' own. Sampling helpers, including block-wise generation for models longer than the
context, live in `igpg_hf.sampling`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn
from transformers import GPT2LMHeadModel, PreTrainedModel

from .conditioning.dataset import DatasetSetEncoder
from .conditioning.text import TextAttentionPool
from .configuration_igpg import IGPGPriorConfig

# diffusers' loader looks up PreTrainedModel *in this module* to find the load method of a
# pipeline component stored as ["igpg_hf.modeling_prior", "IGPGPriorModel"]: keep the name here.
_LOADABLE_BASE = PreTrainedModel

__all__ = ["IGPGPriorModel", "IGPGConditions"]


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

    def to(self, device) -> IGPGConditions:
        mv = lambda t: None if t is None else t.to(device)  # noqa: E731
        return IGPGConditions(
            mv(self.text_embeds),
            mv(self.arch_embeds),
            mv(self.dataset_feats),
            mv(self.dataset_labels),
            mv(self.dataset_mask),
            mv(self.block_index),
            {k: mv(v) for k, v in self.drop.items()},
            mv(self.text_states),
            mv(self.text_mask),
        )

    def repeat_interleave(self, n: int) -> IGPGConditions:
        r = lambda t: None if t is None else t.repeat_interleave(n, 0)  # noqa: E731
        return IGPGConditions(
            r(self.text_embeds),
            r(self.arch_embeds),
            r(self.dataset_feats),
            r(self.dataset_labels),
            r(self.dataset_mask),
            r(self.block_index),
            {k: r(v) for k, v in self.drop.items()},
            r(self.text_states),
            r(self.text_mask),
        )


class IGPGPriorModel(GPT2LMHeadModel):
    """GPT-2 prior over weight tokens, conditioned by a prefix of instruction, architecture and dataset embeddings."""

    config_class = IGPGPriorConfig

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
        self.block_embed = nn.Embedding(config.max_blocks, d)
        n_known = len(config.known_wording_tasks)
        if n_known:  # text-encoder embeddings of the known wordings (M, E), filled by train_prior
            self.register_buffer("known_text_embeds", torch.zeros(n_known, config.text_embed_dim))
        self.post_init()

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
        if int(block.max()) >= self.config.max_blocks:
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

    def embed_sequence(self, prefix: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """Prefix (B, P, d) and weight tokens (B, N) -> inputs_embeds (B, P+N, d)."""
        return torch.cat([prefix, self.transformer.wte(tokens)], 1)

    def build_inputs(
        self, cond: IGPGConditions, tokens: torch.Tensor, loss_mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Weight tokens (B, N) + conditions -> (inputs_embeds (B, P+N, d), labels (B, P+N)).

        Labels are -100 on the prefix and where ``loss_mask`` (B, N) is False: tokens that are context
        only (the overlap window of a later block) or padding.
        """
        B, N = tokens.shape
        P = self.config.num_prefix_tokens
        if P + N > self.config.n_positions:
            raise ValueError(
                f"sequence of {N} tokens + {P} prefix exceeds the context of {self.config.n_positions}"
            )
        embeds = self.embed_sequence(self.build_prefix(cond, B), tokens)
        labels = tokens.masked_fill(~loss_mask, -100) if loss_mask is not None else tokens
        return embeds, torch.cat([tokens.new_full((B, P), -100), labels], 1)

    def sequence_loss(
        self, cond: IGPGConditions, tokens: torch.Tensor, loss_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Next-token cross-entropy on weight tokens (B, N) after the condition prefix."""
        embeds, labels = self.build_inputs(cond, tokens, loss_mask)
        return self(inputs_embeds=embeds, labels=labels, use_cache=False).loss
