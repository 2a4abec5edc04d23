"""The numba backend's host side of a step, as Numba kernels: actions and shares to step budgets,
and the books after the auction.

:mod:`envs.shares` states each rule that turns an allocator's output into what a plan may spend, in
NumPy; it stays what the ``reference`` backend, the heuristics and the production loader run. On a
``default`` portfolio those rules are some sixty NumPy calls on arrays of 24 plans, which cost about
as much as the auction itself; the kernels here run the same rules in one pass per env, into
preallocated rows (only a sum over more than 128 entries allocates, its small pairwise stack),
operation by operation in the same order, so that they agree with the NumPy functions bit for bit
(``tests/test_step_kernels.py`` holds them equal, the sign of zero included). Two details make that
so:

- Sums: NumPy adds a run of doubles pairwise (8 partial sums, see :func:`add_reduce`); a plain
  loop adds in another order and rounds differently. Every sum whose value matters goes through
  :func:`add_reduce`; :func:`np.bincount`'s per-vertical sums are plain loops in NumPy too.
- ``exp``: NumPy's vectorised ``exp`` and libm's (which Numba calls) differ in the last bit for about
  5% of arguments, so the masked softmax is split around it: :func:`shift_logits` before, NumPy's
  ``np.exp`` in between (called by :meth:`envs.simulation.PortfolioBatch.shares_from_actions`),
  :func:`normalise_softmax` after. Every other operation here (``+ - * /``, comparisons, min/max,
  clip) is exactly rounded in both.

Min, max and clip follow NumPy's choice only up to the sign of a zero when two zeros tie; no tie of
a ``+0`` and a ``-0`` can arise from valid shares (non-negative, limits in [0, 1], ``max_change >
0``). NaN never reaches these kernels: the envs check actions and shares first. Every division is
guarded as NumPy's ``where=`` guards it (or safe by construction), so Numba's Python-style
``ZeroDivisionError`` cannot occur.

Order of a step (:meth:`envs.simulation.PortfolioBatch.step` with the numba backend):
:func:`allocate_budgets` (:func:`renormalise_row`, :func:`project_row`, :func:`withhold_row`,
:func:`step_budget_row`), the platform's bids, the auction kernel, the platform's controllers, then
:func:`keep_books`.
"""

from __future__ import annotations

import math

import numba as nb
import numpy as np

# np.abs(action) <= 1 + 1e-6: the tolerance of envs.shares.check_actions.
ACTION_BOUND = 1.0 + 1e-6


# -------------------------------------------------------------------------------------------------
# NumPy's order of operations
# -------------------------------------------------------------------------------------------------
@nb.njit(cache=True)
def _pairwise_block(a, start, n):
    """NumPy's ``pairwise_sum`` of ``a[start:start + n]`` for ``n <= 128`` (``loops_utils.h.src``): under
    8 terms in order, else eight interleaved partial sums combined as ``((r0 + r1) + (r2 + r3)) + ((r4
    + r5) + (r6 + r7))``, then the tail in order."""
    if n < 8:
        res = 0.0
        for i in range(start, start + n):
            res += a[i]
        return res
    r0, r1, r2, r3 = a[start], a[start + 1], a[start + 2], a[start + 3]
    r4, r5, r6, r7 = a[start + 4], a[start + 5], a[start + 6], a[start + 7]
    blocks = n - n % 8
    for i in range(start + 8, start + blocks, 8):
        r0 += a[i]
        r1 += a[i + 1]
        r2 += a[i + 2]
        r3 += a[i + 3]
        r4 += a[i + 4]
        r5 += a[i + 5]
        r6 += a[i + 6]
        r7 += a[i + 7]
    res = ((r0 + r1) + (r2 + r3)) + ((r4 + r5) + (r6 + r7))
    for i in range(start + blocks, start + n):
        res += a[i]
    return res


@nb.njit(cache=True)
def _half(n):
    """Where NumPy's ``pairwise_sum`` splits a run of ``n > 128``: half, rounded down to a multiple of 8."""
    half = n // 2
    return half - half % 8


@nb.njit(cache=True)
def _pairwise(a, start, n):
    """NumPy's ``pairwise_sum`` of ``a[start:start + n]``: runs over 128 are the sum of their two halves
    (:func:`_half`), recursively. Numba cannot cache a recursive function, so the tree is walked with a
    stack: each level holds a run, whether its first half is summed (``stage`` 1) or both (2)."""
    if n <= 128:
        return _pairwise_block(a, start, n)
    starts = np.empty(64, dtype=np.int64)  # a run halves per level: 64 levels cover any length
    sizes = np.empty(64, dtype=np.int64)
    stage = np.zeros(64, dtype=np.int64)
    first = np.empty(64)
    depth, starts[0], sizes[0] = 0, start, n
    while True:
        m = sizes[depth]
        if m > 128:  # descend into the first half
            stage[depth] = 1
            starts[depth + 1], sizes[depth + 1] = starts[depth], _half(m)
            depth += 1
            continue
        value = _pairwise_block(a, starts[depth], m)
        depth -= 1
        while depth >= 0 and stage[depth] == 2:  # both halves done: the run's sum goes up a level
            value = first[depth] + value
            depth -= 1
        if depth < 0:
            return value
        first[depth] = value  # the first half done: descend into the second
        stage[depth] = 2
        half = _half(sizes[depth])
        starts[depth + 1], sizes[depth + 1] = starts[depth] + half, sizes[depth] - half
        depth += 1


@nb.njit(cache=True)
def add_reduce(a):
    """``np.add.reduce(a)`` of a 1-D float64 array, bit for bit: the reduction starts from 0.0 and adds
    the pairwise sum of every entry (strided views sum in the same order)."""
    return 0.0 + _pairwise(a, 0, a.shape[0])


@nb.njit(inline="always", cache=True)
def _maximum(a, b):
    """``np.maximum`` of two non-NaN floats."""
    return a if a >= b else b


@nb.njit(inline="always", cache=True)
def _minimum(a, b):
    """``np.minimum`` of two non-NaN floats."""
    return a if a <= b else b


@nb.njit(inline="always", cache=True)
def _identical(x, y):
    """Whether two non-NaN floats are the same number, sign of zero included."""
    return x == y and math.copysign(1.0, x) == math.copysign(1.0, y)


@nb.njit(inline="always", cache=True)
def _clip(x, lo, hi):
    """``np.clip(x, lo, hi)`` of non-NaN floats: ``min(max(x, lo), hi)`` (``hi`` wins when ``lo > hi``)."""
    y = x if x > lo else lo
    return y if y < hi else hi


# -------------------------------------------------------------------------------------------------
# Actions: envs.shares.check_actions and envs.shares.masked_softmax, split around NumPy's exp
# -------------------------------------------------------------------------------------------------
@nb.njit(cache=True)
def shift_logits(actions, temperature, active, z):
    """The first half of :func:`envs.shares.masked_softmax` of ``actions[:, :P] x temperature`` over
    ``active``, after :func:`envs.shares.check_actions`' range test.

    :param actions: (E, max_plans) float64 or float32.
    :param active: (E, P) bool.
    :param z: (E, P) float64 out: the logits of active plans minus the row's largest (``-inf`` for
        inactive plans), ready for ``np.exp``.
    :returns: False, with ``z`` unspecified, when an action is NaN or outside ``[-1, 1]`` (with
        check_actions' tolerance); the caller then runs ``check_actions`` for its error.
    """
    n_envs, max_plans = actions.shape
    n_plans = active.shape[1]
    for e in range(n_envs):
        for p in range(max_plans):
            if not abs(np.float64(actions[e, p])) <= ACTION_BOUND:
                return False
    for e in range(n_envs):
        top = -np.inf
        any_active = False
        for p in range(n_plans):
            if active[e, p]:
                any_active = True
                z[e, p] = np.float64(actions[e, p]) * temperature
            else:
                z[e, p] = -np.inf
            top = _maximum(top, z[e, p])
        if not any_active:
            top = 0.0
        for p in range(n_plans):
            z[e, p] -= top
    return True


@nb.njit(cache=True)
def normalise_softmax(z, active):
    """The second half of :func:`envs.shares.masked_softmax`: ``z`` (E, P), the exponentials, divided
    in place by their row's sum where the row has an active plan (a row without one is all zeros).
    After :func:`shift_logits` such a sum is at least ``exp(0) = 1``: the division is safe."""
    for e in range(z.shape[0]):
        any_active = False
        for p in range(z.shape[1]):
            any_active = any_active or active[e, p]
        if any_active:
            total = add_reduce(z[e])
            for p in range(z.shape[1]):
                z[e, p] = z[e, p] / total


# -------------------------------------------------------------------------------------------------
# Shares: one row (one env's plans) at a time
# -------------------------------------------------------------------------------------------------
@nb.njit(cache=True)
def renormalise_row(shares, active, out):
    """:meth:`envs.simulation.PortfolioBatch.step`'s renormalisation of one env's shares over its
    active plans; all zero: uniform over them (``masked_softmax`` of zeros), all zeros without any."""
    n = shares.shape[0]
    for p in range(n):
        out[p] = shares[p] if active[p] else 0.0
    total = add_reduce(out)
    if total > 0:
        for p in range(n):
            out[p] = out[p] / total
        return
    # masked_softmax(zeros, active): exp(0) = 1 on active plans, exp(-inf) = 0 elsewhere.
    count = 0.0
    for p in range(n):
        out[p] = 1.0 if active[p] else 0.0
        count += out[p]  # a count of ones: exact in any order
    if count > 0:
        for p in range(n):
            out[p] = out[p] / count


@nb.njit(cache=True)
def project_row(shares, previous, active, min_share, max_share, has_max_change, max_change, lo, hi, work, out):
    """:func:`envs.shares.project_shares` of one row (``max_change=None`` is ``has_max_change=False``).

    :param shares, previous, active: (P,) the row's shares, those of the last step, its active plans.
    :param lo, hi, work: (P,) scratch.
    :param out: (P,) the projected shares (may not alias ``shares``).
    """
    n = shares.shape[0]
    for p in range(n):
        lo[p] = min_share if active[p] else 0.0
        hi[p] = max_share if active[p] else 0.0
    if has_max_change and add_reduce(previous) > 0:  # the plan had a share
        for p in range(n):
            lo_change = _maximum(lo[p], previous[p] - max_change)
            hi_change = _minimum(hi[p], previous[p] + max_change)
            lo[p] = _minimum(lo_change, hi_change) if active[p] else 0.0
            hi[p] = hi_change
    lo_sum = add_reduce(lo)
    if lo_sum > 1.0:
        for p in range(n):
            lo[p] = lo[p] / lo_sum
    hi_sum = add_reduce(hi)
    s_min, s_max, hi_max, lo_min = shares[0], shares[0], hi[0], lo[0]
    for p in range(1, n):
        s_min = _minimum(s_min, shares[p])
        s_max = _maximum(s_max, shares[p])
        hi_max = _maximum(hi_max, hi[p])
        lo_min = _minimum(lo_min, lo[p])
    a = s_min - hi_max - 1.0
    b = s_max - lo_min + 1.0
    for _ in range(100):  # bisection on the shift tau
        tau = 0.5 * (a + b)
        for p in range(n):
            work[p] = _clip(shares[p] - tau, lo[p], hi[p])
        # Once a and b are adjacent, tau rounds to one of them and the bisection stands still: every
        # later step repeats this one, so leaving now gives NumPy's 100 steps' result (~40 fewer).
        if add_reduce(work) > 1.0:
            if _identical(tau, a):
                break
            a = tau
        else:
            if _identical(tau, b):
                break
            b = tau
    tau = 0.5 * (a + b)
    for p in range(n):
        out[p] = _clip(shares[p] - tau, lo[p], hi[p])
    total = add_reduce(out)
    if total > 0:
        for p in range(n):
            out[p] = out[p] / total
    # Upper bounds that cannot reach 1: the bounds themselves, normalised (or the shares, if all 0).
    if hi_sum < 1.0:
        for p in range(n):
            out[p] = hi[p] / hi_sum if hi_sum > 0 else shares[p]


@nb.njit(cache=True)
def withhold_row(shares, plan_vertical, caps, totals, out):
    """:func:`envs.shares.withhold_over_caps` of one row; returns the share withheld (the sum of
    ``shares`` minus that of ``out``, as :meth:`envs.simulation.PortfolioBatch.step` computes it).

    :param plan_vertical: (P,) int64 index into VERTICALS; ``caps`` (len(VERTICALS),).
    :param totals: (len(VERTICALS),) scratch: :func:`envs.shares.vertical_totals` (a bincount: in order).
    """
    totals[:] = 0.0
    for p in range(shares.shape[0]):
        totals[plan_vertical[p]] += shares[p]
    for v in range(totals.shape[0]):  # totals becomes the scale of each vertical
        t = totals[v]
        totals[v] = caps[v] / _maximum(t, 1e-300) if t > caps[v] else 1.0
    for p in range(shares.shape[0]):
        out[p] = shares[p] * totals[plan_vertical[p]]
    return add_reduce(shares) - add_reduce(out)


@nb.njit(cache=True)
def step_budget_row(shares, day_share, rest_share, left_today, daily_budget, work, out):
    """:func:`envs.shares.step_budgets` of one row: ``day_share``, ``rest_share`` (P,) the pacing of
    each plan's channel at this step; ``work`` (P,) scratch; ``out`` (P,) the step budgets."""
    n = shares.shape[0]
    for p in range(n):
        work[p] = shares[p] * rest_share[p]
    weight = add_reduce(work)
    supported = left_today / weight if weight > 0 else daily_budget
    day_budget = _minimum(daily_budget, supported)
    for p in range(n):
        out[p] = shares[p] * day_share[p] * day_budget


# -------------------------------------------------------------------------------------------------
# Batches of rows: the NumPy functions' interface, for the exactness tests and direct use
# -------------------------------------------------------------------------------------------------
@nb.njit(cache=True)
def project_shares_kernel(shares, previous, active, min_share, max_share, has_max_change, max_change, out):
    """:func:`envs.shares.project_shares` of every row of ``shares`` (E, P) into ``out`` (E, P)."""
    n = shares.shape[1]
    lo, hi, work = np.empty(n), np.empty(n), np.empty(n)
    for e in range(shares.shape[0]):
        project_row(
            shares[e], previous[e], active[e], min_share, max_share, has_max_change, max_change, lo, hi, work, out[e]
        )


@nb.njit(cache=True)
def withhold_over_caps_kernel(shares, plan_vertical, caps, out):
    """:func:`envs.shares.withhold_over_caps` of every row of ``shares`` (E, P) into ``out`` (E, P)."""
    totals = np.empty(caps.shape[0])
    for e in range(shares.shape[0]):
        withhold_row(shares[e], plan_vertical[e], caps, totals, out[e])


@nb.njit(cache=True)
def step_budgets_kernel(shares, day_share, rest_share, left_today, daily_budget, out):
    """:func:`envs.shares.step_budgets` of every row of ``shares`` (E, P) into ``out`` (E, P)."""
    work = np.empty(shares.shape[1])
    for e in range(shares.shape[0]):
        step_budget_row(shares[e], day_share[e], rest_share[e], left_today[e], daily_budget, work, out[e])


@nb.njit(cache=True)
def finite_non_negative(shares):
    """Whether every entry of ``shares`` (1-D) is finite and >= 0 (NaN is not)."""
    for x in shares:
        if not (0.0 <= x < np.inf):
            return False
    return True


# -------------------------------------------------------------------------------------------------
# A step of PortfolioBatch: before and after the auction
# -------------------------------------------------------------------------------------------------
@nb.njit(cache=True)
def allocate_budgets(
    given,  # (E, P) float64 non-negative shares as the allocator gave them
    capped,  # (E, P) out: the shares after limits and caps
    withheld,  # (E,) out: the share withheld by the caps
    budget,  # (E, P) out: each plan's budget for the step
    # The batch's state and the scenario's constants (PortfolioBatch keeps them in this order):
    active,  # (E, P) bool plans launched
    shares,  # (E, P) in: last step's shares (limits move from them); out: this step's
    t,  # (E,) int64 the step each env simulates
    spent_today,  # (E,) in/out: zeroed when t starts a day
    has_limits,  # bool: envs.shares.has_share_limits
    min_share,
    max_share,
    has_max_change,  # bool: max_change is not None
    max_change,
    plan_vertical,  # (E, P) int64 index into VERTICALS
    vertical_cap,  # (len(VERTICALS),)
    plan_channel,  # (E, P) int64 index into the scenario's channels
    day_share,  # (C, steps_per_day) envs.shares.pacing
    rest_share,  # (C, steps_per_day)
    steps_per_day,
    daily_budget,
    scratch,  # (5, P) float64
    totals,  # (len(VERTICALS),) float64 scratch
):
    """:meth:`envs.simulation.PortfolioBatch.step` up to the auction, env by env: renormalise over active
    plans (:func:`renormalise_row`), project onto the share limits (:func:`project_row`, when
    ``has_limits``), withhold what is over a compliance cap (:func:`withhold_row`), keep the result as
    the env's shares, start the day's books, and pace the shares into step budgets
    (:func:`step_budget_row`)."""
    n_envs, n_plans = given.shape
    renormalised, projected, lo, hi, work = scratch[0], scratch[1], scratch[2], scratch[3], scratch[4]
    for e in range(n_envs):
        renormalise_row(given[e], active[e], renormalised)
        allowed = renormalised
        if has_limits:
            project_row(
                renormalised,
                shares[e],
                active[e],
                min_share,
                max_share,
                has_max_change,
                max_change,
                lo,
                hi,
                work,
                projected,
            )
            allowed = projected
        withheld[e] = withhold_row(allowed, plan_vertical[e], vertical_cap, totals, capped[e])
        shares[e] = capped[e]

        step_in_day = t[e] % steps_per_day
        if step_in_day == 0:
            spent_today[e] = 0.0
        left_today = _maximum(0.0, daily_budget - spent_today[e])
        for p in range(n_plans):  # lo and hi are free again: the pacing of each plan's channel
            lo[p] = day_share[plan_channel[e, p], step_in_day]
            hi[p] = rest_share[plan_channel[e, p], step_in_day]
        step_budget_row(capped[e], lo, hi, left_today, daily_budget, work, budget[e])


@nb.njit(cache=True)
def keep_books(
    out,  # (E, P, k) the step's output
    step,  # (E,) int64 out: the step simulated
    terminated,  # (E,) bool out: whether the episode ended
    # The batch's books and constants (PortfolioBatch keeps them in this order):
    t,  # (E,) int64 in: the step simulated; out: the next
    last,  # (E, P, k) out: the last step's output
    total,  # (E, P, k) in/out: output since the episode started
    ring,  # (E, W, P, R) in/out: the last 24 hours' window columns
    spent_today,  # (E,) in/out
    active,  # (E, P) bool out: plans launched by the next step
    launch_step,  # (E, P) int64
    window_index,  # (R,) int64 the columns of out the ring keeps
    spend_column,  # int: SPEND
    horizon,
):
    """:meth:`envs.simulation.PortfolioBatch.step` after the auction, env by env: the day's spend (summed
    over plans in NumPy's order), the last step, the totals, the 24-hour ring, the clock, the active
    plans and the end of the episode. Returns whether any episode ended."""
    n_envs, n_plans, k = out.shape
    n_window = ring.shape[1]
    for e in range(n_envs):
        spent_today[e] += add_reduce(out[e, :, spend_column])
        slot = t[e] % n_window
        for p in range(n_plans):
            for j in range(k):
                last[e, p, j] = out[e, p, j]
                total[e, p, j] += out[e, p, j]
            for j in range(window_index.shape[0]):
                ring[e, slot, p, j] = out[e, p, window_index[j]]
        step[e] = t[e]
        t[e] += 1
        decided = min(t[e], horizon - 1)
        for p in range(n_plans):
            active[e, p] = launch_step[e, p] <= decided
        terminated[e] = t[e] >= horizon
    ended = False
    for e in range(n_envs):
        ended = ended or terminated[e]
    return ended
