"""The service keeps the memory it frees for its next requests instead of handing it
back to the system.

By default glibc hands a freed block of over 32 MiB (one 10M-parameter float32 vector)
straight back to the kernel, trims its heap's free top, and gives each thread its own
arena: each large step then faults every page of its body, its new θ, m and v and its
answer in again, and the kernel zeroes each one. Measured on 10M-parameter steps, the
same service side by side on one Redis: 257 ms of service CPU a step by default, 153
with mmap off and no trimming, 119 with one arena as well. The cost: a process holds
on to the most memory it has used at once, as Redis (jemalloc) does.

glibc's own variables choose otherwise: set any of ``MALLOC_ARENA_MAX``,
``MALLOC_MMAP_MAX_`` or ``MALLOC_TRIM_THRESHOLD_`` and that one is left as set.
"""

from __future__ import annotations

import ctypes
import os
import platform

# The standard library only: the command line calls this before it imports the rest.

# mallopt's parameters (malloc.h), with the environment variable glibc reads each from
# at start, and the value this service uses.
_M_TRIM_THRESHOLD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -4, -8
_INT_MAX = 2**31 - 1
RETAINING = {
    # Every thread allocates from the one arena, which memory freed by any returns to.
    "MALLOC_ARENA_MAX": (_M_ARENA_MAX, 1),
    # No block is mapped on its own (and unmapped when freed).
    "MALLOC_MMAP_MAX_": (_M_MMAP_MAX, 0),
    # The heap's free top is kept up to 2 GiB.
    "MALLOC_TRIM_THRESHOLD_": (_M_TRIM_THRESHOLD, _INT_MAX),
}


def retain_freed_memory() -> bool:
    """Make this process, and the processes it starts (uvicorn's workers), keep freed
    memory, for each setting not already in the environment. False where the C library
    is not glibc (nothing changes).

    Call it before any thread starts: glibc fixes the number of arenas when a second
    thread first allocates, and a later ``MALLOC_ARENA_MAX`` changes nothing for this
    process."""
    if platform.libc_ver()[0] != "glibc":
        return False
    mallopt = ctypes.CDLL(None).mallopt
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    for variable, (parameter, value) in RETAINING.items():
        if variable in os.environ:
            continue
        os.environ[variable] = str(value)  # read by glibc in each process started
        mallopt(parameter, value)  # this one started already
    return True
