"""Issue 12: whatever the writer accepts reads back bit for bit, and damage to a corpus is named, not served.

Each test builds a small input of the kind the issue reports and fails on the code before the fix.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
from pathlib import Path

import datasets
import pyarrow.parquet as pq
import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from igpg_hf.corpus import CheckpointError, CorpusWriter, WeightCorpus
from igpg_hf.files import FolderInUseError
from igpg_hf.weights.layout import WeightLayout
from igpg_hf.zoo.architectures import get_architecture, list_architectures

FIXTURES = Path(__file__).parent / "fixtures"
DTYPES = [
    torch.float16,
    torch.bfloat16,
    torch.float32,
    torch.float64,
    torch.int64,
    torch.int32,
    torch.int16,
    torch.int8,
    torch.uint8,
    torch.bool,
]
# odd widths for every architecture family: entry sizes that are not multiples of 8 bytes
ODD_WIDTHS = {
    "cnn": {"channels": [5, 3, 3], "fc": [7]},
    "cnn1d": {"channels": [5, 3], "fc": [7]},
    "mlp": {"hidden": [5, 3]},
    "resnet": {"width": 5},
}


@pytest.fixture(autouse=True)
def _datasets_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setattr(
        datasets.config, "HF_DATASETS_CACHE", str(tmp_path_factory.getbasetemp() / "hf_cache")
    )


def _values(dtype: torch.dtype, shape: tuple[int, ...], seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    if dtype == torch.bool:
        return torch.randint(0, 2, shape, generator=g).bool()
    if dtype.is_floating_point:
        return torch.randn(shape, generator=g).to(dtype)
    return torch.randint(0, 100, shape, generator=g).to(dtype)


def _same(a: dict, b: dict) -> bool:
    return list(a) == list(b) and all(
        a[k].dtype == b[k].dtype
        and a[k].shape == b[k].shape
        and torch.equal(a[k].reshape(-1).view(torch.uint8), b[k].contiguous().reshape(-1).view(torch.uint8))
        for k in a
    )


def _cases() -> dict[str, dict[str, torch.Tensor]]:
    cases = {}
    for i, (d1, d2) in enumerate(itertools.product(DTYPES, DTYPES)):  # every alignment of d2 after d1
        for n in (1, 3):
            cases[f"{d1}-{n}-{d2}".replace("torch.", "")] = {
                "a": _values(d1, (n,), i),
                "b": _values(d2, (2, 3), i + 1),
                "c": _values(d1, (), i + 2),
            }
    for k in range(1, 5):  # BatchNorm's int64 counter at byte offsets 4 * (k + 2k + 4k ...)
        torch.manual_seed(k)
        bn = nn.Sequential(nn.Linear(2, k), nn.BatchNorm1d(k))
        bn[1].num_batches_tracked.fill_(k)
        cases[f"batchnorm-{k}"] = bn.state_dict()
    cases["zero-dim-before-int64"] = {"s": torch.tensor(0.5), "n": torch.tensor(3, dtype=torch.int64)}
    cases["zero-element"] = {"w": torch.randn(3, 2), "e": torch.zeros(0, 4), "b": torch.randn(3).half()}
    return cases


CASES = _cases()


def test_layout_round_trip_every_alignment():
    for name, sd in CASES.items():
        layout = WeightLayout.from_state_dict(sd)
        assert _same(layout.from_bytes(layout.to_bytes(sd)), sd), name


@pytest.mark.parametrize("family", sorted(ODD_WIDTHS))
def test_corpus_round_trip_every_architecture_at_odd_widths(tmp_path, family):
    def odd(name):  # odd widths, as many layers as the preset has (e.g. the two-conv LoRA base)
        params = get_architecture(name).to_dict()
        return {
            k: v[: len(params[k])] if isinstance(v, list) and k in params else v
            for k, v in ODD_WIDTHS[family].items()
        }

    specs = [
        get_architecture(n, **odd(n)) for n in list_architectures() if get_architecture(n).family == family
    ]
    sds = {}
    with CorpusWriter(tmp_path / "c") as w:
        for i, spec in enumerate(specs):
            torch.manual_seed(i)
            module = spec.build()
            for b in module.buffers():
                b.add_(1 if b.is_floating_point() else 3)
            sds[f"m{i}"] = module.state_dict()
            w.add(module, {"model_id": f"m{i}", "arch_spec": spec})
        if family == "mlp":  # the generic cases ride along with one family
            for name, sd in CASES.items():
                sds[name] = sd
                w.add(sd, {"model_id": name})
    got = {c.metadata.model_id: c for c in WeightCorpus.from_folder(tmp_path / "c")}
    assert set(got) == set(sds)
    for mid, sd in sds.items():
        assert _same(got[mid].state_dict(), sd), mid
        if got[mid].arch() is not None:
            got[mid].build_module()  # loads strictly


def test_corpus_written_before_the_fix_reads_back(tmp_path):
    """tests/fixtures/corpus_v1 was written by commit 14a746e; its bytes were right all along."""
    expected = load_file(str(FIXTURES / "corpus_v1_expected.safetensors"))
    corpus = WeightCorpus.from_folder(FIXTURES / "corpus_v1")
    assert not corpus.row_checked  # a legacy corpus: no row checksums, still readable
    got = {c.metadata.model_id: c.state_dict() for c in corpus}
    assert sorted(got) == ["bn", "cnn", "mixed"]
    for mid, sd in got.items():
        want = {k.split("/", 1)[1]: v for k, v in expected.items() if k.startswith(mid + "/")}
        assert _same(sd, {k: want[k] for k in sd}) and set(sd) == set(want), mid  # safetensors sorts its keys
    # resuming it keeps its format (one schema per corpus) and records its shards
    path = shutil.copytree(FIXTURES / "corpus_v1", tmp_path / "c")
    with CorpusWriter(path) as w:
        w.add({"x": torch.ones(3)}, {"model_id": "new"})
    corpus = WeightCorpus.from_folder(path)
    assert [c.metadata.model_id for c in corpus][-1] == "new" and len(corpus) == 4
    assert json.loads((path / "corpus.json").read_text())["num_shards"] == 2


def test_meta_sparse_and_percent_refused_by_name(tmp_path):
    w = CorpusWriter(tmp_path / "c")
    with pytest.raises(CheckpointError, match="'w' is a meta tensor"):
        w.add({"w": torch.empty(3, device="meta")}, {"model_id": "m"})
    with pytest.raises(CheckpointError, match="'w' has layout torch.sparse_coo"):
        w.add({"w": torch.eye(3).to_sparse()}, {"model_id": "s"})
    with pytest.raises(ValueError, match=r"test_acc=93.8 is outside \[0, 1\].*0.938"):
        w.add({"w": torch.ones(2)}, {"model_id": "p", "test_acc": 93.8})
    w.release()


def _small_corpus(path: Path, n: int = 3) -> Path:
    with CorpusWriter(path, shard_rows=1) as w:
        for i in range(n):
            w.add({"w": torch.full((4,), float(i))}, {"model_id": f"m{i}", "task": "digits", "test_acc": 0.5})
    return path


def test_metadata_columns_are_checksummed(tmp_path):
    path = _small_corpus(tmp_path / "c")
    rows = WeightCorpus.from_folder(path).dataset
    for column, value in (("task", "digitz"), ("test_acc", 0.95), ("layout", '[["w", [4], "float16"]]')):
        damaged = WeightCorpus(
            rows.map(lambda r, i, c=column, v=value: {c: v} if i == 1 else {}, with_indices=True)
        )
        with pytest.raises(ValueError, match="'m1'.*row_sha256"):
            list(damaged)
        with pytest.raises(ValueError, match="'m1'.*row_sha256"):
            damaged.summary()
    # the same change written into the shard file: the manifest's file checksum names the shard
    shard = path / "data" / "shard-00001.parquet"
    t = pq.read_table(shard)
    pq.write_table(t.set_column(t.column_names.index("task"), "task", [["digitz"]]), shard)
    with pytest.raises(ValueError, match="shard-00001.parquet"):
        WeightCorpus.from_folder(path)
    (path / "corpus.json").unlink()  # without a manifest the row checksum still catches it
    with pytest.raises(ValueError, match="'m1'.*row_sha256"):
        WeightCorpus.from_folder(path).summary()


def test_missing_truncated_and_in_place_damaged_shards_are_named(tmp_path):
    path = _small_corpus(tmp_path / "c")
    assert len(WeightCorpus.from_folder(path)) == 3  # fills the datasets cache
    shard = path / "data" / "shard-00001.parquet"
    data, st = bytearray(shard.read_bytes()), shard.stat()
    data[len(data) // 3] ^= 0xFF
    shard.write_bytes(bytes(data))
    os.utime(shard, ns=(st.st_atime_ns, st.st_mtime_ns))  # damaged in place, modification time kept
    with pytest.raises(ValueError, match="shard-00001.parquet.*SHA-256"):
        WeightCorpus.from_folder(path)
    shard.write_bytes(bytes(data[:-50]))
    with pytest.raises(ValueError, match="shard-00001.parquet.*truncated"):
        WeightCorpus.from_folder(path)
    shard.unlink()
    with pytest.raises(ValueError, match=r"should hold 3 shards and 3 checkpoints.*shard-00001.parquet"):
        WeightCorpus.from_folder(path)
    # rerunning the writer reports the missing shard and writes its checkpoint again
    with CorpusWriter(path, shard_rows=1) as w:
        assert w.done_ids == {"m0", "m2"}
        w.add({"w": torch.full((4,), 1.0)}, {"model_id": "m1", "task": "digits", "test_acc": 0.5})
    assert sorted(c.metadata.model_id for c in WeightCorpus.from_folder(path)) == ["m0", "m1", "m2"]


def test_two_writers_on_one_folder_are_refused(tmp_path):
    first = CorpusWriter(tmp_path / "c")
    first.add({"w": torch.ones(2)}, {"model_id": "a"})
    with pytest.raises(FolderInUseError, match=f"pid {os.getpid()}"):
        CorpusWriter(tmp_path / "c")
    first.close()
    with CorpusWriter(tmp_path / "c") as second:  # released by close
        second.add({"w": torch.zeros(2)}, {"model_id": "b"})
    assert len(WeightCorpus.from_folder(tmp_path / "c")) == 2


def test_damage_without_a_manifest_is_named_not_raw(tmp_path):
    """Library errors of damaged files (UnicodeDecodeError, thrift, decompression) name the corpus."""
    path = _small_corpus(tmp_path / "c")
    (path / "corpus.json").write_bytes(b"\xff\xfe{not json")
    with pytest.raises(ValueError, match=r"corpus.json is damaged"):
        WeightCorpus.from_folder(path)
    (path / "corpus.json").unlink()  # as a corpus copied without it
    shard = path / "data" / "shard-00001.parquet"
    data = bytearray(shard.read_bytes())
    for i in range(8, len(data) // 2):  # the data pages, not the footer
        data[i] ^= 0x5A
    shard.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=rf"({path}|'m1')"):
        list(WeightCorpus.from_folder(path))
