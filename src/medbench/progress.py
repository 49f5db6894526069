"""Rich progress bars on stderr (stdout stays clean for JSON); a disabled bar costs nothing."""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    MofNCompleteColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

console = Console(stderr=True)


class _Bar:
    def __init__(self, progress: Progress | None, task_id):
        self._p, self._id = progress, task_id

    def advance(self, n: float = 1) -> None:
        if self._p is not None:
            self._p.advance(self._id, n)

    def set(self, text: str) -> None:
        if self._p is not None:
            self._p.update(self._id, info=text)


@contextmanager
def progress_bar(description: str, total: float | None, enabled: bool = True, unit: str = "steps") -> Iterator[_Bar]:
    if not enabled or not console.is_terminal:  # a piped or logged run gets no bar (rich would print blank lines)
        yield _Bar(None, None)
        return
    if unit == "bytes":
        cols = [TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                TimeRemainingColumn()]
    else:
        cols = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TaskProgressColumn(),
                TimeElapsedColumn(), TimeRemainingColumn(), TextColumn("{task.fields[info]}")]
    with Progress(*cols, console=console, transient=True) as p:
        yield _Bar(p, p.add_task(description, total=total, info=""))
