"""Actions and shares: the masked softmax and the share limits, shared by the env and production.

NumPy only: the production loader (``agents/allocator.py``) applies exactly what the simulator
applied during training. Every function works on one portfolio (plans on the last axis) or a batch
(leading axes), row by row.
"""

from __future__ import annotations

import numpy as np


def masked_softmax(logits: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Softmax over the entries where ``mask`` is true (last axis); masked entries get 0, and a row
    without any true entry is all zeros."""
    any_active = mask.any(axis=-1, keepdims=True)
    z = np.where(mask, logits, -np.inf)
    z -= np.where(any_active, z.max(axis=-1, keepdims=True), 0.0)
    np.exp(z, out=z)
    return np.divide(z, z.sum(axis=-1, keepdims=True), out=z, where=any_active)


def project_shares(
    shares: np.ndarray,
    previous: np.ndarray,
    active: np.ndarray,
    min_share: float,
    max_share: float,
    max_change: float | None,
) -> np.ndarray:
    """The closest shares (in the sense of a shift ``s_i - tau``) inside per-plan bounds that sum to 1.

    Bounds are ``[min_share, max_share]`` intersected with ``previous +- max_change`` (only once the
    plan had a share). Infeasible bounds are relaxed towards feasibility (the sum of lower bounds is
    capped at 1, the sum of upper bounds raised to 1) rather than failing mid-episode. Works row by
    row on a batch (plans on the last axis).
    """
    lo = np.where(active, min_share, 0.0)
    hi = np.where(active, max_share, 0.0)
    if max_change is not None:
        had_shares = previous.sum(axis=-1, keepdims=True) > 0
        lo_change = np.maximum(lo, previous - max_change)
        hi_change = np.minimum(hi, previous + max_change)
        lo = np.where(had_shares, np.where(active, np.minimum(lo_change, hi_change), 0.0), lo)
        hi = np.where(had_shares, hi_change, hi)
    lo_sum = lo.sum(axis=-1, keepdims=True)
    lo = np.where(lo_sum > 1.0, lo / np.where(lo_sum > 1.0, lo_sum, 1.0), lo)
    hi_sum = hi.sum(axis=-1, keepdims=True)
    a = shares.min(axis=-1, keepdims=True) - hi.max(axis=-1, keepdims=True) - 1.0
    b = shares.max(axis=-1, keepdims=True) - lo.min(axis=-1, keepdims=True) + 1.0
    for _ in range(100):  # bisection on the shift tau
        tau = 0.5 * (a + b)
        above = np.clip(shares - tau, lo, hi).sum(axis=-1, keepdims=True) > 1.0
        a = np.where(above, tau, a)
        b = np.where(above, b, tau)
    out = np.clip(shares - 0.5 * (a + b), lo, hi)
    total = out.sum(axis=-1, keepdims=True)
    np.divide(out, total, out=out, where=total > 0)
    # Upper bounds that cannot reach 1: the bounds themselves, normalised (or the shares, if all 0).
    short = hi_sum < 1.0
    if short.any():
        fallback = np.where(hi_sum > 0, hi / np.where(hi_sum > 0, hi_sum, 1.0), shares)
        out = np.where(short, fallback, out)
    return out
