"""IGPGPipeline: an instruction (+ architecture, + a few data samples) -> loadable state dicts.

    pipe = IGPGPipeline.from_pretrained("path/or/repo")
    out = pipe("Classify handwritten digits", architecture="tiny_cnn", num_samples=5, seed=0)
    model.load_state_dict(out.state_dicts[0], strict=True)

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
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from diffusers import DiffusionPipeline
from diffusers.utils import BaseOutput
from torch import nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from .conditioning import encode_text, encode_text_states, pad_text_states, prepare_support_set
from .conditioning.coverage import (
    ConditionReport,
    KnownTask,
    check_conditions,
    known_conditions_markdown,
    known_tasks,
)
from .configuration_igpg import IGPGPriorConfig
from .label_alignment import LabelAlignment
from .label_alignment import align_labels as align_labels_fn
from .modeling_prior import IGPGConditions, IGPGPriorModel
from .modeling_vqvae import IGPGVQVAEModel
from .sampling import SamplingConfig, sample_weight_tokens, sequence_hash
from .weights import WeightLayout
from .zoo.architectures import ArchSpec, get_architecture

logger = logging.getLogger(__name__)

__all__ = ["IGPGPipeline", "IGPGPipelineOutput"]

CARD_TEMPLATE = Path(__file__).resolve().parent.parent / "hub_cards" / "model_card.md"


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
    similarity, the out-of-distribution flag, whether the architecture is known; `ConditionReport`)."""

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
        """Under model CPU offload: ``component`` on the execution device for the block, back on the CPU after."""
        if self._offload_device is None:
            yield
            return
        component.to(self._offload_device)
        try:
            yield
        finally:
            component.to("cpu")
            if self._offload_device.type == "cuda":
                torch.cuda.empty_cache()

    # ------------------------------------------------------------------ inputs
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
        return x, y.long()

    def _text_states(self, instruction: str) -> dict[str, torch.Tensor]:
        """The instruction's token states (1, L, E) and mask, if the prior pools them itself; else nothing."""
        if getattr(self.prior, "text_pool", None) is None:
            return {}
        states, mask = pad_text_states(encode_text_states([instruction], self.text_encoder, self.tokenizer))
        return {"text_states": states, "text_mask": mask}

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
        architecture_text: str | None = None,
        return_modules: bool = False,
        use_cache: bool = True,
        candidates_per_sample: int = 1,
        exclude_copies: bool = False,
        align_labels: bool = False,
        alignment_samples: tuple[torch.Tensor, torch.Tensor] | str | None = None,
        alignment_min_z: float = 2.0,
    ) -> IGPGPipelineOutput:
        """Generate ``num_samples`` state dicts for ``architecture`` following ``instruction``.

        ``candidates_per_sample=k`` draws ``k * num_samples`` sequences and keeps the ``num_samples`` the
        prior finds most likely (mean log-probability per token; no labels or data are used). With
        ``exclude_copies=True`` sequences that repeat a training checkpoint token for token are ranked
        last, so the result holds new weights whenever enough candidates are new (a warning says when
        not). Kept samples stay in the order they were drawn.

        ``align_labels=True`` reorders each sample's output units (rows of the last ``nn.Linear``) to fit
        labelled samples: ``alignment_samples`` (a (samples, labels) pair or a task name), else the
        ``dataset`` samples. A reorder is kept only when, cross-fitted on halves of the samples, McNemar's z
        reaches ``alignment_min_z``; see
        `igpg_hf.label_alignment`. It fixes heads whose classes are in another order than the task's
        (label-permuted tasks the prior never saw); it cannot fix features.
        """
        t0 = time.perf_counter()
        # 1. check inputs
        if not isinstance(instruction, str) or not instruction.strip():
            raise ValueError("instruction must be a non-empty string, e.g. 'Classify handwritten digits 0-9'")
        if num_samples < 1:
            raise ValueError(f"num_samples must be at least 1, got {num_samples}")
        if candidates_per_sample < 1:
            raise ValueError(f"candidates_per_sample must be at least 1, got {candidates_per_sample}")
        known = (
            getattr(self.prior.config, "training_sequence_hashes", None) if self.prior is not None else None
        )
        if exclude_copies and not known:
            raise ValueError(
                "exclude_copies=True needs a prior that stores its training-sequence fingerprints "
                "(priors trained by igpg_hf >= 0.2 do); retrain the prior or pass exclude_copies=False"
            )
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
        for name in ("vqvae", "prior", "text_encoder", "tokenizer"):
            if getattr(self, name, None) is None:
                raise ValueError(f"pipeline component {name!r} is missing; load a complete pipeline folder")
        # 2. resolve the architecture into the exact layout to produce
        layout, arch_text, spec, template = self.resolve_architecture(architecture, architecture_text)
        self.vqvae.check_layout(layout)
        n_tokens = self.vqvae.num_tokens(layout)
        # 3. encode the conditions (one row, expanded over samples by the sampler)
        with self._stage(self.text_encoder):
            emb = encode_text([instruction, arch_text], self.text_encoder, self.tokenizer)  # (2, E)
            text = self._text_states(instruction)
        cond = IGPGConditions(
            text_embeds=emb[:1], arch_embeds=emb[1:], **text, **self._dataset_condition(dataset, 1)
        )
        # 3b. say how close the instruction and architecture are to what the prior knows (warns when far)
        report = check_conditions(self.prior, instruction, emb[0], arch_text, stacklevel=4)  # under no_grad
        # 4. sample weight tokens autoregressively (block by block past the context)
        sampling = SamplingConfig(temperature=temperature, top_k=top_k, top_p=top_p)
        n_draw = num_samples * candidates_per_sample
        with self._stage(self.prior):
            tokens, loglik = sample_weight_tokens(
                self.prior,
                cond,
                n_tokens,
                n_draw,
                sampling,
                seed=seed,
                use_cache=use_cache,
                return_log_likelihood=True,
            )
        known_set = set(known or ())
        copy_flags = [sequence_hash(t) in known_set for t in tokens] if known else None
        if n_draw > num_samples:  # keep the most likely (new ones first if asked), in drawing order
            rank = sorted(range(n_draw), key=lambda i: (exclude_copies and copy_flags[i], -float(loglik[i])))
            keep = sorted(rank[:num_samples])
        else:
            keep = list(range(n_draw))
        if exclude_copies and any(copy_flags[i] for i in keep):
            logger.warning(
                "only %d of %d candidates are new (not copies of a training checkpoint), so %d returned "
                "samples are copies: raise candidates_per_sample",
                n_draw - sum(copy_flags),
                n_draw,
                sum(copy_flags[i] for i in keep),
            )
        candidate_copies = sum(copy_flags) if copy_flags is not None else None
        tokens, loglik = tokens[keep], loglik[keep]
        copy_flags = [copy_flags[i] for i in keep] if copy_flags is not None else None
        # 5. decode tokens -> chunks -> vectors -> state dicts (non-float buffers from a fresh module)
        fill = template.state_dict() if template is not None else None
        with self._stage(self.vqvae):
            state_dicts = self.vqvae.decode_batch(tokens.to(self.vqvae.device), layout, fill=fill)
        # 6. optionally reorder each sample's output units to the labelled samples
        alignments = None
        if align_labels:
            scratch = spec.build() if spec is not None else copy.deepcopy(template)
            aligned = [align_labels_fn(scratch, sd, *align_xy, min_z=alignment_min_z) for sd in state_dicts]
            state_dicts, alignments = [a[0] for a in aligned], [a[1] for a in aligned]
        # 7. optionally instantiate the modules
        modules = None
        if return_modules:
            modules = []
            for sd in state_dicts:
                m = spec.build() if spec is not None else copy.deepcopy(template)
                m.load_state_dict(sd, strict=True)
                modules.append(m.eval())
        return IGPGPipelineOutput(
            state_dicts,
            modules,
            tokens.cpu(),
            time.perf_counter() - t0,
            log_likelihood=loglik.cpu().tolist(),
            is_copy=copy_flags,
            num_candidates=n_draw,
            candidate_copies=candidate_copies,
            label_alignments=alignments,
            conditions=report,
        )

    # ------------------------------------------------------------------ what the prior knows
    def known_tasks(self) -> dict[str, KnownTask]:
        """The tasks the prior was trained on: canonical instruction, sample wordings, architectures (by name)."""
        return known_tasks(self.prior.config)

    def known_architectures(self) -> list[str]:
        """The architecture descriptions the prior has training checkpoints of."""
        return list(self.prior.config.known_architectures or [])

    def check_instruction(self, instruction: str, architecture: Any = None) -> ConditionReport:
        """How close ``instruction`` (and optionally an architecture) is to what the prior knows, without
        generating; warns like a call would (`OutOfDistributionWarning`)."""
        arch_text = self.resolve_architecture(architecture)[1] if architecture is not None else None
        with self._stage(self.text_encoder):
            emb = encode_text([instruction], self.text_encoder, self.tokenizer)
        report = check_conditions(self.prior, instruction, emb[0], arch_text)
        return report

    # ------------------------------------------------------------------ saving
    def save_pretrained(self, save_directory: str | os.PathLike, push_to_hub: bool = False, **kwargs) -> None:
        """diffusers' save (model_index.json + one folder per component) plus a model card README.md."""
        repo_id = kwargs.pop("repo_id", None)
        token, private = kwargs.pop("token", None), kwargs.pop("private", None)
        commit_message = kwargs.pop("commit_message", "Upload IGPG pipeline")
        super().save_pretrained(save_directory, push_to_hub=False, **kwargs)
        write_model_card(save_directory, self)
        if push_to_hub:
            from huggingface_hub import HfApi

            api = HfApi(token=token)
            repo_id = repo_id or Path(save_directory).name
            api.create_repo(repo_id, exist_ok=True, private=private)
            api.upload_folder(repo_id=repo_id, folder_path=str(save_directory), commit_message=commit_message)


def write_model_card(save_directory: str | os.PathLike, pipe: IGPGPipeline) -> Path:
    """Fill hub_cards/model_card.md with the components' settings and the recorded training summary."""
    summary = dict(getattr(pipe.prior.config, "training_summary", None) or {})
    vq, pr = pipe.vqvae.config, pipe.prior.config
    values = {
        "prior_params": f"{sum(p.numel() for p in pipe.prior.parameters()) / 1e6:.2f} M",
        "prior_layers": pr.n_layer,
        "prior_width": pr.n_embd,
        "prior_context": pr.n_positions,
        "vqvae_params": f"{sum(p.numel() for p in pipe.vqvae.parameters()) / 1e6:.2f} M",
        "chunk_size": vq.chunk_size,
        "tokens_per_chunk": vq.tokens_per_chunk,
        "codebook_size": vq.vocab_size,
        "quantizer": vq.quantizer,
        "normalization": vq.normalization,
        "text_encoder": pr.text_encoder_name or type(pipe.text_encoder).__name__,
        "corpus": summary.get("corpus", "unknown"),
        "training_summary": json.dumps(summary, indent=2, default=str),
        "known_conditions": known_conditions_markdown(pr),
    }
    text = CARD_TEMPLATE.read_text() if CARD_TEMPLATE.exists() else "# IGPG pipeline\n\n{training_summary}\n"
    for k, v in values.items():
        text = text.replace("{" + k + "}", str(v))
    path = Path(save_directory) / "README.md"
    tmp = path.with_suffix(".md.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
    return path
