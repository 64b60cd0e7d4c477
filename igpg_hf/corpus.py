"""The weight corpus: trained checkpoints as rows of parquet shards, readable with `datasets`.

A corpus folder holds ``data/shard-XXXXX.parquet`` (one row per checkpoint, or per piece of a
checkpoint larger than ``max_row_bytes``), ``README.md`` (a dataset card whose ``configs`` block makes
``datasets.load_dataset(folder_or_repo)`` work) and ``corpus.json`` (summary figures). Weights are
stored as the exact bytes of `WeightLayout.to_bytes`, so every dtype and buffer round-trips bit for bit.
Rows of one checkpoint are consecutive and never cross a parquet row group, so sharding by file or by
row group never splits a checkpoint.
"""

from __future__ import annotations

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
    }
)
SCHEMA: pa.Schema = FEATURES.arrow_schema
META_COLUMNS = [c for c in FEATURES if c != "weights"]
ZOO_KINDS = ("independent", "shared_init", "finetuned", "ingested")
_ROW_GROUP_BYTES = 64 * 2**20
_SHARD_RE = re.compile(r"shard-(\d+)\.parquet")


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
        raise ValueError(
            f"{model_id!r}: state dict does not match arch_spec {spec.family}: "
            f"missing keys {missing[:5]}, unexpected keys {extra[:5]}"
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
    missing = set(FEATURES) - set(meta.schema.names)
    if missing:
        raise ValueError(f"parquet shard {path} lacks corpus column(s) {sorted(missing)}")
    return meta


def _shard_files(path: Path) -> list[Path]:
    return sorted((path / "data").glob("*.parquet"))


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


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


class CorpusWriter:
    """Appends checkpoints to a corpus folder as atomic parquet shards; reopening a folder resumes it."""

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
        data = self.path / "data"
        data.mkdir(parents=True, exist_ok=True)
        for stale in data.glob(".*.tmp"):  # left by an interrupted shard write
            stale.unlink()
        if overwrite:
            for f in [*_shard_files(self.path), self.path / "README.md", self.path / "corpus.json"]:
                f.unlink(missing_ok=True)
        self._written: set[str] = set()
        self._next_index = 0
        for f in _shard_files(self.path):
            _check_shard(f)
            self._written.update(pq.read_table(f, columns=["model_id"]).column("model_id").to_pylist())
            m = _SHARD_RE.fullmatch(f.name)
            self._next_index = max(self._next_index, int(m.group(1)) + 1 if m else 0)
        if self._written:
            logger.info("resuming corpus %s: %d checkpoints already written", self.path, len(self._written))
        self._buffer: list[list[dict[str, Any]]] = []  # one list of rows per checkpoint
        self._buffer_ids: set[str] = set()

    def __enter__(self) -> CorpusWriter:
        return self

    def __exit__(self, exc_type, *exc) -> None:
        if exc_type is None:
            self.close()
        else:  # keep what was validated; leave the card for a clean close
            self.flush()

    @property
    def done_ids(self) -> set[str]:
        """model_ids already in the corpus: written shards and buffered rows."""
        return self._written | self._buffer_ids

    def add(
        self,
        state_dict: dict[str, torch.Tensor] | nn.Module,
        metadata: CheckpointMetadata | dict,
        layout: WeightLayout | None = None,
    ) -> None:
        """Validate a checkpoint and buffer its row(s); a shard is written when the buffer is full."""
        meta = CheckpointMetadata.coerce(metadata)
        if meta.model_id in self.done_ids:
            raise ValueError(f"model_id {meta.model_id!r} is already in the corpus at {self.path}")
        if isinstance(state_dict, nn.Module):
            state_dict = state_dict.state_dict()
        bad = [k for k, v in state_dict.items() if not isinstance(v, torch.Tensor)]
        if bad:
            raise ValueError(f"{meta.model_id!r}: state dict entries {bad[:5]} are not tensors")
        sd = {k: v.detach().cpu() for k, v in state_dict.items()}
        if meta.arch_spec is not None:
            _check_against_spec(sd, meta.arch_spec, meta.model_id)
            sd = {
                k: sd[k] for k in _spec_shapes(meta.arch_spec.to_json())
            }  # module order, e.g. for safetensors
        try:
            layout = layout or WeightLayout.from_state_dict(sd)
            layout.validate(sd)
        except (TypeError, ValueError) as e:
            raise ValueError(f"{meta.model_id!r}: {e}") from e
        data = layout.to_bytes(sd)
        n = max(1, math.ceil(len(data) / self.max_row_bytes))
        base = {
            **meta.to_row(),
            "layout": layout.to_json(),
            "num_params": layout.num_float,
            "num_chunks": n,
            "weights_sha256": hashlib.sha256(data).hexdigest(),
        }
        m = self.max_row_bytes
        self._buffer.append(
            [{**base, "chunk_index": i, "weights": data[i * m : (i + 1) * m]} for i in range(n)]
        )
        self._buffer_ids.add(meta.model_id)
        rows = sum(len(c) for c in self._buffer)
        nbytes = sum(len(r["weights"]) for c in self._buffer for r in c)
        if rows >= self.shard_rows or nbytes >= self.max_shard_bytes:
            self.flush()

    def flush(self) -> None:
        """Write the buffered rows as one new shard (atomically: temporary file, then rename)."""
        if not self._buffer:
            return
        final = self.path / "data" / f"shard-{self._next_index:05d}.parquet"
        tmp = final.with_name(f".{final.name}.tmp")
        small_cols = META_COLUMNS  # no dictionary/statistics for the weight bytes
        try:
            with pq.ParquetWriter(tmp, SCHEMA, use_dictionary=small_cols, write_statistics=small_cols) as pw:
                group: list[dict[str, Any]] = []
                for ckpt_rows in self._buffer:  # row groups hold whole checkpoints
                    group.extend(ckpt_rows)
                    if sum(len(r["weights"]) for r in group) >= _ROW_GROUP_BYTES:
                        pw.write_table(pa.Table.from_pylist(group, schema=SCHEMA))
                        group = []
                if group:
                    pw.write_table(pa.Table.from_pylist(group, schema=SCHEMA))
            os.replace(tmp, final)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        logger.info("wrote %s (%d checkpoints)", final, len(self._buffer))
        self._written |= self._buffer_ids
        self._buffer, self._buffer_ids = [], set()
        self._next_index += 1

    def close(self) -> WeightCorpus:
        """Flush, write README.md and corpus.json, and open the corpus."""
        self.flush()
        if not _shard_files(self.path):
            raise ValueError(f"no checkpoints were added to the corpus at {self.path}")
        corpus = WeightCorpus.from_folder(self.path)
        summary = corpus.summary()
        _atomic_write(self.path / "corpus.json", json.dumps(summary, indent=2) + "\n")
        write_card(corpus_card(summary), self.path)
        return corpus


class WeightCorpus:
    """A corpus of checkpoints over a `datasets.Dataset` or `IterableDataset` of stored rows."""

    def __init__(
        self,
        dataset: datasets.Dataset | datasets.IterableDataset,
        path: str | os.PathLike | None = None,
        source: str | None = None,
    ):
        missing = set(FEATURES) - set(dataset.column_names or FEATURES)
        if missing:
            raise ValueError(f"dataset lacks corpus column(s) {sorted(missing)}")
        self.dataset = dataset
        self.streaming = isinstance(dataset, datasets.IterableDataset)
        self.path = Path(path) if path is not None else None  # set only when the rows are exactly a folder's
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
        cls, path: str | os.PathLike, streaming: bool = False, split: str = "train"
    ) -> WeightCorpus:
        """Open a local corpus folder; every shard's parquet footer is checked first."""
        path = Path(path).expanduser()
        if not path.is_dir():
            raise FileNotFoundError(f"no corpus folder at {path}")
        files = _shard_files(path)
        if not files:
            raise ValueError(f"corpus folder {path} holds no parquet shards under data/")
        for f in files:
            _check_shard(f)
        ds = datasets.load_dataset(
            "parquet",
            data_files={"train": [str(f) for f in files]},
            split=split,
            features=FEATURES,
            streaming=streaming,
        )
        return cls(ds, path=path)

    @classmethod
    def from_hub(
        cls, repo_id: str, streaming: bool = False, revision: str | None = None, split: str = "train"
    ) -> WeightCorpus:
        """Open a corpus dataset repo on the Hugging Face Hub (``streaming=True`` reads shards on demand)."""
        ds = datasets.load_dataset(repo_id, split=split, streaming=streaming, revision=revision)
        return cls(ds, source=repo_id)

    def __iter__(self) -> Iterator[Checkpoint]:
        """Checkpoints in storage order, chunks reassembled and SHA-256 verified."""
        for model_id, rows in itertools.groupby(self.dataset, key=lambda r: r["model_id"]):
            rows = list(rows)
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
        """All columns but the weights, one row per checkpoint (streaming corpora are read through)."""
        meta = self.dataset.select_columns(META_COLUMNS)
        if self.streaming:
            import pandas

            df = pandas.DataFrame(list(meta), columns=META_COLUMNS)
        else:
            df = meta.to_pandas()
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


def ingest_state_dicts(
    items: Iterable[tuple[dict[str, torch.Tensor] | nn.Module, CheckpointMetadata | dict]],
    out_dir: str | os.PathLike,
    **writer_kwargs: Any,
) -> WeightCorpus:
    """Write (state dict or module, metadata) pairs to a corpus; ids already there are skipped (resume)."""
    writer = CorpusWriter(out_dir, **writer_kwargs)
    try:
        for sd, meta in items:
            meta = CheckpointMetadata.coerce(meta, zoo_kind="ingested")
            if meta.model_id in writer.done_ids:
                logger.info("skipping %s: already in the corpus", meta.model_id)
                continue
            writer.add(sd, meta)
    except BaseException:
        writer.flush()  # what was validated stays, so a rerun resumes
        raise
    return writer.close()


def _load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    obj = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(f"{path} does not hold a state dict of tensors")
    return obj


def ingest_folder(
    folder: str | os.PathLike,
    out_dir: str | os.PathLike,
    metadata_file: str = "metadata.json",
    allow_missing_metadata: bool = False,
    **writer_kwargs: Any,
) -> WeightCorpus:
    """Ingest .safetensors/.pt/.pth state dicts, described by metadata.json (name -> dict) or metadata.jsonl."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"no checkpoint folder at {folder}")
    files = sorted(
        p for p in folder.rglob("*") if p.suffix in (".safetensors", ".pt", ".pth") and p.is_file()
    )
    if not files:
        raise ValueError(f"no .safetensors, .pt or .pth files in {folder}")
    meta_path = folder / metadata_file
    meta_path = next((p for p in (meta_path, meta_path.with_suffix(".jsonl")) if p.exists()), meta_path)
    table: Any = {}
    if meta_path.exists():
        text = meta_path.read_text(encoding="utf-8")
        table = (
            [json.loads(x) for x in text.splitlines() if x.strip()]
            if meta_path.suffix == ".jsonl"
            else json.loads(text)
        )
    if isinstance(table, list):  # records with a "file" field
        if not all(isinstance(d, dict) and "file" in d for d in table):
            raise ValueError(f"every record of {meta_path} needs a 'file' field")
        table = {d["file"]: d for d in table}
    names = {f: f.relative_to(folder).as_posix() for f in files}
    missing = [n for n in names.values() if n not in table and Path(n).name not in table]
    if missing and not allow_missing_metadata:
        raise ValueError(
            f"no metadata for {missing[:10]} in {meta_path} (pass allow_missing_metadata=True "
            "to use file stems as model ids)"
        )
    unused = set(table) - set(names.values()) - {Path(n).name for n in names.values()}
    if unused:
        raise ValueError(f"{meta_path} describes files not found in {folder}: {sorted(unused)[:10]}")

    def items():
        for f, name in names.items():
            meta = dict(table.get(name, table.get(Path(name).name, {})))
            meta.setdefault("model_id", str(Path(name).with_suffix("")))
            yield _load_state_dict(f), meta

    return ingest_state_dicts(items(), out_dir, **writer_kwargs)
