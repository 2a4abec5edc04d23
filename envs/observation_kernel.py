"""The observation of :func:`envs.features.build_observation`, computed by a Numba kernel from the
simulator's books: the fast backend's implementation.

:mod:`envs.features` is the single statement of the observation (its layout, each feature's
formula) and the one a production allocator runs on real reporting data, so it stays NumPy only.
The simulator's ``numba`` backend builds the same vector here in one pass over envs and plans,
straight from :class:`envs.simulation.PortfolioBatch`'s books (the last step, the 24-hour ring,
the totals, the platform's reporting columns and the clock), instead of some fifty NumPy calls and
a dict of stats per step; the ``reference`` backend calls :func:`build_observation` on
:meth:`PortfolioBatch.reporting_stats`. Each feature follows ``features.py`` operation by operation
and writes into the position :data:`envs.features.PLAN_INDEX` gives it (passed in as an array, so
a reordered layout is picked up without recompiling). The two agree up to the last bit of
``log``/``log1p``/``sin`` (libm here, NumPy's vectorised functions there) before the cast to
float32; ``tests/test_observation_kernel.py`` holds them together on random and simulated books.
"""

from __future__ import annotations

import math

import numba as nb
import numpy as np

from envs.features import (
    GLOBAL_INDEX,
    N_PLAN_FEATURES,
    OBS_HIGH,
    OBS_LOW,
    PLAN_INDEX,
    VOCABULARIES,
)
from envs.kernels import BUDGET, CONVERSIONS, DEEP0, DEEP_VALUE, SPEND

# The features the kernel writes, in the order of its ``plan_index`` argument.
_PLAN_ORDER = (
    "active",
    "spend_last",
    "spend_24h",
    "spend_total",
    "budget_last",
    "budget_used_last",
    "impressions_24h",
    "clicks_24h",
    "ctr_24h",
    "conversions_last",
    "conversions_24h",
    "conversions_total",
    "deep_24h",
    "deep_total",
    "deep_value_24h",
    "deep_value_total",
    "cpa_ratio_total",
    "roi_24h",
    "roi_total",
    "target_cpa",
    "age_days",
    "compensation_total",
)
_GLOBAL_ORDER = ("hour_sin", "hour_cos", "day_frac", "budget_left_today", "hours_left_today")
#: Positions of :data:`_PLAN_ORDER` in a plan's block, then where each vocabulary's one-hot starts
#: (channel, vertical, status, goal), and of :data:`_GLOBAL_ORDER` in the global block.
PLAN_POSITIONS = np.array(
    [PLAN_INDEX[name] for name in _PLAN_ORDER]
    + [PLAN_INDEX[f"{column}_{vocabulary[0]}"] for column, vocabulary in VOCABULARIES.items()],
    dtype=np.int64,
)
GLOBAL_POSITIONS = np.array([GLOBAL_INDEX[name] for name in _GLOBAL_ORDER], dtype=np.int64)
assert len(_PLAN_ORDER) + sum(len(v) for v in VOCABULARIES.values()) == N_PLAN_FEATURES, (
    "every plan feature of envs.features must be written by the observation kernel"
)
assert len(_GLOBAL_ORDER) == len(GLOBAL_INDEX), "every global feature must be written by the observation kernel"
assert tuple(VOCABULARIES) == ("channel", "vertical", "status", "goal"), "the kernel's name columns, in order"


@nb.njit(inline="always", cache=True)
def _clip(x, lo, hi):
    return min(max(x, lo), hi)


@nb.njit(cache=True)
def observation_kernel(
    obs,  # (E, size) float32 out: every entry written
    plan_pos,  # PLAN_POSITIONS
    global_pos,  # GLOBAL_POSITIONS
    last,  # (E, P, k) the last step's output
    ring,  # (E, W, P, R) the last 24 hours' outputs
    ring_pos,  # positions in the ring of spend, impressions, clicks, conversions, deep events, deep value
    total,  # (E, P, k) since the episode started
    t,  # (E,) int64 the next step to simulate
    launch_step,  # (E, P) int64
    prior_age_steps,  # (E, P) int64
    target_cpa,  # (E, P)
    compensation,  # (E, P)
    channel,  # (E, P) int64 index into CHANNELS
    vertical,  # (E, P) int64
    status,  # (E, P) int64
    goal,  # (E, P) int64
    active,  # (E, P) bool
    spent_today,  # (E,)
    horizon,
    steps_per_day,
    hours_per_step,
    days,
    daily_budget,
    max_plans,
):
    n_envs, n_plans = target_cpa.shape
    n_window = ring.shape[1]
    pct = 100.0 / daily_budget
    one_pct = 0.01 * daily_budget
    block = N_PLAN_FEATURES
    for e in range(n_envs):
        row = obs[e]
        row[:] = 0.0
        for p in range(n_plans):
            if not active[e, p]:
                continue
            base = p * block
            spend_24h = impressions_24h = clicks_24h = conversions_24h = deep_24h = value_24h = 0.0
            for w in range(n_window):
                spend_24h += ring[e, w, p, ring_pos[0]]
                impressions_24h += ring[e, w, p, ring_pos[1]]
                clicks_24h += ring[e, w, p, ring_pos[2]]
                conversions_24h += ring[e, w, p, ring_pos[3]]
                deep_24h += ring[e, w, p, ring_pos[4]]
                value_24h += ring[e, w, p, ring_pos[5]]
            spend_last, budget_last = last[e, p, SPEND], last[e, p, BUDGET]
            spend_total, conversions_total = total[e, p, SPEND], total[e, p, CONVERSIONS]
            target = target_cpa[e, p]
            used = spend_last / budget_last if budget_last > 0 else 0.0
            ctr = clicks_24h / impressions_24h if impressions_24h > 0 else 0.0
            age_hours = (max(t[e] - launch_step[e, p], 0) + prior_age_steps[e, p]) * hours_per_step
            values = (
                1.0,
                spend_last * pct,
                spend_24h * pct,
                spend_total * pct,
                budget_last * pct,
                _clip(used, 0.0, 1.0),
                math.log1p(impressions_24h),
                math.log1p(clicks_24h),
                100.0 * ctr,
                math.log1p(last[e, p, CONVERSIONS]),
                math.log1p(conversions_24h),
                math.log1p(conversions_total),
                math.log1p(deep_24h),
                math.log1p(total[e, p, DEEP0]),
                value_24h * pct,
                total[e, p, DEEP_VALUE] * pct,
                _clip(spend_total / max(conversions_total, 1.0) / target, 0.0, 5.0),
                _clip(value_24h / max(spend_24h, one_pct), 0.0, 20.0),
                _clip(total[e, p, DEEP_VALUE] / max(spend_total, one_pct), 0.0, 20.0),
                math.log(target),
                min(age_hours / 24.0, 30.0) / 30.0,
                compensation[e, p] * pct,
            )
            for j in range(len(values)):
                row[base + plan_pos[j]] = _clip(values[j], OBS_LOW, OBS_HIGH)
            n_named = len(values)
            row[base + plan_pos[n_named] + channel[e, p]] = 1.0
            row[base + plan_pos[n_named + 1] + vertical[e, p]] = 1.0
            row[base + plan_pos[n_named + 2] + status[e, p]] = 1.0
            row[base + plan_pos[n_named + 3] + goal[e, p]] = 1.0
        # The clock of the decision about to be made (PortfolioBatch.clock).
        tt = min(t[e], horizon - 1)
        step_in_day = tt % steps_per_day
        hour = step_in_day * hours_per_step
        spent = 0.0 if step_in_day == 0 else spent_today[e]
        angle = 2.0 * np.pi * hour / 24.0
        g = max_plans * block
        row[g + global_pos[0]] = _clip(math.sin(angle), OBS_LOW, OBS_HIGH)
        row[g + global_pos[1]] = _clip(math.cos(angle), OBS_LOW, OBS_HIGH)
        row[g + global_pos[2]] = _clip((tt // steps_per_day) / days, OBS_LOW, OBS_HIGH)
        row[g + global_pos[3]] = _clip(max(0.0, daily_budget - spent) / daily_budget, OBS_LOW, OBS_HIGH)
        row[g + global_pos[4]] = _clip((24 - hour) / 24.0, OBS_LOW, OBS_HIGH)
