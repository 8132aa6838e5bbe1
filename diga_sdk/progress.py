"""Progress bars and logging shared by every long-running job (rich, quiet when not a terminal)."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator

from rich.console import Console
from rich.logging import RichHandler
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

console = Console(stderr=True, markup=False)  # messages hold paths and pip extras: never parse them as markup
log = logging.getLogger("diga")


def setup_logging(verbose: bool = False) -> None:
    """Route the `diga` logger through rich, once."""
    if not log.handlers:
        log.addHandler(RichHandler(console=console, show_path=False, rich_tracebacks=False))
    log.setLevel(logging.DEBUG if verbose else logging.INFO)
    log.propagate = False


@contextlib.contextmanager
def progress_bar(description: str, total: int, completed: int = 0) -> Iterator[Progress]:
    """A rich progress bar; `bar.advance()` / `bar.update(text=...)` through the yielded task handle."""
    disable = os.environ.get("DIGA_NO_PROGRESS") == "1"
    prog = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("{task.fields[text]}"), TimeElapsedColumn(), TimeRemainingColumn(),
                    console=console, disable=disable, transient=False)
    with prog:
        task = prog.add_task(description, total=total, completed=completed, text="")
        yield _Bar(prog, task)


class _Bar:
    def __init__(self, prog: Progress, task) -> None:
        self.prog, self.task = prog, task

    def advance(self, n: int = 1, text: str | None = None) -> None:
        self.prog.update(self.task, advance=n, **({"text": text} if text is not None else {}))

    def set(self, completed: int, text: str | None = None) -> None:
        self.prog.update(self.task, completed=completed, **({"text": text} if text is not None else {}))


def print_error(message: str) -> None:
    """One `error: ...` line on stderr, printed as plain text (never parsed as rich markup)."""
    console.print(f"error: {message}", markup=False, highlight=False, emoji=False, soft_wrap=True, style="bold red")
