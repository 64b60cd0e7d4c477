"""Weight corpus: exact round trips, chunking, resume, bad input, ingestion, sharding.

Pushing to and loading from the Hub is tested for real, against the in-process Hub, in test_hub.py.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import datasets
import pyarrow.parquet as pq
import pytest
import torch
from safetensors.torch import save_file

import igpg_hf.corpus as corpus_module
from igpg_hf.corpus import CheckpointMetadata, CorpusWriter, WeightCorpus, ingest_folder, ingest_state_dicts
from igpg_hf.weights.layout import WeightLayout
from igpg_hf.zoo.architectures import get_architecture

TINY, MLP, RESNET = (get_architecture(n) for n in ("tiny_cnn", "mlp_small", "resnet_small"))
BIG_MLP = get_architecture("mlp_small", hidden=[256])  # 19,210 params, ~77 KB


@pytest.fixture(autouse=True)
def _datasets_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setattr(
        datasets.config, "HF_DATASETS_CACHE", str(tmp_path_factory.getbasetemp() / "hf_cache")
    )


def trained(spec, seed: int = 0) -> torch.nn.Module:
    """A module with random weights and non-default BatchNorm statistics."""
    torch.manual_seed(seed)
    module = spec.build()
    for name, buf in module.named_buffers():
        if name.endswith("num_batches_tracked"):
            buf.fill_(seed + 7)
        else:
            buf.uniform_(0.5, 1.5)
    return module


def meta(model_id: str, spec=None, **kw) -> dict:
    return {"model_id": model_id, "task": "digits", "instruction": "Classify digits", "arch_spec": spec, **kw}


def ids(corpus: WeightCorpus) -> list[str]:
    return [c.metadata.model_id for c in corpus]


def assert_same_state(a: dict, b: dict) -> None:
    assert list(a) == list(b)
    for k in a:
        assert a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]), k


@pytest.fixture(scope="module")
def zoo(tmp_path_factory) -> Path:
    """Five checkpoints (two chunked) over three shards, on two tasks."""
    path = tmp_path_factory.mktemp("zoo") / "corpus"
    with pytest.MonkeyPatch.context() as mp, CorpusWriter(path, shard_rows=3, max_row_bytes=8192) as w:
        mp.setattr(corpus_module, "_ROW_GROUP_BYTES", 1)  # one row group per checkpoint
        for i in range(5):
            spec = (TINY, MLP, BIG_MLP)[i % 3]
            w.add(
                trained(spec, i),
                meta(
                    f"m{i}",
                    spec,
                    task=("digits", "mnist")[i % 2],
                    test_acc=0.5 + i / 10,
                    run_id=f"r{i // 2}",
                    epoch=i,
                    seed=i,
                    hyperparams={"lr": 0.1},
                ),
            )
    return path


def test_round_trip_bit_exact(tmp_path):
    modules = {
        "cnn": (trained(TINY), TINY),
        "mlp": (trained(MLP, 1), MLP),
        "res": (trained(RESNET, 2), RESNET),
    }
    bf16 = {k: v.to(torch.bfloat16) for k, v in trained(MLP, 3).state_dict().items()}
    with CorpusWriter(tmp_path / "c") as w:
        for name, (m, spec) in modules.items():
            w.add(
                m.state_dict(),
                meta(name, spec, hyperparams={"lr": 0.01, "opt": "adam"}, epoch=3, test_acc=0.9),
            )
        w.add(bf16, meta("bf16", zoo_kind="ingested"))
        corpus = w.close()
    assert len(corpus) == 4 and ids(corpus) == ["cnn", "mlp", "res", "bf16"]
    for ckpt in corpus:
        mid = ckpt.metadata.model_id
        if mid == "bf16":
            assert_same_state(ckpt.state_dict(), bf16)
            with pytest.raises(ValueError, match="no architecture spec"):
                ckpt.build_module()
            continue
        module, spec = modules[mid]
        assert_same_state(ckpt.state_dict(), module.state_dict())
        assert_same_state(ckpt.build_module().state_dict(), module.state_dict())  # strict load
        assert ckpt.arch() == spec and ckpt.metadata.arch_text == spec.text()
        assert ckpt.metadata.hyperparams == {"lr": 0.01, "opt": "adam"} and ckpt.metadata.epoch == 3
        assert math.isnan(ckpt.metadata.train_loss) and ckpt.metadata.test_acc == 0.9
        assert ckpt.vector().shape == (ckpt.layout.num_float,)
    assert corpus.summary()["tasks"]["digits"] == pytest.approx(
        {"checkpoints": 4, "count": 3, "mean": 0.9, "min": 0.9, "max": 0.9}
    )  # bf16 has no accuracy
    res = next(c for c in corpus if c.metadata.model_id == "res").state_dict()
    assert res["bn1.num_batches_tracked"].dtype == torch.int64 and int(res["bn1.num_batches_tracked"]) == 9


def test_streaming_rows_equal_in_memory_rows(zoo):
    def norm(row):  # NaN != NaN: compare their text
        return {k: ("nan" if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()}

    mem, stream = WeightCorpus.from_folder(zoo), WeightCorpus.load(str(zoo), streaming=True)
    assert stream.streaming and not mem.streaming
    assert [norm(r) for r in stream.dataset] == [norm(r) for r in mem.dataset]
    assert [(c.metadata.model_id, c.weights) for c in stream] == [
        (c.metadata.model_id, c.weights) for c in mem
    ]
    with pytest.raises(TypeError):
        len(stream)


def test_chunked_checkpoint_reassembles_and_detects_damage(tmp_path):
    module = trained(BIG_MLP)
    with CorpusWriter(tmp_path / "c", max_row_bytes=4096) as w:
        w.add(module, meta("big", BIG_MLP))
        w.add(trained(TINY), meta("small", TINY))
    corpus = WeightCorpus.from_folder(tmp_path / "c")
    rows = corpus.dataset
    n = rows[0]["num_chunks"]
    assert n == math.ceil(WeightLayout.from_module(module).nbytes / 4096) > 10
    assert rows["chunk_index"][:n] == list(range(n)) and len(corpus) == 2
    assert_same_state(corpus.checkpoints()[0].state_dict(), module.state_dict())

    with pytest.raises(ValueError, match="expected chunks"):  # a missing chunk
        list(WeightCorpus(rows.select([i for i in range(rows.num_rows) if i != 3])))
    with pytest.raises(ValueError, match="SHA-256"):  # a damaged chunk
        list(
            WeightCorpus(
                rows.map(
                    lambda r, i: {"weights": r["weights"][::-1] if i == 2 else r["weights"]},
                    with_indices=True,
                )
            )
        )
    with pytest.raises(ValueError, match="SHA-256"):  # a wrong checksum
        list(WeightCorpus(rows.map(lambda r: {"weights_sha256": "0" * 64})))


def test_resume_appends_and_rejects_duplicates(tmp_path):
    path = tmp_path / "c"
    with CorpusWriter(path) as w:
        w.add(trained(TINY, 0), meta("a", TINY))
        w.add(trained(TINY, 1), meta("b", TINY))
    w = CorpusWriter(path)
    assert w.done_ids == {"a", "b"}
    w.add(trained(MLP), meta("c", MLP))
    for dup in ("a", "c"):  # already written, already buffered
        with pytest.raises(ValueError, match="already in the corpus"):
            w.add(trained(TINY), meta(dup, TINY))
    bad = trained(TINY).state_dict()
    bad["head.fc1.bias"][0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        w.add(bad, meta("d", TINY))
    corpus = w.close()
    assert ids(corpus) == ["a", "b", "c"]
    assert sorted(p.name for p in (path / "data").iterdir()) == ["shard-00000.parquet", "shard-00001.parquet"]
    assert json.loads((path / "corpus.json").read_text())["num_checkpoints"] == 3
    with CorpusWriter(path, overwrite=True) as w:
        w.add(trained(MLP), meta("z", MLP))
    assert ids(WeightCorpus.from_folder(path)) == ["z"]


def test_bad_input_errors(tmp_path):
    w = CorpusWriter(tmp_path / "c")
    with pytest.raises(ValueError, match="shape"):  # vs layout
        w.add(
            trained(TINY).state_dict(),
            meta("x"),
            layout=WeightLayout.from_module(get_architecture("tiny_cnn", fc=[21]).build()),
        )
    with pytest.raises(ValueError, match="arch_spec"):  # vs spec keys
        w.add(trained(TINY), meta("x", MLP))
    with pytest.raises(ValueError, match="arch_spec expects"):  # vs spec shapes
        w.add(trained(TINY), meta("x", get_architecture("tiny_cnn", fc=[21])))
    with pytest.raises(ValueError, match="model_id"):
        w.add(trained(TINY), meta(""))
    w.add(trained(TINY), meta("ok", TINY))
    assert w.close() is not None and w.done_ids == {"ok"}

    shard = tmp_path / "c" / "data" / "shard-00000.parquet"
    shard.write_bytes(shard.read_bytes()[:-100])
    for opener in (WeightCorpus.from_folder, CorpusWriter):
        with pytest.raises(ValueError, match="shard-00000.parquet"):
            opener(tmp_path / "c")
    with pytest.raises(FileNotFoundError, match="nope"):
        WeightCorpus.from_folder(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="nope"):
        WeightCorpus.load(str(tmp_path / "nope"))
    with pytest.raises(ValueError, match="no checkpoints"):
        CorpusWriter(tmp_path / "empty").close()


def test_ingest_folder(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    a, b = trained(TINY), trained(MLP, 1)
    save_file(a.state_dict(), str(src / "a.safetensors"))
    torch.save(b.state_dict(), src / "b.pt")
    table = {
        "a.safetensors": {"task": "mnist", "arch_spec": TINY.to_dict(), "test_acc": 0.8, "epoch": 5},
        "b.pt": {"model_id": "bee", "task": "digits", "arch_spec": MLP.to_dict()},
    }
    (src / "metadata.json").write_text(json.dumps(table))
    corpus = ingest_folder(src, tmp_path / "out")
    got = {c.metadata.model_id: c for c in corpus}
    assert (
        set(got) == {"a", "bee"} and got["a"].metadata.zoo_kind == "ingested" and got["a"].metadata.epoch == 5
    )
    assert_same_state(got["a"].state_dict(), a.state_dict())
    assert_same_state(got["bee"].build_module().state_dict(), b.state_dict())

    torch.save(trained(TINY, 2).state_dict(), src / "c.pth")
    with pytest.raises(ValueError, match=r"c\.pth"):
        ingest_folder(src, tmp_path / "out2")
    assert ids(ingest_folder(src, tmp_path / "out", allow_missing_metadata=True)) == [
        "a",
        "bee",
        "c",
    ]  # resumed

    (src / "metadata.json").unlink()
    records = [
        {"file": "a.safetensors", "model_id": "A", "task": "mnist"},
        {"file": "b.pt"},
        {"file": "c.pth"},
    ]
    (src / "metadata.jsonl").write_text("\n".join(json.dumps(r) for r in records))
    assert ids(ingest_folder(src, tmp_path / "out3")) == ["A", "b", "c"]
    with pytest.raises(FileNotFoundError, match="nope"):
        ingest_folder(tmp_path / "nope", tmp_path / "out4")


def test_shards_are_disjoint_and_cover(zoo):
    for f in sorted((zoo / "data").iterdir()):  # row groups hold whole checkpoints
        pf = pq.ParquetFile(f)
        for g in range(pf.num_row_groups):
            chunks = pf.read_row_group(g, columns=["chunk_index", "num_chunks"]).to_pylist()
            assert chunks[0]["chunk_index"] == 0 and chunks[-1]["chunk_index"] == chunks[-1]["num_chunks"] - 1
    for streaming in (False, True):
        corpus = WeightCorpus.from_folder(zoo, streaming=streaming)
        for n in (2, 3, 4, 6):  # streaming: by file, by row group, by model_id hash
            parts = [ids(corpus.shard(n, i)) for i in range(n)]
            flat = [m for p in parts for m in p]
            assert sorted(flat) == [f"m{i}" for i in range(5)], (streaming, n, parts)
    assert [len(WeightCorpus.from_folder(zoo).shard(2, i)) for i in range(2)] == [3, 2]


def test_filter_metadata_summary(zoo):
    corpus = WeightCorpus.from_folder(zoo)
    df = corpus.metadata()
    assert list(df["model_id"]) == [f"m{i}" for i in range(5)] and "weights" not in df
    assert list(df["num_params"]) == [2464, 2410, 19210, 2464, 2410]
    assert ids(corpus.filter(task="mnist")) == ["m1", "m3"]
    assert ids(corpus.filter(tasks=["digits"], min_test_acc=0.65)) == ["m2", "m4"]
    assert ids(corpus.filter(arch_family="cnn")) == ["m0", "m3"]
    assert ids(WeightCorpus.from_folder(zoo, streaming=True).filter(task="mnist")) == ["m1", "m3"]
    s = corpus.summary()
    manifest = json.loads((zoo / "corpus.json").read_text())  # the summary, and the shards it should hold
    assert {k: manifest[k] for k in s} == s and manifest["num_shards"] == 3 == len(manifest["shards"])
    assert (
        s["num_checkpoints"] == 5
        and list(s["tasks"]) == ["digits", "mnist"]
        and s["families"] == ["cnn", "mlp"]
    )
    assert s["num_runs"] == 3 and s["num_rows"] > 5 and s["zoo_kinds"] == {"independent": 5}
    assert s["tasks"]["digits"] == pytest.approx(
        {"checkpoints": 3, "mean": 0.7, "min": 0.5, "max": 0.9, "count": 3}
    )
    assert s["tasks"]["mnist"] == pytest.approx(
        {"checkpoints": 2, "mean": 0.7, "min": 0.6, "max": 0.8, "count": 2}
    )
    assert corpus.filter(task="mnist").summary()["num_checkpoints"] == 2
    empty = corpus.filter(task="nope")
    assert len(empty) == 0 and empty.summary()["num_checkpoints"] == 0 and ids(empty.shard(2, 1)) == []
    card = (zoo / "README.md").read_text()
    assert "path: data/*.parquet" in card and "| mnist | 2 | 0.7000 |" in card
    direct = datasets.load_dataset(str(zoo), split="train")  # plain datasets reads the card's configs
    assert direct.num_rows == corpus.dataset.num_rows and direct.features == corpus.dataset.features


def test_push_needs_the_whole_local_folder(zoo):
    corpus = WeightCorpus.from_folder(zoo)
    with pytest.raises(ValueError, match="local folder"):
        corpus.filter(task="mnist").push_to_hub("me/zoo")
    assert (
        corpus.filter(task="mnist").source == corpus.source == str(zoo.resolve())
    )  # kept for training records


def test_ingest_state_dicts_accepts_modules(tmp_path):
    corpus = ingest_state_dicts([(trained(TINY), CheckpointMetadata("t", arch_spec=TINY))], tmp_path / "c")
    assert ids(corpus) == ["t"] and corpus.checkpoints()[0].metadata.zoo_kind == "independent"
