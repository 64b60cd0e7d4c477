"""Train the conditioned GPT-2 prior on the token sequences of a weight corpus, with accelerate.

Every checkpoint is encoded once by the (frozen) VQ-VAE, in canonical order (sorted by ``model_id``, so
any order of the same checkpoints trains the same weights). A training example is one block window
of one checkpoint's sequence (see `igpg_hf.sampling.block_windows`) with its conditions: an
instruction drawn from the task's phrasings (paraphrases teach the prior that wordings differ), the
architecture description, and a support set of ``config.support_per_class`` labelled samples per class
drawn from a small pool (the pipeline conditions on the same number at inference).
Each condition is dropped (replaced by its learned null) with probability ``condition_dropout`` so
the pipeline works when a condition is absent. AdamW, one-cycle LR; checkpoints and resume as the
VQ-VAE trainer.
"""

from __future__ import annotations

import copy
import logging
import os
import random
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any

import torch
from accelerate import Accelerator
from torch.utils.data import Dataset

from ..adapters import adapter_specs_of
from ..conditioning import encode_text, encode_text_states, pad_text_states, prepare_support_set
from ..configuration_igpg import IGPGPriorConfig
from ..modeling_prior import IGPGConditions, IGPGPriorModel
from ..modeling_vqvae import IGPGVQVAEModel
from ..sampling import block_windows, sequence_hash
from ..weights.structure import STRUCTURE_FIELDS
from .accelerator import make_accelerator
from .args import PriorTrainingArgs
from .checkpointing import RunFolder, data_fingerprint, run_settings
from .loop import run_training
from .provenance import base_model_summary, corpus_summary, track_sources
from .vqvae import canonical_order

logger = logging.getLogger(__name__)

__all__ = ["PriorTrainingArgs", "PriorExamples", "encode_corpus", "train_prior"]


@dataclass
class EncodedCheckpoint:
    """A training sequence and the strings/keys of its conditions."""

    tokens: torch.Tensor  # (N,) int64
    instructions: tuple[str, ...]
    arch_text: str
    task: str
    model_id: str
    layout: Any = None  # WeightLayout of the checkpoint: the order its tokens run in
    positions: torch.Tensor | None = None  # (N, F) token places (structure priors), set by train_prior


def _sample_wordings(wordings: tuple[str, ...], n: int | None, key: str, head: int = 4) -> tuple[str, ...]:
    """The first ``head`` wordings (canonical, paraphrases) and a fixed random sample of the rest, ``n`` in all."""
    if n is None or len(wordings) <= n:
        return tuple(wordings)
    head = min(head, n)
    rest = random.Random(f"wordings/{key}").sample(list(wordings[head:]), n - head)
    return (*wordings[:head], *rest)


def _instructions(meta, per_task: int | None = None) -> tuple[str, ...]:
    """A checkpoint's training wordings, canonical first: a registered task's grammar wordings
    (`igpg_hf.zoo.instructions.training_instructions`; with ``per_task``, its registered ones and a fixed sample of
    the rest), else the checkpoint's own instruction."""
    from ..zoo.instructions import training_instructions
    from ..zoo.tasks import _REGISTRY

    spec = _REGISTRY.get(meta.task)
    if spec is not None:
        return _sample_wordings(training_instructions(spec), per_task, spec.name, len(spec.instructions))
    if not meta.instruction:
        raise ValueError(f"checkpoint {meta.model_id!r} has neither a registered task nor an instruction")
    return (meta.instruction,)


def encode_corpus(
    vqvae: IGPGVQVAEModel, checkpoints: Iterable, wordings_per_task: int | None = None
) -> list[EncodedCheckpoint]:
    """Encode every checkpoint into its token sequence with the frozen VQ-VAE (in the order given)."""
    out = []
    for c in checkpoints:
        m = c.metadata
        if not (m.arch_text or "").strip():
            raise ValueError(
                f"checkpoint {m.model_id!r} has no architecture text (arch_text), which conditions the prior: "
                "store it with an arch_spec (arch_text is derived from it) or an arch_text when it is written or "
                "ingested"
            )
        tokens = vqvae.encode(c.state_dict(), c.layout, f"checkpoint {m.model_id!r}")
        out.append(
            EncodedCheckpoint(
                tokens, _instructions(m, wordings_per_task), m.arch_text, m.task, m.model_id, c.layout
            )
        )
    if not out:
        raise ValueError("the corpus has no checkpoints to train the prior on")
    return out


class PriorExamples(Dataset):
    """Map-style dataset: item i is a random block window of checkpoint i with sampled conditions.

    The draw is a pure function of (seed, epoch, i) (`draw`), never of a generator's running state, so a resumed
    run draws exactly what the interrupted one would have.
    """

    def __init__(
        self,
        seqs: list[EncodedCheckpoint],
        config: IGPGPriorConfig,
        text_table: dict[str, torch.Tensor],
        support: dict[str, list[tuple[torch.Tensor, torch.Tensor]]],
        dropout: float,
        seed: int,
        canonical_probability: float = 0.0,
        text_states: dict[str, torch.Tensor] | None = None,
    ):
        self.seqs, self.cfg, self.text, self.support, self.dropout = (
            seqs,
            config,
            text_table,
            support,
            dropout,
        )
        self.seed = seed
        self.canonical_probability = canonical_probability
        self.text_states = text_states  # wording -> (L, E) token states, for priors that pool them

    def __len__(self) -> int:
        return len(self.seqs)

    def __getitem__(self, i: int) -> dict:
        return self.draw(i, 0)

    def draw(self, i: int, epoch: int) -> dict:
        """Example ``i`` as drawn in ``epoch``: window, instruction wording, dropped conditions, support set."""
        s, cfg = self.seqs[i], self.cfg
        rng = random.Random(f"{self.seed}|{epoch}|{i}")  # str seeds hash with SHA-512: same in every process
        wins = block_windows(len(s.tokens), cfg.max_weight_tokens, cfg.block_overlap, cfg.tokens_per_chunk)
        w = rng.choice(wins)
        tokens = s.tokens[w.context_start : w.stop]
        loss_mask = torch.arange(len(tokens)) >= (w.start - w.context_start)
        # the canonical instruction (first) now and then, else any training wording
        wording = (
            s.instructions[0] if rng.random() < self.canonical_probability else rng.choice(s.instructions)
        )
        item = {
            "tokens": tokens,
            "positions": None if s.positions is None else s.positions[w.context_start : w.stop],
            "loss_mask": loss_mask,
            "block": w.index,
            "text": self.text[wording],
            "arch": self.text[s.arch_text],
            "drop": [rng.random() < self.dropout for _ in range(3)],
        }
        if self.text_states is not None:
            item["text_states"] = self.text_states[wording]
        pool = self.support.get(s.task)
        if pool:
            item["feats"], item["labels"] = rng.choice(pool)
        else:
            item["drop"][2] = True
        return item


def collate(
    items: list[dict], feature_dim: int
) -> tuple[IGPGConditions, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Pad a batch: conditions, tokens (B, N), loss_mask (B, N) False on padding/context, and the tokens' places
    (B, N, F), -1 on padding (None for absolute priors)."""
    B, N = len(items), max(len(it["tokens"]) for it in items)
    tokens = torch.zeros(B, N, dtype=torch.long)
    mask = torch.zeros(B, N, dtype=torch.bool)
    places = None
    if items[0].get("positions") is not None:
        places = torch.full((B, N, items[0]["positions"].shape[-1]), -1, dtype=torch.long)
        for b, it in enumerate(items):
            places[b, : len(it["positions"])] = it["positions"]
    S = max((len(it["labels"]) for it in items if "labels" in it), default=1)
    feats, labels, smask = (
        torch.zeros(B, S, feature_dim),
        torch.zeros(B, S, dtype=torch.long),
        torch.zeros(B, S, dtype=torch.bool),
    )
    for b, it in enumerate(items):
        n = len(it["tokens"])
        tokens[b, :n], mask[b, :n] = it["tokens"], it["loss_mask"]
        if "labels" in it:
            k = len(it["labels"])
            feats[b, :k], labels[b, :k], smask[b, :k] = it["feats"], it["labels"], True
    drop = torch.tensor([it["drop"] for it in items])  # (B, 3)
    states = (
        pad_text_states([it["text_states"].float() for it in items]) if "text_states" in items[0] else None
    )
    cond = IGPGConditions(
        text_embeds=torch.stack([it["text"] for it in items]),
        arch_embeds=torch.stack([it["arch"] for it in items]),
        dataset_feats=feats,
        dataset_labels=labels,
        dataset_mask=smask,
        block_index=torch.tensor([it["block"] for it in items]),
        drop={"text": drop[:, 0], "arch": drop[:, 1], "dataset": drop[:, 2] | ~smask.any(1)},
        text_states=None if states is None else states[0],
        text_mask=None if states is None else states[1],
    )
    return cond, tokens, mask, places


def _structure(model: IGPGPriorModel, seqs: list[EncodedCheckpoint], vqvae: IGPGVQVAEModel) -> None:
    """Store the VQ-VAE's chunking in the prior's config, give every sequence its token places, and record the
    largest value of every learned field (values past it at inference share its row)."""
    cfg = model.config
    cfg.chunk_size, cfg.chunk_mode = vqvae.config.chunk_size, vqvae.config.chunk_mode
    if not model.uses_structure:
        return
    cache: dict[str, torch.Tensor] = {}
    for s in seqs:
        key = s.layout.to_json()
        if key not in cache:
            cache[key] = model.weight_positions(s.layout)
        s.positions = cache[key]
        if len(s.positions) != len(s.tokens):
            raise ValueError(
                f"checkpoint {s.model_id!r}: {len(s.tokens)} tokens but {len(s.positions)} token places "
                "(the prior's chunking differs from the VQ-VAE's)"
            )
    seen = torch.stack([p.max(0).values for p in cache.values()]).max(0).values
    cfg.structure_seen_max = {f: int(seen[STRUCTURE_FIELDS.index(f)]) for f in cfg.structure_tables}


def _support_pool(tasks: set[str], args: PriorTrainingArgs, config: IGPGPriorConfig) -> dict:
    from ..zoo.tasks import _REGISTRY, sample_support_set

    pool = {}
    if not args.use_dataset_condition:
        return pool
    for t in sorted(tasks):
        if t in _REGISTRY:
            pool[t] = []
            for k in range(args.support_pool):
                x, y = sample_support_set(t, config.support_per_class, seed=k)
                pool[t].append((prepare_support_set(x, y, config.dataset_feature_dim), y))
    return pool


def _train_text_pool(model, seqs, states: dict[str, torch.Tensor], args: PriorTrainingArgs) -> None:
    """Train the prior's text pooling to tell the known tasks apart from their training wordings, then freeze it.

    Cosine logits against one learned prototype per task, cross-entropy, ``args.text_pool_steps`` steps of 128
    wordings. Frozen afterwards, so the prior's own loss cannot make it fit the training templates. A corpus of
    one task has nothing to tell apart: the pooling stays as initialized (and frozen).
    """
    pool = model.text_pool
    by_task = {s.task: s.instructions for s in seqs}
    examples = [(w, i) for i, t in enumerate(sorted(by_task)) for w in by_task[t]]
    if len(by_task) > 1 and args.text_pool_steps > 0:
        g = torch.Generator().manual_seed(args.seed)
        dim = pool.key.in_features
        protos = torch.nn.Parameter(torch.randn(len(by_task), dim, generator=g) * 0.1)
        opt = torch.optim.AdamW([*pool.parameters(), protos], lr=2e-3, weight_decay=0.01)
        pool.train()
        for step in range(args.text_pool_steps):
            idx = torch.randint(len(examples), (min(128, len(examples)),), generator=g).tolist()
            x, m = pad_text_states([states[examples[i][0]].float() for i in idx])
            y = torch.tensor([examples[i][1] for i in idx])
            z = torch.nn.functional.normalize(pool(x, m), dim=-1)  # (B, E)
            loss = torch.nn.functional.cross_entropy(
                16 * z @ torch.nn.functional.normalize(protos, dim=-1).T, y
            )
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if (step + 1) % 100 == 0:
                logger.info("text pooling step %d: task loss %.4f", step + 1, loss.item())
        opt.zero_grad(set_to_none=True)  # no stale gradient: the prior's optimizer would apply it once
    pool.requires_grad_(False)


def _record_known_conditions(model, seqs, text_table, text_encoder, tokenizer, args) -> None:
    """Known tasks, wordings and architectures into the prior; the out-of-distribution threshold calibrated on
    held-out calibration wordings of these tasks against the calibration half of the unrelated instructions."""
    from ..conditioning.coverage import KnownTask, record_known_conditions
    from ..zoo.instructions import heldout_instructions, unrelated_instructions
    from ..zoo.tasks import _REGISTRY

    by_task: dict[str, list[EncodedCheckpoint]] = {}
    for s in seqs:
        by_task.setdefault(s.task, []).append(s)
    tasks = {
        t: KnownTask(
            name=t,
            instruction=ss[0].instructions[0],
            wordings=list(_sample_wordings(ss[0].instructions, args.known_wordings_per_task, f"known/{t}")),
            architectures=sorted({s.arch_text for s in ss}),
            num_checkpoints=len(ss),
            num_training_wordings=len(ss[0].instructions),
        )
        for t, ss in by_task.items()
    }
    calib = [w for t in sorted(tasks) if t in _REGISTRY for w in heldout_instructions(t, "calibration")]

    def embed(texts: list[str]) -> torch.Tensor:
        known = [t for t in texts if t in text_table]
        if len(known) == len(texts):
            return torch.stack([text_table[t] for t in texts])
        return encode_text(texts, text_encoder, tokenizer).cpu()

    record_known_conditions(model, tasks, embed, calib, list(unrelated_instructions("calibration")))


def train_prior(
    checkpoints: Iterable,
    vqvae: IGPGVQVAEModel,
    text_encoder,
    tokenizer,
    config: IGPGPriorConfig | IGPGPriorModel,
    output_dir: str | os.PathLike,
    args: PriorTrainingArgs | None = None,
    accelerator: Accelerator | None = None,
    progress: bool = True,
) -> IGPGPriorModel:
    """Train (or resume) the prior on the corpus's token sequences; saves it to ``output_dir/final``.

    ``checkpoints`` may come in any order (they are sorted by ``model_id`` first); ``vqvae`` is frozen;
    ``text_encoder`` / ``tokenizer`` embed the instructions and architecture texts. Raises ValueError when the
    prior's vocabulary or tokens per chunk differ from the VQ-VAE's, or the corpus is empty.
    """
    args = args or PriorTrainingArgs()
    accelerator = accelerator or make_accelerator()
    with RunFolder(output_dir, accelerator) as run:  # writable, locked, before any work
        return _train_prior(
            checkpoints, vqvae, text_encoder, tokenizer, config, run, args, accelerator, progress
        )


def _train_prior(checkpoints, vqvae, text_encoder, tokenizer, config, run, args, accelerator, progress):
    out = run.path
    torch.manual_seed(args.seed)
    vqvae = vqvae.eval()
    sources: set = set()
    checkpoints = canonical_order(track_sources(checkpoints, sources))
    seqs = encode_corpus(vqvae, checkpoints, args.wordings_per_task)
    # a copy: training records what it saw in the config, and the caller's object must not change under it
    model = config if isinstance(config, IGPGPriorModel) else IGPGPriorModel(copy.deepcopy(config))
    provenance = {**corpus_summary(sources), **base_model_summary(model)}
    cfg = model.config
    if cfg.vocab_size != vqvae.config.vocab_size:
        raise ValueError(f"prior vocab_size {cfg.vocab_size} != VQ-VAE vocabulary {vqvae.config.vocab_size}")
    if cfg.tokens_per_chunk != vqvae.config.tokens_per_chunk:
        raise ValueError(
            f"prior tokens_per_chunk {cfg.tokens_per_chunk} != VQ-VAE's {vqvae.config.tokens_per_chunk}"
        )
    cfg.training_sequence_hashes = sorted({sequence_hash(s.tokens) for s in seqs})
    cfg.adapter_specs = adapter_specs_of(checkpoints) or None
    _structure(model, seqs, vqvae)
    cfg.trained_layouts = list({s.layout.to_json(): s.layout.to_list() for s in seqs}.values())
    wordings = sorted({t for s in seqs for t in s.instructions})
    archs = sorted({s.arch_text for s in seqs} - set(wordings))
    states = None
    if getattr(model, "text_pool", None) is not None:
        # one encoder pass: token states for the prior's pooling; their normalized mean is `encode_text`'s embedding
        st = encode_text_states(wordings, text_encoder, tokenizer)
        emb = torch.nn.functional.normalize(torch.stack([x.mean(0) for x in st]), dim=-1)
        states = {w: x.half() for w, x in zip(wordings, st, strict=True)}  # half: 3,500 wordings ~ 70 MB
        strings = [*wordings, *archs]
        emb = torch.cat([emb, encode_text(archs, text_encoder, tokenizer).cpu()]) if archs else emb
    else:
        strings = [*wordings, *archs]
        emb = encode_text(strings, text_encoder, tokenizer).cpu()
    text_table = dict(zip(strings, emb, strict=True))
    _record_known_conditions(model, seqs, text_table, text_encoder, tokenizer, args)
    if states is not None:
        _train_text_pool(model, seqs, states, args)
    support = _support_pool({s.task for s in seqs}, args, cfg)
    settings = run_settings(
        args,
        cfg,
        data_fingerprint(
            *(s.tokens for s in seqs), [[s.model_id, s.instructions, s.arch_text, s.task] for s in seqs]
        ),
    )
    done = run.finished(IGPGPriorModel, settings)
    if done is not None:
        return done
    data = PriorExamples(
        seqs,
        cfg,
        text_table,
        support,
        args.condition_dropout,
        args.seed,
        args.canonical_probability,
        states,
    )
    t0 = time.perf_counter()

    def step_fn(m, batch, step):
        cond, tokens, mask, places = batch
        # the prefix is built inside forward, so the (possibly DDP-wrapped) model sees every parameter it trains
        loss = m(
            conditions=cond, weight_tokens=tokens, loss_mask=mask, weight_positions=places, use_cache=False
        ).loss
        return loss, {"loss": loss.item()}, f"loss {loss.item():.3f}"

    model, history = run_training(
        accelerator,
        model,
        data,
        step_fn,
        out,
        steps=args.steps,
        batch_size=args.batch_size,
        seed=args.seed,
        collate_fn=lambda b: collate(b, cfg.dataset_feature_dim),
        settings=settings,
        lr=args.lr,
        weight_decay=args.weight_decay,
        log_every=args.log_every,
        checkpoint_every=args.checkpoint_every,
        name="prior",
        clip_grad_norm=1.0,
        progress=progress,
    )
    if accelerator.is_main_process:
        model.config.training_summary = {
            **(model.config.training_summary or {}),
            **provenance,
            "prior_steps": args.steps,
            "prior_final_loss": history[-1]["loss"] if history else None,
            "num_sequences": len(seqs),
        }
    run.save_final(
        model,
        {
            "args": asdict(args),
            "history": history,
            "num_sequences": len(seqs),
            "seconds": time.perf_counter() - t0,
            "settings": settings,
        },
    )
    return model
