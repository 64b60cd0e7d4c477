"""Sampling weight tokens from the prior, in one block or block by block, with our own decode loop.

A model that needs more tokens than the context holds is generated block by block (as the paper
does): block 0 holds the first ``L = n_positions - P`` tokens; every later block b generates the
next ``L - W`` tokens after a window of the previous ``W = block_overlap`` tokens, with b in the
prefix. `block_windows` defines that split once, for sampling and for training alike.

`sample_weight_tokens` is the one entry point; it returns a `SampledTokens` whatever the options.
Its default backend (``"loop"``) is a plain PyTorch decode loop over the prior's GPT-2 blocks: a
key/value cache preallocated once and written in place, the blocks' arithmetic called directly
(the same torch ops, shapes and order as transformers' GPT-2, so the logits are bit-identical),
temperature / top-k / top-p with the full sort of top-p only where a cheaper exact test cannot
decide, and the log-likelihood from the same pass. Tokens are identical to transformers'
``generate()`` (``backend="generate"``, kept as the reference) for the same random stream.

Random streams (``generator=``), diffusers' way:

- ``None``: torch's global generator, one stream for the whole batch (as ``generate()`` draws it);
- one ``torch.Generator``: that generator, one stream for the whole batch, the same draws as
  ``generate()`` after ``torch.manual_seed`` with the generator's seed;
- a list with one generator per sample: each sample (with its candidates) draws from its own
  generator only, so a sample does not depend on the batch it is generated in;
- ``seed=s`` is a shortcut for the list ``[Generator().manual_seed(s + i) for each sample i]``: sample
  i of ``num_samples=n, seed=s`` is the single sample of ``num_samples=1, seed=s + i``.

Sampling draws exactly what ``torch.multinomial`` draws (an Exp(1) variate per vocabulary entry and
row, ``argmax(p / q)``), so these streams stay compatible with ``generate()``'s.

A prior with structure positions (``position_scheme="structure"``) needs the places of the model's tokens
(``positions``, from ``prior.weight_positions(layout)``): every input carries the place of the token it
predicts (`IGPGPriorModel.embed_weight_tokens`), so such priors sample with the decode loop only
(transformers' ``generate()`` embeds new tokens itself); nothing then caps the number of blocks.

Blocks of a structure prior trained with ``block_overlap=0`` share no tokens: given the conditions each
block is drawn from the same distribution whether the others are known or not, so the loop decodes them
side by side as rows of one batch (``parallel_blocks``; on by default when a model has more blocks than
the batch has samples). A decode step costs about the same for one row as for a hundred on a CPU (the
per-op overhead dominates), so a model of many blocks samples several times faster; the draws then come
from each sample's stream in another order, so the tokens differ from the block-by-block order's (the
distribution is the same). With the default overlap blocks depend on each other and go one by one.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .modeling_prior import IGPGConditions, IGPGPriorModel

logger = logging.getLogger(__name__)

__all__ = [
    "BlockWindow",
    "block_windows",
    "sample_weight_tokens",
    "score_weight_tokens",
    "SampledTokens",
    "SamplingConfig",
    "sequence_hash",
    "generation_num_threads",
    "torch_threads",
    "THREADS_ENV",
]

THREADS_ENV = "IGPG_NUM_THREADS"
# Below this many FLOPs per decode step (2 x prior parameters x rows) generation runs on one thread. Small steps
# are bound by per-op overhead, where a second thread buys little on quiet cores, and threads that wait for each
# other lose badly when the cores are shared: beside one busy process 2 threads made small-model generation 3.3x
# slower (once 40x); on 2 cores shared with other jobs (load average 15) the demo prior (1.07 M parameters) was
# 18x slower at 1 sample and 15x at 100 with 2 threads than with 1. 1 GFLOP is the small preset at about 100
# samples, the paper-size prior at about 19.
SMALL_STEP_FLOPS = 1e9
# Pre-drawn exponential variates per chunk of decode steps (CPU generators): bounded, independent of the batch.
_DRAW_CHUNK_VALUES = 1 << 21
# Raw logits kept per block (B x tokens x V floats) to score them at the block's end, as generate() does
_RAW_LOGITS_VALUES = 1 << 22


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
    """Sampling settings: temperature, top-k, top-p; ``do_sample=False`` is greedy.

    ``guidance_scale``: classifier-free guidance on the instruction (Ho & Salimans 2022, as diffusers' pipelines
    use it): each step's logits are ``u + s * (c - u)``, ``c`` with the instruction and ``u`` with the prior's
    learned null instruction (what condition dropout trained it on); 1 is plain sampling, larger values follow the
    instruction more closely. Architecture and dataset conditions stay in both. Temperature, top-k and top-p
    apply to the guided logits.
    """

    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    do_sample: bool = True
    guidance_scale: float = 1.0

    def __post_init__(self):
        if self.do_sample and not self.temperature > 0:
            raise ValueError(f"temperature must be positive, got {self.temperature}")
        if not (self.guidance_scale >= 0 and math.isfinite(self.guidance_scale)):
            raise ValueError(
                f"guidance_scale must be a finite number, 0 or more (1: no guidance), got {self.guidance_scale}"
            )
        if self.top_k is not None and self.top_k < 0:
            raise ValueError(
                f"top_k must be a positive number of tokens (or 0/None for all), got {self.top_k}"
            )
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must lie in (0, 1], got {self.top_p}")

    @property
    def guided(self) -> bool:
        return self.guidance_scale != 1.0

    def generate_kwargs(self) -> dict:
        """The same settings as keyword arguments of transformers' ``generate()`` (which has no guidance by a
        null condition: ValueError when ``guidance_scale`` is not 1)."""
        if self.guided:
            raise ValueError(
                "guidance_scale needs the decode loop (backend='loop'); generate() cannot apply it"
            )
        if not self.do_sample:
            return {"do_sample": False}
        kw = {"do_sample": True, "temperature": self.temperature, "top_k": self.top_k or 0}
        if self.top_p is not None:
            kw["top_p"] = self.top_p
        return kw


@dataclass
class SampledTokens:
    """What `sample_weight_tokens` returns, whatever its options.

    tokens: (B, N) int64 token ids, B = condition rows x num_samples, in drawing order.
    log_likelihood: (B,) float32, each sequence's mean log-probability per token under the prior's own
    (untempered, unfiltered) distribution: a label-free score of how typical a sample is.
    seconds: wall time of the sampling.
    is_copy: per sequence, whether it repeats a training sequence token for token (None when the prior stores
    no training fingerprints). num_candidates: sequences drawn to choose from; candidate_copies: how many of
    those were copies (None when unknown).
    """

    tokens: torch.Tensor
    log_likelihood: torch.Tensor
    seconds: float = 0.0
    is_copy: list[bool] | None = None
    num_candidates: int = 0
    candidate_copies: int | None = None


def sequence_hash(tokens: torch.Tensor) -> str:
    """A short, stable fingerprint of one token sequence (to recognise training sequences without storing them)."""
    return hashlib.sha1(tokens.detach().to("cpu", torch.int32).contiguous().numpy().tobytes()).hexdigest()[
        :16
    ]


# ----------------------------------------------------------------------------------------------- threads
def generation_num_threads(flops_per_step: float) -> int | None:
    """Torch threads for a decode loop doing ``flops_per_step`` FLOPs per step; None: leave torch's setting.

    ``IGPG_NUM_THREADS`` (a positive integer) decides when set. Otherwise one thread when a step is below
    ``SMALL_STEP_FLOPS`` (every preset prior at one sample, the demo prior at any batch): such steps are bound by
    per-op overhead, where more threads buy little on quiet cores and lose several times over when the cores
    are shared with other busy processes.
    """
    env = os.environ.get(THREADS_ENV, "").strip()
    if env:
        if not env.isdigit() or int(env) < 1:
            raise ValueError(f"{THREADS_ENV} must be a positive integer, got {env!r}")
        return int(env)
    return 1 if flops_per_step < SMALL_STEP_FLOPS else None


@contextlib.contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Run the block with ``n`` intra-op torch threads (None: unchanged), restoring the setting after."""
    before = torch.get_num_threads()
    if n is None or n == before:
        yield
        return
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


# ----------------------------------------------------------------------------------------------- streams
GeneratorArg = torch.Generator | Sequence[torch.Generator] | None


def _groups(
    generator: GeneratorArg, seed: int | None, samples: int, rows: int
) -> list[torch.Generator | None]:
    """One generator per group of consecutive rows: [g] (one stream for all) or one per sample."""
    if seed is not None and generator is not None:
        raise ValueError("pass either seed= or generator=, not both")
    if seed is not None:
        return [torch.Generator().manual_seed(int(seed) + i) for i in range(samples)]
    if generator is None or isinstance(generator, torch.Generator):
        return [generator]
    gens = list(generator)
    if len(gens) != samples or not all(isinstance(g, torch.Generator) for g in gens):
        raise ValueError(
            f"generator must be one torch.Generator or a list of one per sample ({samples}), "
            f"got {len(gens)} item(s)"
        )
    return gens


class _Exponentials:
    """Exp(1) variates as ``torch.multinomial`` draws them: per step, (rows, V) in row order, per stream.

    On CPU the draws of several steps come from one call (a CPU generator's stream does not depend on how
    it is split into calls, which the tests check against ``generate()``); elsewhere one call per step.
    """

    def __init__(self, groups: list[torch.Generator | None], rows: int, vocab: int, device: torch.device):
        self.groups, self.rows, self.vocab, self.device = groups, rows, vocab, device
        self.size = rows // len(groups)
        self.buf: torch.Tensor | None = None
        self.pos = 0

    def _device(self, g: torch.Generator | None) -> torch.device:
        return g.device if g is not None else self.device

    def refill(self, steps: int) -> None:
        """Draw the variates of the next ``steps`` decode steps (call at most as many steps as will be used)."""
        cpu = all(self._device(g).type == "cpu" for g in self.groups)
        per_step = self.rows * self.vocab
        steps = max(1, min(steps, _DRAW_CHUNK_VALUES // per_step)) if cpu else 1
        shape = (steps, self.size, self.vocab)
        parts = [torch.empty(shape, device=self._device(g)).exponential_(generator=g) for g in self.groups]
        buf = parts[0] if len(parts) == 1 else torch.cat(parts, 1)  # (T, rows, V)
        self.buf, self.pos = buf.to(self.device, non_blocking=True), 0

    def next(self, remaining: int) -> torch.Tensor:
        """(rows, V) variates of the next step; ``remaining`` steps (this one included) are left in the block."""
        if self.buf is None or self.pos == self.buf.shape[0]:
            self.refill(remaining)
        q = self.buf[self.pos]
        self.pos += 1
        return q


# ----------------------------------------------------------------------------------------------- filters
def _top_k(scores: torch.Tensor, k: int) -> torch.Tensor:
    """transformers' TopKLogitsWarper, op for op."""
    k = min(k, scores.size(-1))
    return scores.masked_fill(scores < torch.topk(scores, k)[0][..., -1, None], -math.inf)


def _top_p_sorted(scores: torch.Tensor, top_p: float) -> torch.Tensor:
    """transformers' TopPLogitsWarper, op for op (a full sort of every row)."""
    sorted_logits, sorted_indices = torch.sort(scores, descending=False)
    cumulative_probs = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
    remove = cumulative_probs <= (1 - top_p)
    remove[..., -1:] = 0
    return scores.masked_fill(remove.scatter(1, sorted_indices, remove), -math.inf)


class _TopP:
    """Top-p filtering with the result of `_top_p_sorted` bit for bit, from a partial sort where it can.

    transformers keeps token i unless the probability mass of the tokens ranked above it reaches ``top_p``.
    Here the ``m`` best tokens of each row come from ``torch.topk``; their masses above (in float64) decide every
    token whose mass lies farther from ``top_p`` than float32 rounding of a ``V``-term softmax and cumulative
    sum can move it (``margin``), when the cut falls inside the ``m`` and does not split tied logits. Rows that
    fail a check are sorted in full (rows are independent, so the result stays transformers'). ``m`` follows the
    median number of tokens kept. Below ``min_rows`` rows the full sort is cheaper than the checks.
    """

    min_rows = 16

    def __init__(self, top_p: float, vocab: int):
        self.top_p, self.vocab = top_p, vocab
        self.margin = 8 * vocab * 2.0**-24 + 1e-6
        self.m = min(16, vocab)
        self.rows = self.sorted_rows = 0

    def _resize(self, kept: int, V: int) -> None:
        # the next window: twice the tokens a typical row kept, a power of two
        self.m = min(V, max(16, 1 << (2 * kept - 1).bit_length()))

    def __call__(self, scores: torch.Tensor) -> torch.Tensor:
        B, V = scores.shape
        self.rows += B
        if B < self.min_rows or 2 * self.m >= V or self.top_p <= self.margin:
            self.sorted_rows += B
            out = _top_p_sorted(scores, self.top_p)
            if B >= self.min_rows:  # below min_rows the window is not used: leave it as it is
                self._resize(int(torch.isfinite(out).sum(-1).median()), V)
            return out
        m = self.m
        vals, idx = torch.topk(scores, m)  # (B, m) descending
        probs = scores.softmax(-1).gather(-1, idx).double()  # (B, m)
        above = probs.cumsum(-1) - probs  # mass ranked above each of the m tokens
        keep = above < self.top_p
        finite = torch.isfinite(vals)
        kept = keep.sum(-1)  # (B,) >= 1: the best token's mass above is 0
        cut = kept.clamp_max(m - 1)[:, None]
        ok = (kept < m) | ~finite[:, -1]  # the cut, or the last finite token, lies within the m
        ok &= ~(((above - self.top_p).abs() <= self.margin) & finite).any(-1)
        tie = (vals.gather(-1, (cut - 1).clamp_min(0)) == vals.gather(-1, cut)).squeeze(-1)
        ok &= ~(tie & (kept < m) & finite.gather(-1, cut).squeeze(-1))
        out = torch.full_like(scores, -math.inf).scatter_(1, idx, vals.masked_fill(~keep, -math.inf))
        bad = (~ok).nonzero().squeeze(-1)
        if bad.numel():
            self.sorted_rows += bad.numel()
            out[bad] = _top_p_sorted(scores[bad], self.top_p)
        self._resize(int(kept.median()), V)
        return out


class _Processor:
    """Raw logits (B, V) float32 -> the filtered scores transformers' warpers give (temperature, top-k, top-p)."""

    def __init__(self, sampling: SamplingConfig, vocab: int):
        self.s = sampling
        self.top_p = (
            _TopP(sampling.top_p, vocab) if sampling.top_p is not None and sampling.top_p < 1 else None
        )

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        scores = logits
        if self.s.temperature != 1.0:
            scores = scores / self.s.temperature
        if self.s.top_k:
            scores = _top_k(scores, self.s.top_k)
        if self.top_p is not None:
            scores = self.top_p(scores)
        return scores


# ----------------------------------------------------------------------------------------------- the model
_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)


def _gelu_new_(x: torch.Tensor) -> torch.Tensor:
    """transformers' NewGELUActivation with the same float operations, in place where it can be (x consumed)."""
    t = torch.pow(x, 3.0)
    t.mul_(0.044715).add_(x).mul_(_SQRT_2_OVER_PI).tanh_().add_(1.0)
    return x.mul_(0.5).mul_(t)


def _gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    """transformers' GELUTanh ("gelu_pytorch_tanh"): torch's fused tanh GELU, without the module call."""
    return F.gelu(x, approximate="tanh")


class _Layer:
    __slots__ = (
        "ln1",
        "attn_w",
        "attn_b",
        "proj_w",
        "proj_b",
        "ln2",
        "fc_w",
        "fc_b",
        "out_w",
        "out_b",
        "act",
    )

    def __init__(self, block, act):
        self.ln1 = (block.ln_1.normalized_shape, block.ln_1.weight, block.ln_1.bias, block.ln_1.eps)
        self.attn_w, self.attn_b = block.attn.c_attn.weight, block.attn.c_attn.bias
        self.proj_w, self.proj_b = block.attn.c_proj.weight, block.attn.c_proj.bias
        self.ln2 = (block.ln_2.normalized_shape, block.ln_2.weight, block.ln_2.bias, block.ln_2.eps)
        self.fc_w, self.fc_b = block.mlp.c_fc.weight, block.mlp.c_fc.bias
        self.out_w, self.out_b = block.mlp.c_proj.weight, block.mlp.c_proj.bias
        self.act = act


def loop_unsupported(prior: IGPGPriorModel) -> str | None:
    """Why the decode loop cannot reproduce this prior's arithmetic (None: it can)."""
    cfg = prior.config
    if cfg.add_cross_attention:
        return "cross-attention"
    impl = cfg._attn_implementation
    if impl not in ("sdpa", "eager"):
        return f"attention implementation {impl!r}"
    if impl == "eager" and cfg.reorder_and_upcast_attn:
        return "reorder_and_upcast_attn"
    if prior.training and max(cfg.resid_pdrop, cfg.embd_pdrop, cfg.attn_pdrop) > 0:
        return "dropout (the prior is in training mode)"
    return None


class _Decoder:
    """The prior's GPT-2 stack as plain tensor ops over a preallocated KV cache.

    Every op is the one transformers' GPT-2 (sdpa or eager attention, Conv1D as addmm, NewGELU) runs, on the
    same shapes, so the logits match ``generate()``'s bit for bit; what goes is the per-module and generate()
    overhead and the cache growth by concatenation.
    """

    def __init__(self, prior: IGPGPriorModel, rows: int, max_len: int):
        cfg, tr = prior.config, prior.transformer
        self.B, self.d, self.H = rows, cfg.n_embd, cfg.n_head
        self.hd = self.d // self.H
        self.wte, self.wpe = tr.wte.weight, tr.wpe.weight
        self.lnf = (tr.ln_f.normalized_shape, tr.ln_f.weight, tr.ln_f.bias, tr.ln_f.eps)
        self.head_w = prior.lm_head.weight
        self.scalings = [blk.attn.scaling for blk in tr.h]
        self.eager = cfg._attn_implementation == "eager"
        act = {"gelu_new": _gelu_new_, "gelu_pytorch_tanh": _gelu_tanh}.get(cfg.activation_function)
        self.layers = [_Layer(blk, act or blk.mlp.act) for blk in tr.h]
        dt, dev = self.wte.dtype, self.wte.device
        # (layer, k/v, B, H, T, hd): one write per step for keys and values together, no concatenation
        self.kv = torch.empty(len(self.layers), 2, rows, self.H, max_len, self.hd, dtype=dt, device=dev)
        self.k, self.v = [kv[0] for kv in self.kv], [kv[1] for kv in self.kv]
        self.t = 0

    def _eager(self, i: int, q, k, v, causal: bool) -> torch.Tensor:
        """transformers' eager_attention_forward (B, H, T, hd) with its additive causal mask for a prefill."""
        w = torch.matmul(q, k.transpose(-1, -2)) * self.scalings[i]
        if causal:
            T = q.shape[2]
            allowed = torch.ones(T, T, dtype=torch.bool, device=q.device).tril()
            w = w + torch.zeros(T, T, dtype=w.dtype, device=w.device).masked_fill(
                ~allowed, torch.finfo(w.dtype).min
            )
        w = F.softmax(w, dim=-1).type(v.dtype)
        return torch.matmul(w, v)

    def forward(self, x: torch.Tensor, cache: bool = True) -> torch.Tensor:
        """Hidden states (B, T, d) of positions [t, t+T) (embeddings, positions added) -> logits (B, V) of the last.

        With ``cache`` the keys and values go to the cache after position ``t`` (T > 1 is a prefill, causal);
        without, x holds the whole sequence and nothing is kept (the no-cache reference). The residual stream
        stays (B*T, d): layer norms and products are row-wise, so this changes no value, only the op count.
        """
        B, T, d, H, hd = x.shape[0], x.shape[1], self.d, self.H, self.hd
        t0 = self.t if cache else 0
        x = x.reshape(B * T, d)
        for i, L in enumerate(self.layers):
            h = torch.layer_norm(x, *L.ln1)
            qkv = torch.addmm(L.attn_b, h, L.attn_w).view(B, T, 3, H, hd)
            q = qkv[:, :, 0].transpose(1, 2)  # (B, H, T, hd), the strides transformers' split gives
            if cache:
                self.kv[i][:, :, :, t0 : t0 + T].copy_(qkv[:, :, 1:].permute(2, 0, 3, 1, 4))
                k, v = self.k[i][:, :, : t0 + T], self.v[i][:, :, : t0 + T]
            else:
                k, v = qkv[:, :, 1].transpose(1, 2), qkv[:, :, 2].transpose(1, 2)
            if self.eager:
                a = self._eager(i, q, k, v, T > 1)
            else:  # transformers' sdpa path: no mask, causal only for a prefill
                a = F.scaled_dot_product_attention(
                    q, k, v, attn_mask=None, is_causal=T > 1, scale=self.scalings[i]
                )
            # (B, T, H*hd): one step's (B, H, 1, hd) already lies in that order
            a = a.view(B, d) if T == 1 else a.transpose(1, 2).reshape(B * T, d)
            x = torch.addmm(L.proj_b, a, L.proj_w).add_(x)
            h = L.act(torch.addmm(L.fc_b, torch.layer_norm(x, *L.ln2), L.fc_w))
            x = torch.addmm(L.out_b, h, L.out_w).add_(x)
        if cache:
            self.t = t0 + T
        x = torch.layer_norm(x, *self.lnf).view(B, T, d)
        return F.linear(x[:, -1:, :], self.head_w)[:, -1].float()

    def embed(self, tokens: torch.Tensor, position: int) -> torch.Tensor:
        """Tokens (B,) at ``position`` -> (B, 1, d) input embeddings."""
        return torch.embedding(self.wte, tokens[:, None]) + self.wpe[position : position + 1]


# ----------------------------------------------------------------------------------------------- backends
def _loop_block(
    dec: _Decoder,
    embeds: torch.Tensor,
    n_new: int,
    sampling: SamplingConfig,
    proc: _Processor,
    draws: _Exponentials | None,
    out: torch.Tensor,
    logp: torch.Tensor,
    use_cache: bool,
    progress: Callable[[int], None] | None,
    next_places: torch.Tensor | None = None,
) -> None:
    """Generate ``n_new`` tokens after ``embeds`` (B, T0, d) into ``out`` (B, n_new); log-probs into ``logp``.

    ``next_places`` (n_new - 1, d), or (B, n_new - 1, d) when rows lie at different places: structure embeddings
    added to each new token's input (the place of the token it predicts), for structure priors.

    With ``sampling.guided``, ``embeds`` holds 2B rows (the conditioned rows, then the same rows with the null
    instruction; the decoder too): tokens are drawn from the guided logits, fed to both halves, and ``logp`` is
    the conditioned rows' own log-probability.
    """
    B, T0 = embeds.shape[:2]
    if sampling.guided:
        B //= 2
    dec.t = 0
    pos = dec.wpe[:T0]
    # raw logits of the block, for transformers' log_softmax over (B, n, V) at its end (one op, not four a step)
    raw = logits_buf = None
    if B * n_new * dec.head_w.shape[0] <= _RAW_LOGITS_VALUES:
        raw = logits_buf = torch.empty(B, n_new, dec.head_w.shape[0], device=embeds.device)
    scale = sampling.guidance_scale

    def forward(*args, **kw) -> tuple[torch.Tensor, torch.Tensor]:  # (own logits, logits to sample from)
        z = dec.forward(*args, **kw)
        if not sampling.guided:
            return z, z
        c, u = z[:B], z[B:]
        return c, u + scale * (c - u)

    if use_cache:
        logits, guided = forward(embeds + pos)
    else:  # the no-cache reference: the whole sequence again at every step
        seq = torch.empty(
            embeds.shape[0], T0 + n_new, embeds.shape[2], dtype=embeds.dtype, device=embeds.device
        )
        seq[:, :T0] = embeds + pos
        logits, guided = forward(seq[:, :T0], cache=False)
    for s in range(n_new):
        if raw is not None:
            logits_buf[:, s] = logits
        else:
            lp = torch.log_softmax(logits, -1)
        if sampling.do_sample:
            tok = torch.div(torch.softmax(proc(guided), -1), draws.next(n_new - s)).argmax(-1)
        else:
            tok = guided.argmax(-1)
        out[:, s] = tok
        if raw is None:
            logp[:, s] = lp.gather(-1, tok[:, None]).squeeze(-1)
        if progress is not None:
            progress(1)
        if s + 1 == n_new:
            break
        x = dec.embed(torch.cat([tok, tok]) if sampling.guided else tok, T0 + s)
        if next_places is not None:  # (n_new - 1, d) for every row, or (B, n_new - 1, d) per row
            x = x + (next_places[:, s : s + 1] if next_places.ndim == 3 else next_places[s])
        if use_cache:
            logits, guided = forward(x)
        else:
            seq[:, T0 + s] = x[:, 0]
            logits, guided = forward(seq[:, : T0 + s + 1], cache=False)
    if raw is not None:
        logp.copy_(torch.log_softmax(raw, -1).gather(-1, out[..., None]).squeeze(-1))


# KV-cache bytes one batch of parallel blocks may take (rows are cut to fit)
_PARALLEL_KV_BYTES = 1 << 28


def _parallel_blocks(
    prior: IGPGPriorModel,
    cond: IGPGConditions,
    wins: list[BlockWindow],
    places: torch.Tensor,
    groups: list[torch.Generator | None],
    sampling: SamplingConfig,
    out: torch.Tensor,
    logp: torch.Tensor,
    progress: Callable[[int], None] | None,
) -> None:
    """Blocks that share no tokens, decoded as rows of one batch: per random stream, its rows' blocks of one
    length (every block but perhaps the last) in batches whose KV cache fits ``_PARALLEL_KV_BYTES``; each
    stream draws for its own rows only. Fills ``out`` (B, N) and adds the log-probabilities to ``logp`` (B,)."""
    cfg, dev = prior.config, out.device
    B, P, N = out.shape[0], cfg.num_prefix_tokens, out.shape[1]
    size = B // len(groups)
    proc = _Processor(sampling, cfg.vocab_size)
    by_len: dict[int, list[BlockWindow]] = {}
    for w in wins:
        by_len.setdefault(w.stop - w.start, []).append(w)
    done = 0.0  # progress in sequence positions of the whole batch, as the block-by-block order reports it
    for j, g in enumerate(groups):
        for n_new, ws in by_len.items():
            cells = [(r, w) for r in range(j * size, (j + 1) * size) for w in ws]
            per_row = cfg.n_layer * 2 * (P + n_new) * cfg.n_embd * prior.transformer.wte.weight.element_size()
            rows = max(1, min(len(cells), _PARALLEL_KV_BYTES // per_row))
            for c0 in range(0, len(cells), rows):
                chunk = cells[c0 : c0 + rows]
                R = len(chunk)
                idx = torch.tensor([r for r, _ in chunk], device=dev)
                sub = cond.rows(idx)
                sub.block_index = torch.tensor([min(w.index, 1) for _, w in chunk], device=dev)
                window = torch.stack([places[w.start : w.stop] for _, w in chunk])  # (R, n_new, F)
                embeds = prior.embed_sequence(prior.build_prefix(sub, R), out.new_empty(R, 0), window)
                dec = _Decoder(prior, R, P + n_new)
                next_places = prior.structure_embed(window[:, 1:]).to(dec.wte.dtype)
                draws = _Exponentials([g], R, cfg.vocab_size, dev) if sampling.do_sample else None
                block_tok = torch.empty(R, n_new, dtype=torch.long, device=dev)
                block_lp = torch.empty(R, n_new, dtype=torch.float32, device=dev)

                def step(_: int, R=R) -> None:
                    nonlocal done
                    before, done = int(done), done + R / B
                    if progress is not None and int(done) > before:
                        progress(int(done) - before)

                _loop_block(
                    dec, embeds, n_new, sampling, proc, draws, block_tok, block_lp, True, step, next_places
                )
                for i, (r, w) in enumerate(chunk):
                    out[r, w.start : w.stop] = block_tok[i]
                logp.index_add_(0, idx, block_lp.sum(1))
    if progress is not None and int(done) < N:
        progress(N - int(done))


def _generate_block(
    prior: IGPGPriorModel, embeds: torch.Tensor, n_new: int, sampling: SamplingConfig, use_cache: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """transformers' ``generate()`` for one block -> (tokens (B, n_new), log-probs (B, n_new)): the reference."""
    gen = prior.generate(
        inputs_embeds=embeds,
        attention_mask=torch.ones(embeds.shape[:2], dtype=torch.long, device=embeds.device),
        max_new_tokens=n_new,
        min_new_tokens=n_new,
        use_cache=use_cache,
        pad_token_id=prior.config.pad_token_id,
        eos_token_id=None,
        **sampling.generate_kwargs(),
        return_dict_in_generate=True,
        output_logits=True,
    )
    new = gen.sequences[:, -n_new:]
    logits = torch.stack(gen.logits, dim=1).float()  # raw logits of each step, before temperature/top-k/top-p
    return new, torch.log_softmax(logits, -1).gather(-1, new[..., None]).squeeze(-1)


@contextlib.contextmanager
def _global_stream(g: torch.Generator | None, device: torch.device) -> Iterator[None]:
    """Let ``generate()`` (which draws from torch's global generator) draw from ``g``, and advance ``g`` after."""
    if g is None:
        yield
        return
    cuda = g.device.type == "cuda"
    devices = [g.device] if cuda else []
    with torch.random.fork_rng(devices=devices):
        if cuda:
            torch.cuda.set_rng_state(g.get_state(), g.device)
        else:
            torch.set_rng_state(g.get_state())
        yield
        g.set_state(torch.cuda.get_rng_state(g.device) if cuda else torch.get_rng_state())


# ----------------------------------------------------------------------------------------------- entry point
@torch.no_grad()
def sample_weight_tokens(
    prior: IGPGPriorModel,
    cond: IGPGConditions,
    num_tokens: int,
    num_samples: int = 1,
    sampling: SamplingConfig | None = None,
    seed: int | None = None,
    use_cache: bool = True,
    positions: torch.Tensor | None = None,
    *,
    generator: GeneratorArg = None,
    candidates_per_sample: int = 1,
    exclude_copies: bool = False,
    backend: str = "loop",
    num_threads: int | None = None,
    progress: Callable[[int], None] | None = None,
    parallel_blocks: bool | None = None,
) -> SampledTokens:
    """Sample ``num_samples`` token sequences (N = ``num_tokens``) for each of the condition rows in ``cond``.

    Returns a `SampledTokens` with tokens (rows x num_samples, N) int64 in drawing order and their mean
    log-likelihood per token. Random streams: ``generator`` (None, one ``torch.Generator``, or a list with one
    per sample: rows x num_samples) or ``seed`` (per-sample generators seeded seed, seed+1, ...); see the module
    docstring. ``candidates_per_sample=k`` draws k sequences per sample (the k candidates of a sample draw from
    its generator) and keeps, per condition row, the ``num_samples`` most likely (mean log-probability per
    token; with ``exclude_copies`` sequences that repeat a training sequence rank last), in drawing order.

    ``backend="loop"`` (default) is this module's decode loop; ``"generate"`` runs transformers'
    ``generate()`` (the reference: the same tokens, slower). ``use_cache=False`` recomputes the whole sequence
    at every step (the loop only: transformers turns the cache back on for ``inputs_embeds``).
    ``num_threads``: torch threads while sampling (default: `generation_num_threads`). ``progress`` is called
    with the number of new tokens (one step of every row) after each step.

    ``parallel_blocks``: decode the blocks of each sample side by side (see the module docstring); only for
    structure priors with ``block_overlap=0`` (ValueError otherwise). None: when such a prior's model has more
    blocks than the batch has rows.

    Raises ValueError for a non-positive ``num_tokens``/``num_samples``/``candidates_per_sample``, a model
    longer than the prior can produce (``max_blocks``), an unknown backend, a generator list of the wrong
    length, a structure prior without ``positions`` (num_tokens, F) (`IGPGPriorModel.weight_positions`),
    ``exclude_copies`` on a prior without training fingerprints, and non-finite logits.
    """
    t_start = time.perf_counter()
    sampling = sampling or SamplingConfig()
    cfg = prior.config
    if num_tokens < 1:
        raise ValueError(f"num_tokens must be positive, got {num_tokens}")
    if num_samples < 1:
        raise ValueError(f"num_samples must be at least 1, got {num_samples}")
    if candidates_per_sample < 1:
        raise ValueError(f"candidates_per_sample must be at least 1, got {candidates_per_sample}")
    if backend not in ("loop", "generate"):
        raise ValueError(f"backend must be 'loop' or 'generate', got {backend!r}")
    if backend == "generate" and not use_cache:
        raise ValueError(
            "backend='generate' cannot decode without a cache: transformers turns use_cache=False back on for "
            "inputs_embeds; use backend='loop' for a real no-cache decode"
        )
    known = getattr(cfg, "training_sequence_hashes", None)
    if exclude_copies and not known:
        raise ValueError(
            "exclude_copies=True needs a prior that stores its training-sequence fingerprints "
            "(priors trained by igpg_hf >= 0.2 do); retrain the prior or pass exclude_copies=False"
        )
    wins = block_windows(num_tokens, cfg.max_weight_tokens, cfg.block_overlap, cfg.tokens_per_chunk)
    places = None
    if prior.uses_structure:
        if positions is None or len(positions) != num_tokens:
            raise ValueError(
                f"this prior needs positions= of shape ({num_tokens}, F) (prior.weight_positions(layout)), got "
                f"{None if positions is None else tuple(positions.shape)}"
            )
        why = "structure positions" if backend == "generate" else loop_unsupported(prior)
        if why:
            raise ValueError(
                f"a structure prior samples with the decode loop only, which does not support {why} "
                "(generate() embeds new tokens without their places)"
            )
        places = positions.to(prior.device)
    elif len(wins) > cfg.max_blocks:
        raise ValueError(
            f"a model of {num_tokens} tokens needs {len(wins)} blocks; this prior can produce at most "
            f"{cfg.max_blocks} blocks of {cfg.max_weight_tokens} tokens"
        )
    if backend == "loop" and (why := loop_unsupported(prior)):
        if sampling.guided:
            raise ValueError(f"guidance_scale needs the decode loop, which does not support {why}")
        logger.warning("the decode loop does not support %s: sampling with transformers' generate()", why)
        backend = "generate"
    if sampling.guided and (backend != "loop" or parallel_blocks):
        raise ValueError(
            "guidance_scale needs the decode loop, block after block (backend='loop', no parallel_blocks)"
        )
    independent = places is not None and cfg.block_overlap == 0 and backend == "loop" and use_cache
    if parallel_blocks and not independent:
        raise ValueError(
            "parallel_blocks needs blocks that share no tokens: a structure prior with block_overlap=0, the "
            f"decode loop and the KV cache (this prior: position_scheme={cfg.position_scheme!r}, "
            f"block_overlap={cfg.block_overlap}; backend={backend!r}, use_cache={use_cache})"
        )
    n_cond = cond.batch_size() or 1
    n_draw = num_samples * candidates_per_sample
    B = n_cond * n_draw
    groups = _groups(generator, seed, n_cond * num_samples, B)
    dev = prior.device
    cond = cond.repeat_interleave(n_draw).to(dev)
    out = torch.empty(B, num_tokens, dtype=torch.long, device=dev)
    logp = torch.zeros(B, dtype=torch.float32, device=dev)
    threads = num_threads if num_threads is not None else generation_num_threads(prior.decode_step_flops(B))
    if parallel_blocks is None:
        parallel_blocks = independent and len(wins) > B and not sampling.guided
    with torch_threads(threads):
        if parallel_blocks:
            _parallel_blocks(prior, cond, wins, places, groups, sampling, out, logp, progress)
        elif backend == "loop":
            max_len = max(cfg.num_prefix_tokens + w.stop - w.context_start for w in wins)
            dec = _Decoder(prior, 2 * B if sampling.guided else B, max_len if use_cache else 1)
            proc = _Processor(sampling, cfg.vocab_size)
            draws = _Exponentials(groups, B, cfg.vocab_size, dev) if sampling.do_sample else None
            for w in wins:
                cond.block_index = torch.full((B,), w.index, dtype=torch.long, device=dev)
                n_new = w.stop - w.start
                next_places = None  # structure priors: new token i's input carries the place of token i + 1
                if places is not None:
                    window = places[w.context_start : w.stop]
                    next_places = prior.structure_embed(places[w.start + 1 : w.stop]).to(dec.wte.dtype)
                prefix, context = prior.build_prefix(cond, B), out[:, w.context_start : w.start]
                if sampling.guided:  # the same rows again with the null instruction (the prefix's text slot)
                    null = prefix.clone()
                    null[:, 0] = prior.null_conditions[0].to(prefix.dtype)
                    prefix, context = torch.cat([prefix, null]), torch.cat([context, context])
                embeds = prior.embed_sequence(prefix, context, None if places is None else window)
                block_tok = torch.empty(B, n_new, dtype=torch.long, device=dev)
                block_lp = torch.empty(B, n_new, dtype=torch.float32, device=dev)
                _loop_block(
                    dec,
                    embeds,
                    n_new,
                    sampling,
                    proc,
                    draws,
                    block_tok,
                    block_lp,
                    use_cache,
                    progress,
                    next_places,
                )
                out[:, w.start : w.stop] = block_tok
                logp += block_lp.sum(1)
            if proc.top_p is not None:
                logger.debug("top-p: %d of %d rows sorted in full", proc.top_p.sorted_rows, proc.top_p.rows)
        else:
            size, done = B // len(groups), 0  # progress: steps of the whole batch, in equal shares per stream
            for j, g in enumerate(groups):  # each stream generates its rows on its own
                rows = slice(j * size, (j + 1) * size)
                sub = cond.rows(rows)
                with _global_stream(g, dev):
                    for w in wins:
                        sub.block_index = torch.full((size,), w.index, dtype=torch.long, device=dev)
                        embeds = prior.embed_sequence(
                            prior.build_prefix(sub, size), out[rows, w.context_start : w.start]
                        )
                        new, lp = _generate_block(prior, embeds, w.stop - w.start, sampling, use_cache)
                        out[rows, w.start : w.stop] = new
                        logp[rows] += lp.sum(1)
                        if progress is not None:
                            now = (j * num_tokens + w.stop) // len(groups)
                            progress(now - done)
                            done = now
    logp /= num_tokens
    if not bool(torch.isfinite(logp).all()):
        raise ValueError("the prior produced non-finite logits (NaN or inf weights?); cannot sample from it")
    result = _select(out, logp, n_cond, num_samples, candidates_per_sample, exclude_copies, known)
    result.seconds = time.perf_counter() - t_start
    logger.debug("sampled %d x %d tokens in %.2fs (%s)", B, num_tokens, result.seconds, backend)
    return result


@torch.no_grad()
def score_weight_tokens(
    prior: IGPGPriorModel,
    cond: IGPGConditions,
    tokens: torch.Tensor,
    positions: torch.Tensor | None = None,
    batch_size: int = 16,
) -> torch.Tensor:
    """Each sequence's total log-probability (nats) under the prior, given its row of conditions.

    tokens: (B, N) int64; ``cond``: B condition rows (one per sequence) or one row for all. Teacher-forced, block
    by block exactly as `sample_weight_tokens` factorizes a long model (`block_windows`: each block's new tokens
    given its prefix, block index and overlap context), under the prior's own distribution (no temperature,
    top-k/p or guidance). ``positions`` (N, F): structure priors' token places (`IGPGPriorModel.weight_positions`).
    Returns (B,) float32 on the CPU. Comparing the same sequence under several conditions gives the prior's
    posterior over them (`igpg_hf.candidate_selection.condition_posterior`). Raises ValueError for a row count
    that matches neither, or a structure prior without positions.
    """
    cfg = prior.config
    B, N = tokens.shape
    rows = cond.batch_size() or 1
    if rows not in (1, B):
        raise ValueError(f"cond has {rows} rows for {B} sequences: give one row, or one per sequence")
    if prior.uses_structure and (positions is None or len(positions) != N):
        raise ValueError(
            f"this prior needs positions= of shape ({N}, F) (prior.weight_positions(layout)), got "
            f"{None if positions is None else tuple(positions.shape)}"
        )
    dev = prior.device
    wins = block_windows(N, cfg.max_weight_tokens, cfg.block_overlap, cfg.tokens_per_chunk)
    P = cfg.num_prefix_tokens
    total = torch.zeros(B, dtype=torch.float64)
    for i in range(0, B, batch_size):
        sl = slice(i, min(i + batch_size, B))
        n = sl.stop - sl.start
        sub = (cond if rows == 1 else cond.rows(sl)).to(dev)
        if rows == 1:
            sub = sub.repeat_interleave(n)
        for w in wins:
            sub.block_index = torch.full((n,), w.index, dtype=torch.long, device=dev)
            seq = tokens[sl, w.context_start : w.stop].to(dev)
            window = None if positions is None else positions[w.context_start : w.stop].to(dev)
            embeds, _ = prior.build_inputs(sub, seq, None, window)
            logits = prior(inputs_embeds=embeds, use_cache=False).logits  # (n, P + len, V)
            new = w.start - w.context_start  # the block's first new token, within seq
            pred = logits[:, P - 1 + new : P - 1 + seq.shape[1]].float().log_softmax(-1)
            total[sl] += pred.gather(-1, seq[:, new:, None]).squeeze(-1).sum(1).double().cpu()
    return total.float()


def warn_kept_copies(copies: list[bool], keep: list[int]) -> None:
    """Warn when candidates kept with ``exclude_copies`` still include copies of training checkpoints."""
    if any(copies[i] for i in keep):
        logger.warning(
            "only %d of %d candidates are new (not copies of a training checkpoint), so %d returned "
            "samples are copies: raise candidates_per_sample",
            len(copies) - sum(copies),
            len(copies),
            sum(copies[i] for i in keep),
        )


def _select(
    tokens: torch.Tensor,
    logp: torch.Tensor,
    n_cond: int,
    num_samples: int,
    k: int,
    exclude_copies: bool,
    known: list[str] | None,
) -> SampledTokens:
    """Keep, per condition row, the ``num_samples`` most likely of its ``num_samples * k`` draws (copies last)."""
    known_set = set(known or ())
    copies = [sequence_hash(t) in known_set for t in tokens] if known else None
    n_draw = num_samples * k
    keep: list[int] = []
    for c in range(n_cond):
        pool = range(c * n_draw, (c + 1) * n_draw)
        rank = sorted(pool, key=lambda i: (exclude_copies and copies[i], -float(logp[i])))
        keep += sorted(rank[:num_samples])  # in drawing order
    if exclude_copies:
        warn_kept_copies(copies, keep)
    idx = torch.tensor(keep, dtype=torch.long, device=tokens.device)
    return SampledTokens(
        tokens=tokens[idx] if k > 1 else tokens,
        log_likelihood=logp[idx] if k > 1 else logp,
        is_copy=[copies[i] for i in keep] if copies is not None else None,
        num_candidates=len(tokens),
        candidate_copies=sum(copies) if copies is not None else None,
    )
