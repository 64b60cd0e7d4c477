"""Issue 12: killed, interrupted or damaged runs, measured against runs that were never interrupted.

A kill is a real SIGKILL: the job runs in a forked child that kills itself at a chosen moment (the N-th
``os.replace`` onto a given target: a shard, the manifest, a checkpoint or final-model swap). The parent then
reruns the same call and compares with an uninterrupted run: same ids, bit-identical weights, no duplicate or
half-written rows, no stale temporary files.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import signal
import sys
import time
from pathlib import Path

import datasets
import pyarrow.parquet as pq
import pytest
import torch

import igpg_hf.training.vqvae as vqvae_training
import igpg_hf.training.zoo_builder as builder
from igpg_hf import IGPGPipeline, IGPGPriorConfig, IGPGVQVAEConfig, IGPGVQVAEModel
from igpg_hf.corpus import CorpusWriter, WeightCorpus, ingest_state_dicts
from igpg_hf.files import FolderInUseError, NotWritableError
from igpg_hf.integrity import IntegrityError
from igpg_hf.training import PriorTrainingArgs, VQVAETrainingArgs, train_prior, train_vqvae
from igpg_hf.training.zoo_builder import ZooConfig, build_zoo

sys.path.insert(0, str(Path(__file__).parent))
from _ddp_train_step import FakeCheckpoint, TinyText, tiny_tokenizer  # noqa: E402
from _tiny_text import tiny_text_encoder  # noqa: E402

ZOO = ZooConfig.from_preset("tiny", tasks=["iris"], seeds=[0, 1, 2])  # 3 runs of 2 kept epochs
VQ_ARGS = VQVAETrainingArgs(steps=12, batch_size=16, checkpoint_every=4, log_every=2)
PRIOR_ARGS = PriorTrainingArgs(steps=6, batch_size=4, checkpoint_every=2, log_every=1)


@pytest.fixture(autouse=True)
def _datasets_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setattr(
        datasets.config, "HF_DATASETS_CACHE", str(tmp_path_factory.getbasetemp() / "hf_cache")
    )


@pytest.fixture(scope="module")
def checkpoints():
    return [FakeCheckpoint(t, s) for t in ("iris", "wine") for s in range(2)]  # sklearn data: loads at once


def killed(job, target: str, nth: int = 1, sig: int = signal.SIGKILL) -> None:
    """Run ``job()`` in a forked child that kills itself before the ``nth`` os.replace onto a path named ``target``."""

    def child():
        real, calls = os.replace, [0]

        def replace(src, dst, *a, **k):
            if Path(dst).name == target:
                calls[0] += 1
                if calls[0] == nth:
                    os.kill(os.getpid(), sig)
                    time.sleep(30)  # SIGTERM is handled in Python: let it act
            return real(src, dst, *a, **k)

        os.replace = replace
        torch.set_num_threads(1)
        job()

    p = mp.get_context("fork").Process(target=child)
    p.start()
    p.join(120)
    assert p.exitcode == -sig or (sig != signal.SIGKILL and p.exitcode not in (0, None)), p.exitcode


def stale(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.name.endswith((".tmp", ".old")))


def corpus_state(path: Path) -> dict:
    """model_id -> SHA-256 of its bytes, after checking no row is duplicated."""
    rows = [r for f in sorted((path / "data").glob("*.parquet")) for r in pq.read_table(f).to_pylist()]
    keys = [(r["model_id"], r["chunk_index"]) for r in rows]
    assert len(keys) == len(set(keys)), "duplicate rows"
    got = {c.metadata.model_id: c.weights for c in WeightCorpus.from_folder(path)}
    return {k: hash(v) for k, v in got.items()}


def weights_of(model) -> dict:
    return {k: v.clone() for k, v in model.state_dict().items()}


def same_weights(a, b) -> bool:
    return set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def reference_zoo(tmp_path_factory):
    path = tmp_path_factory.mktemp("ref") / "zoo"
    with pytest.MonkeyPatch.context() as m:
        m.setattr(builder, "FLUSH_EVERY_S", 0.0)  # one shard per run: kills land between and inside shards
        build_zoo(ZOO, path, num_workers=1, progress=False)
    return corpus_state(path)


@pytest.mark.parametrize(
    "target,nth",
    [("shard-00001.parquet", 1), pytest.param("corpus.json", 2, marks=pytest.mark.slow)],
    ids=["during-a-shard-write", "between-shard-and-manifest"],
)
def test_zoo_build_killed_then_rerun_matches(tmp_path, monkeypatch, reference_zoo, target, nth):
    monkeypatch.setattr(builder, "FLUSH_EVERY_S", 0.0)
    path = tmp_path / "zoo"
    killed(lambda: build_zoo(ZOO, path, num_workers=1, progress=False), target, nth)
    assert len(list((path / "data").glob("*.parquet"))) >= 1  # the first run's shard survived
    corpus = build_zoo(ZOO, path, num_workers=1, progress=False)
    assert corpus.build_stats["runs_skipped"] >= 1  # resumed, not rebuilt
    assert corpus_state(path) == reference_zoo and stale(path) == []


def test_zoo_build_sigterm_flushes_and_leaves_no_workers(tmp_path):
    path, pids = tmp_path / "zoo", tmp_path / "pids"
    pids.mkdir()
    real_init = builder._worker_init

    def init(parent):
        (pids / str(os.getpid())).touch()
        real_init(parent)

    def job():
        builder._worker_init = init
        real_add = CorpusWriter.add

        def add(self, *a, **k):  # SIGTERM as soon as the first finished run is handed to the writer
            real_add(self, *a, **k)
            os.kill(os.getpid(), signal.SIGTERM)

        CorpusWriter.add = add
        build_zoo(ZOO, path, num_workers=2, progress=False)

    p = mp.get_context("fork").Process(target=job)
    p.start()
    p.join(120)
    assert p.exitcode == 128 + signal.SIGTERM
    assert len(WeightCorpus.from_folder(path)) >= 1  # what was finished is on disk
    workers = [int(f.name) for f in pids.iterdir()]
    assert len(workers) == 2
    time.sleep(0.5)
    for pid in workers:  # terminated with the build (not training on, orphaned)
        assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().split()[2]


def test_two_builds_on_one_folder_are_refused(tmp_path):
    holder = CorpusWriter(tmp_path / "zoo")
    with pytest.raises(FolderInUseError, match="in use by another writer"):
        build_zoo(ZOO, tmp_path / "zoo", num_workers=1, progress=False)
    holder.release()


def test_ingest_killed_then_rerun_matches(tmp_path):
    items = [
        ({"w": torch.randn(5, generator=torch.Generator().manual_seed(i))}, {"model_id": f"m{i}"})
        for i in range(4)
    ]
    ref = tmp_path / "ref"
    ingest_state_dicts(items, ref, shard_rows=1)
    path = tmp_path / "c"
    killed(lambda: ingest_state_dicts(items, path, shard_rows=1), "shard-00002.parquet")
    assert len(list((path / "data").glob("*.parquet"))) == 2
    ingest_state_dicts(items, path, shard_rows=1)
    assert corpus_state(path) == corpus_state(ref) and stale(path) == []
    assert json.loads((path / "ingest_report.json").read_text())["resumed"] == ["m0", "m1"]


def _vqvae(checkpoints, out, args=VQ_ARGS):
    return train_vqvae(checkpoints, IGPGVQVAEConfig.from_preset("tiny"), out, args, progress=False)


@pytest.fixture(scope="module")
def reference_vqvae(checkpoints, tmp_path_factory):
    out = tmp_path_factory.mktemp("vq")
    return weights_of(_vqvae(checkpoints, out)), json.loads((out / "final" / "training_log.json").read_text())


@pytest.mark.parametrize(
    "target,nth,resumed_at",
    [
        ("trainer_state.json", 2, 4),  # during the 2nd checkpoint save: the 1st is complete
        (
            "checkpoint",
            2,
            4,
        ),  # the 2nd checkpoint save, between its two renames (old moved aside, new not in)
        pytest.param("final", 1, 8, marks=pytest.mark.slow),  # while the final model is swapped in
    ],
    ids=["after-a-checkpoint", "between-checkpoint-renames", "final-save"],
)
def test_vqvae_killed_then_resumed_is_bit_identical(
    tmp_path, checkpoints, reference_vqvae, caplog, target, nth, resumed_at
):
    killed(lambda: _vqvae(checkpoints, tmp_path), target, nth)
    assert not (tmp_path / "final").exists()
    with caplog.at_level("INFO", logger="igpg_hf.training"):
        model = _vqvae(checkpoints, tmp_path)
    assert f"resumed from step {resumed_at}" in caplog.text  # not restarted from 0: no work lost
    log = json.loads((tmp_path / "final" / "training_log.json").read_text())
    assert same_weights(weights_of(model), reference_vqvae[0])
    assert log["history"] == reference_vqvae[1]["history"] and stale(tmp_path) == []


@pytest.mark.slow
def test_prior_killed_then_resumed_is_bit_identical(tmp_path, checkpoints, caplog):
    vq = _vqvae(checkpoints, tmp_path / "vq", VQVAETrainingArgs(steps=2, batch_size=16))
    cfg = IGPGPriorConfig.from_preset(
        "tiny", vocab_size=64, tokens_per_chunk=2, n_positions=64, block_overlap=16
    )

    def run(out):
        return train_prior(checkpoints, vq, TinyText(), tiny_tokenizer, cfg, out, PRIOR_ARGS, progress=False)

    ref = weights_of(run(tmp_path / "ref"))
    killed(lambda: run(tmp_path / "p"), "trainer_state.json", 2)  # during the 2nd save: step 2 is on disk
    with caplog.at_level("INFO", logger="igpg_hf.training"):
        resumed = run(tmp_path / "p")
    assert "resumed from step 2" in caplog.text and same_weights(weights_of(resumed), ref)


def test_finished_run_is_not_retrained_and_changed_settings_are_refused(tmp_path, checkpoints, monkeypatch):
    _vqvae(checkpoints, tmp_path, VQVAETrainingArgs(steps=3, batch_size=16))
    mtime = (tmp_path / "final" / "model.safetensors").stat().st_mtime_ns
    monkeypatch.setattr(vqvae_training, "run_training", lambda *a, **k: pytest.fail("trained again"))
    again = _vqvae(checkpoints, tmp_path, VQVAETrainingArgs(steps=3, batch_size=16))
    assert (
        tmp_path / "final" / "model.safetensors"
    ).stat().st_mtime_ns == mtime and again.config.weight_stats
    with pytest.raises(ValueError, match=r"finished run .* other settings \(args.steps: 3 -> 5\)"):
        _vqvae(checkpoints, tmp_path, VQVAETrainingArgs(steps=5, batch_size=16))
    monkeypatch.undo()
    # a run killed mid-way and resumed with another step count: refused, naming the change
    killed(lambda: _vqvae(checkpoints, tmp_path / "b", VQ_ARGS), "checkpoint", 2)
    with pytest.raises(ValueError, match=r"training checkpoint .* other settings \(args.lr: 0.001 -> 0.01\)"):
        _vqvae(checkpoints, tmp_path / "b", VQVAETrainingArgs(**{**VQ_ARGS.__dict__, "lr": 1e-2}))


def test_damaged_training_checkpoint_is_named(tmp_path, checkpoints):
    killed(lambda: _vqvae(checkpoints, tmp_path), "trainer_state.json", 2)  # leaves checkpoint/ at step 4
    victim = tmp_path / "checkpoint" / "accelerate" / "model.safetensors"
    data = bytearray(victim.read_bytes())
    data[-20] ^= 0xFF
    victim.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"checkpoint .* is damaged .*accelerate/model.safetensors"):
        _vqvae(checkpoints, tmp_path)


def test_nan_loss_stops_instead_of_saving(tmp_path, checkpoints, monkeypatch):
    monkeypatch.setattr(vqvae_training, "gumbel_temperature", lambda *a, **k: float("nan"))
    with pytest.raises(ValueError, match="loss is nan at step 1"):
        _vqvae(checkpoints, tmp_path)
    assert not (tmp_path / "final").exists()


def test_output_folder_checked_before_work(tmp_path, checkpoints, monkeypatch):
    (tmp_path / "file").write_text("")
    monkeypatch.setattr(vqvae_training, "collect_chunks", lambda *a, **k: pytest.fail("work started"))
    with pytest.raises(NotWritableError, match="not writable"):
        _vqvae(checkpoints, tmp_path / "file" / "run")
    with pytest.raises(NotWritableError, match="not writable"):
        build_zoo(ZOO, tmp_path / "file" / "zoo", num_workers=1, progress=False)
    if os.geteuid() != 0:  # root writes anywhere
        (tmp_path / "ro").mkdir(mode=0o500)
        with pytest.raises(NotWritableError):
            _vqvae(checkpoints, tmp_path / "ro")


def test_damaged_pipeline_files_are_named(tmp_path):
    from igpg_hf import IGPGPriorModel

    vq = IGPGVQVAEModel(IGPGVQVAEConfig.from_preset("tiny"))
    prior = IGPGPriorModel(IGPGPriorConfig.from_preset("tiny", vocab_size=64, tokens_per_chunk=2))
    enc, tok = tiny_text_encoder()
    IGPGPipeline(vqvae=vq, prior=prior, text_encoder=enc, tokenizer=tok).save_pretrained(tmp_path)
    weights = next((tmp_path / "vqvae").glob("*.safetensors"))
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0x01  # one bit: loads fine, generates other nets
    weights.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match=rf"vqvae/{weights.name}: content differs"):
        IGPGPipeline.from_pretrained(tmp_path)
    weights.unlink()
    with pytest.raises(IntegrityError, match=rf"vqvae/{weights.name}: missing"):
        IGPGPipeline.from_pretrained(tmp_path)
    # saved before checksums existed: library errors still name the folder, in a few lines
    (tmp_path / "checksums.json").unlink()
    weights.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}garbage")
    with pytest.raises((ValueError, OSError), match=str(tmp_path)):
        IGPGPipeline.from_pretrained(tmp_path)
    vq.save_pretrained(tmp_path / "vqvae")
    cfg = json.loads((tmp_path / "vqvae" / "config.json").read_text())
    (tmp_path / "vqvae" / "config.json").write_text(json.dumps({**cfg, "hidden_size": 48}))
    with pytest.raises(ValueError, match=rf"cannot load the pipeline {tmp_path}") as err:
        IGPGPipeline.from_pretrained(tmp_path)
    assert len(str(err.value)) < 800


def _refused_terminate_child(result) -> None:
    pool = mp.get_context("fork").Pool(2)
    workers = list(pool._pool)
    for _ in workers:  # both workers busy, as in a build (a run takes seconds to minutes)
        pool.apply_async(time.sleep, (60,))
    time.sleep(0.5)
    pool._result_handler.is_alive = lambda: (
        False
    )  # the state CPython's check refuses: no handler, results pending
    try:
        pool.terminate()
    except AssertionError as e:
        refused = "result_hander not alive" in str(e)
    else:
        refused = False
    pool.terminate = lambda: (_ for _ in ()).throw(
        AssertionError("Cannot have cache with result_hander not alive")
    )
    builder._stop_pool(pool)
    result.put((refused, [p.exitcode for p in workers]))
    os._exit(0)  # the pool's handler threads die with this process


def test_stop_pool_terminates_workers_when_cpython_refuses_to():
    # CPython's Pool.terminate raised "Cannot have cache with result_hander not alive" once in CI as SIGTERM
    # arrived; that replaced the build's exit status 143 by 1. Reproduced in a child process (the pool's threads
    # are left behind by CPython's refusal): _stop_pool must still terminate the workers.
    ctx = mp.get_context("fork")
    result = ctx.SimpleQueue()
    p = ctx.Process(target=_refused_terminate_child, args=(result,))
    p.start()
    p.join(60)
    assert p.exitcode == 0
    refused, exitcodes = result.get()
    assert refused  # the genuine CPython refusal, not a stand-in
    assert exitcodes == [-signal.SIGTERM] * 2
