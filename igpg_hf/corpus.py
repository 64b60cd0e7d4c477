"""The weight corpus: trained checkpoints as rows of parquet shards, readable with `datasets`.

A corpus folder holds ``data/shard-XXXXX.parquet`` (one row per checkpoint, or per piece of a
checkpoint larger than ``max_row_bytes``), ``README.md`` (a dataset card whose ``configs`` block makes
``datasets.load_dataset(folder_or_repo)`` work) and ``corpus.json`` (summary figures, and the manifest: every
shard with its size, checksum and counts). Weights are stored as the exact bytes of `WeightLayout.to_bytes`, and
the writer decodes what it encoded before writing, so every checkpoint it accepts reads back bit for bit.
Rows of one checkpoint are consecutive and never cross a parquet row group, so sharding by file or by
row group never splits a checkpoint.

Integrity: ``weights_sha256`` covers a checkpoint's bytes and ``row_sha256`` every other column of a row (corpora
written before it existed lack the column and stay readable); opening a folder checks each shard against the
manifest (missing, truncated or altered shards are named). One writer per folder: a lock refuses a second one.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import logging
import math
import os
import re
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field, fields
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from datasets.distributed import split_dataset_by_node
from torch import nn

from .cards import corpus_card, write_card
from .checkpoint_formats import (
    CheckpointError,
    CheckpointSource,
    find_checkpoints,
    prefix_hint,
    strip_wrapper_prefixes,
)
from .files import FolderLock, atomic_path, atomic_write_json, remove_stale_temporaries
from .integrity import file_sha256
from .weights.layout import WeightLayout
from .zoo.architectures import ArchSpec

if TYPE_CHECKING:
    import pandas

logger = logging.getLogger(__name__)

__all__ = [
    "FEATURES",
    "CheckpointMetadata",
    "Checkpoint",
    "CorpusWriter",
    "WeightCorpus",
    "ingest_state_dicts",
    "ingest_folder",
    "CheckpointError",
]

_S, _I64, _F64, _I32 = (datasets.Value(t) for t in ("string", "int64", "float64", "int32"))
FEATURES = datasets.Features(
    {
        "model_id": _S,
        "run_id": _S,
        "zoo_kind": _S,
        "task": _S,
        "instruction": _S,
        "arch_family": _S,
        "arch_spec": _S,
        "arch_text": _S,
        "hyperparams": _S,
        "seed": _I64,
        "epoch": _I64,
        "train_acc": _F64,
        "test_acc": _F64,
        "train_loss": _F64,
        "test_loss": _F64,
        "layout": _S,
        "num_params": _I64,
        "chunk_index": _I32,
        "num_chunks": _I32,
        "weights": datasets.Value("binary"),
        "weights_sha256": _S,
        "row_sha256": _S,
    }
)
SCHEMA: pa.Schema = FEATURES.arrow_schema
# corpora written before row checksums (igpg_hf <= 0.1.0) lack the last column; they stay readable
LEGACY_FEATURES = datasets.Features({k: v for k, v in FEATURES.items() if k != "row_sha256"})
META_COLUMNS = [c for c in FEATURES if c != "weights"]
_HASHED_COLUMNS = [c for c in FEATURES if c not in ("weights", "row_sha256")]
FORMAT_VERSION = 2
ZOO_KINDS = ("independent", "shared_init", "finetuned", "ingested")
_ROW_GROUP_BYTES = 64 * 2**20
_SHARD_RE = re.compile(r"shard-(\d+)\.parquet")
REPORT_FILE = "ingest_report.json"


def row_checksum(row: dict[str, Any]) -> str:
    """SHA-256 of every column of a row but the weight bytes (covered by ``weights_sha256``) and itself."""
    values = [row[c].item() if hasattr(row[c], "item") else row[c] for c in _HASHED_COLUMNS]  # numpy scalars
    return hashlib.sha256(json.dumps(values, separators=(",", ":")).encode()).hexdigest()


@dataclass
class CheckpointMetadata:
    """Everything stored about a checkpoint except its weights; ``arch_text``/``arch_family`` come from the spec."""

    model_id: str
    task: str = ""
    instruction: str = ""
    arch_spec: ArchSpec | dict | None = None
    arch_text: str = ""
    arch_family: str = ""
    run_id: str = ""
    zoo_kind: str = "independent"
    hyperparams: dict = field(default_factory=dict)
    seed: int = -1
    epoch: int = -1
    train_acc: float = math.nan
    test_acc: float = math.nan
    train_loss: float = math.nan
    test_loss: float = math.nan

    def __post_init__(self):
        if not isinstance(self.model_id, str) or not self.model_id:
            raise ValueError(f"model_id must be a non-empty string, got {self.model_id!r}")
        if isinstance(self.arch_spec, str):
            self.arch_spec = ArchSpec.from_json(self.arch_spec) if self.arch_spec else None
        elif isinstance(self.arch_spec, dict):
            self.arch_spec = ArchSpec.from_dict(self.arch_spec)
        if self.arch_spec is not None:
            self.arch_text = self.arch_text or self.arch_spec.text()
            self.arch_family = self.arch_family or self.arch_spec.family
        if self.zoo_kind not in ZOO_KINDS:
            raise ValueError(f"zoo_kind must be one of {ZOO_KINDS}, got {self.zoo_kind!r}")
        self.hyperparams = dict(self.hyperparams or {})
        self.seed, self.epoch = int(self.seed), int(self.epoch)
        for name in ("train_acc", "test_acc", "train_loss", "test_loss"):
            value = getattr(self, name)
            setattr(self, name, math.nan if value is None else float(value))
        for name in ("train_acc", "test_acc"):
            value = getattr(self, name)
            if not math.isnan(value) and not 0.0 <= value <= 1.0:
                raise ValueError(
                    f"{self.model_id!r}: {name}={value} is outside [0, 1]; the corpus stores accuracies as "
                    f"fractions (pass {value / 100:.4g} for {value} %)"
                    if 1.0 < value <= 100.0
                    else f"{self.model_id!r}: {name}={value} is not an accuracy in [0, 1]"
                )

    @classmethod
    def coerce(cls, meta: CheckpointMetadata | dict, **defaults: Any) -> CheckpointMetadata:
        """A metadata object from itself or a dict (unknown keys are a ValueError); ``defaults`` fill gaps."""
        if isinstance(meta, cls):
            return meta
        known = {f.name for f in fields(cls)}
        unknown = set(meta) - known - {"file"}
        if unknown:
            raise ValueError(f"unknown metadata field(s) {sorted(unknown)}; allowed: {sorted(known)}")
        return cls(**{**defaults, **{k: v for k, v in meta.items() if k in known}})

    def to_row(self) -> dict[str, Any]:
        """The metadata columns of a corpus row."""
        row = asdict(self)
        row["arch_spec"] = self.arch_spec.to_json() if self.arch_spec is not None else ""
        try:
            row["hyperparams"] = json.dumps(self.hyperparams, sort_keys=True)
        except TypeError as e:
            raise ValueError(f"hyperparams of {self.model_id!r} are not JSON-serializable: {e}") from e
        return row

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> CheckpointMetadata:
        """Inverse of `to_row` (extra columns are ignored)."""
        kw = {f.name: row[f.name] for f in fields(cls) if f.name in row}
        kw["hyperparams"] = json.loads(kw.get("hyperparams") or "{}")
        return cls(**kw)


@dataclass
class Checkpoint:
    """One reassembled checkpoint: metadata, layout and the exact state-dict bytes."""

    metadata: CheckpointMetadata
    layout: WeightLayout
    weights: bytes
    # the corpus it was read from: a Hub dataset repo id, or a local folder's absolute path (None if unknown);
    # training records it, so that model cards can name the dataset
    source: str | None = None

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The state dict, bit-exact."""
        return self.layout.from_bytes(self.weights)

    def arch(self) -> ArchSpec | None:
        """The architecture spec, if the checkpoint has one."""
        return self.metadata.arch_spec if isinstance(self.metadata.arch_spec, ArchSpec) else None

    def build_module(self) -> nn.Module:
        """The architecture built and loaded with these weights (strict); ValueError without a spec."""
        spec = self.arch()
        if spec is None:
            raise ValueError(f"checkpoint {self.metadata.model_id!r} has no architecture spec to build")
        module = spec.build()
        module.load_state_dict(self.state_dict(), strict=True)
        return module

    def vector(self) -> torch.Tensor:
        """The floating-point weights as one float32 vector (``layout.vectorize``)."""
        return self.layout.vectorize(self.state_dict())


@lru_cache(maxsize=64)
def _spec_shapes(spec_json: str) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in ArchSpec.from_json(spec_json).build().state_dict().items()}


def _check_against_spec(sd: dict[str, torch.Tensor], spec: ArchSpec, model_id: str) -> None:
    expected = _spec_shapes(spec.to_json())
    missing, extra = sorted(set(expected) - set(sd)), sorted(set(sd) - set(expected))
    if missing or extra:
        stripped, prefix = strip_wrapper_prefixes(sd, set(expected))
        hint = (
            f" (its keys carry the wrapper prefix {prefix!r}; ingest_state_dicts / ingest_folder remove it)"
            if prefix and set(stripped) == set(expected)
            else prefix_hint(list(sd))
        )
        raise ValueError(
            f"{model_id!r}: state dict does not match arch_spec {spec.family}: "
            f"missing keys {missing[:5]}, unexpected keys {extra[:5]}{hint}"
        )
    for k, shape in expected.items():
        if tuple(sd[k].shape) != shape:
            raise ValueError(
                f"{model_id!r}: entry {k!r} has shape {tuple(sd[k].shape)}, arch_spec expects {shape}"
            )


def _check_shard(path: Path) -> pq.FileMetaData:
    """The parquet footer of a shard; ValueError naming the file if it is truncated or not ours."""
    try:
        meta = pq.ParquetFile(path).metadata
    except (pa.ArrowException, OSError) as e:
        raise ValueError(f"corrupted or truncated parquet shard {path}: {e}") from e
    missing = set(LEGACY_FEATURES) - set(meta.schema.names)
    if missing:
        raise ValueError(f"parquet shard {path} lacks corpus column(s) {sorted(missing)}")
    return meta


def _shard_files(path: Path) -> list[Path]:
    return sorted((path / "data").glob("*.parquet"))


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise ValueError(f"{path} is damaged (not readable JSON: {e})") from e


def _read_manifest(path: Path) -> dict[str, Any]:
    """corpus.json of a folder ({} if there is none)."""
    f = path / "corpus.json"
    if not f.is_file():
        return {}
    data = _read_json(f)
    if not isinstance(data, dict):
        raise ValueError(f"{f} is damaged (not a JSON object)")
    return data


def _shard_record(f: Path) -> dict[str, Any]:
    """What the manifest keeps of a shard: size, SHA-256, rows and checkpoints."""
    meta = _check_shard(f)
    chunk = pq.read_table(f, columns=["chunk_index"]).column("chunk_index").to_numpy()
    return {
        "bytes": f.stat().st_size,
        "sha256": file_sha256(f),
        "rows": int(meta.num_rows),
        "checkpoints": int((chunk == 0).sum()),
    }


def _check_against_manifest(f: Path, rec: dict[str, Any]) -> None:
    size = f.stat().st_size
    if size != rec.get("bytes", size):
        raise ValueError(
            f"corpus shard {f} has {size} bytes, {rec['bytes']} when it was written (truncated or altered)"
        )
    if "sha256" in rec and file_sha256(f) != rec["sha256"]:
        raise ValueError(f"corpus shard {f} does not match the SHA-256 recorded in corpus.json (corrupted)")


def _shard_index(name: str) -> int:
    m = _SHARD_RE.fullmatch(name)
    return int(m.group(1)) if m else -1


def _same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    return torch.equal(a.reshape(-1).view(torch.uint8), b.contiguous().reshape(-1).view(torch.uint8))


def _summarize(df: pandas.DataFrame) -> dict[str, Any]:
    """Corpus figures; ``tasks`` maps each task to its checkpoint count and test-accuracy mean/min/max/count."""

    def task_stats(g: pandas.DataFrame) -> dict[str, Any]:
        acc = g["test_acc"].dropna()
        known = not acc.empty
        return {
            "checkpoints": int(len(g)),
            "count": int(len(acc)),
            "mean": float(acc.mean()) if known else None,
            "min": float(acc.min()) if known else None,
            "max": float(acc.max()) if known else None,
        }

    return {
        "num_checkpoints": int(len(df)),
        "num_rows": int(df["num_chunks"].sum()),
        "num_runs": int(df.loc[df["run_id"] != "", "run_id"].nunique()),
        "families": sorted(set(df["arch_family"])),
        "zoo_kinds": {str(k): int(v) for k, v in sorted(df["zoo_kind"].value_counts().items())},
        "tasks": {str(t): task_stats(g) for t, g in df.groupby("task", sort=True)},
    }


@dataclass
class _Encoded:
    """A validated checkpoint ready to buffer: its rows and the SHA-256 of its bytes."""

    model_id: str
    sha256: str
    rows: list[dict[str, Any]]


class CorpusWriter:
    """Appends checkpoints to a corpus folder as atomic parquet shards; reopening a folder resumes it.

    The writer holds the folder's lock from construction to `close` (or the end of a ``with`` block): a second
    writer on the same folder, in this process or another, gets `igpg_hf.files.FolderInUseError`. After every
    shard it rewrites the manifest in ``corpus.json``; a shard written but not yet recorded (a crash in between)
    is adopted on resume, a recorded shard that is gone is reported and its checkpoints are written again.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        shard_rows: int = 256,
        max_row_bytes: int = 16 * 2**20,
        overwrite: bool = False,
        max_shard_bytes: int = 512 * 2**20,
    ):
        self.path = Path(path)
        if self.path.exists() and not self.path.is_dir():
            raise ValueError(f"corpus path {self.path} exists and is not a folder")
        if shard_rows < 1 or max_row_bytes < 1:
            raise ValueError(
                f"shard_rows and max_row_bytes must be positive, got {shard_rows}, {max_row_bytes}"
            )
        self.shard_rows, self.max_row_bytes, self.max_shard_bytes = shard_rows, max_row_bytes, max_shard_bytes
        self._lock = FolderLock(self.path, "corpus folder").acquire()
        try:
            self._open(overwrite)
        except BaseException:
            self._lock.release()
            raise

    def _open(self, overwrite: bool) -> None:
        data = self.path / "data"
        data.mkdir(parents=True, exist_ok=True)
        for folder in (self.path, data):  # left by an interrupted write; the lock says no one else writes
            for stale in remove_stale_temporaries(folder):
                logger.info("removed the stale temporary file %s", stale)
        if overwrite:
            for f in [
                *_shard_files(self.path),
                *(self.path / n for n in ("README.md", "corpus.json", REPORT_FILE)),
            ]:
                f.unlink(missing_ok=True)
        manifest = _read_manifest(self.path)
        recorded: dict[str, dict] = dict(manifest.get("shards") or {})
        present = {f.name: f for f in _shard_files(self.path)}
        gone = sorted(set(recorded) - set(present))
        if gone:
            logger.warning(
                "corpus %s: shard(s) %s recorded in corpus.json are missing; their checkpoints will be written "
                "again by this run",
                self.path,
                gone,
            )
        self._next_index = max((_shard_index(n) + 1 for n in [*recorded, *present]), default=0)
        self._shards: dict[str, dict] = {}
        self._sha: dict[str, str] = {}  # model_id -> weights_sha256 of everything written
        legacy = []
        for name, f in sorted(present.items()):
            if name in recorded:
                _check_against_manifest(f, recorded[name])
                rec = recorded[name]
            else:
                rec = _shard_record(f)
                if recorded:
                    logger.info("corpus %s: adopting %s, written but not yet recorded", self.path, name)
            meta = _check_shard(f)
            legacy.append("row_sha256" not in meta.schema.names)
            self._shards[name] = rec
            t = pq.read_table(f, columns=["model_id", "weights_sha256", "chunk_index"])
            for mid, sha, ci in zip(*(t.column(c).to_pylist() for c in t.column_names), strict=True):
                if ci == 0:
                    if mid in self._sha:
                        raise ValueError(
                            f"corpus {self.path} holds model_id {mid!r} twice (again in {f}); it was written by "
                            "two writers at once: rebuild it with overwrite=True"
                        )
                    self._sha[mid] = sha
        if any(legacy) and not all(legacy):
            raise ValueError(f"corpus {self.path} mixes shards with and without the row_sha256 column")
        # a corpus written before row checksums keeps its format, so its shards stay one dataset
        self._features = LEGACY_FEATURES if legacy and all(legacy) else FEATURES
        if self._sha:
            logger.info("resuming corpus %s: %d checkpoints already written", self.path, len(self._sha))
        self._buffer: list[_Encoded] = []
        if gone or set(present) != set(recorded):
            self._write_manifest()

    def __enter__(self) -> CorpusWriter:
        return self

    def __exit__(self, exc_type, *exc) -> None:
        try:
            if exc_type is None:
                self.close()
            else:  # keep what was validated; leave the card for a clean close
                self.flush()
        finally:
            self._lock.release()

    @property
    def done_ids(self) -> set[str]:
        """model_ids already in the corpus: written shards and buffered rows."""
        return set(self._sha)

    def weights_sha256(self, model_id: str) -> str | None:
        """SHA-256 of the stored bytes of ``model_id`` (written or buffered), None if it is not in the corpus."""
        return self._sha.get(model_id)

    def encode(
        self,
        state_dict: dict[str, torch.Tensor] | nn.Module,
        metadata: CheckpointMetadata | dict,
        layout: WeightLayout | None = None,
    ) -> _Encoded:
        """Validate a checkpoint and turn it into rows, proving they decode to the same bits; writes nothing.

        `CheckpointError` for anything wrong with the checkpoint itself (not tensors, meta or sparse tensors,
        non-finite values, keys or shapes unlike its ``arch_spec`` or ``layout``).
        """
        meta = CheckpointMetadata.coerce(metadata)
        mid = meta.model_id
        if isinstance(state_dict, nn.Module):
            state_dict = state_dict.state_dict()
        if not isinstance(state_dict, dict) or not state_dict:
            raise CheckpointError(
                f"{mid!r}: expected a non-empty state dict, got {type(state_dict).__name__}"
            )
        bad = [k for k, v in state_dict.items() if not isinstance(v, torch.Tensor)]
        if bad:
            raise CheckpointError(f"{mid!r}: state dict entries {bad[:5]} are not tensors")
        try:
            layout_from_sd = WeightLayout.from_state_dict(state_dict)  # refuses meta/sparse tensors by name
            sd = {k: v.detach().cpu() for k, v in state_dict.items()}
            if meta.arch_spec is not None:
                _check_against_spec(sd, meta.arch_spec, mid)
                sd = {
                    k: sd[k] for k in _spec_shapes(meta.arch_spec.to_json())
                }  # module order, e.g. for safetensors
                layout_from_sd = WeightLayout.from_state_dict(sd)
            layout = layout or layout_from_sd
            layout.validate(sd)
        except (TypeError, ValueError) as e:
            raise CheckpointError(f"{mid!r}: {e}") from e
        data = layout.to_bytes(sd)
        back = layout.from_bytes(data)  # the proof: what a reader will get, before anything is written
        differ = [e.name for e in layout.entries if not _same_bits(back[e.name], sd[e.name])]
        if differ:
            raise CheckpointError(f"{mid!r}: entries {differ[:5]} would not read back bit for bit")
        n = max(1, math.ceil(len(data) / self.max_row_bytes))
        sha = hashlib.sha256(data).hexdigest()
        base = {
            **meta.to_row(),
            "layout": layout.to_json(),
            "num_params": layout.num_float,
            "num_chunks": n,
            "weights_sha256": sha,
        }
        m = self.max_row_bytes
        rows = []
        for i in range(n):
            row = {**base, "chunk_index": i}
            if "row_sha256" in self._features:
                row["row_sha256"] = row_checksum(row)
            rows.append({**row, "weights": data[i * m : (i + 1) * m]})
        return _Encoded(mid, sha, rows)

    def add(
        self,
        state_dict: dict[str, torch.Tensor] | nn.Module | _Encoded,
        metadata: CheckpointMetadata | dict | None = None,
        layout: WeightLayout | None = None,
    ) -> None:
        """Validate a checkpoint and buffer its row(s); a shard is written when the buffer is full.

        ValueError if its ``model_id`` is already in the corpus; `CheckpointError` (a ValueError) if the
        checkpoint itself cannot be stored (see `encode`).
        """
        if not isinstance(state_dict, _Encoded):
            meta = CheckpointMetadata.coerce(metadata)
            if meta.model_id in self._sha:
                raise ValueError(f"model_id {meta.model_id!r} is already in the corpus at {self.path}")
            state_dict = self.encode(state_dict, meta, layout)
        enc = state_dict
        if enc.model_id in self._sha:
            raise ValueError(f"model_id {enc.model_id!r} is already in the corpus at {self.path}")
        self._buffer.append(enc)
        self._sha[enc.model_id] = enc.sha256
        rows = sum(len(c.rows) for c in self._buffer)
        nbytes = sum(len(r["weights"]) for c in self._buffer for r in c.rows)
        if rows >= self.shard_rows or nbytes >= self.max_shard_bytes:
            self.flush()

    def _write_manifest(self, summary: dict[str, Any] | None = None) -> None:
        manifest = {
            **(summary or {}),
            "format_version": FORMAT_VERSION if "row_sha256" in self._features else 1,
            "num_shards": len(self._shards),
            "num_checkpoints": sum(r["checkpoints"] for r in self._shards.values()),
            "num_rows": sum(r["rows"] for r in self._shards.values()),
            "shards": dict(sorted(self._shards.items())),
        }
        atomic_write_json(self.path / "corpus.json", manifest)

    def flush(self) -> None:
        """Write the buffered rows as one new shard (atomically), then record it in corpus.json."""
        if not self._buffer:
            return
        final = self.path / "data" / f"shard-{self._next_index:05d}.parquet"
        small_cols = [c for c in self._features if c != "weights"]  # no dictionary/statistics for the bytes
        schema = self._features.arrow_schema
        with atomic_path(final) as tmp:
            with pq.ParquetWriter(tmp, schema, use_dictionary=small_cols, write_statistics=small_cols) as pw:
                group: list[dict[str, Any]] = []
                for enc in self._buffer:  # row groups hold whole checkpoints
                    group.extend(enc.rows)
                    if sum(len(r["weights"]) for r in group) >= _ROW_GROUP_BYTES:
                        pw.write_table(pa.Table.from_pylist(group, schema=schema))
                        group = []
                if group:
                    pw.write_table(pa.Table.from_pylist(group, schema=schema))
        self._shards[final.name] = _shard_record(final)
        self._write_manifest()
        logger.info("wrote %s (%d checkpoints)", final, len(self._buffer))
        self._buffer = []
        self._next_index += 1

    def close(self) -> WeightCorpus:
        """Flush, write README.md and corpus.json, release the lock, and open the corpus."""
        try:
            self.flush()
            if not _shard_files(self.path):
                raise ValueError(f"no checkpoints were added to the corpus at {self.path}")
            corpus = WeightCorpus.from_folder(self.path)
            summary = corpus.summary()
            self._write_manifest(summary)
            write_card(corpus_card(summary), self.path)
        finally:
            self._lock.release()
        return corpus

    def release(self) -> None:
        """Give up the folder's lock without writing anything more (the buffer is dropped)."""
        self._buffer = []
        self._lock.release()


class WeightCorpus:
    """A corpus of checkpoints over a `datasets.Dataset` or `IterableDataset` of stored rows."""

    def __init__(
        self,
        dataset: datasets.Dataset | datasets.IterableDataset,
        path: str | os.PathLike | None = None,
        source: str | None = None,
    ):
        missing = set(LEGACY_FEATURES) - set(dataset.column_names or FEATURES)
        if missing:
            raise ValueError(f"dataset lacks corpus column(s) {sorted(missing)}")
        self.dataset = dataset
        self.streaming = isinstance(dataset, datasets.IterableDataset)
        self.path = Path(path) if path is not None else None  # set only when the rows are exactly a folder's
        # rows written before row checksums existed carry none; all others are verified when read
        self.row_checked = "row_sha256" in (dataset.column_names or FEATURES)
        # where the rows come from (a Hub dataset repo id or a folder's absolute path), kept by filter and shard
        self.source = source if source is not None else (str(self.path.resolve()) if self.path else None)

    @classmethod
    def load(
        cls,
        path_or_repo_id: str | os.PathLike,
        streaming: bool = False,
        revision: str | None = None,
        split: str = "train",
    ) -> WeightCorpus:
        """A local corpus folder if it exists, else a Hub dataset repo id."""
        p = str(path_or_repo_id)
        if (
            os.path.isdir(p)
            or os.path.isabs(p)
            or p.startswith((".", "~"))
            or p.count("/") > 1
            or os.path.exists(p)
        ):
            return cls.from_folder(p, streaming=streaming, split=split)
        return cls.from_hub(p, streaming=streaming, revision=revision, split=split)

    @classmethod
    def from_folder(
        cls, path: str | os.PathLike, streaming: bool = False, split: str = "train", verify: bool = True
    ) -> WeightCorpus:
        """Open a local corpus folder, checking it against its manifest first.

        ValueError naming the shard when one recorded in ``corpus.json`` is missing, truncated or altered (its
        SHA-256 is recomputed, so a shard damaged in place is found even when ``datasets`` has it cached), when a
        footer is unreadable, or when the folder holds fewer checkpoints than ``corpus.json`` counts.
        ``verify=False`` skips the SHA-256 of each shard (about a second per GB); sizes are still checked.
        """
        path = Path(path).expanduser()
        if not path.is_dir():
            raise FileNotFoundError(f"no corpus folder at {path}")
        files = _shard_files(path)
        manifest = _read_manifest(path)
        recorded = manifest.get("shards")
        if recorded is not None:
            gone = sorted(set(recorded) - {f.name for f in files})
            if gone:
                raise ValueError(
                    f"corpus {path} should hold {len(recorded)} shards and {manifest.get('num_checkpoints')} "
                    f"checkpoints (corpus.json), but shard(s) {gone} are missing; restore them, or rerun the "
                    "command that wrote the corpus to write their checkpoints again"
                )
            unrecorded = sorted({f.name for f in files} - set(recorded))
            if unrecorded:
                logger.warning(
                    "corpus %s: shard(s) %s are not recorded in corpus.json (a write was interrupted; rerunning "
                    "it records them)",
                    path,
                    unrecorded,
                )
            for f in files:
                if f.name in recorded:
                    rec = (
                        recorded[f.name]
                        if verify
                        else {k: v for k, v in recorded[f.name].items() if k != "sha256"}
                    )
                    _check_against_manifest(f, rec)
        if not files:
            raise ValueError(f"corpus folder {path} holds no parquet shards under data/")
        legacy = ["row_sha256" not in _check_shard(f).schema.names for f in files]
        if any(legacy) and not all(legacy):
            raise ValueError(f"corpus {path} mixes shards with and without the row_sha256 column")
        try:
            ds = datasets.load_dataset(
                "parquet",
                data_files={"train": [str(f) for f in files]},
                split=split,
                features=LEGACY_FEATURES if all(legacy) else FEATURES,
                streaming=streaming,
            )
        except (pa.ArrowException, OSError, datasets.exceptions.DatasetGenerationError) as e:
            raise ValueError(f"corpus {path}: a shard cannot be read ({e})") from e
        corpus = cls(ds, path=path)
        expected = manifest.get("num_checkpoints")
        if not streaming and isinstance(expected, int) and len(corpus) < expected:
            raise ValueError(
                f"corpus {path} holds {len(corpus)} checkpoints but corpus.json counts {expected}: shards are "
                "missing or were replaced"
            )
        return corpus

    @classmethod
    def from_hub(
        cls, repo_id: str, streaming: bool = False, revision: str | None = None, split: str = "train"
    ) -> WeightCorpus:
        """Open a corpus dataset repo on the Hugging Face Hub (``streaming=True`` reads shards on demand)."""
        ds = datasets.load_dataset(repo_id, split=split, streaming=streaming, revision=revision)
        return cls(ds, source=repo_id)

    def _rows(self) -> Iterator[dict[str, Any]]:
        """The stored rows; library errors of damaged data become ValueErrors naming the corpus."""
        where = self.path or "the corpus"
        it = iter(self.dataset)
        while True:
            try:
                row = next(it)
            except StopIteration:
                return
            except (
                pa.ArrowException,
                OSError,
                UnicodeDecodeError,
                datasets.exceptions.DatasetGenerationError,
            ) as e:
                raise ValueError(f"{where}: a shard cannot be read ({type(e).__name__}: {e})") from e
            yield row

    def _check_row(self, row: dict[str, Any]) -> None:
        if self.row_checked and row_checksum(row) != row["row_sha256"]:
            raise ValueError(
                f"checkpoint {row['model_id']!r} (chunk {row['chunk_index']}): its columns do not match their "
                f"SHA-256 (row_sha256): the stored metadata of {self.path or 'the corpus'} is damaged"
            )

    def __iter__(self) -> Iterator[Checkpoint]:
        """Checkpoints in storage order, chunks reassembled, every column SHA-256 verified."""
        for model_id, rows in itertools.groupby(self._rows(), key=lambda r: r["model_id"]):
            rows = list(rows)
            for r in rows:
                self._check_row(r)
            first, n = rows[0], rows[0]["num_chunks"]
            found = [r["chunk_index"] for r in rows]
            if found != list(range(n)):
                raise ValueError(f"checkpoint {model_id!r}: expected chunks 0..{n - 1}, found {found}")
            data = b"".join(r["weights"] for r in rows)
            if hashlib.sha256(data).hexdigest() != first["weights_sha256"]:
                raise ValueError(f"checkpoint {model_id!r}: weight bytes do not match their SHA-256")
            yield Checkpoint(
                CheckpointMetadata.from_row(first), WeightLayout.from_json(first["layout"]), data, self.source
            )

    def _chunk_index(self):
        return self.dataset.select_columns(["chunk_index"]).with_format("numpy")[:]["chunk_index"]

    def __len__(self) -> int:
        """Number of checkpoints (TypeError when streaming)."""
        if self.streaming:
            raise TypeError("a streaming corpus has no length; iterate it or use summary()")
        return int((self._chunk_index() == 0).sum()) if self.dataset.num_rows else 0

    def metadata(self) -> pandas.DataFrame:
        """All columns but the weights, one row per checkpoint (streaming corpora are read through).

        Every row's ``row_sha256`` is verified, so damaged metadata is an error here too, not a wrong figure.
        """
        columns = [c for c in META_COLUMNS if c in (self.dataset.column_names or META_COLUMNS)]
        meta = self.dataset.select_columns(columns)
        import pandas

        if self.streaming:
            df = pandas.DataFrame(list(meta), columns=columns)
        else:
            df = meta.to_pandas()
        if self.row_checked:
            for row in df.to_dict("records"):
                self._check_row(row)
        return df[df["chunk_index"] == 0].reset_index(drop=True)

    def summary(self) -> dict[str, Any]:
        """Checkpoints, runs, tasks, families and per-task test accuracy (the content of corpus.json)."""
        return _summarize(self.metadata())

    def checkpoints(self) -> list[Checkpoint]:
        """All checkpoints as a list."""
        return list(self)

    def filter(
        self,
        task: str | None = None,
        arch_family: str | None = None,
        tasks: list[str] | None = None,
        min_test_acc: float | None = None,
    ) -> WeightCorpus:
        """Checkpoints of the given task(s) (``task`` and ``tasks`` are united), family and min test accuracy."""
        allowed = ({task} if task is not None else set()) | set(tasks or ())

        def keep(task_col, family_col, acc_col):
            return [
                (not allowed or t in allowed)
                and (arch_family is None or f == arch_family)
                and (min_test_acc is None or a >= min_test_acc)  # NaN accuracy fails a minimum
                for t, f, a in zip(task_col, family_col, acc_col, strict=True)
            ]

        return WeightCorpus(
            self.dataset.filter(keep, input_columns=["task", "arch_family", "test_acc"], batched=True),
            source=self.source,
        )

    def shard(self, num_shards: int, index: int) -> WeightCorpus:
        """Part ``index`` of ``num_shards`` disjoint parts that never split a checkpoint."""
        if not 0 <= index < num_shards:
            raise ValueError(f"shard index {index} out of range for {num_shards} shards")
        ds = self.dataset
        if self.streaming:
            if ds.num_shards < num_shards:
                ds = ds.reshard()  # files into row groups, which hold whole checkpoints
            if ds.num_shards >= num_shards:
                return WeightCorpus(
                    split_dataset_by_node(ds, rank=index, world_size=num_shards, strategy="shards"),
                    source=self.source,
                )
            logger.info(
                "fewer row groups than shards: splitting by model_id hash (every part reads all rows)"
            )
            return WeightCorpus(
                ds.filter(
                    lambda ids: [zlib.crc32(i.encode()) % num_shards == index for i in ids],
                    input_columns=["model_id"],
                    batched=True,
                ),
                source=self.source,
            )
        starts = [int(i) for i in (self._chunk_index() == 0).nonzero()[0]] + [ds.num_rows]
        n = len(starts) - 1  # contiguous checkpoint ranges, sized as Dataset.shard(contiguous=True) does
        lo = (n // num_shards) * index + min(index, n % num_shards)
        hi = lo + n // num_shards + (1 if index < n % num_shards else 0)
        return WeightCorpus(ds.select(range(starts[lo], starts[hi]) if hi > lo else []), source=self.source)

    def push_to_hub(
        self,
        repo_id: str,
        private: bool | None = None,
        token: str | bool | None = None,
        commit_message: str = "Upload weight corpus with igpg_hf",
        revision: str | None = None,
        create_pr: bool = False,
    ):
        """Upload the corpus folder (data/*.parquet, README.md, corpus.json) to a Hub dataset repo in one commit.

        ``repo_id`` without a namespace goes to yours. Shards of an earlier push that the folder no longer holds
        are deleted in the same commit. Returns the commit (a str: its URL; ``.repo_url.repo_id`` is the
        namespaced id). Read it back with ``WeightCorpus.load(repo_id)`` (``streaming=True`` too).
        """
        from .hub import push_folder

        if self.path is None:
            raise ValueError(
                "only a corpus opened from a local folder (not filtered or sharded) can be pushed"
            )
        for name in ("README.md", "corpus.json"):
            if not (self.path / name).exists():
                raise ValueError(f"{self.path / name} is missing: close the CorpusWriter before pushing")
        return push_folder(
            self.path,
            repo_id,
            repo_type="dataset",
            private=private,
            token=token,
            revision=revision,
            create_pr=create_pr,
            commit_message=commit_message,
            allow_patterns=["data/*.parquet", "README.md", "corpus.json"],
            delete_patterns=["data/*.parquet"],
        )

    def __repr__(self) -> str:
        where = self.path or "derived"
        return f"WeightCorpus({where}, streaming={self.streaming}, rows={getattr(self.dataset, 'num_rows', '?')})"


def _strip_prefixes(
    sd: dict[str, torch.Tensor], meta: CheckpointMetadata, source: str
) -> dict[str, torch.Tensor]:
    """Wrapper prefixes removed (see `strip_wrapper_prefixes`); a hint logged when a prefix may remain."""
    expected = set(_spec_shapes(meta.arch_spec.to_json())) if isinstance(meta.arch_spec, ArchSpec) else None
    out, prefix = strip_wrapper_prefixes(sd, expected)
    if prefix:
        logger.info("%s: removed the key prefix %r that a wrapper added", source, prefix)
    elif expected is None and (hint := prefix_hint(list(sd))):
        logger.warning("%s: keys kept as they are%s", source, hint)
    return out


def _write_report(out_dir: Path, report: dict[str, Any]) -> None:
    with contextlib.suppress(OSError):  # never hide the error that stopped an ingest
        atomic_write_json(out_dir / REPORT_FILE, report)


def ingest_state_dicts(
    items: Iterable[tuple[Any, CheckpointMetadata | dict]],
    out_dir: str | os.PathLike,
    on_error: str = "raise",
    **writer_kwargs: Any,
) -> WeightCorpus:
    """Write (state dict, metadata) pairs to a corpus and return it; rerunning resumes.

    A state dict may be an ``nn.Module`` or a callable returning the state dict (read when its turn comes, so a
    read error belongs to one checkpoint). Keys lose the prefixes wrappers add (``module.``, ``_orig_mod.``, and
    with an ``arch_spec`` a Lightning attribute such as ``model.``). Nothing is dropped in silence:

    - a ``model_id`` given twice is a ValueError naming both sources (metadata ``"file"``, else the position);
    - an id already in the corpus (an earlier, interrupted run) is skipped when its bytes are the same (SHA-256)
      and is a ValueError when they differ;
    - ``on_error="skip"``: checkpoints that cannot be stored (`CheckpointError`: unreadable, pickled objects,
      non-finite values, keys unlike their ``arch_spec``) are skipped; ``"raise"`` stops at the first.

    ``out_dir/ingest_report.json`` lists what was ingested, resumed and skipped (with each error).
    """
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    out = Path(out_dir)
    prior_skips = writer_kwargs.pop("_skipped", [])
    writer = CorpusWriter(out, **writer_kwargs)
    report: dict[str, Any] = {"ingested": [], "resumed": [], "skipped": list(prior_skips)}
    seen: dict[str, str] = {}
    try:
        for i, (sd, raw_meta) in enumerate(items):
            source = str((raw_meta.get("file") if isinstance(raw_meta, dict) else None) or f"item {i}")
            meta = CheckpointMetadata.coerce(raw_meta, zoo_kind="ingested")
            mid = meta.model_id
            if mid in seen:
                raise ValueError(
                    f"two checkpoints have model_id {mid!r}: {seen[mid]} and {source}; give each its own model_id"
                )
            seen[mid] = source
            try:
                if callable(sd) and not isinstance(sd, nn.Module):
                    sd = sd()
                if isinstance(sd, nn.Module):
                    sd = sd.state_dict()
                if isinstance(sd, dict):
                    sd = _strip_prefixes(sd, meta, source)
                enc = writer.encode(sd, meta)
            except CheckpointError as e:
                if on_error == "raise":
                    raise (e if source in str(e) else CheckpointError(f"{source}: {e}")) from e
                report["skipped"].append({"source": source, "model_id": mid, "error": str(e)})
                logger.warning("skipping %s: %s", source, e)
                continue
            stored = writer.weights_sha256(mid)
            if stored is not None:
                if stored != enc.sha256:
                    raise ValueError(
                        f"model_id {mid!r} ({source}) is already in the corpus at {out} with other weights "
                        "(SHA-256 differs): give it another model_id, or ingest into a new folder"
                    )
                report["resumed"].append(mid)
                continue
            writer.add(enc)
            report["ingested"].append(mid)
    except BaseException:
        try:
            writer.flush()  # what was validated stays, so a rerun resumes
        finally:
            writer.release()
            _write_report(out, report)
        raise
    _write_report(out, report)
    if report["skipped"]:
        logger.warning("%d checkpoint(s) skipped; see %s", len(report["skipped"]), out / REPORT_FILE)
    return writer.close()


def _metadata_table(folder: Path, metadata_file: str) -> tuple[Path, dict[str, dict]]:
    meta_path = folder / metadata_file
    meta_path = next((p for p in (meta_path, meta_path.with_suffix(".jsonl")) if p.exists()), meta_path)
    if not meta_path.exists():
        return meta_path, {}
    try:
        text = meta_path.read_text(encoding="utf-8")
        table: Any = (
            [json.loads(x) for x in text.splitlines() if x.strip()]
            if meta_path.suffix == ".jsonl"
            else json.loads(text)
        )
    except (UnicodeDecodeError, ValueError) as e:
        raise ValueError(f"{meta_path} is not readable JSON: {e}") from e
    if isinstance(table, list):  # records with a "file" field
        if not all(isinstance(d, dict) and "file" in d for d in table):
            raise ValueError(f"every record of {meta_path} needs a 'file' field")
        files = [d["file"] for d in table]
        twice = sorted({f for f in files if files.count(f) > 1})
        if twice:
            raise ValueError(f"{meta_path} describes {twice} more than once")
        table = {d["file"]: d for d in table}
    if not isinstance(table, dict) or not all(isinstance(v, dict) for v in table.values()):
        raise ValueError(f"{meta_path} must map file names to metadata objects (or be a list of records)")
    return meta_path, table


def ingest_folder(
    folder: str | os.PathLike,
    out_dir: str | os.PathLike,
    metadata_file: str = "metadata.json",
    allow_missing_metadata: bool = False,
    on_error: str = "raise",
    **writer_kwargs: Any,
) -> WeightCorpus:
    """Ingest every checkpoint under ``folder``, described by metadata.json (name -> dict) or metadata.jsonl.

    Checkpoints are the files and folders `igpg_hf.checkpoint_formats.find_checkpoints` finds (PyTorch, Lightning,
    safetensors, NumPy, transformers and PEFT folders); weight files of other frameworks are refused by name.
    Metadata is looked up by the checkpoint's path relative to ``folder`` (a folder's own path for transformers and
    PEFT folders), by its weight file's path, or by a bare file name that only one checkpoint has. Without an entry
    the id is the path without suffix (``allow_missing_metadata=True``). Two checkpoints with one id are an error
    naming both; ``on_error`` and the report are those of `ingest_state_dicts` (refused files count as skipped).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"no checkpoint folder at {folder}")
    sources, refused = find_checkpoints(folder)
    if not sources and not refused:
        raise ValueError(
            f"no checkpoints (.safetensors, .pt, .pth, .bin, .ckpt, .npz, model folders) in {folder}"
        )
    meta_path, table = _metadata_table(folder, metadata_file)

    keys: dict[str, list[CheckpointSource]] = {}
    for s in sources:
        names = {s.name, s.files[0].relative_to(folder).as_posix()}
        for n in names:
            keys.setdefault(n, []).append(s)
        keys.setdefault("\0" + s.files[0].name, []).append(s)  # bare file name

    def entry(s: CheckpointSource) -> dict | None:
        for n in (s.name, s.files[0].relative_to(folder).as_posix()):
            if n in table:
                return table[n]
        bare = s.files[0].name
        if bare in table:
            owners = keys["\0" + bare]
            if len(owners) > 1:
                raise ValueError(
                    f"{meta_path} describes {bare!r}, a name {len(owners)} checkpoints share "
                    f"({', '.join(o.name for o in owners[:3])}); key the metadata by their paths"
                )
            return table[bare]
        return None

    metas = {s.name: entry(s) for s in sources}
    missing = [n for n, m in metas.items() if m is None]
    if missing and not allow_missing_metadata:
        raise ValueError(
            f"no metadata for {missing[:10]} in {meta_path} (pass allow_missing_metadata=True "
            "to use their paths as model ids)"
        )
    known = set(keys) | {k[1:] for k in keys if k.startswith("\0")}
    known |= {p.relative_to(folder).as_posix() for p, _ in refused} | {p.name for p, _ in refused}
    unused = set(table) - known
    if unused:
        raise ValueError(f"{meta_path} describes files not found in {folder}: {sorted(unused)[:10]}")

    items, owner = [], {}
    for s in sources:
        meta = dict(metas[s.name] or {})
        meta.setdefault("model_id", s.default_model_id())
        meta["file"] = s.name
        if s.hyperparams:
            meta["hyperparams"] = {**s.hyperparams, **(meta.get("hyperparams") or {})}
        if meta["model_id"] in owner:
            raise ValueError(
                f"two checkpoints have model_id {meta['model_id']!r}: {owner[meta['model_id']]} and {s.name} "
                f"(in {folder}); give each its own model_id in {meta_path.name}"
            )
        owner[meta["model_id"]] = s.name
        items.append((s.load, meta))
    skipped = [{"source": str(p.relative_to(folder)), "model_id": None, "error": why} for p, why in refused]
    if refused and on_error == "raise":
        raise CheckpointError(
            "cannot ingest "
            + "; ".join(why for _, why in refused[:3])
            + (" ..." if len(refused) > 3 else "")
            + " (on_error='skip' ingests the rest and lists these in the report)"
        )
    return ingest_state_dicts(items, out_dir, on_error=on_error, _skipped=skipped, **writer_kwargs)
