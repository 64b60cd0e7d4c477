"""What a training run was trained on, for the model cards: the corpus (a Hub dataset repo id when it came from
the Hub, so that the card's ``datasets:`` links it) and the pretrained model it started from."""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator

from ..hub import is_local_path

__all__ = ["track_sources", "corpus_summary", "base_model_summary"]


def track_sources(checkpoints: Iterable, sources: set) -> Iterator:
    """Yield the checkpoints, adding each one's ``source`` (`igpg_hf.corpus.Checkpoint.source`) to ``sources``.

    One pass, so a streamed corpus is read once."""
    for c in checkpoints:
        sources.add(getattr(c, "source", None))
        yield c


def _name(source: str) -> str:
    # a local folder by its name only: a card must not publish the trainer's file system
    return f"local folder {os.path.basename(source.rstrip(os.sep))!r}" if os.path.isabs(source) else source


def corpus_summary(sources: set) -> dict:
    """``{"corpus": ..., "corpus_repo_id": ...}`` for the training summary (the repo id only if every checkpoint
    came from one Hub dataset repo)."""
    known = sorted(s for s in sources if s)
    if not known:
        return {}
    if len(known) == 1 and None not in sources:
        src = known[0]
        return {"corpus": _name(src), **({} if os.path.isabs(src) else {"corpus_repo_id": src})}
    names = ", ".join(_name(s) for s in known)
    return {"corpus": names + (" and checkpoints of unknown origin" if None in sources else "")}


def base_model_summary(model) -> dict:
    """``{"base_model": repo_id}`` when training starts from a model loaded from the Hub, else ``{}``."""
    name = str(getattr(model, "name_or_path", "") or "")
    return {"base_model": name} if name and not is_local_path(name) else {}
