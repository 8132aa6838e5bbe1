"""Ctrl-C at a step boundary: a training loop finishes the step it is in, saves what `--resume` needs,
then stops (the CLI exits 130). A second Ctrl-C stops at once."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

from .progress import log


class StepInterrupted(KeyboardInterrupt):
    """Raised by a training loop after it saved its state on Ctrl-C."""


@contextlib.contextmanager
def interrupt_at_step_boundary() -> Iterator[Callable[[], bool]]:
    """Yield `requested()`: True once Ctrl-C (SIGINT) arrived; the loop polls it after each step.

    Outside the main thread (where signal handlers cannot be set) it never turns True."""
    if threading.current_thread() is not threading.main_thread():
        yield lambda: False
        return
    hits = [0]

    def on_sigint(_signum: int, _frame: object) -> None:
        hits[0] += 1
        if hits[0] > 1:
            raise KeyboardInterrupt
        log.warning("interrupt: finishing this step and saving the state (Ctrl-C again to stop at once)")

    previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        yield lambda: hits[0] > 0
    finally:
        signal.signal(signal.SIGINT, previous)


def stopped(stage: str, step: int, folder: Path) -> StepInterrupted:
    """Log where the run stopped and how to continue it; return the exception to raise."""
    log.warning("%s interrupted after step %d; state saved in %s; run the same command with --resume to continue",
                stage, step, folder)
    return StepInterrupted(f"{stage} interrupted after step {step}")
