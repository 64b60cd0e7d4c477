"""Train the VQ-VAE (weights <-> tokens) on a weight corpus with accelerate (CPU, one GPU, or several processes).

Checkpoints are put in canonical order first (sorted by ``model_id``), so the same checkpoints in any order give
bit-identical weights. All chunks of the corpus are gathered once (normalization statistics are measured on the way), then
trained on with AdamW + one-cycle LR and a Gumbel temperature annealed from ``tau_start`` to
``tau_end`` (``tau_cycles`` > 1 restarts it, the paper's cyclical schedule). Progress shows loss,
reconstruction error and codebook perplexity; a checkpoint is written every ``checkpoint_every``
steps and a killed run resumes from it.
"""

from __future__ import annotations

import copy
import logging
import math
import os
import time
from collections.abc import Iterable
from dataclasses import asdict

import torch
from accelerate import Accelerator
from torch.utils.data import TensorDataset

from ..configuration_igpg import IGPGVQVAEConfig
from ..modeling_vqvae import IGPGVQVAEModel, masked_mse
from .accelerator import make_accelerator
from .args import DecoderTrainingArgs, VQVAETrainingArgs
from .checkpointing import RunFolder, data_fingerprint, run_settings
from .loop import run_training
from .provenance import corpus_summary, track_sources

logger = logging.getLogger(__name__)

__all__ = [
    "VQVAETrainingArgs",
    "DecoderTrainingArgs",
    "train_vqvae",
    "refine_vqvae_decoder",
    "gumbel_temperature",
    "collect_chunks",
    "canonical_order",
]


def gumbel_temperature(
    step: int, total: int, start: float, end: float, anneal_fraction: float = 0.8, cycles: int = 1
) -> float:
    """Exponential anneal start -> end over ``anneal_fraction`` of each of ``cycles`` cycles, then held at end."""
    cycle_len = max(1, math.ceil(total / cycles))
    frac = min(1.0, (step % cycle_len) / max(1, anneal_fraction * cycle_len))
    return start * (end / start) ** frac


def canonical_order(checkpoints: Iterable) -> list:
    """The checkpoints sorted by ``metadata.model_id``: the order every trainer sees them in.

    A zoo built by several workers stores runs in the order they finished, and a corpus may be concatenated or
    filtered in any order; training follows this order instead, so the same checkpoints always train the same
    weights (two builds of one zoo trained pipelines 25 accuracy points apart before).
    """
    return sorted(checkpoints, key=lambda c: c.metadata.model_id)


def collect_chunks(model: IGPGVQVAEModel, checkpoints: Iterable, fit: bool = True):
    """(chunks (M, K), masks (M, K), positions (M,)) of every checkpoint; fits normalization first if asked."""
    items = [(c.layout, c.vector(), f"checkpoint {c.metadata.model_id!r}") for c in checkpoints]
    if not items:
        raise ValueError("the corpus has no checkpoints to train the VQ-VAE on")
    if fit:
        model.fit_normalization(items)
    parts = [model.prepare(vec, layout, name) for layout, vec, name in items]
    return tuple(torch.cat(p) for p in zip(*parts, strict=True))


def train_vqvae(
    checkpoints: Iterable,
    config: IGPGVQVAEConfig | IGPGVQVAEModel,
    output_dir: str | os.PathLike,
    args: VQVAETrainingArgs | None = None,
    accelerator: Accelerator | None = None,
    progress: bool = True,
) -> IGPGVQVAEModel:
    """Train (or resume training) the VQ-VAE; saves it with ``save_pretrained`` to ``output_dir/final``.

    ``checkpoints``: corpus checkpoints (any order: they are sorted by ``model_id`` first). ``config``: a config,
    or a model to keep training. The run folder is locked and checked for writability before any work; a finished
    run with the same settings and data is returned as it is, a killed one resumes from its last checkpoint, and
    one with other settings is refused (ValueError naming the change). Raises ValueError on an empty corpus.
    """
    args = args or VQVAETrainingArgs()
    accelerator = accelerator or make_accelerator()
    with RunFolder(output_dir, accelerator) as run:  # writable, locked, before any work
        return _train_vqvae(checkpoints, config, run, args, accelerator, progress)


def _train_vqvae(checkpoints, config, run, args, accelerator, progress):
    out = run.path
    torch.manual_seed(args.seed)
    model = config if isinstance(config, IGPGVQVAEModel) else IGPGVQVAEModel(config)
    sources: set = set()
    chunks, masks, positions = collect_chunks(model, canonical_order(track_sources(checkpoints, sources)))
    logger.info("vqvae: %d chunks of %d values from the corpus", chunks.shape[0], chunks.shape[1])
    settings = run_settings(args, model.config, data_fingerprint(chunks, masks, positions))
    done = run.finished(IGPGVQVAEModel, settings)
    if done is not None:
        return done
    cfg = model.config
    t0 = time.perf_counter()

    def step_fn(m, batch, step):
        x, mask, pos = batch
        tau = gumbel_temperature(
            step, args.steps, cfg.tau_start, cfg.tau_end, args.tau_anneal_fraction, args.tau_cycles
        )
        o = m(x, pos, mask, tau=tau)
        record = {
            "loss": o.loss.item(),
            "recon_mse": o.recon_loss.item(),
            "perplexity": o.perplexity.item(),
            "tau": tau,
        }
        return o.loss, record, f"mse {record['recon_mse']:.4f} ppl {record['perplexity']:.0f}"

    model, history = run_training(
        accelerator,
        model,
        TensorDataset(chunks, masks, positions),
        step_fn,
        out,
        steps=args.steps,
        batch_size=args.batch_size,
        seed=args.seed,
        settings=settings,
        lr=args.lr,
        weight_decay=args.weight_decay,
        log_every=args.log_every,
        checkpoint_every=args.checkpoint_every,
        name="vqvae",
        progress=progress,
    )
    last = history[-1] if history else {}
    model.config.training_summary = {
        **(model.config.training_summary or {}),
        **corpus_summary(sources),
        "vqvae_steps": args.steps,
        "final_recon_mse": last.get("recon_mse"),
        "final_perplexity": last.get("perplexity"),
        "num_chunks": int(chunks.shape[0]),
    }
    run.save_final(
        model,
        {
            "args": asdict(args),
            "history": history,
            "num_chunks": int(chunks.shape[0]),
            "seconds": time.perf_counter() - t0,
            "settings": settings,
        },
    )
    return model


def refine_vqvae_decoder(
    checkpoints: Iterable,
    vqvae: IGPGVQVAEModel | str | os.PathLike,
    output_dir: str | os.PathLike,
    args: DecoderTrainingArgs | None = None,
    accelerator: Accelerator | None = None,
    progress: bool = True,
) -> IGPGVQVAEModel:
    """Train a trained VQ-VAE's decoder alone on the fixed codes of ``checkpoints``; saves ``output_dir/final``.

    The encoder, its position embedding and the quantizer are frozen, so every chunk keeps its tokens: a prior
    trained on the VQ-VAE's tokens works with the refined one unchanged. Codes are computed once (the quantized
    latents (M, l, d) of all M chunks, in eval mode); the decoder and its position embedding then minimize the
    masked MSE to the chunks. A decoder fine-tune as Stable Diffusion's VAE got one (``stabilityai/sd-vae-ft-mse``).
    Resumable and reusable like `train_vqvae`. Raises ValueError on an empty corpus or ``args.steps < 1``.
    """
    args = args or DecoderTrainingArgs()
    if args.steps < 1:
        raise ValueError(f"refining the decoder needs steps >= 1, got {args.steps}")
    accelerator = accelerator or make_accelerator()
    model = vqvae if isinstance(vqvae, IGPGVQVAEModel) else IGPGVQVAEModel.from_pretrained(vqvae)
    with RunFolder(output_dir, accelerator) as run:
        return _refine_decoder(checkpoints, model, run, args, accelerator, progress)


def _refine_decoder(checkpoints, model, run, args, accelerator, progress):
    torch.manual_seed(args.seed)
    model = copy.deepcopy(model).eval()  # the caller's model keeps its decoder
    sources: set = set()
    chunks, masks, positions = collect_chunks(
        model, canonical_order(track_sources(checkpoints, sources)), fit=False
    )
    with torch.no_grad():
        codes = model.quantizer(model._encode_latents(chunks, positions), tau=model.config.tau_end).quantized
    # the codes too: the same chunks under another encoder are other training data
    settings = run_settings(args, model.config, data_fingerprint(chunks, masks, positions, codes))
    done = run.finished(IGPGVQVAEModel, settings)
    if done is not None:
        return done
    decoding = {id(p) for m in (model.decoder, model.dec_pos) if m is not None for p in m.parameters()}
    for p in model.parameters():
        p.requires_grad_(id(p) in decoding)
    t0 = time.perf_counter()

    def step_fn(m, batch, step):
        q, x, mask, pos = batch
        loss = masked_mse(accelerator.unwrap_model(m)._decode_latents(q, pos), x, mask)
        return loss, {"recon_mse": loss.item()}, f"mse {loss.item():.4f}"

    before = _masked_mse(model, codes, chunks, masks, positions)
    model, history = run_training(
        accelerator,
        model,
        TensorDataset(codes, chunks, masks, positions),
        step_fn,
        run.path,
        steps=args.steps,
        batch_size=args.batch_size,
        seed=args.seed,
        settings=settings,
        lr=args.lr,
        weight_decay=args.weight_decay,
        log_every=args.log_every,
        checkpoint_every=args.checkpoint_every,
        name="vqvae decoder",
        progress=progress,
    )
    for p in model.parameters():
        p.requires_grad_(True)
    after = _masked_mse(model, codes, chunks, masks, positions)
    logger.info("vqvae decoder: reconstruction MSE %.5f -> %.5f over %d chunks", before, after, len(chunks))
    model.config.training_summary = {
        **(model.config.training_summary or {}),
        "decoder_refine_steps": args.steps,
        "decoder_recon_mse_before": before,
        "decoder_recon_mse_after": after,
    }
    run.save_final(
        model,
        {
            "args": asdict(args),
            "history": history,
            "num_chunks": int(chunks.shape[0]),
            "recon_mse_before": before,
            "recon_mse_after": after,
            "seconds": time.perf_counter() - t0,
            "settings": settings,
        },
    )
    return model


@torch.no_grad()
def _masked_mse(model, codes, chunks, masks, positions, batch: int = 8192) -> float:
    """Masked reconstruction MSE of all chunks from their fixed codes."""
    num = den = 0.0
    for i in range(0, len(chunks), batch):
        r = model._decode_latents(codes[i : i + batch], positions[i : i + batch])
        w = masks[i : i + batch].to(r.dtype)
        num += float(((r - chunks[i : i + batch]) ** 2 * w).sum())  # sums: batches hold different counts
        den += float(w.sum())
    return num / max(den, 1.0)
