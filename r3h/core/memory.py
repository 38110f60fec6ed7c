"""Peak memory of this process (and of the accelerator, when there is one), and handing freed
heap memory back to the OS between tensors."""

import ctypes
import ctypes.util
import resource
import sys

import torch


def peak_rss_bytes() -> int:
    """Peak resident set size of this process so far, in bytes.

    On Linux this is `VmHWM` from /proc/self/status: `ru_maxrss` of a child process
    starts at its parent's size at fork, so it overstates a child's own peak.
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r if sys.platform == "darwin" else r * 1024


def peak_accelerator_bytes() -> int:
    return torch.cuda.max_memory_allocated() if torch.cuda.is_available() else 0


def _libc_malloc_trim():
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc.malloc_trim
    except (OSError, AttributeError):  # not glibc (musl has no malloc_trim)
        return None


_MALLOC_TRIM = _libc_malloc_trim()


def release_freed_memory() -> None:
    """Return the heap's free pages to the OS (glibc `malloc_trim(0)`; a no-op elsewhere).

    glibc raises its mmap threshold after a large block is freed, so the next tensors of
    that size come from the heap, and the pages freed between tensors stay resident: on a
    148M-parameter pool this held 0.17 GB above the merged model and the imports. The engine
    calls this after each tensor, so the peak is the working set, not the heap's history."""
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)
