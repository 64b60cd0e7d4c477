"""IGPG VQ-VAE: weights <-> tokens, over normalized chunks of vectorized weights.

Chunk level: ``forward(chunks, positions, mask)`` trains on chunks (B, K); ``encode_chunks`` and
``decode_indices`` map chunks <-> codes (B, l). Weight level: ``encode(state_dict)`` gives the token
ids of a whole model (M*l,), ``decode(token_ids, layout)`` gives back a state dict keyed exactly like
the layout (``decode_batch`` for (B, N) ids: a list of B). Normalization statistics (and the base vector in
delta mode) are stored in the model, so a saved VQ-VAE decodes to the right scale on its own.

The paper's VQ-VAE is a VQGAN-style conv net on chunks reshaped into images; ours is an MLP on
chunks plus a position embedding (calibrated on CPU: K=64 with 4 tokens per chunk lost 0.2 points
of accuracy on the tiny CNN). Temperature is annealed by the training loop (``tau`` argument).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import nn
from transformers import PreTrainedModel
from transformers.utils import ModelOutput

from .configuration_igpg import IGPGVQVAEConfig
from .hub import HubMixin
from .quantizers import build_quantizer
from .weights import (
    STRUCTURE_FIELDS,
    WeightLayout,
    chunk_segments,
    chunk_vector,
    denormalize_vector,
    fit_weight_stats,
    normalize_vector,
    num_chunks,
    token_structure,
    unchunk_vector,
)
from .weights.lora import balance_lora_vector

__all__ = ["IGPGVQVAEModel", "IGPGVQVAEOutput", "masked_mse"]


@dataclass
class IGPGVQVAEOutput(ModelOutput):
    """loss = recon_loss + aux_loss; reconstruction (B, K); indices (B, l); perplexity of code usage."""

    loss: torch.Tensor | None = None
    recon_loss: torch.Tensor | None = None
    aux_loss: torch.Tensor | None = None
    reconstruction: torch.Tensor | None = None
    indices: torch.Tensor | None = None
    perplexity: torch.Tensor | None = None


def masked_mse(recon: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean squared error over the real values of chunks (B, K): ``mask`` (B, K) is False on padding."""
    m = mask.to(recon.dtype)
    return ((recon - target) ** 2 * m).sum() / m.sum().clamp_min(1)


def _mlp(n_in: int, hidden: int, n_out: int, layers: int) -> nn.Sequential:
    mods: list[nn.Module] = []
    for _ in range(layers):
        mods += [nn.Linear(n_in, hidden), nn.LayerNorm(hidden), nn.GELU()]
        n_in = hidden
    mods.append(nn.Linear(n_in, n_out))
    return nn.Sequential(*mods)


class IGPGVQVAEModel(HubMixin, PreTrainedModel):
    """VQ-VAE that tokenizes neural-network weights: chunks of K values -> l codes each, and back."""

    config_class = IGPGVQVAEConfig
    base_model_prefix = "vqvae"
    main_input_name = "chunks"

    def _hub_card(self):
        from .cards import vqvae_card

        return vqvae_card(self)

    def __init__(self, config: IGPGVQVAEConfig):
        super().__init__(config)
        K, L, d, H = config.chunk_size, config.tokens_per_chunk, config.code_dim, config.hidden_size
        self.enc_pos = nn.Embedding(config.max_positions, K) if config.use_position else None
        self.dec_pos = nn.Embedding(config.max_positions, L * d) if config.use_position else None
        self.encoder = _mlp(K, H, L * d, config.num_hidden_layers)
        # on CPU even under from_pretrained's meta-device context: FSQ computes its codebook size with .item() and
        # keeps non-persistent level buffers that loading would leave on the meta device
        with torch.device("cpu"):
            self.quantizer = build_quantizer(config)
        self.decoder = _mlp(L * d, H, K, config.num_hidden_layers)
        self.register_buffer("base_vector", torch.zeros(config.base_size))
        self.post_init()

    @classmethod
    def from_pretrained(cls, *args, **kwargs) -> IGPGVQVAEModel | tuple[IGPGVQVAEModel, dict]:
        """transformers' ``from_pretrained`` (``output_loading_info=True`` gives ``(model, info)`` as usual)."""
        loaded = super().from_pretrained(*args, **kwargs)
        model = loaded[0] if isinstance(loaded, tuple) else loaded
        model._restore_quantizer_buffers()
        return loaded

    @torch.no_grad()
    def _restore_quantizer_buffers(self) -> None:
        """Recompute the quantizer's non-persistent buffers (FSQ levels, basis, implicit codebook): they are not in
        the checkpoint, and loading leaves them uninitialized (FSQ tokens came back negative after a round trip)."""
        with torch.device("cpu"):
            fresh = dict(build_quantizer(self.config).named_modules())
        for prefix, mod in self.quantizer.named_modules():
            for name in mod._non_persistent_buffers_set:  # persistent buffers (EMA VQ codebook) were loaded
                buf = getattr(mod, name)
                if buf is not None and prefix in fresh:
                    buf.copy_(getattr(fresh[prefix], name).to(buf.device))

    def _init_weights(self, module: nn.Module) -> None:
        # torch's default initialization suits these MLPs; position embeddings start small
        if isinstance(module, nn.Embedding) and module is not getattr(self.quantizer, "codebook", None):
            nn.init.normal_(module.weight, std=0.02)

    # ------------------------------------------------------------------ chunk level
    def _positions(self, positions: torch.Tensor) -> torch.Tensor:
        # chunk index within the model, folded into the embedding table's range
        return positions % self.config.max_positions

    def _encode_latents(self, chunks: torch.Tensor, positions: torch.Tensor | None) -> torch.Tensor:
        x = chunks.to(self.dtype)  # (B, K); normalized weights arrive as float32 whatever the model's dtype
        if self.enc_pos is not None:
            x = x + self.enc_pos(self._positions(positions))
        z = self.encoder(x)  # (B, l*d)
        return z.view(-1, self.config.tokens_per_chunk, self.config.code_dim)  # (B, l, d)

    def _decode_latents(self, q: torch.Tensor, positions: torch.Tensor | None) -> torch.Tensor:
        h = q.reshape(q.shape[0], -1)  # (B, l*d)
        if self.dec_pos is not None:
            h = h + self.dec_pos(self._positions(positions))
        return self.decoder(h)  # (B, K)

    def forward(
        self,
        chunks: torch.Tensor,
        positions: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
        tau: float = 1.0,
        return_dict: bool | None = None,
    ) -> IGPGVQVAEOutput | tuple[torch.Tensor, ...]:
        """Reconstruct chunks (B, K); the loss is masked MSE on real values plus quantizer terms.

        ``return_dict=False`` (or ``config.return_dict=False``) gives the fields of `IGPGVQVAEOutput` as a tuple:
        (loss, recon_loss, aux_loss, reconstruction, indices, perplexity), transformers' convention.
        """
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        if positions is None:
            positions = torch.zeros(chunks.shape[0], dtype=torch.long, device=chunks.device)
        z = self._encode_latents(chunks, positions)
        q = self.quantizer(z, tau=tau)
        recon = self._decode_latents(q.quantized, positions)
        if mask is None:
            mask = torch.ones_like(chunks, dtype=torch.bool)
        recon_loss = masked_mse(recon, chunks, mask)
        out = IGPGVQVAEOutput(
            loss=recon_loss + q.aux_loss,
            recon_loss=recon_loss,
            aux_loss=q.aux_loss,
            reconstruction=recon,
            indices=q.indices,
            perplexity=q.perplexity,
        )
        return out if return_dict else out.to_tuple()

    @torch.no_grad()
    def encode_chunks(
        self, chunks: torch.Tensor, positions: torch.Tensor, batch_size: int = 4096
    ) -> torch.Tensor:
        """Chunks (B, K) -> code indices (B, l), hard (argmax); ``batch_size`` chunks at a time to bound memory."""
        was = self.training
        self.eval()
        # in one pass, encoding a 5.7 M-parameter ResNet peaked at 3.8 GB (logits and quantizer terms of every chunk)
        idx = torch.cat(
            [
                self.quantizer(
                    self._encode_latents(chunks[i : i + batch_size], positions[i : i + batch_size])
                ).indices
                for i in range(0, max(len(chunks), 1), batch_size)
            ]
        )
        self.train(was)
        return idx

    @torch.no_grad()
    def decode_indices(self, indices: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Code indices (B, l) -> chunks (B, K)."""
        if indices.numel() and (indices.min() < 0 or indices.max() >= self.config.vocab_size):
            raise ValueError(
                f"token ids must lie in [0, {self.config.vocab_size}), got "
                f"[{int(indices.min())}, {int(indices.max())}]"
            )
        return self._decode_latents(self.quantizer.lookup(indices), positions)

    # ------------------------------------------------------------------ weight level
    def check_layout(self, layout: WeightLayout) -> None:
        """Raise ValueError if this VQ-VAE cannot encode/decode weights of this layout."""
        if self.config.normalization == "delta" and layout.to_json() != self.config.base_layout:
            raise ValueError(
                "this VQ-VAE encodes differences from one base model (normalization='delta') "
                "and only accepts that base's layout; the requested architecture has another layout"
            )
        if layout.num_float == 0:
            raise ValueError("layout has no floating-point weights to encode")

    def num_tokens(self, layout: WeightLayout) -> int:
        """Tokens (M*l) one model of this layout takes."""
        return (
            num_chunks(layout, self.config.chunk_size, self.config.chunk_mode) * self.config.tokens_per_chunk
        )

    def _base(self, layout: WeightLayout) -> torch.Tensor | None:
        if self.config.normalization != "delta":
            return None
        self.check_layout(layout)
        return self.base_vector.float().cpu()

    def prepare(
        self, vector: torch.Tensor, layout: WeightLayout, name: str = "weights"
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Raw weight vector (D,) -> normalized chunks (M, K), mask (M, K), positions (M,).

        ValueError naming ``name`` and the entries if the vector holds NaN or infinite values.
        """
        v = vector.float().cpu()
        layout.check_finite(v, name)
        v = self._factor_form(v, layout)
        if self.config.normalization != "none":
            v = normalize_vector(v, layout, self.config.weight_stats, self._base(layout))
        chunks, mask = chunk_vector(v, layout, self.config.chunk_size, self.config.chunk_mode)
        return chunks, mask, self.chunk_positions(layout)

    def chunk_positions(self, layout: WeightLayout) -> torch.Tensor:
        """The position (M,) int64 of every chunk of a layout: its index in the model, or in its layer."""
        cfg = self.config
        if cfg.position_mode == "layer":
            return token_structure(layout, cfg.chunk_size, 1, cfg.chunk_mode)[
                :, STRUCTURE_FIELDS.index("chunk")
            ]
        return torch.arange(num_chunks(layout, cfg.chunk_size, cfg.chunk_mode))

    def _factor_form(self, vector: torch.Tensor, layout: WeightLayout) -> torch.Tensor:
        """LoRA factor pairs in the configured form (``config.lora_factors``; other weights untouched)."""
        if getattr(self.config, "lora_factors", "stored") == "balanced":
            return balance_lora_vector(vector, layout)
        return vector

    def restore(self, chunks: torch.Tensor, layout: WeightLayout) -> torch.Tensor:
        """Normalized chunks (M, K) -> raw weight vector (D,)."""
        v = unchunk_vector(chunks.float().cpu(), layout, self.config.chunk_size, self.config.chunk_mode)
        if self.config.normalization != "none":
            v = denormalize_vector(v, layout, self.config.weight_stats, self._base(layout))
        return v

    @torch.no_grad()
    def encode(
        self, state_dict: dict[str, torch.Tensor], layout: WeightLayout | None = None, name: str = "weights"
    ) -> torch.Tensor:
        """A state dict -> its token ids (M*l,) int64.

        TypeError naming the entry for meta or sparse tensors; ValueError naming ``name`` (e.g. the checkpoint's
        id) and the entries for NaN or infinite values, which would otherwise become ordinary tokens.
        """
        layout = layout or WeightLayout.from_state_dict(state_dict)
        self.check_layout(layout)
        chunks, _, pos = self.prepare(layout.vectorize(state_dict), layout, name)
        return self.encode_chunks(chunks.to(self.device), pos.to(self.device)).reshape(-1).cpu()

    @torch.no_grad()
    def decode(
        self,
        token_ids: torch.Tensor,
        layout: WeightLayout,
        fill: dict[str, torch.Tensor] | None = None,
        batch_size: int = 4096,
    ) -> dict[str, torch.Tensor]:
        """Token ids (N,) of one model -> its state dict of ``layout`` (`decode_batch` for (B, N)).

        ``fill`` supplies the non-float entries (e.g. BatchNorm's ``num_batches_tracked``). Chunks are decoded
        ``batch_size`` at a time and each entry is restored on its own, so the peak stays near twice the model's
        float32 bytes plus one batch (in one pass a 25.8 M-parameter model peaked at 97 bytes per weight: the
        decoder's activations of every chunk at once). Raises ValueError when ``token_ids`` is not 1-D, has
        another length than the layout needs, or holds ids outside the vocabulary.
        """
        self.check_layout(layout)
        if token_ids.ndim != 1:
            raise ValueError(
                f"decode takes the token ids of one model, shape (N,), got {tuple(token_ids.shape)}; "
                "use decode_batch for (B, N)"
            )
        n = self.num_tokens(layout)
        if token_ids.numel() != n:
            raise ValueError(f"layout needs {n} tokens, got {token_ids.numel()}")
        idx = token_ids.reshape(-1, self.config.tokens_per_chunk)  # (M, l)
        if idx.numel() and (idx.min() < 0 or idx.max() >= self.config.vocab_size):
            raise ValueError(
                f"token ids must lie in [0, {self.config.vocab_size}), got [{int(idx.min())}, {int(idx.max())}]"
            )
        chunks = torch.empty(idx.shape[0], self.config.chunk_size)  # (M, K) float32 on the CPU
        positions = self.chunk_positions(layout)  # (M,): index in the model, or in the layer
        for i in range(0, idx.shape[0], batch_size):
            part = idx[i : i + batch_size].to(self.device)
            pos = positions[i : i + part.shape[0]].to(self.device)
            chunks[i : i + part.shape[0]] = (
                self._decode_latents(self.quantizer.lookup(part), pos).float().cpu()
            )
        return self._restore_entries(chunks, layout, fill)

    def _restore_entries(
        self, chunks: torch.Tensor, layout: WeightLayout, fill: dict[str, torch.Tensor] | None
    ) -> dict[str, torch.Tensor]:
        """Normalized chunks (M, K) -> the state dict, entry by entry: ``layout.devectorize(self.restore(...))``
        bit for bit, without a second copy of the whole vector or full-length normalization scales."""
        K, base = self.config.chunk_size, self._base(layout)
        views, row = [], 0  # each padded segment's values as a flat view of its chunk rows
        for start, stop, n in chunk_segments(layout, K, self.config.chunk_mode):
            views.append((start, stop, chunks[row : row + n].reshape(-1)))
            row += n
        slices = {e.name: s for e, s in layout.entry_slices()}
        out, seg = {}, 0
        for e in layout.entries:
            if not e.is_float:
                out[e.name] = (
                    fill[e.name].clone()
                    if fill is not None and e.name in fill
                    else torch.zeros(e.shape, dtype=e.torch_dtype)
                )
                continue
            s = slices[e.name]
            while (
                views[seg][1] < s.stop
            ):  # entries never straddle segments: a segment is a layer or the model
                seg += 1
            start, _, flat = views[seg]
            v = flat[s.start - start : s.stop - start]
            if self.config.normalization == "none":
                v = v.clone()  # a view of the chunks otherwise
            else:
                v = denormalize_vector(
                    v, WeightLayout([e]), self.config.weight_stats, None if base is None else base[s]
                )
            out[e.name] = v.reshape(e.shape).to(e.torch_dtype)
        return out

    @torch.no_grad()
    def decode_batch(
        self,
        token_ids: torch.Tensor,
        layout: WeightLayout,
        fill: dict[str, torch.Tensor] | None = None,
        batch_size: int = 4096,
    ) -> list[dict[str, torch.Tensor]]:
        """Token ids (B, N) of B models of one layout -> a list of B state dicts (see `decode`)."""
        if token_ids.ndim != 2:
            raise ValueError(f"decode_batch takes token ids of shape (B, N), got {tuple(token_ids.shape)}")
        return [self.decode(t, layout, fill, batch_size) for t in token_ids]

    @torch.no_grad()
    def reconstruct(
        self, state_dict: dict[str, torch.Tensor], layout: WeightLayout | None = None
    ) -> dict[str, torch.Tensor]:
        """decode(encode(state_dict)): what the VQ-VAE keeps of a checkpoint."""
        layout = layout or WeightLayout.from_state_dict(state_dict)
        return self.decode(self.encode(state_dict, layout), layout, fill=state_dict)

    def fit_normalization(self, items: Iterable[tuple]) -> None:
        """Measure normalization statistics (and the base in delta mode) from (layout, raw vector) pairs.

        Items may carry a name, ``(layout, vector, name)``, used in errors: a vector with NaN or infinite values
        is a ValueError naming it and its entries. The distinct layouts are recorded in
        ``config.trained_layouts``.
        """
        items = list(items)
        if not items:
            raise ValueError("fit_normalization needs at least one checkpoint")
        for i, item in enumerate(items):
            item[0].check_finite(item[1], item[2] if len(item) > 2 else f"checkpoint {i}")
        items = [(item[0], self._factor_form(item[1].float().cpu(), item[0])) for item in items]
        seen: dict[str, list] = {}
        for lay, _ in items:
            seen.setdefault(lay.to_json(), lay.to_list())
        self.config.trained_layouts = list(seen.values())
        if self.config.normalization == "delta":
            layouts = {lay.to_json() for lay, _ in items}
            if len(layouts) != 1:
                raise ValueError(
                    f"normalization='delta' needs checkpoints of one layout, got {len(layouts)} layouts"
                )
            base = torch.stack([v.float() for _, v in items]).mean(0)
            self.config.base_size, self.config.base_layout = base.numel(), layouts.pop()
            self.base_vector = base.to(self.device)
            items = [(lay, v.float() - base) for lay, v in items]
        self.config.weight_stats = fit_weight_stats(items)
