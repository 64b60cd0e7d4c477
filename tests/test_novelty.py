"""Novelty measures: copies, distance to the nearest checkpoint, and the adjacent-epoch scale."""

from types import SimpleNamespace

import pytest
import torch

from igpg_hf.evaluation.novelty import adjacent_epoch_novelty, count_copies, novelty, pairwise_scale


def _ckpt(run: str, epoch: int, vec: list[float]):
    return SimpleNamespace(
        metadata=SimpleNamespace(run_id=run, epoch=epoch), vector=lambda: torch.tensor(vec)
    )


def test_adjacent_epoch_novelty_pairs_consecutive_epochs_within_each_run():
    cks = [
        _ckpt("a", 3, [0.0, 3.0]),
        _ckpt("b", 1, [10.0, 0.0]),
        _ckpt("a", 1, [0.0, 0.0]),
        _ckpt("a", 2, [0.0, 1.0]),
        _ckpt("b", 2, [10.0, 4.0]),
    ]
    # run a: epochs 1->2 (1.0), 2->3 (2.0); run b: 1->2 (4.0); never across runs
    assert sorted(adjacent_epoch_novelty(cks, scale=2.0)) == [0.5, 1.0, 2.0]
    assert adjacent_epoch_novelty([_ckpt("a", 1, [1.0])], scale=1.0) == []


def test_copies_and_novelty():
    train = torch.tensor([[1, 2, 3], [4, 5, 6]])
    assert count_copies(torch.tensor([[4, 5, 6], [4, 5, 7]]), train) == [True, False]
    assert count_copies(torch.tensor([[1, 2]]), train) == [False]  # another length is never a copy
    vecs = torch.tensor([[0.0, 0.0], [3.0, 4.0], [6.0, 8.0]])
    assert pairwise_scale(vecs) == pytest.approx(5.0)
    rep = novelty(torch.tensor([[3.0, 4.5]]), vecs)
    assert rep.nearest == [1] and rep.distance == pytest.approx([0.5]) and rep.novelty == pytest.approx([0.1])
