"""Sampling weight tokens from the prior, in one block or block by block.

A model that needs more tokens than the context holds is generated block by block (as the paper
does): block 0 holds the first ``L = n_positions - P`` tokens; every later block b generates the
next ``L - W`` tokens after a window of the previous ``W = block_overlap`` tokens, with b in the
prefix. `block_windows` defines that split once, for sampling and for training alike.

A prior with structure positions (``position_scheme="structure"``) needs the places of the model's tokens
(``positions``, from ``prior.weight_positions(layout)``): every input carries the place of the token it
predicts, through `IGPGPriorModel.embed_weight_tokens`, so it is sampled by a decode loop of its own here
(transformers' ``generate()`` embeds new tokens itself); nothing then caps the number of blocks.
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import logging
import time
from dataclasses import dataclass

import torch
from transformers import GPT2LMHeadModel

from .modeling_prior import IGPGConditions, IGPGPriorModel

logger = logging.getLogger(__name__)

__all__ = ["BlockWindow", "block_windows", "sample_weight_tokens", "SamplingConfig", "sequence_hash"]


@dataclass(frozen=True)
class BlockWindow:
    """Block ``index`` generates tokens [start, stop) after context tokens [context_start, start)."""

    index: int
    context_start: int
    start: int
    stop: int


def block_windows(num_tokens: int, block_len: int, overlap: int, multiple: int = 1) -> list[BlockWindow]:
    """How a sequence of ``num_tokens`` splits into blocks of at most ``block_len`` tokens (context included)."""
    block_len -= block_len % multiple  # keep block edges on chunk boundaries
    overlap -= overlap % multiple
    if block_len <= overlap or block_len < 1:
        raise ValueError(f"block length {block_len} must exceed the overlap {overlap}")
    if num_tokens <= block_len:
        return [BlockWindow(0, 0, 0, num_tokens)]
    wins, start, b = [BlockWindow(0, 0, 0, block_len)], block_len, 1
    while start < num_tokens:
        stop = min(start + block_len - overlap, num_tokens)
        wins.append(BlockWindow(b, start - overlap, start, stop))
        start, b = stop, b + 1
    return wins


@dataclass
class SamplingConfig:
    """Sampling settings: temperature, top-k, top-p; ``do_sample=False`` is greedy."""

    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    do_sample: bool = True

    def generate_kwargs(self) -> dict:
        if not self.do_sample:
            return {"do_sample": False}
        if self.temperature <= 0:
            raise ValueError(f"temperature must be positive, got {self.temperature}")
        kw = {"do_sample": True, "temperature": self.temperature, "top_k": self.top_k or 0}
        if self.top_p is not None:
            kw["top_p"] = self.top_p
        return kw


def sequence_hash(tokens: torch.Tensor) -> str:
    """A short, stable fingerprint of one token sequence (to recognise training sequences without storing them)."""
    return hashlib.sha1(tokens.detach().to("cpu", torch.int32).contiguous().numpy().tobytes()).hexdigest()[
        :16
    ]


@torch.no_grad()
def sample_weight_tokens(
    prior: IGPGPriorModel,
    cond: IGPGConditions,
    num_tokens: int,
    num_samples: int = 1,
    sampling: SamplingConfig | None = None,
    seed: int | None = None,
    use_cache: bool = True,
    return_log_likelihood: bool = False,
    positions: torch.Tensor | None = None,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Sample (B * num_samples, num_tokens) weight-token ids for the B condition rows in ``cond``.

    With ``return_log_likelihood`` also returns each sequence's mean log-probability per token under the
    prior's own (untempered, unfiltered) distribution, a label-free score of how typical a sample is.
    ``positions`` (num_tokens, F): the tokens' places (`IGPGPriorModel.weight_positions`), needed by priors
    with ``position_scheme="structure"``.
    """
    sampling = sampling or SamplingConfig()
    cfg = prior.config
    if num_tokens < 1:
        raise ValueError(f"num_tokens must be positive, got {num_tokens}")
    wins = block_windows(num_tokens, cfg.max_weight_tokens, cfg.block_overlap, cfg.tokens_per_chunk)
    if prior.uses_structure:
        if positions is None or len(positions) != num_tokens:
            raise ValueError(
                f"this prior needs positions= of shape ({num_tokens}, F) (prior.weight_positions(layout)), got "
                f"{None if positions is None else tuple(positions.shape)}"
            )
        return _sample_structured(
            prior,
            cond,
            wins,
            num_tokens,
            num_samples,
            sampling,
            seed,
            use_cache,
            return_log_likelihood,
            positions,
        )
    if len(wins) > cfg.max_blocks:
        raise ValueError(
            f"a model of {num_tokens} tokens needs {len(wins)} blocks; this prior can produce at most "
            f"{cfg.max_blocks} blocks of {cfg.max_weight_tokens} tokens"
        )
    cond = cond.repeat_interleave(num_samples).to(prior.device)
    B = cond.batch_size() or num_samples
    out = torch.empty(B, num_tokens, dtype=torch.long, device=prior.device)
    logp = torch.zeros(B, dtype=torch.float32, device=prior.device)
    devices = [prior.device] if prior.device.type == "cuda" else []
    t0 = time.perf_counter()
    with torch.random.fork_rng(devices=devices) if seed is not None else contextlib.nullcontext():
        if seed is not None:
            torch.manual_seed(seed)
        for w in wins:
            cond.block_index = torch.full((B,), w.index, dtype=torch.long, device=prior.device)
            embeds = prior.embed_sequence(prior.build_prefix(cond, B), out[:, w.context_start : w.start])
            n_new = w.stop - w.start
            gen = prior.generate(
                inputs_embeds=embeds,
                attention_mask=torch.ones(embeds.shape[:2], dtype=torch.long, device=prior.device),
                max_new_tokens=n_new,
                min_new_tokens=n_new,
                use_cache=use_cache,
                pad_token_id=cfg.pad_token_id,
                eos_token_id=None,
                **sampling.generate_kwargs(),
                return_dict_in_generate=True,
                output_logits=return_log_likelihood,
            )
            new = gen.sequences[:, -n_new:]
            out[:, w.start : w.stop] = new
            if return_log_likelihood:  # raw logits of each step, before temperature/top-k/top-p
                logits = torch.stack(gen.logits, dim=1).float()
                logp += torch.log_softmax(logits, -1).gather(-1, new[..., None]).squeeze(-1).sum(1)
    logger.debug("sampled %d x %d tokens in %.2fs", B, num_tokens, time.perf_counter() - t0)
    if return_log_likelihood:
        return out, logp / num_tokens
    return out


# transformers renamed GPT-2's ``past_key_values`` argument to ``cache`` (5.24 warns on the old name)
_CACHE_ARG = (
    "cache" if "cache" in inspect.signature(GPT2LMHeadModel.forward).parameters else "past_key_values"
)


def _pick(logits: torch.Tensor, sampling: SamplingConfig, warpers: list) -> torch.Tensor:
    """Raw logits (B, V) -> next tokens (B,): greedy, or a draw after temperature / top-k / top-p."""
    if not sampling.do_sample:
        return logits.argmax(-1)
    scores = logits
    for w in warpers:
        scores = w(None, scores)
    return torch.multinomial(torch.softmax(scores, -1), 1).squeeze(-1)


def _sample_structured(
    prior: IGPGPriorModel,
    cond: IGPGConditions,
    wins: list[BlockWindow],
    num_tokens: int,
    num_samples: int,
    sampling: SamplingConfig,
    seed: int | None,
    use_cache: bool,
    return_log_likelihood: bool,
    positions: torch.Tensor,
):
    """Block-wise sampling for structure priors: every input embedded by ``prior.embed_weight_tokens``."""
    from transformers.generation.logits_process import (
        TemperatureLogitsWarper,
        TopKLogitsWarper,
        TopPLogitsWarper,
    )

    warpers = []
    if sampling.do_sample:
        if sampling.temperature <= 0:
            raise ValueError(f"temperature must be positive, got {sampling.temperature}")
        if sampling.temperature != 1.0:
            warpers.append(TemperatureLogitsWarper(sampling.temperature))
        if sampling.top_k:
            warpers.append(TopKLogitsWarper(sampling.top_k))
        if sampling.top_p is not None and sampling.top_p < 1.0:
            warpers.append(TopPLogitsWarper(sampling.top_p))
    dev = prior.device
    cond = cond.repeat_interleave(num_samples).to(dev)
    B = cond.batch_size() or num_samples
    positions = positions.to(dev)
    out = torch.empty(B, num_tokens, dtype=torch.long, device=dev)
    logp = torch.zeros(B, dtype=torch.float32, device=dev)
    devices = [dev] if dev.type == "cuda" else []
    t0 = time.perf_counter()
    with torch.random.fork_rng(devices=devices) if seed is not None else contextlib.nullcontext():
        if seed is not None:
            torch.manual_seed(seed)
        for w in wins:
            cond.block_index = torch.full((B,), w.index, dtype=torch.long, device=dev)
            prefix = prior.build_prefix(cond, B)
            places = positions[w.context_start : w.stop]  # (n_window, F): the window's tokens
            first = w.start - w.context_start  # window index of the first new token
            o = prior(
                inputs_embeds=prior.embed_sequence(prefix, out[:, w.context_start : w.start], places),
                use_cache=use_cache,
                logits_to_keep=1,
            )
            past, logits = getattr(o, _CACHE_ARG), o.logits[:, -1].float()
            for t in range(w.stop - w.start):
                tok = _pick(logits, sampling, warpers)
                out[:, w.start + t] = tok
                if return_log_likelihood:  # under the raw distribution, before temperature/top-k/top-p
                    logp += torch.log_softmax(logits, -1).gather(-1, tok[:, None]).squeeze(-1)
                if w.start + t + 1 == w.stop:
                    break
                if use_cache:  # the new token's input carries the place of the token it predicts
                    nxt = places[first + t + 1 : first + t + 2]
                    o = prior(
                        inputs_embeds=prior.embed_weight_tokens(tok[:, None], nxt),
                        use_cache=True,
                        **{_CACHE_ARG: past},
                    )
                    past = getattr(o, _CACHE_ARG)
                else:
                    embeds = prior.embed_sequence(prefix, out[:, w.context_start : w.start + t + 1], places)
                    o = prior(inputs_embeds=embeds, use_cache=False, logits_to_keep=1)
                logits = o.logits[:, -1].float()
    logger.debug("sampled %d x %d tokens in %.2fs", B, num_tokens, time.perf_counter() - t0)
    if return_log_likelihood:
        return out, logp / num_tokens
    return out
