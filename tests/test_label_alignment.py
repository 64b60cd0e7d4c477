"""Label alignment: a permuted head is recovered exactly, a right or hopeless one is left alone, bad input fails clearly."""

import pytest
import torch
from torch import nn

from igpg_hf.label_alignment import (
    align_labels,
    find_label_permutation,
    output_layer_name,
    permute_output_units,
)


def _net_and_data(seed: int = 0, n: int = 200):
    """A 10-way linear classifier on separable clusters, its data, and a permutation of its labels."""
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(10, 16, generator=g) * 4
    y = torch.arange(n) % 10
    x = centers[y] + torch.randn(n, 16, generator=g)
    net = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 10))
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    torch.manual_seed(seed)
    for _ in range(200):
        opt.zero_grad()
        nn.functional.cross_entropy(net(x), y).backward()
        opt.step()
    perm = torch.randperm(10, generator=g)
    return net, x, y, perm


def test_recovers_a_permuted_head():
    net, x, y, perm = _net_and_data()
    sd = {k: v.clone() for k, v in net.state_dict().items()}
    assert (net(x).argmax(-1) == y).float().mean() > 0.95
    # the task relabels class c as perm[c]: the same inputs, permuted labels
    aligned, rec = align_labels(net, sd, x, perm[y])
    assert rec.applied and rec.accuracy_before < 30 and rec.accuracy_after > 95 and rec.z >= 2
    assert (
        rec.permutation == perm.argsort().tolist()
    )  # label j is answered by the old unit of class perm^-1(j)
    net.load_state_dict(aligned)
    assert (net(x).argmax(-1) == perm[y]).float().mean() > 0.95
    # only the last Linear's rows moved; every other entry is untouched
    assert output_layer_name(net) == "2"
    assert all(torch.equal(aligned[k], sd[k]) for k in sd if not k.startswith("2."))
    assert torch.equal(aligned["2.bias"], sd["2.bias"][rec.permutation])


def test_leaves_a_correct_or_uninformative_head_alone():
    net, x, y, _ = _net_and_data(1)
    sd = net.state_dict()
    same, rec = align_labels(net, sd, x, y)
    assert not rec.applied and same is sd and rec.permutation == list(range(10))
    # a net that knows nothing: the best reordering of noise is not significant
    torch.manual_seed(3)
    random_net = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 10))
    _, rec = align_labels(random_net, random_net.state_dict(), torch.randn(50, 16), torch.arange(50) % 10)
    assert not rec.applied and rec.accuracy_after == rec.accuracy_before


def test_significance_is_judged_out_of_sample():
    labels = torch.tensor([0, 1, 2] * 4)
    logits = torch.eye(3)[torch.tensor([1, 0, 2] * 4)]  # labels 0 and 1 answered by each other's unit
    # each half's order (swap 0 and 1) fixes the other half's 8 swapped samples and breaks none: z = sqrt(8)
    rec = find_label_permutation(logits, labels, min_z=2.0)
    assert rec.applied and rec.permutation == [1, 0, 2] and rec.accuracy_after == 100.0
    assert abs(rec.z - 8**0.5) < 1e-6
    assert not find_label_permutation(logits, labels, min_z=3.0).applied


def test_clear_errors():
    with pytest.raises(ValueError, match="logits \\(N, C\\) and labels"):
        find_label_permutation(torch.zeros(4, 3), torch.zeros(5, dtype=torch.long))
    with pytest.raises(ValueError, match="labels must lie in"):
        find_label_permutation(torch.zeros(4, 3), torch.tensor([0, 1, 2, 7]))
    with pytest.raises(ValueError, match="ending in nn.Linear"):
        output_layer_name(nn.Conv2d(1, 2, 3))
    with pytest.raises(ValueError, match="reorder all 3 output units"):
        permute_output_units(nn.Linear(2, 3).state_dict(), "", [0, 0, 1])
    net = nn.Sequential(nn.Linear(4, 3), nn.Softmax(-1), nn.Linear(3, 3), nn.Flatten(0))
    with pytest.raises(ValueError, match="to produce the logits"):
        align_labels(net, net.state_dict(), torch.zeros(2, 4), torch.zeros(2, dtype=torch.long))
