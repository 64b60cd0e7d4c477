"""Checksums of saved folders (pipelines, trained models, training checkpoints), written at save, checked at load.

``write_checksums(folder)`` records the SHA-256 and size of every file under ``folder`` in
``folder/checksums.json``; ``verify_checksums(folder)`` recomputes them and raises `IntegrityError` naming each
file that is missing, truncated or altered. A flipped byte in a safetensors file otherwise loads without a word
and generates other weights. Folders saved before checksums existed (no ``checksums.json``) load unchecked.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

from .files import TMP_SUFFIX, atomic_write_json

logger = logging.getLogger(__name__)

__all__ = ["CHECKSUM_FILE", "IntegrityError", "file_sha256", "write_checksums", "verify_checksums"]

CHECKSUM_FILE = "checksums.json"


class IntegrityError(ValueError):
    """A saved file is missing or does not match the checksum written when it was saved."""


def file_sha256(path: str | os.PathLike, block: int = 2**22) -> str:
    """SHA-256 of a file's bytes, read in blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(block):
            h.update(chunk)
    return h.hexdigest()


def _files(folder: Path) -> list[Path]:
    return sorted(
        p
        for p in folder.rglob("*")
        if p.is_file()
        and p.name not in (CHECKSUM_FILE, ".lock")
        and not (p.name.startswith(".") and p.name.endswith(TMP_SUFFIX))
    )


def write_checksums(folder: str | os.PathLike) -> Path:
    """Record size and SHA-256 of every file under ``folder`` in ``folder/checksums.json`` (atomically)."""
    folder = Path(folder)
    table = {
        p.relative_to(folder).as_posix(): {"bytes": p.stat().st_size, "sha256": file_sha256(p)}
        for p in _files(folder)
    }
    return atomic_write_json(folder / CHECKSUM_FILE, {"files": table})


def verify_checksums(folder: str | os.PathLike) -> bool:
    """Check every file listed in ``folder/checksums.json``; False if there is none (an older save).

    Raises `IntegrityError` naming every missing, truncated or altered file.
    """
    folder = Path(folder)
    path = folder / CHECKSUM_FILE
    if not path.is_file():
        logger.debug("%s has no %s: loaded unchecked", folder, CHECKSUM_FILE)
        return False
    try:
        table = json.loads(path.read_text(encoding="utf-8"))["files"]
    except (ValueError, KeyError, TypeError) as e:
        raise IntegrityError(f"{path} is damaged ({e}); the folder {folder} cannot be verified") from e
    problems = []
    for name, rec in sorted(table.items()):
        p = folder / name
        if not p.is_file():
            problems.append(f"{name}: missing")
        elif p.stat().st_size != rec["bytes"]:
            problems.append(
                f"{name}: {p.stat().st_size} bytes, {rec['bytes']} when saved (truncated or altered)"
            )
        elif file_sha256(p) != rec["sha256"]:
            problems.append(f"{name}: content differs from when it was saved (corrupted)")
    if problems:
        raise IntegrityError(
            f"{folder} is damaged: "
            + "; ".join(problems)
            + ". Restore it from a copy, or save or train it again"
        )
    return True
