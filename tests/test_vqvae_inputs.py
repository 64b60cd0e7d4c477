"""Issue 12: the VQ-VAE API checks what the corpus checks (finite values, empty entries, dense tensors)."""

from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from igpg_hf import IGPGPriorConfig, IGPGVQVAEConfig, IGPGVQVAEModel, WeightLayout
from igpg_hf.training import VQVAETrainingArgs, train_prior, train_vqvae

sys.path.insert(0, str(Path(__file__).parent))
from _ddp_train_step import TinyText, tiny_tokenizer  # noqa: E402


def ckpt(model_id: str, sd: dict, arch_text: str = "mlp: 4 -> 3 -> 0 -> 2") -> SimpleNamespace:
    layout = WeightLayout.from_state_dict(sd)
    return SimpleNamespace(
        metadata=SimpleNamespace(model_id=model_id, task="t", instruction="Sort things", arch_text=arch_text),
        layout=layout,
        state_dict=lambda: sd,
        vector=lambda: layout.vectorize(sd),
    )


def zoo(n: int = 3) -> list[SimpleNamespace]:
    out = []
    for i in range(n):
        g = torch.Generator().manual_seed(i)
        sd = {
            "fc1.weight": torch.randn(3, 4, generator=g),
            "fc1.bias": torch.randn(3, generator=g),
            "empty.weight": torch.zeros(0, 3),  # a 0-element parameter (a layer of width 0)
            "fc2.weight": torch.randn(2, 3, generator=g),
        }
        out.append(ckpt(f"m{i}", sd))
    return out


def test_empty_entries_are_handled(tmp_path):
    vq = train_vqvae(
        zoo(),
        IGPGVQVAEConfig.from_preset("tiny"),
        tmp_path,
        VQVAETrainingArgs(steps=2, batch_size=4),
        progress=False,
    )
    c = zoo()[0]
    back = vq.decode(vq.encode(c.state_dict(), c.layout), c.layout)
    assert back["empty.weight"].shape == (0, 3) and back["fc1.weight"].shape == (3, 4)
    assert all(torch.isfinite(v).all() for v in back.values())


def test_non_finite_weights_are_refused_by_name(tmp_path):
    cks = zoo()
    cks[1].state_dict()["fc1.bias"][1] = float("inf")
    vq = IGPGVQVAEModel(IGPGVQVAEConfig.from_preset("tiny"))
    with pytest.raises(ValueError, match=r"checkpoint 'm1'.*'fc1.bias' \(1 of 3\)"):
        vq.fit_normalization([(c.layout, c.vector(), f"checkpoint {c.metadata.model_id!r}") for c in cks])
    with pytest.raises(ValueError, match=r"checkpoint 1.*'fc1.bias'"):
        vq.fit_normalization([(c.layout, c.vector()) for c in cks])
    assert not vq.config.weight_stats  # nothing half-fitted
    vq.fit_normalization([(c.layout, c.vector()) for c in (cks[0], cks[2])])
    nan = dict(cks[0].state_dict(), **{"fc2.weight": torch.full((2, 3), float("nan"))})
    with pytest.raises(ValueError, match=r"weights: NaN or infinite values in 'fc2.weight' \(6 of 6\)"):
        vq.encode(nan)
    with pytest.raises(ValueError, match=r"checkpoint 'm1'.*'fc1.bias'"):
        train_vqvae(cks, IGPGVQVAEConfig.from_preset("tiny"), tmp_path / "never-written", progress=False)


def test_meta_and_sparse_tensors_are_refused_by_name():
    vq = IGPGVQVAEModel(IGPGVQVAEConfig.from_preset("tiny"))
    c = zoo()[0]
    vq.fit_normalization([(c.layout, c.vector())])
    for bad, pattern in (
        (torch.empty(3, 4, device="meta"), "'fc1.weight' is a meta tensor"),
        (torch.randn(3, 4).to_sparse(), "'fc1.weight' has layout torch.sparse_coo"),
    ):
        with pytest.raises(TypeError, match=pattern):
            vq.encode(dict(c.state_dict(), **{"fc1.weight": bad}), c.layout)


def test_prior_without_architecture_text_says_what_is_missing(tmp_path):
    cks = [ckpt(f"m{i}", c.state_dict(), arch_text="") for i, c in enumerate(zoo())]
    vq = IGPGVQVAEModel(IGPGVQVAEConfig.from_preset("tiny"))
    vq.fit_normalization([(c.layout, c.vector()) for c in cks])
    cfg = IGPGPriorConfig.from_preset("tiny", vocab_size=64, tokens_per_chunk=2)
    with pytest.raises(ValueError, match=r"checkpoint 'm0' has no architecture text \(arch_text\)"):
        train_prior(cks, vq, TinyText(), tiny_tokenizer, cfg, tmp_path, progress=False)
