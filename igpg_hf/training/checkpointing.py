"""Run folders that survive a kill: resumable training state, settings checks, and an atomic final model.

A run folder (``output_dir``) holds ``checkpoint/`` (the model, accelerate's optimizer/scheduler/RNG state and
``trainer_state.json``: step, history, settings) while training, and ``final/`` (the model and
``training_log.json``) once done. Both are written whole or not at all (`igpg_hf.files.atomic_directory`) and carry
checksums (`igpg_hf.integrity`), so a kill at any moment leaves the last complete checkpoint, and flipped bytes
are named instead of resuming into NaN. `RunFolder` checks the folder is writable before work starts, holds its
lock (one process per run folder), refuses to resume or reuse a run whose settings differ, and returns a finished
run instead of training it again.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

from accelerate import Accelerator
from accelerate.utils import broadcast_object_list

from ..files import (
    FolderLock,
    atomic_directory,
    atomic_write_json,
    ensure_writable,
    recover_directory,
    remove_stale_temporaries,
)
from ..integrity import IntegrityError, verify_checksums, write_checksums

logger = logging.getLogger(__name__)

__all__ = [
    "RunFolder",
    "run_settings",
    "data_fingerprint",
    "save_training_state",
    "load_training_state",
    "atomic_write_json",
]

STATE_DIR = "checkpoint"
FINAL_DIR = "final"
# config fields that training fills in or that only describe the software: not settings of a run
_NOT_SETTINGS = {
    "transformers_version",
    "_name_or_path",
    "architectures",
    "dtype",
    "torch_dtype",
    "weight_stats",
    "base_size",
    "base_layout",
    "trained_layouts",
    "training_summary",
    "training_sequence_hashes",
}
# training arguments that change how a run reports, not what it computes
_NOT_DECIDING = {"log_every", "checkpoint_every"}


def data_fingerprint(*arrays: Any) -> str:
    """SHA-256 of tensors' bytes (or of a JSON-able object): what a run trained on, in order."""
    h = hashlib.sha256()
    for a in arrays:
        if hasattr(a, "numpy"):
            h.update(a.detach().cpu().contiguous().numpy().tobytes())
        else:
            h.update(json.dumps(a, sort_keys=True, default=str).encode())
    return h.hexdigest()


def run_settings(args: Any, config: Any, data: str) -> dict[str, Any]:
    """Everything that decides a run's result: training arguments, model config and data fingerprint."""
    from dataclasses import asdict

    cfg = {k: v for k, v in config.to_dict().items() if k not in _NOT_SETTINGS}
    a = {k: v for k, v in asdict(args).items() if k not in _NOT_DECIDING}
    return json.loads(json.dumps({"args": a, "config": cfg, "data": data}, sort_keys=True, default=str))


def _differences(old: dict, new: dict, prefix: str = "") -> list[str]:
    out = []
    for k in sorted(set(old) | set(new)):
        a, b = old.get(k, "<unset>"), new.get(k, "<unset>")
        if isinstance(a, dict) and isinstance(b, dict):
            out += _differences(a, b, f"{prefix}{k}.")
        elif a != b:
            shown = (a, b) if k != "data" else ("one corpus", "another")
            out.append(f"{prefix}{k}: {shown[0]!r} -> {shown[1]!r}")
    return out


def _check_settings(recorded: dict | None, settings: dict | None, where: Path, what: str) -> None:
    if recorded is None or settings is None:
        return
    diff = _differences(recorded, settings)
    if diff:
        raise ValueError(
            f"{what} in {where} was made with other settings ({'; '.join(diff[:6])}); resuming or reusing it "
            f"would not give the run asked for: use another output folder, or delete {where} to start over"
        )


def save_training_state(
    accelerator: Accelerator, model, output_dir: str | os.PathLike, step: int, extra=None
) -> None:
    """Save model + optimizer/scheduler/RNG state + step under ``output_dir/checkpoint``, whole or not at all.

    All processes write into one temporary folder (accelerate saves each one's RNG state); the main process then
    swaps it in with `atomic_directory`, so a kill leaves the previous checkpoint or this one, never a mix.
    """
    accelerator.wait_for_everyone()
    final = Path(output_dir) / STATE_DIR
    with contextlib.ExitStack() as stack:
        tmp = [str(stack.enter_context(atomic_directory(final)))] if accelerator.is_main_process else [None]
        if accelerator.num_processes > 1:
            broadcast_object_list(tmp, from_process=0)
        tmp_dir = Path(tmp[0])
        accelerator.save_state(str(tmp_dir / "accelerate"))
        if accelerator.is_main_process:
            accelerator.unwrap_model(model).save_pretrained(tmp_dir / "model")
            atomic_write_json(tmp_dir / "trainer_state.json", {"step": step, **(extra or {})})
            write_checksums(tmp_dir)
        accelerator.wait_for_everyone()
    accelerator.wait_for_everyone()
    logger.info("saved training state at step %d to %s", step, final)


def load_training_state(
    accelerator: Accelerator, output_dir: str | os.PathLike, settings: dict | None = None
) -> dict | None:
    """Restore optimizer/scheduler/RNG and the prepared model's weights from the last checkpoint; -> its state.

    None if there is none. A kill between the two renames of a save is undone first. ValueError naming the file
    if the checkpoint is damaged (checksums), or if it was written with other ``settings``.
    """
    final = Path(output_dir) / STATE_DIR
    if accelerator.is_main_process and recover_directory(final):
        logger.warning("recovered the training checkpoint %s that an interrupted save had moved aside", final)
    accelerator.wait_for_everyone()
    state_file = final / "trainer_state.json"
    if not state_file.exists():
        return None
    try:
        verify_checksums(final)
        state = json.loads(state_file.read_text(encoding="utf-8"))
    except (IntegrityError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"training checkpoint {final} is damaged ({e}); delete {final} to start over") from e
    _check_settings(state.get("settings"), settings, final, "the training checkpoint")
    try:
        accelerator.load_state(str(final / "accelerate"))
    except Exception as e:  # safetensors, pickle and size-mismatch errors name no file
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(
            f"training checkpoint {final} cannot be loaded ({first}); delete it to start over"
        ) from e
    logger.info("resumed from step %d (%s)", state["step"], final)
    return state


class RunFolder:
    """A training run's output folder, held for the duration of a ``with`` block.

    On entry: the folder is created and proven writable (before any work), its lock is taken (a second process
    on the same run gets `igpg_hf.files.FolderInUseError`), and temporaries of a killed save are cleared.
    ``finished(cls, settings)`` returns the saved final model of a completed run (checksums verified; ValueError
    if it was trained with other settings), ``save_final(model, log)`` writes ``final/`` whole or not at all.
    """

    def __init__(self, path: str | os.PathLike, accelerator: Accelerator):
        self.path, self.accelerator = Path(path), accelerator
        self._lock = FolderLock(self.path, "training run folder")

    @property
    def final(self) -> Path:
        return self.path / FINAL_DIR

    def __enter__(self) -> RunFolder:
        ensure_writable(self.path)
        if self.accelerator.is_main_process:
            self._lock.acquire()
            recover_directory(self.path / STATE_DIR)
            recover_directory(self.final)
            for stale in remove_stale_temporaries(self.path):
                logger.info("removed %s, left by an interrupted save", stale)
        self.accelerator.wait_for_everyone()
        return self

    def __exit__(self, *exc) -> None:
        self._lock.release()

    def finished(self, model_cls, settings: dict | None):
        """The final model of this run if it was completed (None if not); ValueError if made with other settings."""
        final = self.final
        if not final.exists():
            return None
        log_file = final / "training_log.json"
        if (
            not log_file.is_file()
        ):  # written last: a final folder without it is a save cut short (older versions)
            if self.accelerator.is_main_process:
                aside = final.with_name(f"{FINAL_DIR}.incomplete-{time.strftime('%Y%m%d-%H%M%S')}")
                os.replace(final, aside)
                logger.warning(
                    "%s was incomplete (an interrupted save); moved it to %s and training again", final, aside
                )
            self.accelerator.wait_for_everyone()
            return None
        try:
            verify_checksums(final)
            log = json.loads(log_file.read_text(encoding="utf-8"))
        except (IntegrityError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ValueError(
                f"the trained model in {final} is damaged ({e}); delete {final} to train again"
            ) from e
        _check_settings(log.get("settings"), settings, final, "the finished run")
        logger.info("%s holds the finished run: loading it instead of training again", final)
        return model_cls.from_pretrained(final)

    def save_final(self, model, log: dict[str, Any]) -> None:
        """``model.save_pretrained`` + ``training_log.json`` + checksums into ``final/``, all at once (main process)."""
        if self.accelerator.is_main_process:
            with atomic_directory(self.final) as tmp:
                model.save_pretrained(tmp)
                atomic_write_json(tmp / "training_log.json", log)
                write_checksums(tmp)
        self.accelerator.wait_for_everyone()
