"""Same seed, same weights: training runs under torch's deterministic algorithms.

On the CPU the one nondeterministic operation in training is the gradient of an embedding
lookup (``W_E[tokens]``): ``index_put_`` with accumulation adds rows with atomic adds across
threads, so the order of the additions, and the last bits of the sums, change from run to
run. Deterministic mode sorts the indices first. What stays machine-specific (docs/design.md,
"SAE quality"): the number of threads splits the full reductions differently, and CPUs with
other instruction sets (AVX2, AVX-512, AMX) use other kernels.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch


@contextmanager
def deterministic() -> Iterator[None]:
    """torch's deterministic algorithms for the duration (the previous setting is restored).

    ``warn_only``: an operation without a deterministic version (some CUDA kernels) warns
    instead of failing.
    """
    enabled = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(enabled, warn_only=warn_only)
