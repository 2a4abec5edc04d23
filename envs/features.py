"""Reporting stats -> observation vector: the single source of the observation's layout.

This module is what a production allocator calls on real reporting data, so it depends on NumPy
alone (no Numba, no Gymnasium). The simulator fills the same :data:`STAT_COLUMNS` from its own
bookkeeping; its ``reference`` backend calls the same :func:`build_observation`, its ``numba``
backend computes the same vector in one kernel (:mod:`envs.observation_kernel`, held to this
module by ``tests/test_observation_kernel.py``). Nothing here reads hidden truth.

Windows: ``_last`` is the last decision step (an hour by default), ``_24h`` the last 24 hours,
``_total`` everything since the episode (or the reporting period) started. Money features are
divided by the portfolio's daily budget so one policy serves portfolios of any size.

Layout: ``max_plans`` blocks of :data:`PLAN_FEATURES` (padded plans are all zeros, their
``active`` flag 0), then :data:`GLOBAL_FEATURES`. :func:`build_observation` writes each feature by
its name in these tables (:data:`PLAN_INDEX`, :data:`GLOBAL_INDEX`), and one portfolio is a batch of one.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np

CHANNELS: tuple[str, ...] = ("feed", "network", "search")
VERTICALS: tuple[str, ...] = ("credit", "insurance", "securities")
# The platform's reporting vocabularies: a plan's learning status and its optimisation goal.
STATUSES: tuple[str, ...] = ("learning", "learned", "failed")
GOALS: tuple[str, ...] = ("shallow", "deep", "value")
# Name columns of the reporting stats and their vocabularies (stats hold indices into them).
VOCABULARIES: dict[str, tuple[str, ...]] = {
    "channel": CHANNELS,
    "vertical": VERTICALS,
    "status": STATUSES,
    "goal": GOALS,
}


@dataclass(frozen=True)
class Feature:
    name: str
    meaning: str
    unit: str


# What a reporting API returns per plan: the input of build_observation (and of the production
# loader's CSV). Counts and money are non-negative; channel and vertical are names.
STAT_COLUMNS: tuple[Feature, ...] = (
    Feature("channel", f"traffic source, one of {list(CHANNELS)}", "name"),
    Feature("vertical", f"business line, one of {list(VERTICALS)}", "name"),
    Feature("age_hours", "hours since the plan was launched", "hours"),
    Feature("status", f"the platform's learning status, one of {list(STATUSES)}", "name"),
    Feature("goal", f"the event the platform optimises for the plan, one of {list(GOALS)}", "name"),
    Feature("target_cpa", "the plan's oCPM target cost per conversion", "currency"),
    Feature("compensation_total", "what the platform credited the plan for overshooting its target", "currency"),
    Feature("budget_last", "budget the plan was given for the last step", "currency"),
    *(
        Feature(f"{stat}_{window}", f"{meaning} over the {wname}", unit)
        for window, wname in (("last", "last step"), ("24h", "last 24 hours"), ("total", "whole period"))
        for stat, meaning, unit in (
            ("spend", "spend", "currency"),
            ("impressions", "impressions", "count"),
            ("clicks", "clicks", "count"),
            ("conversions", "shallow conversions (the event the platform optimises)", "count"),
            ("deep_events", "matured deep conversions (first deep stage)", "count"),
            ("deep_value", "value of matured deep events, all stages", "currency"),
        )
    ),
)
STAT_NAMES: tuple[str, ...] = tuple(f.name for f in STAT_COLUMNS)
NUMERIC_STATS: tuple[str, ...] = tuple(n for n in STAT_NAMES if n not in VOCABULARIES)

PLAN_FEATURES: tuple[Feature, ...] = (
    Feature("active", "1 if the plan exists and runs, 0 for padding", "flag"),
    Feature("spend_last", "spend over the last step / daily budget x 100", "% of daily budget"),
    Feature("spend_24h", "spend over the last 24 h / daily budget x 100", "% of daily budget"),
    Feature("spend_total", "spend so far / daily budget x 100", "% of daily budget"),
    Feature("budget_last", "budget given for the last step / daily budget x 100", "% of daily budget"),
    Feature("budget_used_last", "spend_last / budget_last (0 when no budget was given)", "ratio [0, 1]"),
    Feature("impressions_24h", "log1p(impressions over the last 24 h)", "log count"),
    Feature("clicks_24h", "log1p(clicks over the last 24 h)", "log count"),
    Feature("ctr_24h", "clicks / impressions over the last 24 h x 100", "%"),
    Feature("conversions_last", "log1p(conversions over the last step)", "log count"),
    Feature("conversions_24h", "log1p(conversions over the last 24 h)", "log count"),
    Feature("conversions_total", "log1p(conversions so far)", "log count"),
    Feature("deep_24h", "log1p(matured deep conversions over the last 24 h)", "log count"),
    Feature("deep_total", "log1p(matured deep conversions so far)", "log count"),
    Feature("deep_value_24h", "deep value matured over the last 24 h / daily budget x 100", "% of daily budget"),
    Feature("deep_value_total", "deep value matured so far / daily budget x 100", "% of daily budget"),
    Feature("cpa_ratio_total", "spend / max(conversions, 1) / target CPA so far, clipped to [0, 5]", "ratio"),
    Feature("roi_24h", "deep value / max(spend, 1% of daily budget) over 24 h, clipped to [0, 20]", "ratio"),
    Feature("roi_total", "deep value / max(spend, 1% of daily budget) so far, clipped to [0, 20]", "ratio"),
    Feature("target_cpa", "log(target CPA)", "log currency"),
    Feature("age_days", "min(age, 30 days) / 30 days", "fraction"),
    Feature("compensation_total", "compensation credited so far / daily budget x 100", "% of daily budget"),
    *(
        Feature(f"{column}_{name}", f"1 if the plan's {column} is {name}", "one-hot")
        for column, vocabulary in VOCABULARIES.items()
        for name in vocabulary
    ),
)
GLOBAL_FEATURES: tuple[Feature, ...] = (
    Feature("hour_sin", "sin(2 pi hour / 24) of the step about to be decided", "[-1, 1]"),
    Feature("hour_cos", "cos(2 pi hour / 24)", "[-1, 1]"),
    Feature("day_frac", "day index / days in the episode", "fraction"),
    Feature("budget_left_today", "unspent share of today's budget", "fraction"),
    Feature("hours_left_today", "hours left today (this one included) / 24", "fraction"),
)
N_PLAN_FEATURES = len(PLAN_FEATURES)
N_GLOBAL_FEATURES = len(GLOBAL_FEATURES)
# Position of each feature in its block, by name: build_observation writes features by name only.
PLAN_INDEX: dict[str, int] = {f.name: i for i, f in enumerate(PLAN_FEATURES)}
GLOBAL_INDEX: dict[str, int] = {f.name: i for i, f in enumerate(GLOBAL_FEATURES)}
_ONE_HOT_START = PLAN_INDEX[f"channel_{CHANNELS[0]}"]
_IDENTITY = {column: np.eye(len(vocabulary)) for column, vocabulary in VOCABULARIES.items()}
assert [f.name for f in PLAN_FEATURES[_ONE_HOT_START:]] == [
    f"{column}_{name}" for column, vocabulary in VOCABULARIES.items() for name in vocabulary
], "the one-hot features must close the plan block, in VOCABULARIES' order"
# Observation bounds: every feature is clipped into them (money ratios can grow with the episode).
OBS_LOW, OBS_HIGH = -1.0, 1.0e6


@dataclass(frozen=True)
class Clock:
    """Where in the day and the period the decision about to be made sits."""

    hour: int  # 0..23, hour of day of the step about to be decided
    day: int  # 0-based day index
    days: int  # days in the episode (production: the planning period)
    daily_budget: float  # currency
    budget_left_today: float  # currency still unspent today


def observation_size(max_plans: int) -> int:
    return max_plans * N_PLAN_FEATURES + N_GLOBAL_FEATURES


def feature_names(max_plans: int) -> list[str]:
    """Names of the observation's entries, in order (``plan{i}.{feature}``, then globals)."""
    names = [f"plan{i}.{f.name}" for i in range(max_plans) for f in PLAN_FEATURES]
    return names + [f.name for f in GLOBAL_FEATURES]


def build_observation(
    stats: Mapping[str, np.ndarray], clock: Clock, max_plans: int, active: np.ndarray | None = None
) -> np.ndarray:
    """The observation vector (float32, :func:`observation_size`) from per-plan reporting stats.

    :param stats: arrays of length ``n_plans <= max_plans`` for every name in :data:`STAT_NAMES`;
        the name columns (:data:`VOCABULARIES`: ``channel``, ``vertical``, ``status``, ``goal``) hold
        indices into their vocabularies.
    :param clock: the time and budget position of the decision.
    :param max_plans: padding width.
    :param active: (n_plans,) bool, plans that exist now (default: all).

    Batches work the same way: stats shaped ``(..., n_plans)``, clock fields shaped ``(...)`` (or
    scalars) and ``active`` shaped ``(..., n_plans)`` give observations shaped ``(..., size)``, each
    equal to what the unbatched call returns for its own portfolio (the batched simulator relies
    on it).
    """
    single = np.ndim(stats["target_cpa"]) == 1
    if single:  # one portfolio: a batch of one
        stats = {name: np.asarray(values)[None] for name, values in stats.items()}
        active = None if active is None else np.asarray(active)[None]
    n = stats["target_cpa"].shape[-1]
    if n > max_plans:
        raise ValueError(f"{n} plans do not fit an observation of max_plans={max_plans}")
    batch = stats["target_cpa"].shape[:-1]
    budget = np.asarray(clock.daily_budget, dtype=np.float64)
    pct = (100.0 / budget)[..., None]  # money -> % of the daily budget, broadcast over plans
    one_pct = (0.01 * budget)[..., None]
    # Written in place into one float64 buffer (features are clipped, then cast once).
    obs = np.zeros((*batch, observation_size(max_plans)))
    block = obs[..., : max_plans * N_PLAN_FEATURES].reshape(*batch, max_plans, N_PLAN_FEATURES)[..., :n, :]
    feature = _plan_columns(block)
    _write_activity_features(feature, stats, pct)
    _write_efficiency_features(feature, stats, pct, one_pct)
    _write_one_hots(block, stats)
    if active is not None:
        active = np.asarray(active, dtype=bool)
        if not np.logical_and.reduce(active, axis=None):
            block[~active] = 0.0
    _write_global_features(obs[..., max_plans * N_PLAN_FEATURES :], clock, budget)
    np.minimum(np.maximum(obs, OBS_LOW, out=obs), OBS_HIGH, out=obs)
    return obs[0].astype(np.float32) if single else obs.astype(np.float32)


def _plan_columns(block: np.ndarray) -> Callable[[str], np.ndarray]:
    """A writable view of one named feature of every plan in ``block`` (..., n_plans, N_PLAN_FEATURES)."""
    col = block.transpose(block.ndim - 1, *range(block.ndim - 1))  # col[j]: feature j of every plan

    def feature(name: str) -> np.ndarray:
        return col[PLAN_INDEX[name]]

    return feature


def _write_activity_features(
    feature: Callable[[str], np.ndarray], stats: Mapping[str, np.ndarray], pct: np.ndarray
) -> None:
    """What each plan spent, was given and won: money times ``pct`` (100 / daily budget), counts as log1p."""
    spend_last, budget_last, impressions_24h = stats["spend_last"], stats["budget_last"], stats["impressions_24h"]
    feature("active")[...] = 1.0
    np.multiply(spend_last, pct, out=feature("spend_last"))
    np.multiply(stats["spend_24h"], pct, out=feature("spend_24h"))
    np.multiply(stats["spend_total"], pct, out=feature("spend_total"))
    np.multiply(budget_last, pct, out=feature("budget_last"))
    used = feature("budget_used_last")  # spend_last / budget_last where a budget was given, else 0
    np.divide(spend_last, budget_last, out=used, where=budget_last > 0)
    np.minimum(np.maximum(used, 0.0, out=used), 1.0, out=used)
    np.log1p(impressions_24h, out=feature("impressions_24h"))
    np.log1p(stats["clicks_24h"], out=feature("clicks_24h"))
    ctr = feature("ctr_24h")
    np.divide(stats["clicks_24h"], impressions_24h, out=ctr, where=impressions_24h > 0)
    np.multiply(100.0, ctr, out=ctr)
    np.log1p(stats["conversions_last"], out=feature("conversions_last"))
    np.log1p(stats["conversions_24h"], out=feature("conversions_24h"))
    np.log1p(stats["conversions_total"], out=feature("conversions_total"))
    np.log1p(stats["deep_events_24h"], out=feature("deep_24h"))
    np.log1p(stats["deep_events_total"], out=feature("deep_total"))
    np.multiply(stats["deep_value_24h"], pct, out=feature("deep_value_24h"))
    np.multiply(stats["deep_value_total"], pct, out=feature("deep_value_total"))


def _write_efficiency_features(
    feature: Callable[[str], np.ndarray], stats: Mapping[str, np.ndarray], pct: np.ndarray, one_pct: np.ndarray
) -> None:
    """Cost against target and value against spend (clipped), the target itself, age and compensation."""
    spend_24h, spend_total, target_cpa = stats["spend_24h"], stats["spend_total"], stats["target_cpa"]
    cpa = spend_total / np.maximum(stats["conversions_total"], 1.0)
    cpa_ratio = feature("cpa_ratio_total")
    np.minimum(np.maximum(np.divide(cpa, target_cpa, out=cpa_ratio), 0.0, out=cpa_ratio), 5.0, out=cpa_ratio)
    for name, value, spend in (
        ("roi_24h", stats["deep_value_24h"], spend_24h),
        ("roi_total", stats["deep_value_total"], spend_total),
    ):
        roi = feature(name)
        np.divide(value, np.maximum(spend, one_pct), out=roi)
        np.minimum(np.maximum(roi, 0.0, out=roi), 20.0, out=roi)
    np.log(target_cpa, out=feature("target_cpa"))
    np.divide(np.minimum(stats["age_hours"] / 24.0, 30.0), 30.0, out=feature("age_days"))
    np.multiply(stats["compensation_total"], pct, out=feature("compensation_total"))


def _write_one_hots(block: np.ndarray, stats: Mapping[str, np.ndarray]) -> None:
    """Each name column's index picks a row of its identity matrix; the vocabularies' blocks are
    contiguous and in VOCABULARIES' order, so one assignment writes them all."""
    block[..., _ONE_HOT_START:] = np.concatenate(
        [_IDENTITY[column][np.asarray(stats[column], dtype=np.int64)] for column in VOCABULARIES], axis=-1
    )


def _write_global_features(glob: np.ndarray, clock: Clock, budget: np.ndarray) -> None:
    """Time of day (as an angle), day, today's budget and hours left, into ``glob`` (..., N_GLOBAL_FEATURES)."""

    def global_feature(name: str) -> np.ndarray:
        return glob[..., GLOBAL_INDEX[name]]

    hour = np.asarray(clock.hour)
    angle = 2.0 * np.pi * hour / 24.0
    np.sin(angle, out=global_feature("hour_sin"))
    np.cos(angle, out=global_feature("hour_cos"))
    global_feature("day_frac")[...] = np.asarray(clock.day) / np.asarray(clock.days)
    global_feature("budget_left_today")[...] = np.asarray(clock.budget_left_today) / budget
    global_feature("hours_left_today")[...] = (24 - hour) / 24.0
