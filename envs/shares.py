"""Actions to budgets: action checks, the masked softmax, share limits, compliance caps and pacing.

Each rule that turns an allocator's output into what a plan may spend lives here once, in NumPy
only: the env, the heuristics, the oracle and the production loader (``agents/allocator.py``) call
these functions, so production applies exactly what the simulator applied during training. Every
function works on one portfolio (plans on the last axis) or a batch (leading axes), row by row,
unless its docstring says otherwise. Verticals are indexed by the vocabulary :data:`VERTICALS`
everywhere (a scenario's own vertical order never reaches these functions).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from envs.features import VERTICALS

# Slack of the heuristics' cap check: shares summed in another order must not look over the cap.
_REDISTRIBUTE_SLACK = 1e-12


# -------------------------------------------------------------------------------------------------
# Actions
# -------------------------------------------------------------------------------------------------
def check_actions(actions: np.ndarray, max_plans: int) -> np.ndarray:
    """Actions as float64, shaped ``(..., max_plans)``, finite and in [-1, 1]; else ``ValueError``.

    ``actions`` has one leading axis per batch dimension; errors name the plan (and the env of a batch).
    """
    raw = np.asarray(actions)
    if raw.dtype.kind not in "fiu":  # never coerce: complex parts would be dropped, strings parsed
        raise ValueError(f"action must be an array of real numbers, got dtype {raw.dtype}")
    a = raw.astype(np.float64, copy=False)
    if a.ndim == 0 or a.shape[-1] != max_plans:
        raise ValueError(f"action must have shape (..., {max_plans}) with max_plans={max_plans} last, got {a.shape}")
    if np.logical_and.reduce(np.abs(a) <= 1.0 + 1e-6, axis=None):  # also false for NaN
        return a
    bad = ~np.isfinite(a)
    if bad.any():
        raise ValueError(f"action must be finite, got NaN/inf at {_positions(bad)}")
    bad = np.abs(a) > 1.0 + 1e-6
    if bad.any():
        raise ValueError(
            f"action entries must lie in [-1, 1] (logits are action x temperature), "
            f"got {a[bad][:10].tolist()} at {_positions(bad)}"
        )
    return a


def _positions(bad: np.ndarray) -> str:
    """Where a boolean mask over ``(..., plans)`` is true, for error messages (the first ten)."""
    if bad.ndim == 1:
        return f"plans {np.flatnonzero(bad)[:10].tolist()}"
    return f"(env, plan) {[tuple(int(i) for i in ix) for ix in np.argwhere(bad)[:10]]}"


def masked_softmax(logits: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Softmax over the entries where ``mask`` is true (last axis); masked entries get 0, and a row
    without any true entry is all zeros."""
    any_active = mask.any(axis=-1, keepdims=True)
    z = np.where(mask, logits, -np.inf)
    z -= np.where(any_active, z.max(axis=-1, keepdims=True), 0.0)
    np.exp(z, out=z)
    return np.divide(z, z.sum(axis=-1, keepdims=True), out=z, where=any_active)


# -------------------------------------------------------------------------------------------------
# Share limits
# -------------------------------------------------------------------------------------------------
def has_share_limits(min_share: float, max_share: float, max_change: float | None) -> bool:
    """Whether the limits restrict anything; without any, shares skip :func:`project_shares`."""
    return min_share > 0 or max_share < 1 or max_change is not None


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
    capped at 1, the sum of upper bounds raised to 1) rather than failing mid-episode.
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


# -------------------------------------------------------------------------------------------------
# Compliance caps: each vertical's shares at most its max_spend_share
# -------------------------------------------------------------------------------------------------
def vertical_caps(caps: Mapping[str, float] | Iterable[Any]) -> np.ndarray:
    """(len(VERTICALS),) the maximum share of each vertical, 1 (no cap) for those not named.

    :param caps: vertical name -> max share (a bundle's ``compliance_caps``), or a scenario's
        ``verticals`` (objects with ``name`` and ``max_spend_share``).
    """
    if not isinstance(caps, Mapping):
        caps = {v.name: v.max_spend_share for v in caps}
    return np.array([float(caps.get(name, 1.0)) for name in VERTICALS])


def vertical_totals(shares: np.ndarray, plan_vertical: np.ndarray) -> np.ndarray:
    """(..., len(VERTICALS)) the shares summed by vertical, row by row.

    One bincount over every row (offset by row): each row's sums run over its plans in order, as a
    bincount of that row alone would.
    """
    n_verticals = len(VERTICALS)
    batch = shares.shape[:-1]
    rows = int(np.prod(batch, dtype=np.int64))
    index = plan_vertical + n_verticals * np.arange(rows).reshape(*batch, 1)
    totals = np.bincount(index.ravel(), weights=shares.ravel(), minlength=rows * n_verticals)
    return totals.reshape(*batch, n_verticals)


def _cap_scale(totals: np.ndarray, caps: np.ndarray, over: np.ndarray) -> np.ndarray:
    """Per vertical: the factor that brings an over-cap total down to its cap (1 elsewhere)."""
    return np.where(over, caps / np.maximum(totals, 1e-300), 1.0)


def withhold_over_caps(shares: np.ndarray, plan_vertical: np.ndarray, caps: np.ndarray) -> np.ndarray:
    """Shares with each over-cap vertical scaled down to its cap; the excess is withheld (not spent).

    What the env and the production loader do with shares: the capped shares may sum to less than 1.

    :param plan_vertical: (..., n_plans) vocabulary index of each plan's vertical.
    :param caps: (len(VERTICALS),) from :func:`vertical_caps`.
    """
    totals = vertical_totals(shares, plan_vertical)
    scale = _cap_scale(totals, caps, totals > caps)
    return shares * np.take_along_axis(scale, plan_vertical, axis=-1)


def redistribute_over_caps(
    shares: np.ndarray, plan_vertical: np.ndarray, caps: np.ndarray, active: np.ndarray
) -> np.ndarray:
    """One portfolio's shares with each vertical's total at most its cap; the excess moves to uncapped
    plans (what the heuristics do, so the env never has to withhold their budget).

    :param shares: (n_plans,) non-negative, summing to 1.
    :param plan_vertical: (n_plans,) vocabulary index of each plan's vertical.
    :param caps: (len(VERTICALS),) from :func:`vertical_caps`.
    :param active: (n_plans,) bool; the excess goes only to active plans.

    When every active plan sits in a capped vertical, the caps cannot hold with shares summing to
    1 and the shares are returned as they are (the env then withholds the excess).
    """
    shares = shares.copy()
    if np.all(caps[plan_vertical] >= 1.0):
        return shares
    for _ in range(len(caps) + 1):
        totals = vertical_totals(shares, plan_vertical)
        over = totals > caps + _REDISTRIBUTE_SLACK
        if not over.any():
            return shares
        full = over[plan_vertical] | (totals[plan_vertical] >= caps[plan_vertical] - _REDISTRIBUTE_SLACK)
        scale = _cap_scale(totals, caps, over)
        excess = float(shares.sum() - (shares * scale[plan_vertical]).sum())
        shares = shares * scale[plan_vertical]
        takers = active & ~full
        if not takers.any():
            return shares / shares.sum()
        weight = np.where(takers, np.maximum(shares, 1e-9), 0.0)
        shares = shares + excess * weight / weight.sum()
    return shares


# -------------------------------------------------------------------------------------------------
# Pacing: a plan's share of today's remaining budget -> its budget for this step
# -------------------------------------------------------------------------------------------------
def diurnal_traffic(channels: Sequence[Any]) -> np.ndarray:
    """(C, 24) each channel's traffic multiplier by hour of day, normalised to mean 1.

    :param channels: a scenario's channels (objects with a ``diurnal`` curve of 24 values).
    """
    return np.array([np.asarray(c.diurnal) / np.mean(c.diurnal) for c in channels])


def pacing(diurnal: np.ndarray, steps_per_day: int) -> tuple[np.ndarray, np.ndarray]:
    """``(day_share, rest_share)``, both (C, steps_per_day): each channel's share of the day's traffic
    that arrives in each step of the day, and the share still to come from that step on (inclusive).

    A step covers ``24 / steps_per_day`` hours at the traffic of its first hour (as the kernel draws
    it). A channel without traffic at any step start gets equal shares (nothing can be spent there).
    """
    hours = np.arange(steps_per_day) * (24 // steps_per_day)
    traffic = diurnal[:, hours]
    total = traffic.sum(axis=1, keepdims=True)
    day_share = np.divide(traffic, total, out=np.full_like(traffic, 1.0 / steps_per_day), where=total > 0)
    rest_share = np.cumsum(day_share[:, ::-1], axis=1)[:, ::-1]
    return day_share, rest_share


def step_budgets(
    shares: np.ndarray, day_share: np.ndarray, rest_share: np.ndarray, left_today: np.ndarray, daily_budget: float
) -> np.ndarray:
    """Each plan's budget for this step from its share of the rest of the day, paced by its channel.

    ``budget_p = share_p x day_share_p x D`` with ``D = min(daily_budget, left_today / sum_q share_q x
    rest_share_q)``: the day's budget that what is left supports at the current shares. Held all day,
    a share spends ``share x daily_budget``, following its own channel's traffic whatever the other
    plans' channels (a plan on search is not paced by the feed's evening); money a plan could not
    spend earlier is not pushed into later steps (``D`` never exceeds the daily budget), so there is
    no end-of-day dump.

    :param shares: (..., P) non-negative, summing to at most 1.
    :param day_share, rest_share: (..., P) :func:`pacing` of each plan's channel at this step.
    :param left_today: (...) budget not yet spent today.
    """
    weight = np.add.reduce(shares * rest_share, axis=-1)
    supported = np.divide(left_today, weight, out=np.full_like(weight, float(daily_budget)), where=weight > 0)
    return shares * day_share * np.minimum(daily_budget, supported)[..., None]
