"""The library's one progress helper (rich): a bar on a terminal, quiet elsewhere (CI, logs, pipes)."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator

from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

__all__ = ["progress_bar"]


class _Quiet:
    def update(self, advance: int = 1, **fields) -> None:
        pass


class _Bar:
    def __init__(self, progress: Progress, task_id):
        self._p, self._t = progress, task_id

    def update(self, advance: int = 1, **fields) -> None:
        desc = fields.pop("postfix", None)
        if desc is not None:
            fields["postfix"] = desc
        self._p.update(self._t, advance=advance, **fields)


@contextlib.contextmanager
def progress_bar(total: int, description: str, enabled: bool = True) -> Iterator[_Bar | _Quiet]:
    """``with progress_bar(n, "training") as bar: bar.update(1, postfix="loss 0.1")``."""
    if not enabled or not sys.stderr.isatty():
        yield _Quiet()
        return
    cols = [
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[postfix]}"),
    ]
    with Progress(*cols, transient=False) as p:
        yield _Bar(p, p.add_task(description, total=total, postfix=""))
