"""Keep the calling thread's alternate signal stack across OpenVINO calls.

OpenVINO's CPU plugin (2025.x) installs an alternate signal stack on the thread that compiles a model
and unmaps it when the compiled model is released; when two compiled models are released out of
order (a runtime replaced while the previous one is still alive: hot-swap, `auto`, benchmarks) the
thread is left pointing at unmapped memory. Python installs its handlers with SA_ONSTACK, so the next
handled signal (a DataLoader's SIGCHLD, Ctrl-C, SIGTERM) then kills the process with SIGSEGV. Around
every call that installs one, this restores the stack the thread had before."""

from __future__ import annotations

import contextlib
import ctypes
import functools
import sys
from collections.abc import Iterator

SS_DISABLE = 2


class _StackT(ctypes.Structure):
    _fields_ = [("ss_sp", ctypes.c_void_p), ("ss_flags", ctypes.c_int), ("ss_size", ctypes.c_size_t)]


@functools.cache
def _libc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None


def current_signal_stack() -> tuple[int | None, int, int]:
    """(address, flags, size) of this thread's alternate signal stack ((None, SS_DISABLE, 0): none)."""
    libc, st = _libc(), _StackT()
    if libc is None or libc.sigaltstack(None, ctypes.byref(st)) != 0:
        return (None, SS_DISABLE, 0)
    return (st.ss_sp, st.ss_flags, st.ss_size)


@contextlib.contextmanager
def preserved_signal_stack() -> Iterator[None]:
    """Run the block, then give this thread back the alternate signal stack it had before (Linux)."""
    libc, before = _libc(), _StackT()
    if libc is None or libc.sigaltstack(None, ctypes.byref(before)) != 0:
        yield
        return
    try:
        yield
    finally:
        now = _StackT()
        libc.sigaltstack(None, ctypes.byref(now))
        if (now.ss_sp, now.ss_size) != (before.ss_sp, before.ss_size):
            if before.ss_sp is None or before.ss_flags & SS_DISABLE:  # SS_DISABLE: the thread had none
                before = _StackT(None, SS_DISABLE, 0)
            libc.sigaltstack(ctypes.byref(before), None)
