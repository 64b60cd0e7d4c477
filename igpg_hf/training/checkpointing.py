"""Resumable training state: the model (``save_pretrained``) and accelerate's optimizer/scheduler/RNG state.

A checkpoint is written into ``<dir>/checkpoint.tmp`` and then renamed to ``<dir>/checkpoint``
(the old one is moved aside first), so an interrupted write never leaves a half checkpoint behind.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

from accelerate import Accelerator

logger = logging.getLogger(__name__)

__all__ = ["save_training_state", "load_training_state", "atomic_write_json"]

STATE_DIR = "checkpoint"


def atomic_write_json(path: str | os.PathLike, data) -> None:
    """Write JSON to a temporary file beside ``path``, then rename it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str))
    os.replace(tmp, path)


def save_training_state(
    accelerator: Accelerator, model, output_dir: str | os.PathLike, step: int, extra=None
) -> None:
    """Save model + optimizer/scheduler/RNG state + step under ``output_dir/checkpoint`` atomically."""
    accelerator.wait_for_everyone()
    out = Path(output_dir)
    tmp, final, old = out / (STATE_DIR + ".tmp"), out / STATE_DIR, out / (STATE_DIR + ".old")
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp / "accelerate"))
    if accelerator.is_main_process:
        accelerator.unwrap_model(model).save_pretrained(tmp / "model")
        atomic_write_json(tmp / "trainer_state.json", {"step": step, **(extra or {})})
        shutil.rmtree(old, ignore_errors=True)
        if final.exists():
            os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    logger.info("saved training state at step %d to %s", step, final)


def load_training_state(accelerator: Accelerator, output_dir: str | os.PathLike) -> dict | None:
    """Restore optimizer/scheduler/RNG (and the prepared model's weights) if a checkpoint exists; -> trainer state."""
    final = Path(output_dir) / STATE_DIR
    state_file = final / "trainer_state.json"
    if not state_file.exists():
        return None
    try:
        state = json.loads(state_file.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(
            f"training state {state_file} is corrupted ({e}); delete {final} to start over"
        ) from e
    accelerator.load_state(str(final / "accelerate"))
    logger.info("resumed from step %d (%s)", state["step"], final)
    return state
