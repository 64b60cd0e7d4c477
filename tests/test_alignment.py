"""Permutation alignment keeps the function; the depth transplant keeps it when it only adds blocks."""

import pytest
import torch

from igpg_hf.evaluation.baselines import nearest_depth, transplant_depth
from igpg_hf.zoo import get_architecture
from igpg_hf.zoo.alignment import align_checkpoints, align_state_dict, permutation_spec

CASES = [
    ("resnet_small", {"blocks": [2, 3, 1]}, (1, 8, 8)),
    ("resnet_small", {"blocks": [1, 1, 2], "norm": "none"}, (1, 8, 8)),
    ("tiny_cnn", {}, (1, 28, 28)),
    ("mlp_small", {"hidden": [16, 8]}, (64,)),
    ("cnn1d_small", {}, (1, 40)),
]


def _net(spec, seed):
    torch.manual_seed(seed)
    net = spec.build()
    for m in net.modules():  # BatchNorm with statistics and affine parameters of a trained net
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.normal_()
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.normal_()
            m.bias.data.normal_()
    return net.eval()


def _distance(a, b):
    return sum(float(((a[k] - b[k]) ** 2).sum()) for k in a if a[k].is_floating_point())


@pytest.mark.parametrize("name, kw, shape", CASES)
def test_alignment_preserves_function_and_moves_towards_the_reference(name, kw, shape):
    spec = get_architecture(name, **kw)
    ref, net = _net(spec, 0), _net(spec, 1)
    aligned = align_state_dict(spec, net.state_dict(), ref.state_dict())
    again = spec.build().eval()
    again.load_state_dict(aligned)
    x = torch.randn(16, *shape)
    assert torch.allclose(again(x), net(x), atol=1e-5)
    assert _distance(aligned, ref.state_dict()) < _distance(net.state_dict(), ref.state_dict())
    # a permuted copy of the reference is matched back onto it exactly
    ps = permutation_spec(spec, ref.state_dict())
    assert ps.sizes(ref.state_dict())
    assert _distance(align_state_dict(spec, ref.state_dict(), ref.state_dict()), ref.state_dict()) == 0


def test_alignment_across_depths():
    small, deep = (
        get_architecture("resnet_small", blocks=[1, 2, 1]),
        get_architecture("resnet_small", blocks=[3, 3, 3]),
    )
    ref, net = _net(deep, 0), _net(small, 1)
    aligned = align_state_dict(small, net.state_dict(), ref.state_dict(), deep)
    again = small.build().eval()
    again.load_state_dict(aligned)
    x = torch.randn(8, 1, 8, 8)
    assert torch.allclose(again(x), net(x), atol=1e-5)


def test_align_checkpoints_keeps_metadata_and_order(tmp_path):
    from igpg_hf.corpus import CheckpointMetadata, CorpusWriter

    writer = CorpusWriter(tmp_path / "c")
    for i, blocks in enumerate(([1, 1, 1], [2, 1, 1], [1, 1, 1])):
        spec = get_architecture("resnet_small", blocks=blocks)
        writer.add(
            _net(spec, i).state_dict(),
            CheckpointMetadata(model_id=f"m{i}", task="digits", arch_spec=spec, seed=i, epoch=1),
        )
    cps = list(writer.close())
    out = align_checkpoints(cps)
    assert [c.metadata.model_id for c in out] == [c.metadata.model_id for c in cps]
    ref = next(c for c in out if c.arch().params["blocks"] == [2, 1, 1])
    assert ref.weights == next(c for c in cps if c.metadata.model_id == ref.metadata.model_id).weights
    x = torch.randn(4, 1, 8, 8)
    for a, b in zip(cps, out, strict=True):
        assert torch.allclose(a.build_module().eval()(x), b.build_module().eval()(x), atol=1e-5)


@pytest.mark.parametrize("target", [[3, 2, 4], [1, 4, 1]])
@pytest.mark.parametrize("norm", ["batch", "none"])
def test_transplant_to_a_deeper_net_preserves_function(target, norm):
    spec = get_architecture("resnet_small", blocks=[1, 2, 1], norm=norm)
    net = _net(spec, 0)
    deeper = spec.replace(blocks=target)
    sd = transplant_depth(spec, net.state_dict(), deeper)
    again = deeper.build().eval()
    again.load_state_dict(sd)
    x = torch.randn(8, 1, 8, 8)
    assert torch.allclose(again(x), net(x), atol=1e-6)


def test_transplant_to_a_shallower_net_cuts_blocks_and_nearest_depth():
    spec = get_architecture("resnet_small", blocks=[3, 3, 3])
    sd = transplant_depth(spec, _net(spec, 0).state_dict(), spec.replace(blocks=[1, 2, 3]))
    assert "layer1.1.conv1.weight" not in sd and "layer2.1.conv1.weight" in sd
    get_architecture("resnet_small", blocks=[1, 2, 3]).build().load_state_dict(sd)
    assert nearest_depth([2, 2, 3], [[1, 1, 1], [2, 3, 3], [2, 2, 2]]) == [2, 2, 2]  # adding beats cutting
    with pytest.raises(ValueError, match="blocks only"):
        transplant_depth(spec, {}, spec.replace(width=8))
