"""Keep large freed buffers for reuse (glibc malloc), the one home for the allocator setting.

glibc serves every allocation above its mmap threshold (128 KiB at start, raised on the fly up to 32 MiB) with a
fresh ``mmap`` and unmaps it on ``free``. A frame-sized float tensor (3.5 MB at 640x360, 11 MB at 1280x720) then
arrives as untouched pages, and the first write to each page faults: ``(x + 1) * 0.5`` on a 1280x720 frame took
11 ms instead of 1.2 on a 2-core EPYC, because the second temporary never reuses the first's memory. A fixed
mmap threshold above the frame sizes (and a trim threshold above it, so the heap's top is not handed back after
each frame) lets the heap reuse the memory; peak memory stays what the largest frame needs. The measurement:
``python bench/hotpath.py``.

``keep_large_allocations()`` is called by ``pipeline.runner.run_pipeline`` and by ``KernelDeblurrer``'s constructor
(so the evaluations, predict and the benchmarks that deblur get it too), before their first frame. It changes this
process's allocator for all later allocations, and does nothing where the C library is not glibc (macOS, Windows,
musl) or ``BLURDET_MALLOC=default`` is set.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os

__all__ = ["MMAP_THRESHOLD", "MMAP_THRESHOLD_OLD_GLIBC", "TRIM_THRESHOLD", "keep_large_allocations"]

logger = logging.getLogger(__name__)

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # mallopt parameters (malloc.h)
# allocations above this still get their own mapping (a 4K frame's float batch is less); glibc releases before 2.35
# refuse more than 32 MiB (HEAP_MAX_SIZE / 2), which still holds a 1920x1080 float frame (25 MB)
MMAP_THRESHOLD, MMAP_THRESHOLD_OLD_GLIBC = 256 << 20, 32 << 20
TRIM_THRESHOLD = 512 << 20  # free memory at the heap's top beyond this goes back to the system
_done: bool | None = None


def keep_large_allocations() -> bool:
    """Set glibc's mmap and trim thresholds (module docstring) once per process; True when they are set."""
    global _done
    if _done is not None:
        return _done
    _done = False
    if os.environ.get("BLURDET_MALLOC", "").lower() == "default":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc: its own allocator policy stays
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    mmap = bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) or bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_OLD_GLIBC))
    trim = bool(mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    _done = mmap and trim
    if not _done:
        logger.debug("mallopt refused a threshold (mmap %s, trim %s); the allocator keeps its default there", mmap, trim)
    return _done
