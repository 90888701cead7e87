"""How training runs: under torch's deterministic algorithms (same seed, same weights), and
with freed memory kept for reuse (speed).

On the CPU the one nondeterministic operation in training is the gradient of an embedding
lookup (``W_E[tokens]``): ``index_put_`` with accumulation adds rows with atomic adds across
threads, so the order of the additions, and the last bits of the sums, change from run to
run. Deterministic mode sorts the indices first. What stays machine-specific (docs/design.md,
"SAE quality"): the number of threads splits the full reductions differently, and CPUs with
other instruction sets (AVX2, AVX-512, AMX) use other kernels.
"""

from __future__ import annotations

import ctypes
from collections.abc import Iterator
from contextlib import contextmanager

import torch


@contextmanager
def deterministic() -> Iterator[None]:
    """torch's deterministic algorithms for the duration (the previous setting is restored).

    ``warn_only``: an operation without a deterministic version (some CUDA kernels) warns
    instead of failing. Deterministic mode also fills every new uninitialised tensor with NaN
    (a debugging aid that shows a kernel reading memory it never wrote); no kernel here
    does, and the fills were ~10 % of a training step on 2 cores, so they are off.
    """
    enabled = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    fill = torch.utils.deterministic.fill_uninitialized_memory
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.utils.deterministic.fill_uninitialized_memory = False
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(enabled, warn_only=warn_only)
        torch.utils.deterministic.fill_uninitialized_memory = fill


# glibc's mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3


def keep_freed_memory() -> bool:
    """Make glibc keep freed buffers for reuse instead of handing them back to the kernel.

    A [batch, width] activation of an SAE step is ~12 MB. Training twelve SAEs in lockstep
    frees and allocates many of them in varying order, and glibc kept unmapping or trimming
    them: every new one faulted its pages in again (3.5 M page faults in 20 steps of the
    default set, a fifth of the time on 2 cores; 150 k with this). With the mmap threshold at
    its maximum (32 MB) and no trimming below 1 GB, freed buffers stay in the heap. Results do
    not change (where memory comes from is not arithmetic). Process-wide and lasting: the heap
    may keep up to ~1 GB it no longer uses. Returns False where the C library is not glibc.
    """
    try:
        libc = ctypes.CDLL(None)
        getattr(libc, "gnu_get_libc_version")  # noqa: B009 - raises AttributeError off glibc
    except (OSError, AttributeError):
        return False
    return all(
        libc.mallopt(param, value) == 1
        for param, value in ((_M_MMAP_THRESHOLD, 32 << 20), (_M_TRIM_THRESHOLD, 1 << 30), (_M_TOP_PAD, 256 << 20))
    )
