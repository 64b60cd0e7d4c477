"""Exact weight layout, chunking and normalization: every round trip is bit for bit."""

import pytest
import torch

from igpg_hf.weights import (
    WeightLayout,
    chunk_vector,
    denormalize_vector,
    fit_weight_stats,
    normalize_vector,
    num_chunks,
    unchunk_vector,
)
from igpg_hf.zoo import get_architecture

PRESETS = ["tiny_cnn", "tiny_cnn_rgb", "mlp_small", "cnn1d_small", "resnet_small"]


def _sd(name, seed=0):
    torch.manual_seed(seed)
    m = get_architecture(name).build()
    for b in m.buffers():  # make BatchNorm statistics non-trivial
        if b.is_floating_point():
            b.uniform_(0.5, 1.5)
    return m.state_dict()


@pytest.mark.parametrize("name", PRESETS)
def test_bytes_and_vector_round_trip_every_family(name):
    sd = _sd(name)
    layout = WeightLayout.from_state_dict(sd)
    back = layout.from_bytes(layout.to_bytes(sd))
    assert list(back) == list(sd) and all(torch.equal(back[k], sd[k]) for k in sd)
    vec = layout.vectorize(sd)
    assert vec.numel() == layout.num_float
    again = layout.devectorize(vec, fill=sd)
    assert all(torch.equal(again[k], sd[k]) for k in sd)
    module = get_architecture(name).build()
    module.load_state_dict(again, strict=True)
    assert WeightLayout.from_json(layout.to_json()) == layout


def test_vector_is_weight_then_bias_per_layer():
    sd = _sd("mlp_small")
    layout = WeightLayout.from_state_dict(sd)
    vec = layout.vectorize(sd)
    w, b = sd["head.fc1.weight"], sd["head.fc1.bias"]
    assert torch.equal(vec[: w.numel()], w.flatten()) and torch.equal(
        vec[w.numel() : w.numel() + b.numel()], b
    )
    assert [n for n, _ in layout.layer_slices()] == ["head.fc1", "head.fc2"]


def test_bf16_bytes_round_trip():
    sd = {k: v.to(torch.bfloat16) for k, v in _sd("mlp_small").items()}
    layout = WeightLayout.from_state_dict(sd)
    back = layout.from_bytes(layout.to_bytes(sd))
    assert all(torch.equal(back[k], sd[k]) and back[k].dtype == torch.bfloat16 for k in sd)


@pytest.mark.parametrize("mode", ["layer", "model"])
@pytest.mark.parametrize("k", [7, 64])
def test_chunking_round_trip_and_mask(mode, k):
    sd = _sd("tiny_cnn")
    layout = WeightLayout.from_state_dict(sd)
    vec = layout.vectorize(sd)
    chunks, mask = chunk_vector(vec, layout, k, mode)
    assert chunks.shape == (num_chunks(layout, k, mode), k)
    assert int(mask.sum()) == vec.numel()
    assert torch.all(chunks[~mask] == 0)
    assert torch.equal(unchunk_vector(chunks, layout, k, mode), vec)


def test_layer_mode_chunks_never_straddle_layers():
    sd = _sd("tiny_cnn")
    layout = WeightLayout.from_state_dict(sd)
    # tiny CNN layers: 208, 1206, 100, 740, 210 values -> ceil(/64) = 4 + 19 + 2 + 12 + 4
    assert num_chunks(layout, 64, "layer") == 41
    assert num_chunks(layout, 64, "model") == 39


def test_normalization_inverts_and_falls_back_by_role():
    items = []
    for s in range(3):
        sd = _sd("resnet_small", s)
        lay = WeightLayout.from_state_dict(sd)
        items.append((lay, lay.vectorize(sd)))
    stats = fit_weight_stats(items)
    lay, vec = items[0]
    z = normalize_vector(vec, lay, stats)
    assert torch.allclose(denormalize_vector(z, lay, stats), vec, atol=1e-5)
    # a deeper ResNet has entries the zoo never had: they use role statistics, not identity
    deep = get_architecture("resnet_small", blocks=[2, 2, 2]).build().state_dict()
    dlay = WeightLayout.from_state_dict(deep)
    assert "layer1.1.conv1.weight" not in stats and "role:layer#.#.conv#.weight" in stats
    dv = dlay.vectorize(deep)
    assert torch.allclose(denormalize_vector(normalize_vector(dv, dlay, stats), dlay, stats), dv, atol=1e-5)


def test_layout_errors_name_the_problem():
    sd = _sd("mlp_small")
    layout = WeightLayout.from_state_dict(sd)
    bad = dict(sd)
    bad["head.fc1.weight"] = torch.zeros(3, 3)
    with pytest.raises(ValueError, match="head.fc1.weight.*shape"):
        layout.vectorize(bad)
    nan = dict(sd)
    nan["head.fc2.bias"] = torch.full_like(sd["head.fc2.bias"], float("nan"))
    with pytest.raises(ValueError, match="NaN"):
        layout.validate(nan)
    with pytest.raises(ValueError, match="missing keys"):
        layout.validate({k: v for k, v in sd.items() if k != "head.fc2.bias"})
    with pytest.raises(ValueError, match="length"):
        layout.from_bytes(b"123")
