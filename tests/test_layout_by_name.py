"""Issue 12: layouts are matched by name, never by position.

Checkpoints ingested from ``.safetensors`` without an architecture spec keep the file's key order (sorted), and
the pipeline used to decode in the module's order: same token count, a strict load that succeeds, and weights
as far from the copied checkpoint as a fresh init. Keys with DDP's ``module.`` prefix used to miss their
per-layer normalization statistics.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import datasets
import pytest
import torch
from safetensors.torch import save_file

import igpg_hf.pipeline_igpg as pipeline_module
from igpg_hf import (
    IGPGPipeline,
    IGPGPriorConfig,
    IGPGPriorModel,
    IGPGVQVAEConfig,
    IGPGVQVAEModel,
    WeightLayout,
)
from igpg_hf.corpus import ingest_folder
from igpg_hf.weights import match_layout
from igpg_hf.zoo.architectures import get_architecture

sys.path.insert(0, str(Path(__file__).parent))
from _tiny_text import tiny_text_encoder  # noqa: E402

TINY = get_architecture("tiny_cnn")


@pytest.fixture(autouse=True)
def _datasets_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setattr(
        datasets.config, "HF_DATASETS_CACHE", str(tmp_path_factory.getbasetemp() / "hf_cache")
    )


@pytest.fixture(scope="module")
def safetensors_corpus(tmp_path_factory):
    """Three tiny CNNs ingested from .safetensors files, keys with DDP's prefix, no arch_spec."""
    src = tmp_path_factory.mktemp("src")
    meta = {}
    for i in range(3):
        torch.manual_seed(i)
        sd = {f"module.{k}": v for k, v in TINY.build().state_dict().items()}
        save_file(sd, str(src / f"m{i}.safetensors"))
        meta[f"m{i}.safetensors"] = {"task": "mnist", "arch_text": TINY.text()}
    (src / "metadata.json").write_text(json.dumps(meta))
    return list(ingest_folder(src, tmp_path_factory.mktemp("corpus") / "c"))


def test_generated_copy_comes_back_by_name(safetensors_corpus, monkeypatch):
    ck = safetensors_corpus
    module_layout = WeightLayout.from_module(TINY.build())
    assert ck[0].layout != module_layout and {e.name for e in ck[0].layout.entries} == {
        e.name for e in module_layout.entries
    }  # the file's order, the module's names (prefix removed at ingest)
    torch.manual_seed(0)
    vq = IGPGVQVAEModel(IGPGVQVAEConfig.from_preset("tiny")).eval()
    vq.fit_normalization([(c.layout, c.vector()) for c in ck])
    assert "features.conv1.weight" in vq.config.weight_stats  # per-layer statistics find their layer
    cfg = IGPGPriorConfig.from_preset(
        "tiny", vocab_size=64, tokens_per_chunk=2, chunk_size=vq.config.chunk_size, text_embed_dim=32
    )
    prior = IGPGPriorModel(cfg).eval()
    prior.config.trained_layouts = [c.layout.to_list() for c in ck]  # as train_prior records them
    enc, tok = tiny_text_encoder()
    pipe = IGPGPipeline(vqvae=vq, prior=prior, text_encoder=enc, tokenizer=tok)
    copied = vq.encode(ck[1].state_dict(), ck[1].layout)
    real = pipeline_module.sample_weight_tokens

    def sample_a_copy(*args, **kwargs):  # the prior "draws" a training sequence token for token
        out = real(*args, **kwargs)
        tokens = copied.expand(len(out[0] if isinstance(out, tuple) else out.tokens), -1).clone()
        return (tokens, *out[1:]) if isinstance(out, tuple) else dataclasses.replace(out, tokens=tokens)

    monkeypatch.setattr(pipeline_module, "sample_weight_tokens", sample_a_copy)
    got = pipe("Classify handwritten digits", architecture="tiny_cnn", num_samples=1, seed=0).state_dicts[0]
    want = vq.reconstruct(ck[1].state_dict(), ck[1].layout)
    assert list(got) == [e.name for e in module_layout.entries]  # keyed in the module's order
    assert all(torch.equal(got[k], want[k]) for k in want)
    by_position = vq.decode(copied, module_layout)  # what decoding in the module's order gave before
    assert not all(torch.equal(by_position[k], want[k]) for k in want)


def test_match_layout_by_name_or_refuse():
    module = WeightLayout.from_module(TINY.build())
    sorted_order = WeightLayout(sorted(module.entries, key=lambda e: e.name))
    assert match_layout(module, [sorted_order.to_list()]) == sorted_order
    assert match_layout(module, None, []) == module  # nothing recorded: the module's own order
    wider = WeightLayout.from_module(get_architecture("tiny_cnn", fc=[31]).build())
    got = match_layout(
        wider, [sorted_order]
    )  # same names, other shapes: the trained order, the target's shapes
    assert [e.name for e in got.entries] == [
        e.name for e in sorted_order.entries
    ] and got.num_float == wider.num_float
    mlp = WeightLayout.from_module(get_architecture("mlp_small").build())
    assert match_layout(mlp, [sorted_order]) == mlp  # a new architecture
    prefixed = WeightLayout([dataclasses.replace(e, name="module." + e.name) for e in module.entries])
    with pytest.raises(
        ValueError, match=r"other names: \['features.conv1.weight'.*\['module.features.conv1.weight'"
    ):
        match_layout(module, [prefixed])
