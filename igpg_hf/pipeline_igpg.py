"""IGPGPipeline: an instruction (+ architecture, + a few data samples) -> loadable state dicts.

    pipe = IGPGPipeline.from_pretrained("user/repo")  # a Hub repo id (revision= too) or a local folder
    out = pipe("Classify handwritten digits", architecture="tiny_cnn", num_samples=5, seed=0)
    model.load_state_dict(out.state_dicts[0], strict=True)
    pipe.push_to_hub("my-pipeline")  # -> your-name/my-pipeline, with the project's model card

A pipeline trained on LoRA adapters of a base model generates adapters (``adapter=`` an `AdapterSpec`, an adapter
folder, or the base's identity): ``out.save_adapters(dir)`` writes one peft folder per sample, which
``PeftModel.from_pretrained(base, folder)`` loads.

The pipeline owns no weights of its own: components are the VQ-VAE (`IGPGVQVAEModel`, weights <-> tokens),
the prior (`IGPGPriorModel`) and a Hugging Face text encoder with its (text) tokenizer. Device placement is
``pipe.to("cuda")``, or ``pipe.enable_model_cpu_offload()``: components stay on the CPU and each goes to
the GPU only for its stage (text encoder, prior, VQ-VAE decode).
Load it with ``IGPGPipeline.from_pretrained``; the generic ``DiffusionPipeline.from_pretrained``
does not resolve pipeline classes outside diffusers.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import operator
import os
import tempfile
import time
import warnings
from collections import OrderedDict
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch
from diffusers import DiffusionPipeline
from diffusers.utils import BaseOutput
from safetensors import SafetensorError
from torch import nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from .adapters import AdapterSpec, base_model_identity, is_base_model_folder, save_adapter
from .candidate_selection import condition_posterior, rank_candidates, support_accuracy
from .cards import component_cards_disabled, pipeline_card, write_card
from .conditioning import encode_text, encode_text_states, pad_text_states, prepare_support_set
from .conditioning.coverage import (
    ConditionReport,
    KnownTask,
    OutOfDistributionWarning,
    check_conditions,
    known_tasks,
    task_similarity,
)
from .conditioning.lexical import LexicalTaskIndex
from .configuration_igpg import IGPGPriorConfig
from .hub import push_folder, snapshot
from .integrity import verify_checksums, write_checksums
from .label_alignment import LabelAlignment
from .label_alignment import align_labels as align_labels_fn
from .modeling_prior import IGPGConditions, IGPGPriorModel
from .modeling_vqvae import IGPGVQVAEModel
from .sampling import (
    SamplingConfig,
    generation_num_threads,
    sample_weight_tokens,
    score_weight_tokens,
    torch_threads,
    warn_kept_copies,
)
from .weights import WeightLayout, match_layout
from .zoo.architectures import ArchSpec, get_architecture

logger = logging.getLogger(__name__)


def _check_count(name: str, value: Any, least: int) -> None:
    """TypeError unless ``value`` is a whole number (not a bool), ValueError if it is below ``least``."""
    if isinstance(value, bool):
        raise TypeError(f"{name} must be a whole number, got {value!r}")
    if not isinstance(value, int):
        try:
            value = operator.index(value)  # numpy and torch integers
        except TypeError:
            raise TypeError(f"{name} must be a whole number, got {value!r}") from None
    if value < least:
        raise ValueError(f"{name} must be at least {least}, got {value}")


def _pooled(pool: nn.Module, states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """A text pooling module's (B, E) output for padded token states, computed where it lives, returned as
    float32 on the CPU."""
    p = next(pool.parameters())
    return pool(states.to(p.device, p.dtype), mask.to(p.device)).float().cpu()


__all__ = ["IGPGPipeline", "IGPGPipelineOutput"]


@dataclass
class IGPGPipelineOutput(BaseOutput):
    """state_dicts: one per sample, keyed like the target module; modules: instantiated nets (if asked);
    token_ids: (num_samples, N) sampled tokens; seconds: generation wall time; log_likelihood: each
    sample's mean log-probability per token under the prior; is_copy: whether each sample repeats a
    training checkpoint token for token (None if the prior stores no training fingerprints);
    num_candidates / candidate_copies: how many sequences were drawn to choose from, and how many of
    them were copies (None if unknown); label_alignments: per sample, how its output units were
    reordered to the labelled samples (`LabelAlignment`; None unless ``align_labels=True``); conditions: how
    close the instruction and architecture are to what the prior was trained on (nearest known tasks with their
    similarity, the out-of-distribution flag, whether the architecture is known; `ConditionReport`); adapter: the
    `AdapterSpec` the state dicts follow when the call generated adapters (``save_adapters`` writes them);
    support_accuracy: each sample's accuracy (%) on the labelled samples that chose it (None unless
    ``select_by="support_accuracy"``); conditioning_instructions: the instruction each sample was drawn under (the
    given one, or a known task's with ``match_known_task`` / ``candidate_tasks``); task_posterior: each sample's
    posterior probability (0-1) under the prior that it belongs to the instruction's task rather than to one of the
    nearest other known tasks (None unless ``select_by="task_posterior"``)."""

    state_dicts: list[dict[str, torch.Tensor]]
    modules: list[nn.Module] | None
    token_ids: torch.Tensor
    seconds: float
    log_likelihood: list[float] | None = None
    is_copy: list[bool] | None = None
    num_candidates: int | None = None
    candidate_copies: int | None = None
    label_alignments: list[LabelAlignment] | None = None
    conditions: ConditionReport | None = None
    adapter: AdapterSpec | None = None
    support_accuracy: list[float] | None = None
    conditioning_instructions: list[str] | None = None
    task_posterior: list[float] | None = None

    def save_adapters(
        self, out_dir: str | os.PathLike, info: dict[str, Any] | list[dict[str, Any]] | None = None
    ) -> list[Path]:
        """Write each generated adapter as a peft folder ``out_dir/sample-{i}`` (`igpg_hf.adapters.save_adapter`);
        ``info`` (one dict for all samples, or one per sample: instruction, accuracy, ...) goes into each folder's
        ``igpg_adapter.json``. ValueError if the call generated whole networks, not adapters."""
        if self.adapter is None:
            raise ValueError(
                "these samples are whole networks, not adapters: call the pipeline with adapter="
            )
        infos = info if isinstance(info, list) else [info or {}] * len(self.state_dicts)
        if len(infos) != len(self.state_dicts):
            raise ValueError(f"info has {len(infos)} entries for {len(self.state_dicts)} samples")
        out = []
        for i, (sd, extra) in enumerate(zip(self.state_dicts, infos, strict=True)):
            record = {**extra, "sample": i, "is_copy": self.is_copy[i] if self.is_copy is not None else None}
            out.append(save_adapter(Path(out_dir) / f"sample-{i}", sd, self.adapter, record))
        return out


class IGPGPipeline(DiffusionPipeline):
    """Instruction-guided parameter generation: text (+ architecture, + dataset samples) -> weights."""

    model_cpu_offload_seq = "text_encoder->prior->vqvae"

    def __init__(
        self,
        vqvae: IGPGVQVAEModel,
        prior: IGPGPriorModel,
        text_encoder: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
    ):
        super().__init__()
        self.register_modules(vqvae=vqvae, prior=prior, text_encoder=text_encoder, tokenizer=tokenizer)
        self.set_progress_bar_config(disable=None)  # tqdm: a bar on a terminal, quiet elsewhere

    # ------------------------------------------------------------------ devices
    _offload_device: torch.device | None = None

    def enable_model_cpu_offload(
        self, gpu_id: int | None = None, device: torch.device | str = "cuda"
    ) -> None:
        """Keep every component on the CPU and move each to ``device`` only for its stage of a call.

        Same contract as diffusers' model offload (one component on the GPU at a time), written here because
        diffusers' accelerate hooks move a component only when its ``forward`` runs, while the prior is also
        used through ``build_prefix``, ``embed_sequence`` and ``generate`` (on an H200 the hooks left the text
        encoder's mask and the prior's inputs on different devices). ``pipe.to(...)`` turns it off.
        """
        dev = torch.device(device)
        if gpu_id is not None:
            dev = torch.device(dev.type, gpu_id)
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(
                "enable_model_cpu_offload needs CUDA, which is not available; use the pipeline on the CPU"
            )
        super().to("cpu")
        self._offload_device = dev

    def to(self, *args, **kwargs):
        self._offload_device = None
        return super().to(*args, **kwargs)

    @contextlib.contextmanager
    def _stage(self, component: nn.Module):
        """Under model CPU offload: ``component`` on the execution device for the block, back on the CPU after.

        Re-entrant: inside an open stage of the same component nothing moves.
        """
        staged: set = self.__dict__.setdefault("_staged", set())
        if self._offload_device is None or id(component) in staged:
            yield
            return
        component.to(self._offload_device)
        staged.add(id(component))
        try:
            yield
        finally:
            staged.discard(id(component))
            component.to("cpu")
            if self._offload_device.type == "cuda":
                torch.cuda.empty_cache()

    # ------------------------------------------------------------------ inputs
    def adapter_specs(self, base: str | None = None, r: int | None = None) -> list[AdapterSpec]:
        """The adapter specs the prior was trained on (``prior.config.adapter_specs``), those of base identity
        ``base`` (a prefix such as ``"sha256:1a2b"`` is enough) and rank ``r`` if given."""
        specs = [AdapterSpec.from_dict(d) for d in (getattr(self.prior.config, "adapter_specs", None) or [])]
        return [
            s for s in specs if (base is None or s.base_model.startswith(base)) and (r is None or s.r == r)
        ]

    def resolve_adapter(self, adapter: AdapterSpec | str | os.PathLike, r: int | None = None) -> AdapterSpec:
        """An `AdapterSpec` from itself, an adapter folder, or a base (identity or base-model folder) the prior was
        trained on, with rank ``r`` when it saw several; ValueError naming what it could not resolve."""
        if isinstance(adapter, AdapterSpec):
            return adapter
        if isinstance(adapter, dict):
            return AdapterSpec.from_dict(adapter)
        if is_base_model_folder(adapter):
            adapter = base_model_identity(adapter)
        elif os.path.isdir(adapter):
            return AdapterSpec.from_pretrained(adapter)
        found = self.adapter_specs(str(adapter), r)
        if len(found) == 1:
            return found[0]
        known = [f"{s.base_model[:19]} r={s.r}" for s in self.adapter_specs()]
        raise ValueError(
            f"adapter {adapter!r}{f' with r={r}' if r else ''} matches {len(found)} of the adapter specs the prior "
            f"was trained on ({', '.join(known) or 'none'}): pass an adapter folder, an AdapterSpec, or a base "
            "identity and rank that name one"
        )

    @staticmethod
    def resolve_architecture(
        architecture: str | dict | ArchSpec | nn.Module, architecture_text: str | None = None
    ) -> tuple[WeightLayout, str, ArchSpec | None, nn.Module | None]:
        """-> (layout, description text, spec or None, template module or None)."""
        if isinstance(architecture, nn.Module):
            if not architecture_text:
                raise ValueError(
                    "an nn.Module architecture needs architecture_text= describing it "
                    "(e.g. 'cnn: conv channels [8, 6, 4], ...'); or pass an ArchSpec / preset name"
                )
            return WeightLayout.from_module(architecture), architecture_text, None, architecture
        if architecture is None:
            raise ValueError(
                "architecture is required: a preset name (e.g. 'tiny_cnn'), a spec dict or an ArchSpec"
            )
        spec = get_architecture(architecture)
        module = spec.build()
        return WeightLayout.from_module(module), architecture_text or spec.text(), spec, module

    def _labelled_samples(
        self, dataset: Any, what: str = "dataset"
    ) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(samples, labels) from a pair of tensors or a registered task name (as many samples per class as the
        prior's dataset condition was trained with: ``prior.config.support_per_class``)."""
        if dataset is None:
            return None
        if isinstance(dataset, str):
            from .zoo.tasks import sample_support_set

            per_class = (self.prior.config if self.prior is not None else IGPGPriorConfig).support_per_class
            dataset = sample_support_set(dataset, per_class=per_class, seed=0)
        if not (isinstance(dataset, (tuple, list)) and len(dataset) == 2):
            raise TypeError(f"{what} must be a (samples, labels) pair of tensors, or a registered task name")
        x, y = (torch.as_tensor(t) for t in dataset)
        if y.ndim != 1:
            raise ValueError(
                f"{what} labels must be one class index per sample, shape (S,), got {tuple(y.shape)} "
                "(one-hot labels: pass y.argmax(-1))"
            )
        if y.is_floating_point() and not bool(torch.equal(y, y.round())):
            raise ValueError(f"{what} labels must be whole class indices, got fractional values")
        if len(y) and int(y.min()) < 0:
            raise ValueError(f"{what} labels must be class indices 0, 1, ..., got {int(y.min())}")
        return x, y.long()

    def _text_cache_keys(self) -> tuple:
        dev = self._offload_device or self.text_encoder.device
        return (id(self.text_encoder), id(self.tokenizer), str(dev), self.text_encoder.dtype)

    def _text_cache_misses(self, texts: list[str], instructions: list[str]) -> bool:
        """Whether encoding ``texts`` (and the instructions' token states, if the prior pools them) runs the
        encoder."""
        cache = self.__dict__.get("_text_cache", {})
        owner = self._text_cache_keys()
        missing = any((owner, t) not in cache for t in texts)
        if getattr(self.prior, "text_pool", None) is not None:
            missing = missing or any((*owner, "states", i) not in cache for i in instructions)
        return missing

    def _text_states(self, instructions: list[str] | str) -> dict[str, torch.Tensor]:
        """The instructions' token states (R, L, E) and mask (R, L), padded together, if the prior pools them
        itself; else nothing.

        Cached with the text embeddings (`_text_embeddings`): a repeated instruction runs no encoder.
        """
        if getattr(self.prior, "text_pool", None) is None:
            return {}
        if isinstance(instructions, str):  # one instruction, not its characters
            instructions = [instructions]
        cache: OrderedDict = self.__dict__.setdefault("_text_cache", OrderedDict())
        owner = self._text_cache_keys()
        rows = []
        for instruction in instructions:
            key = (*owner, "states", instruction)
            if key not in cache:
                with self._stage(self.text_encoder):
                    states = encode_text_states([instruction], self.text_encoder, self.tokenizer)
                cache[key] = [x.cpu() for x in states]
            cache.move_to_end(key)
            rows += cache[key]
        while len(cache) > self._TEXT_CACHE_SIZE:
            cache.popitem(last=False)
        states, mask = pad_text_states(rows)
        return {"text_states": states, "text_mask": mask}

    def identify_task(
        self, instruction: str, architecture: Any = None, top_k: int = 3
    ) -> list[tuple[str, float]]:
        """The known tasks nearest to ``instruction``, best first, as (task, score).

        Score: the best cosine similarity over each task's known training wordings, measured through the prior's own
        text pooling when it has one (what the prior conditions on; on the general pipeline it names the right task
        for 0.87 of held-out wordings against 0.60 for the text encoder's mean embedding,
        `benchmarks/instruction_text.py`), else with the text encoder's mean embeddings (those of the
        out-of-distribution check); plus ``prior.config.identify_lexical_weight`` (3 in the general recipe, else 0) times
        the TF-IDF cosine of the
        instruction's words with the task's wordings (`igpg_hf.conditioning.lexical`: numbers and words such as
        "horizontal" that embeddings blur; 0.873 -> 0.915 of the general pipeline's held-out wordings). So the
        score is not bounded by 1; 0 weight gives the cosine alone. With
        ``architecture`` (anything ``__call__`` takes), only tasks with training checkpoints of that architecture
        compete, unless none has any: then every known task does, with an `OutOfDistributionWarning` saying so.
        Empty if the prior records no known tasks. ValueError for an empty instruction or ``top_k < 1``.
        """
        if not isinstance(instruction, str) or not instruction.strip():
            raise ValueError("instruction must be a non-empty string, e.g. 'Classify handwritten digits 0-9'")
        _check_count("top_k", top_k, 1)
        arch_text = self.resolve_architecture(architecture)[1] if architecture is not None else None
        known = self.known_tasks()
        if arch_text is not None and known and not any(arch_text in k.architectures for k in known.values()):
            warnings.warn(
                f"no known task was trained on the architecture {arch_text!r}: every known task is ranked "
                "(known architectures: pipe.known_architectures())",
                OutOfDistributionWarning,
                stacklevel=2,
            )
        return self._identify(instruction, arch_text, top_k)

    @torch.no_grad()
    def _identify(self, instruction: str, arch_text: str | None, top_k: int) -> list[tuple[str, float]]:
        known = self.known_tasks()
        if not known:
            return []
        rows = [(w, t) for t, k in known.items() for w in k.wordings]
        pool = getattr(self.prior, "text_pool", None)
        if pool is None:
            query = self._text_embeddings([instruction])
            keys = self.prior.known_text_embeds.float().cpu()
        else:
            cache = self.__dict__.setdefault("_known_pooled", {})
            owner = (id(self.prior), *self._text_cache_keys())
            if owner not in cache:
                cache.clear()
                with self._stage(self.text_encoder):
                    states = encode_text_states([w for w, _ in rows], self.text_encoder, self.tokenizer)
                with self._stage(self.prior):
                    cache[owner] = torch.cat(
                        [
                            _pooled(pool, *pad_text_states(states[i : i + 256]))
                            for i in range(0, len(states), 256)
                        ]
                    )
            keys = cache[owner]
            text = self._text_states([instruction])
            with self._stage(self.prior):
                query = _pooled(pool, text["text_states"], text["text_mask"])
        scores, names = task_similarity(query, keys, [t for _, t in rows])
        weight = self.prior.config.identify_lexical_weight
        if weight:
            lex_cache = self.__dict__.setdefault(
                "_lexical_index", {}
            )  # per prior, as the pooled wordings above
            if id(self.prior) not in lex_cache:
                lex_cache.clear()
                lex_cache[id(self.prior)] = LexicalTaskIndex({t: k.wordings for t, k in known.items()})
            lexical = lex_cache[id(self.prior)].similarity(instruction)
            scores = scores + weight * torch.tensor([[lexical.get(t, 0.0) for t in names]])
        allowed = set(names)
        if arch_text is not None:
            with_arch = {t for t in names if arch_text in known[t].architectures}
            allowed = with_arch or allowed
        ranked = sorted(
            ((t, float(scores[0, i])) for i, t in enumerate(names) if t in allowed), key=lambda p: -p[1]
        )
        return [(t, round(v, 4)) for t, v in ranked[:top_k]]

    def _dataset_condition(self, dataset: Any, batch: int) -> dict[str, torch.Tensor]:
        pair = self._labelled_samples(dataset)
        if pair is None:
            return {}
        x, y = pair
        feats = prepare_support_set(x, y, self.prior.config.dataset_feature_dim)
        return {
            "dataset_feats": feats.unsqueeze(0).expand(batch, -1, -1),
            "dataset_labels": y.long().unsqueeze(0).expand(batch, -1),
        }

    # ------------------------------------------------------------------ call
    _TEXT_CACHE_SIZE = 256

    def _text_embeddings(self, texts: list[str]) -> torch.Tensor:
        """(len(texts), E) float32 embeddings on the CPU; a text seen before reuses its embedding.

        Each text is encoded on its own (no padding to a batch partner), so a cached embedding is exactly what
        encoding it again would give; the cache is keyed by encoder and device, and keeps the last 256 texts.
        """
        cache: OrderedDict = self.__dict__.setdefault("_text_cache", OrderedDict())
        dev = self._offload_device or self.text_encoder.device
        owner = (id(self.text_encoder), id(self.tokenizer), str(dev), self.text_encoder.dtype)
        missing = [t for t in dict.fromkeys(texts) if (owner, t) not in cache]
        if missing:
            with self._stage(self.text_encoder):
                for text in missing:
                    cache[(owner, text)] = encode_text([text], self.text_encoder, self.tokenizer)[0].cpu()
        out = []
        for text in texts:
            cache.move_to_end((owner, text))
            out.append(cache[(owner, text)])
        while len(cache) > self._TEXT_CACHE_SIZE:
            cache.popitem(last=False)
        return torch.stack(out)

    @torch.no_grad()
    def __call__(
        self,
        instruction: str,
        architecture: str | dict | ArchSpec | nn.Module = "tiny_cnn",
        dataset: tuple[torch.Tensor, torch.Tensor] | str | None = None,
        num_samples: int = 1,
        seed: int | None = None,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        guidance_scale: float = 1.0,
        architecture_text: str | None = None,
        return_modules: bool = False,
        use_cache: bool = True,
        candidates_per_sample: int = 1,
        exclude_copies: bool = False,
        select_by: str = "likelihood",
        candidate_tasks: int = 0,
        match_known_task: bool = False,
        align_labels: bool = False,
        alignment_samples: tuple[torch.Tensor, torch.Tensor] | str | None = None,
        alignment_min_z: float = 2.0,
        adapter: AdapterSpec | str | None = None,
        generator: torch.Generator | list[torch.Generator] | None = None,
        num_threads: int | None = None,
        return_dict: bool = True,
    ) -> IGPGPipelineOutput | tuple:
        """Generate ``num_samples`` state dicts for ``architecture`` following ``instruction``.

        Randomness, diffusers' way: ``generator`` is one ``torch.Generator`` for the whole batch, or a list with
        one per sample, so that a sample does not depend on the batch (sample 0 of ``num_samples=3`` with
        ``[g0, g1, g2]`` is the sample of ``num_samples=1`` with ``[g0]``). ``seed=s`` is a shortcut for the
        generators ``s, s + 1, ...`` (sample i of ``num_samples=n, seed=s`` equals ``num_samples=1,
        seed=s + i``). Neither: torch's global generator.

        ``candidates_per_sample=k`` draws ``k * num_samples`` sequences (sample i's k candidates from its
        generator) and keeps the ``num_samples`` the prior finds most likely (mean log-probability per token; no
        labels or data are used). With ``exclude_copies=True`` sequences that repeat a training checkpoint token
        for token are ranked last, so the result holds new weights whenever enough candidates are new (a warning
        says when not). Kept samples stay in the order they were drawn.

        ``select_by="support_accuracy"`` keeps instead the candidates with the highest accuracy on the labelled
        ``dataset`` samples (ties: those drawn under the instruction itself, then likelihood; best first;
        `igpg_hf.candidate_selection`), and
        ``candidate_tasks=m`` also draws ``k * num_samples`` candidates under the canonical instruction of each of
        the ``m`` known tasks nearest to ``instruction`` (`identify_task`, among tasks trained on this
        architecture): a misread instruction's net of the wrong task loses to the right task's on the user's own
        data. Every instruction draws its candidates twice, with the samples as condition and without (the prior
        is trained with condition dropout; on the general pipeline some tasks' nets come only from one of the two). Here sample i of the batch is not that of ``num_samples=1`` (the
        candidates compete across samples); ``generator`` lists need one generator per candidate.
        ``out.support_accuracy`` gives each kept sample's accuracy (%) on the samples. Those samples are the
        caller's training data: report test accuracy on other data.

        ``select_by="task_posterior"`` (no labels needed) draws ``k * num_samples`` candidates under the
        instruction, scores each under it and under the canonical instructions of the ``candidate_tasks=m`` known
        tasks nearest to it after the first (`identify_task`; m >= 1), and keeps first the candidates the prior
        attributes to the instruction's task (posterior of the instruction among the m + 1 at least 1/2, uniform
        prior over them; `igpg_hf.candidate_selection.condition_posterior`), the most likely of those first, then
        the rest by likelihood. A memorized net of a neighbouring task that the prior produced for this
        instruction too loses to one of this task. (Ranking by the posterior alone favours atypical samples: any
        sample is likelier under the condition it was drawn from, so on the general pipeline it kept broken
        non-copies and lost 0.14 of the canonical share; `benchmarks/results/instructions_general/`.)
        The rivals also include the instruction under every known architecture of the same weight layout
        (`sibling_architectures`: the same net with another activation), so a memorized net of the instruction's
        task on a sibling architecture, which loads without error, loses too (the general pipeline's canonical
        mnist_rot90 on its relu CNN kept the tanh CNN's net: 39.5 % instead of 88.8 %).
        ``out.task_posterior`` gives the kept samples' posteriors. Fewer rivals are used when fewer known tasks
        share the architecture (ValueError when none does). As with support-accuracy selection, the candidates
        compete across samples, and ``generator`` lists need one generator per candidate.

        ``guidance_scale=s``: classifier-free guidance on the instruction (`igpg_hf.sampling.SamplingConfig`):
        logits ``u + s * (c - u)`` against the prior's null instruction; 1 (default) is plain sampling. It doubles
        the decode batch.

        ``match_known_task=True`` conditions the prior on the canonical instruction of the known task nearest to
        ``instruction`` (`identify_task`) instead of on the instruction itself: a prior that has memorized its
        training wordings answers them exactly, and a new wording of a known task is mapped onto them. The
        out-of-distribution check still judges the instruction as given. ``out.conditioning_instructions`` says
        which instruction each sample was drawn under.

        ``align_labels=True`` reorders each sample's output units (rows of the last ``nn.Linear``) to fit
        labelled samples: ``alignment_samples`` (a (samples, labels) pair or a task name), else the
        ``dataset`` samples. A reorder is kept only when, cross-fitted on halves of the samples, McNemar's z
        reaches ``alignment_min_z``; see
        `igpg_hf.label_alignment`. It fixes heads whose classes are in another order than the task's
        (label-permuted tasks the prior never saw); it cannot fix features.

        ``adapter``: generate adapters of a base model instead of whole networks (``architecture`` is not used):
        an `AdapterSpec`, an adapter folder whose spec to follow, or the base's identity (``"sha256:..."``, one of
        ``self.adapter_specs()``). ``out.adapter`` is the spec and ``out.save_adapters(dir)`` writes peft
        folders; load one with ``PeftModel.from_pretrained(base, folder)`` or `igpg_hf.adapters.load_adapter`.

        ``num_threads``: torch intra-op threads for the whole call (text encoding, sampling, decoding), restored
        after; default `igpg_hf.sampling.generation_num_threads` (``$IGPG_NUM_THREADS``, else one thread when a
        decode step is small, as for every preset prior at one sample: such calls are bound by per-op overhead, and
        more threads made them several times slower beside another busy process).

        Progress over decode steps goes through ``self.progress_bar`` (quiet off a terminal; see diffusers'
        ``set_progress_bar_config``). Returns an `IGPGPipelineOutput`, or with ``return_dict=False`` the tuple
        of its fields in order (``[0]`` the state dicts; absent fields are None, so the length never changes).
        """
        t0 = time.perf_counter()
        # 1. check inputs
        if not isinstance(instruction, str) or not instruction.strip():
            raise ValueError("instruction must be a non-empty string, e.g. 'Classify handwritten digits 0-9'")
        for name, value, least in (
            ("num_samples", num_samples, 1),
            ("candidates_per_sample", candidates_per_sample, 1),
            ("candidate_tasks", candidate_tasks, 0),
        ):
            _check_count(name, value, least)
        if isinstance(guidance_scale, bool) or not isinstance(guidance_scale, (int, float)):
            raise TypeError(f"guidance_scale must be a number (1: no guidance), got {guidance_scale!r}")
        align_xy = (
            self._labelled_samples(
                alignment_samples if alignment_samples is not None else dataset, "alignment_samples"
            )
            if align_labels
            else None
        )
        if align_labels and align_xy is None:
            raise ValueError(
                "align_labels=True needs labelled samples: pass dataset= or alignment_samples= "
                "(a (samples, labels) pair or a registered task name)"
            )
        if select_by not in ("likelihood", "support_accuracy", "task_posterior"):
            raise ValueError(
                f"select_by must be 'likelihood', 'support_accuracy' or 'task_posterior', got {select_by!r}"
            )
        if candidate_tasks and select_by == "likelihood":
            raise ValueError(
                "candidate_tasks names other known tasks, which the prior's likelihood alone cannot compare: pass "
                "select_by='support_accuracy' (with labelled dataset= samples) or select_by='task_posterior'"
            )
        posterior = select_by == "task_posterior"
        if posterior and candidate_tasks < 1:
            raise ValueError(
                "select_by='task_posterior' weighs the instruction against the candidate_tasks nearest other "
                "known tasks: pass candidate_tasks=1 or more (3 is a good start)"
            )
        support_xy = self._labelled_samples(dataset) if select_by == "support_accuracy" else None
        if select_by == "support_accuracy" and support_xy is None:
            raise ValueError(
                "select_by='support_accuracy' scores candidates on labelled samples: pass dataset= (a (samples, "
                "labels) pair or a registered task name)"
            )
        for name in ("vqvae", "prior", "text_encoder", "tokenizer"):
            if getattr(self, name, None) is None:
                raise ValueError(f"pipeline component {name!r} is missing; load a complete pipeline folder")
        # 2. resolve the architecture (or the adapter) into the exact layout to produce
        adapter_spec = self.resolve_adapter(adapter) if adapter is not None else None
        target = None
        if adapter_spec is not None:
            if align_labels or return_modules or support_xy is not None:
                raise ValueError(
                    "align_labels, return_modules and select_by='support_accuracy' need a whole network; with "
                    "adapter= load each sample "
                    "into the base with igpg_hf.adapters.load_adapter(base, state_dict, out.adapter)"
                )
            layout, arch_text, spec, template = (
                adapter_spec.layout,
                architecture_text or adapter_spec.text(),
                None,
                None,
            )
        else:
            target, arch_text, spec, template = self.resolve_architecture(architecture, architecture_text)
            # decode in the order the models were trained on (entries matched by name; issue 12)
            layout = match_layout(
                target, self.prior.config.trained_layouts, self.vqvae.config.trained_layouts
            )
        self.vqvae.check_layout(layout)
        n_tokens = self.vqvae.num_tokens(layout)
        # 2b. the instructions to condition on: the given one (or its nearest known task's), then other known tasks'
        # rivals: other tasks' instructions to weigh samples against; arch_rivals: known architectures of the same
        # layout (another activation), under which the instruction's candidates are weighed too
        conditioning, rivals, arch_rivals = [instruction], [], []
        if match_known_task or candidate_tasks:
            known = self.known_tasks()
            ranked = [t for t, _ in self._identify(instruction, arch_text, candidate_tasks + 1)]
            if not ranked:
                raise ValueError(
                    "match_known_task, candidate_tasks and task_posterior need a prior that records its known "
                    "tasks (priors trained by igpg_hf >= 0.3 do)"
                )
            overall = self._identify(instruction, None, 1)[0][0]
            if overall != ranked[0]:
                warnings.warn(
                    f"the known task nearest to the instruction, {overall!r}, was not trained on this architecture; "
                    f"{ranked[0]!r} is the nearest that was (see pipe.known_tasks()[task].architectures)",
                    OutOfDistributionWarning,
                    stacklevel=2,
                )
            if match_known_task:
                conditioning = [known[ranked[0]].instruction]
            # the instruction stands for its nearest task; the posterior weighs it against the next ones
            others = ranked[1:] if posterior else ranked
            extra = [known[t].instruction for t in others if known[t].instruction not in conditioning]
            if posterior:
                rivals = extra[:candidate_tasks]
                arch_rivals = self._sibling_texts(arch_text) if adapter_spec is None else []
                if not rivals and not arch_rivals:
                    trained = sorted(t for t, k in known.items() if arch_text in k.architectures)
                    raise ValueError(
                        "select_by='task_posterior' weighs the instruction against other known tasks trained on the "
                        f"same architecture, and only {trained or list(ranked[:1])} was trained on {arch_text!r}: "
                        "use select_by='likelihood' (or 'support_accuracy' with labelled samples) here"
                    )
            else:
                conditioning += extra[:candidate_tasks]
        if (
            support_xy is not None
        ):  # each instruction with and without the samples as condition (condition dropout)
            conditioning = conditioning * 2
        rows = len(conditioning)
        pooled = support_xy is not None or posterior  # candidates kept here, not in the sampler
        per_row = num_samples * candidates_per_sample if pooled else num_samples
        n_draw = rows * num_samples * candidates_per_sample
        if num_threads is None:
            num_threads = generation_num_threads(self.prior.decode_step_flops(n_draw))
        elif num_threads < 1:
            raise ValueError(f"num_threads must be a positive integer, got {num_threads!r}")
        with torch_threads(num_threads):
            # 3. encode the conditions (one row per conditioning instruction, expanded over samples by the sampler)
            texts = [instruction, *conditioning, *rivals, arch_text, *arch_rivals]
            new_text = self._text_cache_misses(texts, conditioning)
            n_all, n_arch = rows + len(rivals), len(arch_rivals)
            with (
                self._stage(self.text_encoder) if new_text else contextlib.nullcontext()
            ):  # one stage for both
                emb = self._text_embeddings(texts)  # (rows + rivals + 2 + arch rivals, E)
                # token states, for priors that pool them; the sibling architectures' rows take the instruction
                text = self._text_states(conditioning + rivals + conditioning[:1] * n_arch)
            cond_all = IGPGConditions(
                text_embeds=torch.cat([emb[1 : 1 + n_all], emb[1:2].expand(n_arch, -1)]),
                arch_embeds=torch.cat([emb[1 + n_all : 2 + n_all].expand(n_all, -1), emb[2 + n_all :]]),
                **text,
                **self._dataset_condition(dataset, n_all + n_arch),
            )
            n_all += n_arch
            cond = cond_all.rows(slice(0, rows)) if n_all > rows else cond_all
            if support_xy is not None:
                cond.drop["dataset"] = torch.arange(rows) >= rows // 2
            # 3b. say how close the instruction and architecture are to what the prior knows (warns when far)
            report = check_conditions(
                self.prior, instruction, emb[0], arch_text, stacklevel=4
            )  # under no_grad
            # 4. sample weight tokens (block by block past the context) and keep the best candidates
            positions = None
            if self.prior.uses_structure:  # the place of every token, from the layout, as at training
                pc, vc = self.prior.config, self.vqvae.config
                if (pc.chunk_size, pc.chunk_mode) != (vc.chunk_size, vc.chunk_mode):
                    raise ValueError(
                        f"the prior's chunking (chunk_size={pc.chunk_size}, chunk_mode={pc.chunk_mode!r}) differs "
                        f"from the VQ-VAE's ({vc.chunk_size}, {vc.chunk_mode!r}): they were not trained together"
                    )
                positions = self.prior.weight_positions(layout)
            with self._stage(self.prior), self.progress_bar(total=n_tokens) as bar:
                sampled = sample_weight_tokens(
                    self.prior,
                    cond,
                    n_tokens,
                    per_row,
                    SamplingConfig(
                        temperature=temperature, top_k=top_k, top_p=top_p, guidance_scale=guidance_scale
                    ),
                    seed,
                    use_cache,
                    positions,
                    generator=generator,
                    candidates_per_sample=1 if pooled else candidates_per_sample,
                    exclude_copies=exclude_copies and not pooled,
                    progress=bar.update,
                )
                if posterior:  # every candidate under its instruction (column 0) and the rivals'
                    K, C = len(sampled.tokens), n_all
                    ll = score_weight_tokens(
                        self.prior,
                        cond_all.repeat_interleave(K),
                        sampled.tokens.repeat(C, 1),
                        positions,
                    )
                    post = condition_posterior(ll.view(C, K).T)
            tokens, log_likelihood, is_copy = (
                sampled.tokens,
                sampled.log_likelihood.cpu().tolist(),
                sampled.is_copy,
            )
            # 5. decode tokens -> chunks -> vectors -> state dicts (non-float buffers from a fresh module)
            fill = template.state_dict() if template is not None else None
            with self._stage(self.vqvae):
                state_dicts = self.vqvae.decode_batch(tokens.to(self.vqvae.device), layout, fill=fill)
            if target is not None:
                state_dicts = [target.arrange(sd) for sd in state_dicts]  # keyed in the module's order
            drawn_under = [conditioning[i // per_row] for i in range(len(state_dicts))]
            build = (
                spec.build if spec is not None else (lambda: copy.deepcopy(template))
            )  # a fresh target module
            # 5b. keep the candidates that do best on the labelled samples, or that the prior ties to the task
            scores = kept_posterior = None
            if pooled:
                if posterior:  # those the prior attributes to the instruction's task, then the most likely
                    ranking = [float(p >= 0.5) for p in post.tolist()]
                else:
                    ranking = support_accuracy(build, state_dicts, *support_xy)
                # ties on the samples: candidates drawn under the instruction (or its nearest known task) first
                own = [d == conditioning[0] for d in drawn_under]
                keep = rank_candidates(ranking, log_likelihood, is_copy, exclude_copies, own)[:num_samples]
                if exclude_copies and is_copy is not None:
                    warn_kept_copies(is_copy, keep)
                state_dicts, tokens = [state_dicts[i] for i in keep], tokens[keep]
                log_likelihood = [log_likelihood[i] for i in keep]
                if posterior:
                    kept_posterior = [float(post[i]) for i in keep]
                else:
                    scores = [ranking[i] for i in keep]
                drawn_under = [drawn_under[i] for i in keep]
                is_copy = [is_copy[i] for i in keep] if is_copy is not None else None
            # 6. optionally reorder each sample's output units to the labelled samples
            alignments = None
            if align_labels:
                scratch = build()
                aligned = [
                    align_labels_fn(scratch, sd, *align_xy, min_z=alignment_min_z) for sd in state_dicts
                ]
                state_dicts, alignments = [a[0] for a in aligned], [a[1] for a in aligned]
            # 7. optionally instantiate the modules
            modules = None
            if return_modules:
                modules = []
                for sd in state_dicts:
                    m = build()
                    m.load_state_dict(sd, strict=True)
                    modules.append(m.eval())
        output = IGPGPipelineOutput(
            state_dicts,
            modules,
            tokens.cpu(),
            time.perf_counter() - t0,
            log_likelihood=log_likelihood,
            is_copy=is_copy,
            num_candidates=sampled.num_candidates,
            candidate_copies=sampled.candidate_copies,
            label_alignments=alignments,
            conditions=report,
            adapter=adapter_spec,
            support_accuracy=scores,
            conditioning_instructions=drawn_under,
            task_posterior=kept_posterior,
        )
        if not return_dict:
            return tuple(getattr(output, f.name) for f in fields(output))
        return output

    # ------------------------------------------------------------------ what the prior knows
    def known_tasks(self) -> dict[str, KnownTask]:
        """The tasks the prior was trained on: canonical instruction, sample wordings, architectures (by name)."""
        return known_tasks(self.prior.config)

    def known_architectures(self) -> list[str]:
        """The architecture descriptions the prior has training checkpoints of."""
        return list(self.prior.config.known_architectures or [])

    def sibling_architectures(self, architecture: str | dict | ArchSpec) -> list[str]:
        """Known architectures (`known_architectures`) other than ``architecture`` with exactly its weight layout,
        e.g. the same CNN with another activation: weights of one load into the other without error, and only the
        prior's architecture condition tells them apart. Empty when ``architecture`` is not itself a known one
        (the prior has no sequences of it to prefer). Descriptions that are not `ArchSpec.text()` are skipped.
        """
        return self._sibling_texts(self.resolve_architecture(architecture)[1])

    def _sibling_texts(self, arch_text: str) -> list[str]:
        """`sibling_architectures` of a description (one that is not `ArchSpec.text()`, e.g. a module's own, has
        none)."""
        known = self.known_architectures()
        if arch_text not in known:
            return []
        cache = self.__dict__.setdefault("_layout_cache", {})

        def layout_of(text: str) -> list | None:
            if text not in cache:
                try:
                    cache[text] = WeightLayout.from_module(ArchSpec.from_text(text).build()).to_list()
                except ValueError:
                    cache[text] = None
            return cache[text]

        own = layout_of(arch_text)
        return [t for t in known if t != arch_text and own is not None and layout_of(t) == own]

    def check_instruction(self, instruction: str, architecture: Any = None) -> ConditionReport:
        """How close ``instruction`` (and optionally an architecture) is to what the prior knows, without
        generating; warns like a call would (`OutOfDistributionWarning`)."""
        arch_text = self.resolve_architecture(architecture)[1] if architecture is not None else None
        with self._stage(self.text_encoder):
            emb = encode_text([instruction], self.text_encoder, self.tokenizer)
        report = check_conditions(self.prior, instruction, emb[0], arch_text)
        return report

    # ------------------------------------------------------------------ loading, saving, the Hub
    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, **kwargs) -> IGPGPipeline:
        """diffusers' load; a local folder is first checked against the checksums written when it was saved."""
        if os.path.isdir(pretrained_model_name_or_path):  # IntegrityError naming each damaged file (issue 12)
            verify_checksums(pretrained_model_name_or_path)
        try:
            return super().from_pretrained(pretrained_model_name_or_path, **kwargs)
        except (
            RuntimeError,
            SafetensorError,
            UnicodeDecodeError,
            json.JSONDecodeError,
        ) as e:  # name no folder
            lines = str(e).strip().splitlines()
            more = f" (+{len(lines) - 3} lines)" if len(lines) > 3 else ""
            raise ValueError(
                f"cannot load the pipeline {pretrained_model_name_or_path}: "
                + " ".join(lines[:3])[:500]
                + more
            ) from None

    @classmethod
    def download(cls, pretrained_model_name: str, **kwargs) -> str:
        """A local copy of a pipeline repo on the Hub (all files), for ``from_pretrained("user/repo")``.

        diffusers' own ``download`` refuses, before downloading anything, components whose library it does not
        know (``["igpg_hf", "IGPGPriorModel"]``); the repo is fetched whole with ``snapshot_download`` instead,
        then loaded exactly as a local folder. Honours ``revision``, ``cache_dir``, ``token``, ``force_download``
        and ``local_files_only``; FileNotFoundError if no such repo (or revision) can be reached.
        """
        return snapshot(
            pretrained_model_name,
            revision=kwargs.get("revision"),
            cache_dir=kwargs.get("cache_dir"),
            token=kwargs.get("token"),
            force_download=bool(kwargs.get("force_download")),
            local_files_only=bool(kwargs.get("local_files_only")),
        )

    def save_pretrained(
        self,
        save_directory: str | os.PathLike,
        push_to_hub: bool = False,
        *,
        repo_id: str | None = None,
        commit_message: str | None = None,
        private: bool | None = None,
        token: str | bool | None = None,
        create_pr: bool = False,
        revision: str | None = None,
        **kwargs,
    ):
        """diffusers' save (model_index.json + one folder per component) plus the project's card (README.md).

        ``push_to_hub=True`` then uploads the folder to ``repo_id`` (default: the folder's name, in your
        namespace) exactly as `push_to_hub` does; returns the commit in that case.
        """
        with component_cards_disabled():  # one card, the pipeline's, not one per component folder
            super().save_pretrained(save_directory, push_to_hub=False, **kwargs)
        write_card(pipeline_card(self), save_directory)
        write_checksums(save_directory)  # verified by from_pretrained for a local folder
        if push_to_hub:
            return push_folder(
                save_directory,
                repo_id or Path(save_directory).resolve().name,
                private=private,
                token=token,
                revision=revision,
                create_pr=create_pr,
                commit_message=commit_message or "Upload IGPG pipeline",
            )
        return None

    def push_to_hub(
        self,
        repo_id: str,
        commit_message: str | None = None,
        private: bool | None = None,
        token: str | bool | None = None,
        create_pr: bool = False,
        safe_serialization: bool = True,
        variant: str | None = None,
        revision: str | None = None,
    ):
        """Save the pipeline (components, model_index.json, the project's card) and upload it to ``repo_id``.

        ``repo_id`` without a namespace goes to yours; returns the commit (a str: its URL; ``.repo_url.repo_id``
        is the namespaced id). Load it back with ``IGPGPipeline.from_pretrained(repo_id)``.
        """
        with tempfile.TemporaryDirectory() as tmp:
            self.save_pretrained(tmp, safe_serialization=safe_serialization, variant=variant)
            return push_folder(
                tmp,
                repo_id,
                private=private,
                token=token,
                revision=revision,
                create_pr=create_pr,
                commit_message=commit_message or "Upload IGPG pipeline",
            )
