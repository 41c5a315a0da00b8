"""One OpenVINO Core for the process, and compiling without breaking the thread's signal handling.

OpenVINO's CPU plugin installs its own alternate signal stack (``sigaltstack``) on the thread that compiles a
model, and puts back the stack it found there when its Core is destroyed. Cores destroyed in another order than
they were made (two engines freed by the garbage collector) leave the thread's alternate stack pointing at memory
that has been unmapped; the next signal handled on that thread (SIGCHLD when a child process ends, SIGINT at
Ctrl-C) then kills the process with a segmentation fault, as the kernel cannot write the handler's frame. Measured:
``tests/test_runtime.py::test_openvino_leaves_the_signal_stack_as_it_found_it``.

So every Core here is the one ``core()`` returns (never destroyed while the process runs), and ``compile_model``
puts the calling thread's alternate stack back as it was before OpenVINO compiled.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import logging
import sys
from typing import Any, Iterator

logger = logging.getLogger(__name__)


class _Stack(ctypes.Structure):  # stack_t (Linux)
    _fields_ = [("ss_sp", ctypes.c_void_p), ("ss_flags", ctypes.c_int), ("ss_size", ctypes.c_size_t)]


@functools.lru_cache(maxsize=1)
def _libc() -> Any:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.sigaltstack.argtypes = [ctypes.POINTER(_Stack), ctypes.POINTER(_Stack)]
        return libc
    except (OSError, AttributeError):
        return None


def signal_stack() -> tuple[int, int, int] | None:
    """This thread's alternate signal stack as (address, size, flags); None where it cannot be read."""
    libc = _libc()
    if libc is None:
        return None
    old = _Stack()
    if libc.sigaltstack(None, ctypes.byref(old)) != 0:
        return None
    return old.ss_sp or 0, old.ss_size, old.ss_flags


@contextlib.contextmanager
def kept_signal_stack() -> Iterator[None]:
    """Run the body, then give this thread back the alternate signal stack it had before (Linux; elsewhere a no-op)."""
    libc = _libc()
    before = _Stack()
    saved = libc is not None and libc.sigaltstack(None, ctypes.byref(before)) == 0
    try:
        yield
    finally:
        if saved:
            now = _Stack()
            if libc.sigaltstack(None, ctypes.byref(now)) == 0 and (now.ss_sp, now.ss_size) != (before.ss_sp, before.ss_size):
                restore = _Stack(before.ss_sp, before.ss_flags & ~1, before.ss_size)  # SS_ONSTACK is not settable
                if libc.sigaltstack(ctypes.byref(restore), None) != 0:
                    logger.debug("could not restore the alternate signal stack (errno %d)", ctypes.get_errno())


@functools.lru_cache(maxsize=1)
def core() -> Any:
    """The process's OpenVINO Core (created once, kept: see the module docstring)."""
    import openvino as ov

    return ov.Core()


def compile_model(model: Any, device: str = "CPU", config: dict | None = None) -> Any:
    """``core().compile_model``, leaving the calling thread's alternate signal stack as it found it."""
    with kept_signal_stack():
        return core().compile_model(model, device, config or {})
