"""Atomic file writes: the one place the library writes a file in place.

Every writer puts the content into a temporary file beside the target (same folder, so the rename stays on
one file system), flushes and fsyncs it, then renames it over the target with ``os.replace``. A reader
therefore sees the old file or the new one, never half of one; a crash leaves at most a stale ``.*.tmp``
file, which `remove_stale_temporaries` clears.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = [
    "atomic_write_bytes",
    "atomic_write_text",
    "atomic_write_json",
    "atomic_path",
    "atomic_directory",
    "recover_directory",
    "remove_stale_temporaries",
    "TMP_SUFFIX",
    "FolderLock",
    "FolderInUseError",
    "NotWritableError",
    "ensure_writable",
]

TMP_SUFFIX = ".tmp"


def _tmp_for(path: Path) -> Path:
    # hidden, pid-tagged: two processes never share a temporary name, and globs for data files skip it
    return path.with_name(f".{path.name}.{os.getpid()}{TMP_SUFFIX}")


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):  # not every file system lets a folder be opened
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """``with atomic_path(p) as tmp: write(tmp)``: ``tmp`` replaces ``p`` only if the block succeeds.

    For writers that take a file name (``fig.savefig``, ``safetensors.torch.save_file``, parquet writers).
    The parent folder is created if needed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_for(path)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically; returns the path."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write UTF-8 ``text`` to ``path`` atomically; returns the path."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, data: Any, indent: int = 2) -> Path:
    """Write ``data`` as JSON (``default=str`` for paths and the like) to ``path`` atomically."""
    return atomic_write_text(path, json.dumps(data, indent=indent, default=str) + "\n")


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike) -> Iterator[Path]:
    """``with atomic_directory(d) as tmp: model.save_pretrained(tmp)``: the whole folder appears at once.

    An existing ``d`` is replaced only when the block succeeds (moved aside, the new folder renamed in, the old
    one deleted), so a crash leaves either the old complete folder or the new complete one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}{TMP_SUFFIX}")
    old = path.with_name(f".{path.name}.{os.getpid()}.old")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
        if path.exists():
            os.replace(path, old)
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)


def recover_directory(path: str | os.PathLike) -> bool:
    """Undo a crash between the two renames of `atomic_directory`: if ``path`` is missing but the complete old
    folder was moved aside, move it back. Returns True if it did."""
    path = Path(path)
    if path.exists() or not path.parent.is_dir():
        return False
    olds = sorted(path.parent.glob(f".{path.name}.*.old"), key=lambda p: p.stat().st_mtime)
    if not olds:
        return False
    os.replace(olds[-1], path)
    return True


def remove_stale_temporaries(folder: str | os.PathLike) -> list[Path]:
    """Delete temporary files and folders an interrupted atomic write left in ``folder``; returns them."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    stale = [p for p in folder.iterdir() if p.name.startswith(".") and p.name.endswith((TMP_SUFFIX, ".old"))]
    for p in stale:
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
    return stale


# ---------------------------------------------------------------------------------------------
# One writer per folder, and folders checked before work starts
# ---------------------------------------------------------------------------------------------


class FolderInUseError(ValueError):
    """Another process (or another writer in this one) holds the folder's lock."""


class NotWritableError(PermissionError, ValueError):
    """An output folder cannot be created or written to."""


def ensure_writable(folder: str | os.PathLike) -> Path:
    """Create ``folder`` if needed and prove a file can be written in it; `NotWritableError` naming it if not.

    Called before long work starts, so a read-only output folder is found in a second, not after training.
    """
    folder = Path(folder)
    probe = folder / f".write-test.{os.getpid()}{TMP_SUFFIX}"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"")
        probe.unlink(missing_ok=True)
    except OSError as e:
        raise NotWritableError(f"output folder {folder} is not writable ({e.strerror or e})") from e
    return folder


class FolderLock:
    """An exclusive advisory lock (``flock``) on ``folder/.lock``: one writer per folder at a time.

    ``acquire`` raises `FolderInUseError` naming the folder and the holder's pid instead of waiting: two writers
    on one corpus or run folder would interleave their files. The lock dies with its process (SIGKILL included),
    so a crash never leaves a folder locked. A no-op where ``fcntl`` is missing (Windows).
    """

    def __init__(self, folder: str | os.PathLike, what: str = "folder"):
        self.folder, self.what = Path(folder), what
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> FolderLock:
        if self._fd is not None:
            return self
        try:
            import fcntl
        except ImportError:  # pragma: no cover - Windows
            return self
        ensure_writable(self.folder)
        path = self.folder / ".lock"
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise FolderInUseError(
                f"{self.what} {self.folder} is in use by another writer (pid {holder}); wait for it to finish "
                "or stop it: two writers on one folder would interleave their files"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, 0)
            os.close(self._fd)  # closing the descriptor releases the flock
            self._fd = None

    def __enter__(self) -> FolderLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()

    def __del__(self):
        self.release()
