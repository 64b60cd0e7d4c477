"""Train the VQ-VAE tokenizer on a weight corpus with accelerate (CPU, one GPU, or several processes).

All chunks of the corpus are gathered once (normalization statistics are measured on the way), then
trained on with AdamW + one-cycle LR and a Gumbel temperature annealed from ``tau_start`` to
``tau_end`` (``tau_cycles`` > 1 restarts it, the paper's cyclical schedule). Progress shows loss,
reconstruction error and codebook perplexity; a checkpoint is written every ``checkpoint_every``
steps and a killed run resumes from it.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from accelerate import Accelerator
from torch.utils.data import DataLoader, TensorDataset

from ..configuration_igpg import IGPGVQVAEConfig
from ..modeling_vqvae import IGPGVQVAEModel
from ..progress import progress_bar
from .checkpointing import atomic_write_json, load_training_state, save_training_state

logger = logging.getLogger(__name__)

__all__ = ["TokenizerTrainingArgs", "train_tokenizer", "gumbel_temperature", "collect_chunks"]


@dataclass
class TokenizerTrainingArgs:
    """Optimization settings for the tokenizer (calibrated: 3,000 steps of 256 chunks at lr 1e-3)."""

    steps: int = 3000
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 0.0
    tau_anneal_fraction: float = 0.8
    tau_cycles: int = 1
    checkpoint_every: int = 1000
    log_every: int = 100
    seed: int = 0


def gumbel_temperature(step: int, total: int, start: float, end: float, anneal_fraction: float = 0.8,
                       cycles: int = 1) -> float:
    """Exponential anneal start -> end over ``anneal_fraction`` of each of ``cycles`` cycles, then held at end."""
    cycle_len = max(1, math.ceil(total / cycles))
    frac = min(1.0, (step % cycle_len) / max(1, anneal_fraction * cycle_len))
    return start * (end / start) ** frac


def collect_chunks(model: IGPGVQVAEModel, checkpoints: Iterable, fit: bool = True):
    """(chunks (M, K), masks (M, K), positions (M,)) of every checkpoint; fits normalization first if asked."""
    items = [(c.layout, c.vector()) for c in checkpoints]
    if not items:
        raise ValueError("the corpus has no checkpoints to train the tokenizer on")
    if fit:
        model.fit_normalization(items)
    parts = [model.prepare(vec, layout) for layout, vec in items]
    return tuple(torch.cat(p) for p in zip(*parts, strict=True))


def train_tokenizer(
    checkpoints: Iterable,
    config: IGPGVQVAEConfig | IGPGVQVAEModel,
    output_dir: str | os.PathLike,
    args: TokenizerTrainingArgs | None = None,
    accelerator: Accelerator | None = None,
    progress: bool = True,
) -> IGPGVQVAEModel:
    """Train (or resume training) a tokenizer; saves it with ``save_pretrained`` to ``output_dir/final``."""
    args = args or TokenizerTrainingArgs()
    accelerator = accelerator or Accelerator()
    out = Path(output_dir)
    torch.manual_seed(args.seed)
    model = config if isinstance(config, IGPGVQVAEModel) else IGPGVQVAEModel(config)
    chunks, masks, positions = collect_chunks(model, checkpoints)
    logger.info("tokenizer: %d chunks of %d values from the corpus", chunks.shape[0], chunks.shape[1])
    loader = DataLoader(TensorDataset(chunks, masks, positions), batch_size=args.batch_size, shuffle=True,
                        drop_last=chunks.shape[0] >= args.batch_size,
                        generator=torch.Generator().manual_seed(args.seed))
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=args.steps, pct_start=0.1)
    model, opt, loader, sched = accelerator.prepare(model, opt, loader, sched)
    state = load_training_state(accelerator, out)
    step = state["step"] if state else 0
    history = state.get("history", []) if state else []
    cfg = accelerator.unwrap_model(model).config
    t0 = time.perf_counter()
    model.train()
    with progress_bar(args.steps, "tokenizer", enabled=progress and accelerator.is_main_process) as bar:
        bar.update(step)
        while step < args.steps:
            for x, m, pos in loader:
                tau = gumbel_temperature(step, args.steps, cfg.tau_start, cfg.tau_end, args.tau_anneal_fraction,
                                         args.tau_cycles)
                outp = model(x, pos, m, tau=tau)
                accelerator.backward(outp.loss)
                opt.step()
                sched.step()
                opt.zero_grad(set_to_none=True)
                step += 1
                if step % args.log_every == 0 or step == args.steps:
                    rec = {"step": step, "loss": outp.loss.item(), "recon_mse": outp.recon_loss.item(),
                           "perplexity": outp.perplexity.item(), "tau": tau}
                    history.append(rec)
                    logger.info("tokenizer %s", rec)
                bar.update(1, postfix=f"mse {outp.recon_loss.item():.4f} ppl {outp.perplexity.item():.0f}")
                if step % args.checkpoint_every == 0 and step < args.steps:
                    save_training_state(accelerator, model, out, step, {"history": history})
                if step >= args.steps:
                    break
    model = accelerator.unwrap_model(model).eval()
    if accelerator.is_main_process:
        model.save_pretrained(out / "final")
        atomic_write_json(out / "final" / "training_log.json", {
            "args": asdict(args), "history": history, "num_chunks": int(chunks.shape[0]),
            "seconds": time.perf_counter() - t0})
    accelerator.wait_for_everyone()
    return model
