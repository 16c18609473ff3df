"""glibc ``malloc`` settings for the command line: keep freed tensor memory for reuse.

On Linux with glibc, a large block (any activation of a batch) is ``mmap``-ed when allocated and
handed back to the kernel when freed, and the heap's free top is returned above a small threshold;
the next step asks for the same sizes again and the kernel maps and zeroes fresh pages. A CPU
sampler, classifier or training loop then spends much of its time in page faults: on a 2-vCPU VM,
DDIM sampling of the demo diffusion model at batch 64 spent as much time in the kernel as in torch.
glibc's own remedy is ``mallopt(3)``: blocks below ``M_MMAP_THRESHOLD`` (at most 32 MiB) come
from the heap, and the heap's free top is returned only above ``M_TRIM_THRESHOLD``, so the same
pages serve every step. ``bench/bench_malloc.py`` measures it side by side (docs/benchmarks.md);
``bench/bench_memory.py --malloc tuned`` checks that peak memory still does not grow with the data.

:func:`tune_malloc` (also ``spurious.tune_malloc``) sets them in the running process. The CLI calls
it first thing; a library user may call it in their own script. It does nothing off glibc, when
``SPURIOUS_MALLOC=0``, or when the user set any of glibc's ``MALLOC_*`` variables or
``glibc.malloc`` tunables (their settings win).
The cost: up to ``trim_threshold`` (1 GiB) of freed memory stays with the process for reuse.
"""

from __future__ import annotations

import ctypes
import os

__all__ = ["tune_malloc", "MALLOC_ENV_VARS"]

# mallopt(3) parameter numbers (glibc malloc.h)
_M_TRIM_THRESHOLD = -1
_M_TOP_PAD = -2
_M_MMAP_THRESHOLD = -3
_M_MMAP_MAX = -4

MALLOC_ENV_VARS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_", "MALLOC_MMAP_MAX_",
                   "MALLOC_ARENA_MAX")
"""glibc's environment variables for the same settings; when one is set, :func:`tune_malloc` leaves malloc alone."""

_MIB = 1 << 20


def _is_glibc() -> bool:
    """Whether this process runs on glibc (``confstr``, cheap; ``platform.libc_ver`` reads the executable)."""
    try:
        return (os.confstr("CS_GNU_LIBC_VERSION") or "").startswith("glibc")
    except (ValueError, OSError, AttributeError):  # no such name off glibc; no os.confstr on Windows
        return False


def tune_malloc(*, use_mmap: bool = True, mmap_threshold: int = 32 * _MIB, trim_threshold: int = 1024 * _MIB,
                top_pad: int = 64 * _MIB) -> bool:
    """Set glibc's malloc to reuse the pages of freed blocks in this process; returns whether it did.

    Args:
        use_mmap: ``mmap`` blocks of ``mmap_threshold`` bytes and more (glibc caps the threshold at
            32 MiB on 64-bit). ``False`` takes every block from the heap (``M_MMAP_MAX = 0``): faster
            still for inference on large batches (ResNet-50 1.9x instead of 1.5x on the 2-vCPU VM),
            but the heap keeps large freed blocks, which raised the peak of ``npca`` by a quarter
            with twice the images per class (``bench/bench_memory.py``), so it is not the default.
        mmap_threshold: see ``use_mmap``.
        trim_threshold: free memory at the heap's top is returned to the system above this.
        top_pad: extra bytes the heap grows by each time (virtual until touched).

    Returns ``False`` and changes nothing off Linux/glibc, under ``SPURIOUS_MALLOC=0``, or when one
    of :data:`MALLOC_ENV_VARS` or a ``glibc.malloc.*`` tunable in ``GLIBC_TUNABLES`` is set.
    """
    if (os.environ.get("SPURIOUS_MALLOC", "1").strip() == "0" or any(v in os.environ for v in MALLOC_ENV_VARS)
            or "glibc.malloc." in os.environ.get("GLIBC_TUNABLES", "")):
        return False
    if not _is_glibc():
        return False
    try:  # the process's own symbols include libc's (no library search, which runs ldconfig)
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    settings = [(_M_MMAP_THRESHOLD, mmap_threshold), (_M_TRIM_THRESHOLD, trim_threshold), (_M_TOP_PAD, top_pad)]
    if not use_mmap:
        settings.append((_M_MMAP_MAX, 0))
    ok = True
    for param, value in settings:
        ok = bool(mallopt(param, int(value))) and ok  # mallopt returns 1 on success, 0 on a bad value
    return ok
