"""Poisson sampling: the sampling the accountants assume.

Every example is included independently with probability q, so batch sizes vary and can be 0.
An empty batch is a real step (noise only) and is never re-drawn: re-sampling to avoid it would
break the accounting (Opacus issue #161).  Shuffled fixed-size batches would give a weaker
guarantee than the one reported (Chua et al., ICML 2024, arXiv 2403.17673).
"""

from __future__ import annotations

import numpy as np


def poisson_sample(num_items: int, sample_rate: float, rng: np.random.Generator) -> np.ndarray:
    """Indices of the items included in one logical batch, each with probability ``sample_rate``.

    >>> rng = np.random.default_rng(0)
    >>> batch = poisson_sample(1000, 0.05, rng)
    >>> 20 < len(batch) < 80
    True
    """
    if not 0 < sample_rate <= 1:
        raise ValueError(f"sample_rate must be in (0, 1]. Found {sample_rate}.")
    return np.flatnonzero(rng.random(num_items) < sample_rate)


def micro_batches(indices: np.ndarray, size: int) -> list[np.ndarray]:
    """Split a logical batch into physical micro-batches of at most ``size`` (memory stays flat)."""
    return [indices[i : i + size] for i in range(0, len(indices), size)]
