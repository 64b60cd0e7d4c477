"""Checkpoint files as people have them: found in a folder, read, or refused by name.

Read: PyTorch files (``.pt``, ``.pth``, ``.bin`` such as ``pytorch_model.bin``; a state dict, or one under
``state_dict`` / ``model_state_dict`` / ``model``), Lightning ``.ckpt`` files (``{"state_dict": ...}``),
``.safetensors`` files, ``.npz`` archives, transformers model folders (``config.json`` with ``model.safetensors``,
``pytorch_model.bin`` or a sharded ``*.index.json``) and PEFT adapter folders (``adapter_config.json`` with
``adapter_model.safetensors``; the adapter config, base model included, goes into the row's hyperparameters).
Refused by name: weight formats of other frameworks (``.h5``, ``.onnx``, ``.gguf``, ...), files that hold pickled
Python objects (a whole ``nn.Module``; loading them would run code from the file) and unreadable files.
Everything else in a folder (JSON, text, images) is not a checkpoint and is left alone.

Wrapper prefixes: DDP / ``DataParallel`` (``module.``) and ``torch.compile`` (``_orig_mod.``) prefix every key;
`strip_wrapper_prefixes` removes them, and with the expected keys of an architecture also removes a Lightning
attribute prefix (``model.``, ``net.``...), so normalization statistics and layouts are keyed by layer names.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

logger = logging.getLogger(__name__)

__all__ = [
    "CheckpointError",
    "CheckpointSource",
    "find_checkpoints",
    "load_state_dict_file",
    "strip_wrapper_prefixes",
    "READABLE_SUFFIXES",
    "REFUSED_SUFFIXES",
]

READABLE_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin", ".ckpt", ".npz")
# weight files of other frameworks: never skipped in silence, refused by name
REFUSED_SUFFIXES = {
    ".h5": "Keras/HDF5",
    ".hdf5": "HDF5",
    ".keras": "Keras",
    ".msgpack": "Flax",
    ".onnx": "ONNX",
    ".gguf": "GGUF",
    ".ggml": "GGML",
    ".tflite": "TensorFlow Lite",
    ".pb": "TensorFlow",
    ".npy": "a single NumPy array (no entry names)",
    ".pkl": "pickle",
    ".pickle": "pickle",
    ".joblib": "joblib pickle",
    ".mlmodel": "Core ML",
}
WRAPPER_PREFIXES = ("module.", "_orig_mod.")  # DDP / DataParallel, torch.compile
_NESTED_KEYS = ("state_dict", "model_state_dict", "model")  # Lightning, common training scripts
_MODEL_FILES = ("model.safetensors", "pytorch_model.bin")
_INDEX_FILES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
_ADAPTER_FILES = ("adapter_model.safetensors", "adapter_model.bin")


class CheckpointError(ValueError):
    """One checkpoint cannot be stored: unreadable, not plain tensors, non-finite, or not what its metadata says.

    Ingestion with ``on_error="skip"`` skips these (and lists them in a report); other errors stop it.
    """


@dataclass
class CheckpointSource:
    """One checkpoint found in a folder: a file, or a transformers / PEFT folder (``name`` is relative to it)."""

    name: str
    path: Path
    kind: str  # "file", "sharded", "transformers", "peft"
    files: list[Path]
    hyperparams: dict[str, Any] = field(default_factory=dict)

    def default_model_id(self) -> str:
        """The id used when no metadata names one: the path without suffix (a folder's own name at the top)."""
        if self.kind == "file":
            return str(Path(self.name).with_suffix(""))
        if self.kind == "sharded":
            return str(Path(self.name).parent / Path(self.name).name.split(".")[0]).removeprefix("./")
        return self.path.name if self.name == "." else self.name

    def load(self) -> dict[str, torch.Tensor]:
        """The state dict (`CheckpointError` naming the file if it cannot be read)."""
        if len(self.files) == 1:
            return load_state_dict_file(self.files[0])
        out: dict[str, torch.Tensor] = {}
        for f in self.files:  # shards: each key in exactly one
            part = load_state_dict_file(f)
            dup = sorted(set(part) & set(out))
            if dup:
                raise CheckpointError(f"{f}: keys {dup[:5]} are also in another shard of {self.path}")
            out.update(part)
        return out


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise CheckpointError(f"{path} is not readable JSON: {e}") from e


def _index_shards(index: Path) -> list[Path]:
    table = _read_json(index)
    weight_map = table.get("weight_map") if isinstance(table, dict) else None
    if not isinstance(weight_map, dict) or not weight_map:
        raise CheckpointError(f"{index} has no 'weight_map' naming its shards")
    shards = [index.parent / s for s in sorted(set(weight_map.values()))]
    missing = [s.name for s in shards if not s.is_file()]
    if missing:
        raise CheckpointError(f"{index} names shard(s) {missing} that are not in {index.parent}")
    return shards


def _folder_source(folder: Path, root: Path) -> tuple[CheckpointSource | None, list[Path]]:
    """A transformers or PEFT folder as one checkpoint, and the files it accounts for."""
    name = folder.relative_to(root).as_posix()
    if (folder / "adapter_config.json").is_file():
        weights = next((folder / f for f in _ADAPTER_FILES if (folder / f).is_file()), None)
        if weights is None:
            raise CheckpointError(
                f"PEFT folder {folder} has adapter_config.json but no {' or '.join(_ADAPTER_FILES)}"
            )
        cfg = _read_json(folder / "adapter_config.json")
        hp = (
            {"peft_config": cfg, "base_model": cfg.get("base_model_name_or_path")}
            if isinstance(cfg, dict)
            else {}
        )
        return CheckpointSource(name, folder, "peft", [weights], hp), [weights]
    if (folder / "config.json").is_file():
        index = next((folder / f for f in _INDEX_FILES if (folder / f).is_file()), None)
        if index is not None:
            shards = _index_shards(index)
            return CheckpointSource(name, folder, "transformers", shards), [index, *shards]
        weights = next((folder / f for f in _MODEL_FILES if (folder / f).is_file()), None)
        if weights is not None:
            return CheckpointSource(name, folder, "transformers", [weights]), [weights]
    return None, []


def find_checkpoints(folder: str | os.PathLike) -> tuple[list[CheckpointSource], list[tuple[Path, str]]]:
    """Every checkpoint under ``folder`` (sorted by name), and the weight-like files it refuses, with the reason.

    Inside a transformers or PEFT folder only the model's weights count; training state beside them (optimizer,
    scheduler, RNG, ``training_args.bin``) is logged and left out.
    """
    root = Path(folder)
    sources: list[CheckpointSource] = []
    refused: list[tuple[Path, str]] = []
    used: set[Path] = set()
    model_dirs = sorted(
        {
            p.parent
            for p in root.rglob("*")
            if p.name in ("adapter_config.json", "config.json") and p.is_file()
        }
    )
    for d in model_dirs:
        try:
            src, files = _folder_source(d, root)
        except CheckpointError as e:
            refused.append((d, str(e)))
            used.update(p for p in d.iterdir() if p.is_file())
            continue
        if src is not None:
            sources.append(src)
            used.update(files)
            rest = sorted(p.name for p in d.iterdir() if p.suffix in READABLE_SUFFIXES and p not in used)
            if rest:
                logger.info("%s: taking %s as the model; not checkpoints: %s", d, src.files[0].name, rest)
            used.update(p for p in d.iterdir() if p.suffix in READABLE_SUFFIXES)
    for index in sorted(root.rglob("*.index.json")):
        if index in used:
            continue
        try:
            shards = _index_shards(index)
        except CheckpointError as e:
            refused.append((index, str(e)))
            continue
        sources.append(CheckpointSource(index.relative_to(root).as_posix(), index, "sharded", shards))
        used.update([index, *shards])
    for p in sorted(root.rglob("*")):
        if not p.is_file() or p in used or any(part.startswith(".") for part in p.relative_to(root).parts):
            continue
        if p.suffix in READABLE_SUFFIXES:
            sources.append(CheckpointSource(p.relative_to(root).as_posix(), p, "file", [p]))
        elif p.suffix in REFUSED_SUFFIXES:
            refused.append(
                (
                    p,
                    f"{p}: {REFUSED_SUFFIXES[p.suffix]} files are not supported; convert the weights to a PyTorch "
                    "state dict (torch.save(model.state_dict(), 'x.pt')) or safetensors",
                )
            )
    return sorted(sources, key=lambda s: s.name), refused


def _torch_load(path: Path) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        try:
            unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(path)
        except Exception:  # not a torch zip file at all
            unsafe = None
        if not unsafe:
            raise CheckpointError(
                f"{path} is not a readable PyTorch file (damaged or another format): {e}"
            ) from e
        modules = [g for g in unsafe if g.startswith("torch.nn.modules.")]
        if modules:
            raise CheckpointError(
                f"{path} holds a pickled nn.Module ({', '.join(modules[:3])}), not a state dict; loading it would run "
                "code stored in the file. Save its weights instead: torch.save(model.state_dict(), path)"
            ) from None
        raise CheckpointError(
            f"{path} holds pickled Python objects ({', '.join(unsafe[:5])}) that cannot be loaded safely; save only "
            "the weights: torch.save(model.state_dict(), path) (for Lightning: checkpoint['state_dict'])"
        ) from None
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile, ValueError) as e:
        raise CheckpointError(f"{path} is not a readable PyTorch file (truncated or damaged?): {e}") from e


def load_state_dict_file(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The state dict in one file; `CheckpointError` naming the file if it is unreadable or holds something else."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except (SafetensorError, OSError, ValueError) as e:
            raise CheckpointError(f"{path} is not a readable safetensors file: {e}") from e
    if path.suffix == ".npz":
        import numpy as np

        try:
            with np.load(path, allow_pickle=False) as z:
                return {k: torch.from_numpy(z[k].copy()) for k in z.files}
        except (OSError, ValueError, zipfile.BadZipFile) as e:
            raise CheckpointError(f"{path} is not a readable .npz archive of arrays: {e}") from e
    obj = _torch_load(path)
    if isinstance(obj, dict):
        nested = next((k for k in _NESTED_KEYS if isinstance(obj.get(k), dict)), None)
        if nested is not None and not all(isinstance(v, torch.Tensor) for v in obj.values()):
            obj = obj[nested]  # Lightning's {"state_dict": ..., "epoch": ...} and the like
    if isinstance(obj, torch.Tensor) or not isinstance(obj, dict) or not obj:
        raise CheckpointError(
            f"{path} holds a {type(obj).__name__}, not a state dict (a dict of named tensors)"
        )
    other = sorted(str(k) for k, v in obj.items() if not isinstance(v, torch.Tensor))
    if other:
        raise CheckpointError(
            f"{path}: entries {other[:5]} are not tensors; save the model's state dict "
            f"(or put it under one of {list(_NESTED_KEYS)})"
        )
    return obj


def _strip(sd: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix) :]: v for k, v in sd.items()}


def _common_prefix(keys: list[str], wrappers_only: bool) -> str | None:
    if wrappers_only:
        return next((w for w in WRAPPER_PREFIXES if keys and all(k.startswith(w) for k in keys)), None)
    heads = {k.split(".", 1)[0] for k in keys}
    return heads.pop() + "." if len(heads) == 1 and all("." in k for k in keys) else None


def strip_wrapper_prefixes(
    state_dict: dict[str, torch.Tensor], expected: set[str] | None = None
) -> tuple[dict[str, torch.Tensor], str]:
    """Remove prefixes that wrappers add to every key; -> (state dict, removed prefix, "" if none).

    Always removed: ``module.`` (DDP, DataParallel) and ``_orig_mod.`` (torch.compile), repeatedly. With
    ``expected`` (the keys of the architecture), a common leading component is also removed when that makes the
    keys match it exactly: the attribute of a Lightning module (``model.``) or of any wrapper class.
    """
    sd, removed = state_dict, ""
    while (p := _common_prefix(list(sd), wrappers_only=True)) is not None:
        sd, removed = _strip(sd, p), removed + p
    if expected is None or set(sd) == expected:
        return sd, removed
    trial, trial_removed = sd, removed
    for _ in range(3):
        p = _common_prefix(list(trial), wrappers_only=False)
        if p is None:
            break
        trial, trial_removed = _strip(trial, p), trial_removed + p
        while (w := _common_prefix(list(trial), wrappers_only=True)) is not None:
            trial, trial_removed = _strip(trial, w), trial_removed + w
        if set(trial) == expected:
            return trial, trial_removed
    return sd, removed


_ATTRIBUTE_PREFIXES = ("model.", "net.", "network.")  # what Lightning modules usually call the wrapped net


def prefix_hint(keys: list[str]) -> str:
    """A hint when every key starts with a wrapper's usual attribute (``model.``, ``net.``), else ""."""
    p = _common_prefix(keys, wrappers_only=False)
    if p not in _ATTRIBUTE_PREFIXES or len(keys) < 2:
        return ""
    return (
        f" (every key starts with {p!r}: the attribute of a wrapper such as a Lightning module? give an "
        "arch_spec so the prefix is matched and removed, or remove it from the keys)"
    )
