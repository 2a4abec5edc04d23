"""Fixed allocation rules: the baselines every learned allocator is compared with.

Each heuristic is a plain, documented policy over what an advertiser's reporting shows
(:data:`envs.features.STAT_NAMES`), the clock and the mask of plans that exist (``bayes_rank`` also
reads public knowledge from the scenario: its verticals' funnels and delays). None of them reads
the portfolio's hidden truth (``oracle_rank``, :mod:`agents.oracle`, reuses :class:`FillAllocator` with
a true worth); ``static`` reads only the morning's plan budgets
(``portfolio.static_share``, the advertiser's own setting). Knobs live in one ``Params`` dataclass
per allocator: the same dataclasses are the Hydra schema of ``conf/agent/<name>.yaml``'s ``params``
(see :mod:`agents.config`), so a typo'd knob fails at compose time and a bad value at startup.

Shared conventions:

- *Exposure* is the spend that deep conversions can already have come back for. Deep events
  arrive a day or more after the click, so the last 24 hours' spend counts only
  ``immature_weight`` of its amount; otherwise a plan that just got more budget looks worse.
- Estimates are shrunk towards the portfolio's own rate with ``prior_spend`` (a fraction of the
  daily budget) of pseudo-exposure, so a plan with no data gets the portfolio average.
- Every allocation respects the verticals' compliance caps (``max_spend_share``, public scenario
  configuration): what a capped vertical would get above its cap goes to the other verticals'
  plans (:func:`envs.shares.redistribute_over_caps`), so the env never has to withhold budget.
"""

from __future__ import annotations

import math
from abc import abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from agents.base import Allocator
from envs.features import CHANNELS, STATUSES, VERTICALS, Clock
from envs.shares import diurnal_traffic, pacing, redistribute_over_caps, vertical_caps


class ParamsError(ValueError):
    """A heuristic's knob has a value the rule cannot use."""


def _check(name: str, value: float, ok: bool, expected: str) -> None:
    if not ok:
        raise ParamsError(f"agent.params.{name} must be {expected}, got {value!r}")


# --------------------------------------------------------------------------------------------
# Shared pieces
# --------------------------------------------------------------------------------------------


def uniform_over(active: np.ndarray) -> np.ndarray:
    """Equal shares over the active plans (all zeros when none is active)."""
    active = np.asarray(active, dtype=bool)
    n_active = int(active.sum())
    return active / n_active if n_active else np.zeros(active.shape)


def exposure(stats: Mapping[str, np.ndarray], immature_weight: float) -> np.ndarray:
    """Spend that deep conversions can already have come back for (see the module docstring)."""
    return np.maximum(stats["spend_total"] - (1.0 - immature_weight) * stats["spend_24h"], 0.0)


def value_per_cost(
    stats: Mapping[str, np.ndarray], active: np.ndarray, prior_exposure: float, immature_weight: float
) -> np.ndarray:
    """Each plan's matured deep value per unit of exposure, shrunk towards the portfolio's rate.

    ``(value_p + prior_exposure * m) / (exposure_p + prior_exposure)`` with ``m`` the active
    portfolio's pooled value per exposure. While nothing has matured every plan ties (all ones).
    """
    spent = exposure(stats, immature_weight)
    value = stats["deep_value_total"]
    pooled_spend = float(spent[active].sum())
    pooled_rate = float(value[active].sum()) / max(pooled_spend, 1.0) if pooled_spend > 0 else 0.0  # >= 1 currency
    if pooled_rate <= 0.0:
        return np.ones(len(value))
    return (value + prior_exposure * pooled_rate) / (spent + prior_exposure)


@dataclass
class NoParams:
    """The knobs of a rule that has none (``params: {}``)."""


def relative_power(values: np.ndarray, active: np.ndarray, power: float) -> np.ndarray:
    """``(values / max over active) ** power`` on active plans, 0 elsewhere (scale-free, never overflows)."""
    top = float(values[active].max()) if active.any() else 0.0
    if not np.isfinite(top) or top <= 0:
        return active.astype(np.float64)
    return np.where(active, values / top, 0.0) ** power


class HeuristicAllocator(Allocator):
    """Base of the fixed rules: turns non-negative plan weights into valid, cap-respecting shares."""

    Params: type = NoParams

    def __init__(self, params=None) -> None:
        self.params = params if params is not None else self.Params()
        self.scenario = None
        self.vertical_cap = vertical_caps({})
        self.steps_seen = 0

    def reset(self, scenario, portfolio=None, seed: int | None = None) -> None:
        self.scenario = scenario
        self.vertical_cap = vertical_caps(scenario.verticals)
        self.steps_seen = 0

    def allocate(self, stats: Mapping[str, np.ndarray], clock: Clock, active: np.ndarray) -> np.ndarray:
        active = np.asarray(active, dtype=bool)
        weights = np.asarray(self.weights(stats, clock, active), dtype=np.float64)
        self.steps_seen += 1
        return self.finalise(weights, stats, active)

    @abstractmethod
    def weights(self, stats: Mapping[str, np.ndarray], clock: Clock, active: np.ndarray) -> np.ndarray:
        """Non-negative weights over plans (need not sum to 1)."""

    def finalise(self, weights: np.ndarray, stats: Mapping[str, np.ndarray], active: np.ndarray) -> np.ndarray:
        weights = np.where(active & np.isfinite(weights), np.maximum(weights, 0.0), 0.0)
        total = weights.sum()
        shares = weights / total if total > 0 else uniform_over(active)
        if active.any():
            shares = redistribute_over_caps(
                shares, np.asarray(stats["vertical"], dtype=np.int64), self.vertical_cap, active
            )
        return shares

    @property
    def hours_per_step(self) -> int:
        return self.scenario.hours_per_step if self.scenario is not None else 1


# --------------------------------------------------------------------------------------------
# The rules
# --------------------------------------------------------------------------------------------


class StaticAllocator(HeuristicAllocator):
    """``static``: the plan budgets the advertiser set in the morning, never moved.

    Rule: shares = the portfolio's morning budget shares (``portfolio.static_share``: the
    advertiser's own setting, not hidden truth), renormalised over the plans that exist.
    Knobs: none.
    """

    name = "static"

    def reset(self, scenario, portfolio=None, seed: int | None = None) -> None:
        super().reset(scenario, portfolio, seed)
        if portfolio is None:
            raise ValueError("static needs the morning plan budgets: call reset(scenario, portfolio)")
        self.morning_share = np.asarray(portfolio.static_share, dtype=np.float64)

    def weights(self, stats, clock, active):
        return self.morning_share


class UniformAllocator(HeuristicAllocator):
    """``uniform``: equal shares over the active plans. Knobs: none."""

    name = "uniform"

    def weights(self, stats, clock, active):
        return active.astype(np.float64)


@dataclass
class ProportionalParams:
    prior_spend: float = 0.03  # pseudo-exposure at the portfolio's rate, as a fraction of the daily budget
    immature_weight: float = 0.4  # how much of the last 24 h's spend counts as exposure
    power: float = 4.0  # shares ∝ (value per cost) ** power
    uniform_mix: float = 0.05  # share of the budget spread uniformly (keeps every plan observed)

    def __post_init__(self) -> None:
        _check("prior_spend", self.prior_spend, self.prior_spend > 0, "> 0")
        _check("immature_weight", self.immature_weight, 0 <= self.immature_weight <= 1, "in [0, 1]")
        _check("power", self.power, 0 <= self.power <= 20, "in [0, 20]")
        _check("uniform_mix", self.uniform_mix, 0 <= self.uniform_mix <= 1, "in [0, 1]")


class ProportionalAllocator(HeuristicAllocator):
    """``proportional``: shares proportional to smoothed observed deep value per cost.

    Rule: ``w_p = vpc_p ** power`` with ``vpc_p = (deep_value_p + k m) / (exposure_p + k)``,
    ``k = prior_spend x daily budget``, ``m`` the portfolio's pooled value per exposure (see
    :func:`value_per_cost`); then ``(1 - uniform_mix) w / sum(w) + uniform_mix / n_active``. While no
    deep value has matured (the first day) every plan ties and the shares are uniform.

    Knobs (:class:`ProportionalParams`): ``prior_spend``, ``immature_weight``, ``power``,
    ``uniform_mix``.
    """

    name = "proportional"
    Params = ProportionalParams

    def weights(self, stats, clock, active):
        p = self.params
        vpc = value_per_cost(stats, active, p.prior_spend * clock.daily_budget, p.immature_weight)
        return self._mix(relative_power(vpc, active, p.power), active)

    def _mix(self, weights: np.ndarray, active: np.ndarray) -> np.ndarray:
        total = weights.sum()
        proportional = weights / total if total > 0 else uniform_over(active)
        return (1.0 - self.params.uniform_mix) * proportional + self.params.uniform_mix * uniform_over(active)


@dataclass
class CpaGuardParams:
    review_hours: int = 6  # the rules run every this many hours (first at the episode's first step)
    min_conversions: float = 5.0  # plans with fewer conversions are not judged yet
    cut_above: float = 1.2  # CPA / target above which a plan is cut
    boost_below: float = 0.8  # CPA / target below which a plan is boosted
    cut_factor: float = 0.6  # the plan's weight is multiplied by this on a cut
    boost_factor: float = 1.25  # ... and by this on a boost
    min_weight: float = 0.05  # bounds of the multiplicative weight (starts at 1)
    max_weight: float = 4.0

    def __post_init__(self) -> None:
        _check("review_hours", self.review_hours, self.review_hours >= 1, ">= 1")
        _check("min_conversions", self.min_conversions, self.min_conversions >= 0, ">= 0")
        _check("cut_above", self.cut_above, self.cut_above > 0, "> 0")
        _check("boost_below", self.boost_below, 0 < self.boost_below <= self.cut_above, "in (0, cut_above]")
        _check("cut_factor", self.cut_factor, 0 < self.cut_factor <= 1, "in (0, 1]")
        _check("boost_factor", self.boost_factor, self.boost_factor >= 1, ">= 1")
        _check("min_weight", self.min_weight, 0 < self.min_weight <= 1, "in (0, 1]")
        _check("max_weight", self.max_weight, self.max_weight >= 1, ">= 1")


class CpaGuardAllocator(HeuristicAllocator):
    """``cpa_guard``: the ad-ops rule book: cut plans whose CPA runs above target, boost those below.

    Rule: every plan carries a weight, 1 at the start. Every ``review_hours`` (the first review at
    the episode's first step), each plan with at least ``min_conversions`` conversions is judged by
    its cost per (shallow) conversion so far against its own target CPA, the number an ad-ops team
    watches: above ``cut_above`` x target its weight is multiplied by ``cut_factor``, below
    ``boost_below`` x target by ``boost_factor``; weights stay in ``[min_weight, max_weight]``.
    Shares are proportional to the weights. Because it watches the shallow CPA, it funds cheap-lead
    plans whose leads rarely convert deeply (traps): the failure mode the learned allocators should
    avoid.

    Knobs (:class:`CpaGuardParams`): ``review_hours``, ``min_conversions``, ``cut_above``,
    ``boost_below``, ``cut_factor``, ``boost_factor``, ``min_weight``, ``max_weight``.
    """

    name = "cpa_guard"
    Params = CpaGuardParams

    def reset(self, scenario, portfolio=None, seed: int | None = None) -> None:
        super().reset(scenario, portfolio, seed)
        self.plan_weight = np.ones(scenario.n_plans)

    def weights(self, stats, clock, active):
        p = self.params
        if self.plan_weight.shape != active.shape:  # allocate() without reset(): start fresh
            self.plan_weight = np.ones(active.shape)
        review_steps = max(1, math.ceil(p.review_hours / self.hours_per_step))
        if self.steps_seen % review_steps == 0:
            conversions = stats["conversions_total"]
            judged = active & (conversions >= max(p.min_conversions, 1e-9))
            cpa_ratio = stats["spend_total"] / np.maximum(conversions, 1e-9) / stats["target_cpa"]
            factor = np.where(
                cpa_ratio > p.cut_above, p.cut_factor, np.where(cpa_ratio < p.boost_below, p.boost_factor, 1.0)
            )
            self.plan_weight = np.where(
                judged, np.clip(self.plan_weight * factor, p.min_weight, p.max_weight), self.plan_weight
            )
        return self.plan_weight


@dataclass
class BoostParams(ProportionalParams):
    boost_factor: float = 3.0  # a learning plan's weight is this many times its proportional weight
    max_boost_hours: float = 72.0  # stop boosting a plan this many hours after its launch

    def __post_init__(self) -> None:
        super().__post_init__()
        _check("boost_factor", self.boost_factor, self.boost_factor >= 1, ">= 1")
        _check("max_boost_hours", self.max_boost_hours, self.max_boost_hours >= 0, ">= 0")


class BoostAllocator(ProportionalAllocator):
    """``boost``: push new plans through their learning phase, then treat them like the rest.

    Rule: ``proportional``'s weights, with each plan that the platform reports in its learning
    phase and that launched less than ``max_boost_hours`` ago multiplied by ``boost_factor``.
    Once a plan has its ~20 conversions (or the boost window has passed) it is weighted by its
    observed value per cost like every other plan.

    Knobs (:class:`BoostParams`): ``boost_factor``, ``max_boost_hours``, and ``proportional``'s.
    """

    name = "boost"
    Params = BoostParams

    def weights(self, stats, clock, active):
        p = self.params
        vpc = value_per_cost(stats, active, p.prior_spend * clock.daily_budget, p.immature_weight)
        boosted = (stats["status"] == STATUSES.index("learning")) & (stats["age_hours"] < p.max_boost_hours)
        weights = relative_power(vpc, active, p.power) * np.where(boosted, p.boost_factor, 1.0)
        return self._mix(weights, active)


@dataclass
class ThompsonParams:
    prior_events: float = 2.0  # Gamma prior shape: pseudo deep events at the portfolio's rate
    value_prior_events: float = 3.0  # pseudo events at the portfolio's mean value per deep event
    immature_weight: float = 0.4  # how much of the last 24 h's spend counts as exposure
    draws: int = 200  # posterior draws per step (1: classic Thompson sampling)
    top_fraction: float = 0.1  # each draw funds its best ceil(top_fraction x n_active) plans
    uniform_mix: float = 0.02  # share of the budget spread uniformly

    def __post_init__(self) -> None:
        _check("prior_events", self.prior_events, self.prior_events > 0, "> 0")
        _check("value_prior_events", self.value_prior_events, self.value_prior_events > 0, "> 0")
        _check("immature_weight", self.immature_weight, 0 <= self.immature_weight <= 1, "in [0, 1]")
        _check("draws", self.draws, self.draws >= 1, ">= 1")
        _check("top_fraction", self.top_fraction, 0 < self.top_fraction <= 1, "in (0, 1]")
        _check("uniform_mix", self.uniform_mix, 0 <= self.uniform_mix <= 1, "in [0, 1]")


class ThompsonAllocator(HeuristicAllocator):
    """``thompson``: a Bayesian bandit over plans with a posterior on deep value per cost.

    Model: plan ``p``'s first-stage deep events arrive as a Poisson process in its exposure with
    rate ``lambda_p ~ Gamma(a, a / r)`` a priori, ``a = prior_events`` and ``r`` the portfolio's
    pooled rate (shrunk towards ``1 / cpa_target``, the scenario's target deep CPA, by ``a`` pseudo
    events), so ``lambda_p | data ~ Gamma(a + n_p, a / r + exposure_p)``. Its value per deep event is
    the observed mean shrunk towards the portfolio's mean by ``value_prior_events``. Every step
    draws ``draws`` samples of ``lambda_p x value_p`` per plan (a generator seeded by ``reset``);
    each draw funds its best ``ceil(top_fraction x n_active)`` plans, and a plan's share is the
    fraction of draws that fund it (probability matching; ``draws = 1`` is classic Thompson
    sampling), mixed with ``uniform_mix`` of uniform shares.

    Knobs (:class:`ThompsonParams`): ``prior_events``, ``value_prior_events``, ``immature_weight``,
    ``draws``, ``top_fraction``, ``uniform_mix``.
    """

    name = "thompson"
    Params = ThompsonParams

    def __init__(self, params=None) -> None:
        super().__init__(params)
        self.rng = np.random.default_rng()

    def reset(self, scenario, portfolio=None, seed: int | None = None) -> None:
        super().reset(scenario, portfolio, seed)
        self.rng = np.random.default_rng(seed)

    def weights(self, stats, clock, active):
        p = self.params
        n_active = int(active.sum())
        if n_active == 0:
            return np.zeros(active.shape)
        spent = exposure(stats, p.immature_weight)
        events = stats["deep_events_total"]
        value = stats["deep_value_total"]
        target_cpa = self.scenario.cpa_target if self.scenario is not None else 1.0
        pooled_rate = (events[active].sum() + p.prior_events) / (spent[active].sum() + p.prior_events * target_cpa)
        pooled_events = events[active].sum()  # a count: at least one event before it means anything
        pooled_value = value[active].sum() / max(pooled_events, 1.0) if pooled_events > 0 else 1.0
        value_per_event = (value + p.value_prior_events * pooled_value) / (events + p.value_prior_events)

        idx = np.flatnonzero(active)
        shape = p.prior_events + events[idx]
        rate = p.prior_events / pooled_rate + spent[idx]
        samples = self.rng.gamma(shape, 1.0 / rate, size=(p.draws, len(idx))) * value_per_event[idx]
        k = max(1, math.ceil(p.top_fraction * n_active))
        funded = np.argpartition(-samples, k - 1, axis=1)[:, :k]
        counts = np.bincount(funded.ravel(), minlength=len(idx)).astype(np.float64)
        weights = np.zeros(active.shape)
        weights[idx] = (1.0 - p.uniform_mix) * counts / counts.sum() + p.uniform_mix / n_active
        return weights


def channel_traffic(scenario) -> np.ndarray:
    """(len(CHANNELS), steps_per_day) each channel's share of the day's traffic by step (what a plan's
    capacity scales with), rows by the channel's index in :data:`envs.features.CHANNELS` (the
    reporting's); channels the scenario lacks get equal shares (no plan runs there)."""
    traffic, _ = pacing(diurnal_traffic(scenario.channels), scenario.steps_per_day)
    table = np.full((len(CHANNELS), scenario.steps_per_day), 1.0 / scenario.steps_per_day)
    table[[CHANNELS.index(c.name) for c in scenario.channels]] = traffic
    return table


@dataclass
class FillParams:
    """The knobs of the capacity fill shared by ``rank`` and ``oracle_rank``."""

    headroom: float = 1.5  # budget given to a plan = headroom x its estimated capacity this step
    full_use: float = 0.95  # a plan that spent this share of its budget was not capacity-bound
    capacity_smoothing: float = 0.5  # weight of a new capacity observation in its running estimate

    def __post_init__(self) -> None:
        _check("headroom", self.headroom, self.headroom >= 1.0, ">= 1")
        _check("full_use", self.full_use, 0.0 < self.full_use <= 1.0, "in (0, 1]")
        _check("capacity_smoothing", self.capacity_smoothing, 0.0 < self.capacity_smoothing <= 1.0, "in (0, 1]")


class FillAllocator(HeuristicAllocator):
    """Base of the rules that rank plans by a worth and fill each up to the spend it can absorb.

    Each step the plans are walked from the highest :meth:`worth` to the lowest and each gets
    ``headroom`` x the spend it can absorb this step (its capacity; unknown at first, so the first
    plan walked takes everything its vertical's cap allows), until the shares sum to 1; verticals'
    compliance caps are respected on the way. Capacity is learned from reporting alone: a plan that
    spent less than ``full_use`` of its last budget was capacity-bound, and what it spent, divided by
    its channel's share of the day's traffic that step (the scenario's public diurnal curve), updates
    its estimate (weight ``capacity_smoothing``); one that used its budget may absorb ``headroom`` x
    more. Money that a top plan could not spend is thus not parked on it: it goes down the ranking.

    Subclasses give the worth: ``rank`` from the reporting, ``oracle_rank`` (:mod:`agents.oracle`) from
    the hidden truth. ``leader`` (a plan index or None) is walked first whatever its worth (the
    planner's candidates).
    """

    Params: type = FillParams
    capacity: np.ndarray | None = None  # spend per unit of traffic index by plan (inf: not yet known)

    def reset(self, scenario, portfolio=None, seed: int | None = None) -> None:
        super().reset(scenario, portfolio, seed)
        self.start(channel_traffic(scenario), scenario.n_plans)

    @property
    def steps_per_day(self) -> int:
        return self.traffic.shape[1]

    def start(self, traffic: np.ndarray, n_plans: int, capacity: np.ndarray | None = None, t: int = 0) -> None:
        """Begin an episode without a scenario (the production loader): ``traffic`` is
        :func:`channel_traffic`'s table, ``capacity`` the estimates carried over (None: none known yet,
        ``inf`` entries: not known for that plan), ``t`` the step counter (its value mod the table's
        steps per day is the step of the day; 0 learns nothing from the reporting's last step)."""
        self.traffic = np.asarray(traffic, dtype=np.float64)
        # Each channel's share of the rest of the day from each step on (the env's pacing).
        self.rest = np.cumsum(self.traffic[:, ::-1], axis=1)[:, ::-1]
        self.capacity = np.full(n_plans, np.inf) if capacity is None else np.array(capacity, dtype=np.float64)
        self.leader: int | None = None
        self.t = t

    def plan_channels(self, stats: Mapping[str, np.ndarray]) -> np.ndarray:
        """(n_plans,) each plan's channel as an index into :data:`envs.features.CHANNELS`."""
        return np.asarray(stats["channel"], dtype=np.int64)

    @abstractmethod
    def worth(self, stats: Mapping[str, np.ndarray], clock: Clock, active: np.ndarray) -> np.ndarray:
        """(n_plans,) what a unit of budget is worth on each plan now: the fill's order."""

    def step_worth(self, stats: Mapping[str, np.ndarray], clock: Clock, active: np.ndarray) -> np.ndarray:
        """This step's :meth:`worth`, moving on the step counter as :meth:`allocate` does but without the
        fill (capacities are not learned): for a teacher that reads the rule's ranking each step
        (:class:`agents.kickstart.BayesTiltTeacher`). Call it once a step, in order."""
        worth = np.asarray(self.worth(stats, clock, active), dtype=np.float64)
        self.t += 1
        return worth

    def _learn_capacity(self, stats: Mapping[str, np.ndarray], channel: np.ndarray) -> None:
        p = self.params
        budget, spend = stats["budget_last"], stats["spend_last"]
        if self.t == 0:
            return
        prev = (self.t - 1) % self.steps_per_day
        traffic = self.traffic[channel, prev]
        given = budget > 0
        bound = given & (spend < p.full_use * budget)
        observed = spend / traffic
        known = np.isfinite(self.capacity)
        smoothed = np.where(
            known, (1 - p.capacity_smoothing) * self.capacity + p.capacity_smoothing * observed, observed
        )
        self.capacity = np.where(bound, smoothed, self.capacity)
        unbound = given & ~bound
        self.capacity = np.where(unbound, np.maximum(self.capacity, p.headroom * observed), self.capacity)

    def weights(self, stats, clock, active):
        p = self.params
        if self.capacity is None:
            raise RuntimeError(f"{self.name} learns capacities over an episode: call reset(scenario) before allocate()")
        if self.capacity.shape != active.shape:
            raise ValueError(f"{self.name} was reset for {len(self.capacity)} plans and given {len(active)}")
        channel = self.plan_channels(stats)
        self._learn_capacity(stats, channel)
        step_of_day = self.t % self.steps_per_day
        worth = np.asarray(self.worth(stats, clock, active), dtype=np.float64)
        if self.leader is not None:
            worth = np.where(np.arange(len(worth)) == self.leader, np.inf, worth)
        self.t += 1

        # Share of the rest of the day's budget that lets plan p spend its capacity this step: the env
        # gives a share s about s x traffic share x min(daily budget, left / rest of its channel's day).
        rest = self.rest[channel, step_of_day]
        day_budget = np.minimum(clock.daily_budget, max(clock.budget_left_today, 1e-9) / np.maximum(rest, 1e-9))
        budget_now = np.maximum(day_budget * self.traffic[channel, step_of_day], 1e-9)
        need = p.headroom * self.capacity * self.traffic[channel, step_of_day] / budget_now
        shares = np.zeros(active.shape)
        left = 1.0
        plan_vertical = np.asarray(stats["vertical"], dtype=np.int64)
        vertical_left = self.vertical_cap.copy()  # share each vertical may still get (compliance caps)
        for plan in np.argsort(-worth, kind="stable"):
            if not active[plan] or left <= 0:
                continue
            v = plan_vertical[plan]
            give = min(need[plan], left, vertical_left[v])
            if not math.isfinite(give) or give <= 0:
                continue
            shares[plan] = give
            left -= give
            vertical_left[v] -= give
        if shares.sum() <= 0:
            return active.astype(np.float64)
        return shares


@dataclass
class RankParams(FillParams):
    prior_spend: float = 0.03  # pseudo-exposure at the portfolio's rate, as a fraction of the daily budget
    immature_weight: float = 0.4  # how much of the last 24 h's spend counts as exposure
    learning_bonus: float = 3.0  # a plan in its learning phase ranks as if worth this many times more

    def __post_init__(self) -> None:
        super().__post_init__()
        _check("prior_spend", self.prior_spend, self.prior_spend > 0, "> 0")
        _check("immature_weight", self.immature_weight, 0 <= self.immature_weight <= 1, "in [0, 1]")
        _check("learning_bonus", self.learning_bonus, self.learning_bonus >= 1, ">= 1")


class RankAllocator(FillAllocator):
    """``rank``: fund plans in order of observed deep value per cost, each up to what it can spend.

    Rule: a plan's worth is ``proportional``'s smoothed matured deep value per unit of exposure
    (:func:`value_per_cost`), times ``learning_bonus`` while the platform reports it in its learning
    phase (getting a plan through learning pays for weeks; a starved one fails). Plans are then
    funded from the best down, each with ``headroom`` x the spend it can absorb this step, learned
    from its reporting (:class:`FillAllocator`): the reporting-only twin of ``oracle_rank``, which
    ranks by the true worth. Where ``proportional`` and ``boost`` give the best plans a share that
    grows with their worth whether or not they can spend it, ``rank`` gives each plan what it can
    use and moves the rest down the ranking. While no deep value has matured the plans tie but for
    the learning bonus, and are walked in that order (then the reporting's), each taking the rest of
    the budget until its capacity is learned. A plan that was given budget and spent nothing gets
    capacity 0 and is not funded again (a known limit, shared with ``oracle_rank``).

    Knobs (:class:`RankParams`): ``headroom``, ``full_use``, ``capacity_smoothing`` (the fill's),
    ``prior_spend``, ``immature_weight`` (as in ``proportional``), ``learning_bonus``. Defaults are
    the other rules' (``boost``'s factor 3 for learning plans), not tuned on the evaluation episodes.
    """

    name = "rank"
    Params = RankParams

    def worth(self, stats, clock, active):
        p = self.params
        vpc = value_per_cost(stats, active, p.prior_spend * clock.daily_budget, p.immature_weight)
        learning = np.asarray(stats["status"]) == STATUSES.index("learning")
        return vpc * np.where(learning, p.learning_bonus, 1.0)


class Tilted:
    """A ranking rule's worth multiplied by ``self.tilt`` (set before each ``allocate``; None: the rule
    itself): the fill of a residual policy (:mod:`agents.residual`), whose action sets the tilt. Mixed
    into a :class:`FillAllocator` (:class:`TiltedRank`, :class:`TiltedBayesRank`). :meth:`base_worth` is
    the untilted worth, computed once a step (a teacher labelling the step and the fill then share it:
    ``bayes_rank`` records the reporting as it goes)."""

    tilt: np.ndarray | None = None

    def reset(self, scenario, portfolio=None, seed: int | None = None) -> None:
        super().reset(scenario, portfolio, seed)
        self.tilt = None
        self._base: tuple[int | None, np.ndarray | None] = (None, None)

    def base_worth(self, stats, clock, active) -> np.ndarray:
        """The rule's own worth at this step (computed once a step)."""
        step, worth = getattr(self, "_base", (None, None))
        if step != self.t:
            worth = super().worth(stats, clock, active)
            self._base = (self.t, worth)
        return worth

    def worth(self, stats, clock, active):
        worth = self.base_worth(stats, clock, active)
        if self.tilt is None:
            return worth
        if np.shape(self.tilt) != np.shape(worth):
            raise ValueError(f"tilt has shape {np.shape(self.tilt)}, the portfolio {np.shape(worth)}")
        return worth * self.tilt


class TiltedRank(Tilted, RankAllocator):
    """``rank`` whose worth is multiplied by ``self.tilt`` (:class:`Tilted`; None: rank itself).

    The fill of a ``rank_residual`` policy (:mod:`agents.residual`): the policy's action sets the tilt.
    Here, not there, so that the production loader runs it with NumPy alone. Not a heuristic of its own
    (not in :data:`HEURISTICS`)."""

    name = "rank_tilted"


# --------------------------------------------------------------------------------------------
# A Bayesian ranker: the posterior mean of each plan's worth, from the reporting and public priors
# --------------------------------------------------------------------------------------------


def kind_odds(is_new: np.ndarray, log_cpa_ratio: np.ndarray, mix) -> tuple[np.ndarray, np.ndarray]:
    """``(p_potential, p_trap)``, each (P,): how likely each plan is a potential plan or a trap, from
    what the reporting shows of it from the first step (``mix``: an :class:`envs.scenario.PlanMix`, the
    prior's plan mix). A plan new to the episode is a potential plan or a new ordinary one in the mix's
    proportions; an established one is ordinary or a trap, weighed by how likely its target CPA's log
    ratio to its vertical's median is under each (traps are set up at ``trap_cpa_mult`` x the target,
    plans' targets vary with log-sd ``cpa_sigma``)."""
    z = np.asarray(log_cpa_ratio, dtype=np.float64) / mix.cpa_sigma
    like_trap = mix.trap_fraction * np.exp(-0.5 * (z - math.log(mix.trap_cpa_mult) / mix.cpa_sigma) ** 2)
    ordinary = 1.0 - mix.potential_fraction - mix.trap_fraction - mix.new_fraction
    like_ordinary = ordinary * np.exp(-0.5 * z**2)
    p_trap = np.where(is_new, 0.0, like_trap / np.maximum(like_trap + like_ordinary, 1e-300))
    p_potential = np.where(is_new, mix.potential_fraction / (mix.potential_fraction + mix.new_fraction), 0.0)
    return p_potential, p_trap


def beta_strength(mean: np.ndarray, var: np.ndarray) -> np.ndarray:
    """The pseudo-trials ``a + b`` of the Beta prior with this mean and variance (``inf`` where the rate is
    known: no variance, or a rate of 1; at least 0.5)."""
    mean, var = np.asarray(mean, dtype=np.float64), np.asarray(var, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        k = np.where(var > 0, mean * (1.0 - mean) / var - 1.0, np.inf)
    return np.where(mean >= 1.0, np.inf, np.maximum(k, 0.5))


def quality_prior(rate: np.ndarray, p_potential: np.ndarray, p_trap: np.ndarray, mix) -> tuple[np.ndarray, np.ndarray]:
    """``(mean, strength)``, each (P,): the Beta prior of each plan's first deep-stage rate (its quality),
    its vertical's ``rate`` times a multiplier whose law is the kind mixture's: ``potential_deep_mult``,
    ``trap_deep_mult``, or an ordinary plan's log-normal of mean 1 and log-sd ``deep_sigma``."""
    ordinary = 1.0 - p_potential - p_trap
    m1 = ordinary + p_potential * mix.potential_deep_mult + p_trap * mix.trap_deep_mult
    m2 = ordinary * math.exp(mix.deep_sigma**2) + p_potential * mix.potential_deep_mult**2
    m2 = m2 + p_trap * mix.trap_deep_mult**2
    rate = np.asarray(rate, dtype=np.float64)
    mean = np.minimum(rate * m1, 1.0)
    return mean, beta_strength(mean, rate**2 * np.maximum(m2 - m1**2, 0.0))


def delay_shares(cum_delay: np.ndarray, limits: np.ndarray, side: str) -> np.ndarray:
    """(..., L): for each row of sorted Monte Carlo delay draws ``cum_delay`` (..., D), the share of draws
    at most (``side="right"``) or below (``side="left"``) each limit; ``limits`` (L,) for every row, or
    broadcastable to (..., L)."""
    rows = cum_delay.reshape(-1, cum_delay.shape[-1])
    shape = (*cum_delay.shape[:-1], np.shape(limits)[-1])
    bounds = np.broadcast_to(limits, shape).reshape(len(rows), -1)
    counts = np.stack([np.searchsorted(row, bound, side=side) for row, bound in zip(rows, bounds, strict=True)])
    return counts.reshape(shape) / cum_delay.shape[-1]


def matured_trials(history: list[np.ndarray], matured: np.ndarray, rows: np.ndarray | None = None) -> np.ndarray:
    """(P, S): each plan's conversions so far whose stage-s outcome is due by now, in expectation.

    ``history``: the conversions reported at each decision so far (entry j: those of the step before
    decision j, so ``len(history) - 1 - j`` steps old now); ``matured`` (R, S, A): the chance that a
    stage's outcome is in by each age in steps (the last age stands for older ones), one row per plan,
    or per group with ``rows`` (P,) each plan's row."""
    counts = np.stack(history)
    age = np.minimum(len(counts) - 1 - np.arange(len(counts)), matured.shape[2] - 1)
    odds = matured[:, :, age]  # the ages first: a gather by plan then copies (P, S, steps so far) only
    if rows is not None:
        odds = odds[rows]
    return np.einsum("jp,psj->ps", counts, odds)


@dataclass
class BayesRankParams(FillParams):
    headroom: float = 1.1  # the fill's (FillParams'), chosen on family episodes (README)
    delay_draws: int = 512  # Monte Carlo draws of each vertical's deep-funnel delays

    def __post_init__(self) -> None:
        super().__post_init__()
        _check("delay_draws", self.delay_draws, self.delay_draws >= 1, ">= 1")


class BayesRankAllocator(FillAllocator):
    """``bayes_rank``: fund plans in order of the posterior mean of their deep value per cost.

    A reporting-only rule, like ``rank``, but the worth is a Bayesian estimate instead of a smoothed
    ratio. It uses the reporting (conversions each step, matured first-stage deep events and the deep
    value of every stage, each plan's target CPA, age and vertical) and public knowledge: the scenario's
    verticals (the advertiser's own funnel: each stage's mean rate, value and delay distribution, the
    attribution windows) and, for the prior over plans, the plan mix of the training family's centre
    (:class:`envs.scenario.PlanMix`'s defaults, never the scenario's own mix).

    Rule, for each plan at each step:

    - *Prior on its quality* (the first deep stage's rate): the vertical's rate times the multiplier of
      its kind (:func:`kind_odds`, :func:`quality_prior`): a plan new to the episode (no older than
      it) may be a potential plan, an established one with a trap-cheap target CPA is likely a trap.
    - *Evidence*: the trials that could have matured by now, the plan's conversions of each past step
      times the chance that the stage's cumulative delay is within their age (the vertical's delays,
      discretised as the simulator does), against the events reported. The first stage's rate is the
      Beta posterior mean ``(k m + events) / (k + trials)``. The later stages (a drawdown, a renewal,
      an account funded) are not reported apart: the deep value beyond the first stage's events
      scales all of them by one multiplier, Gamma-Poisson, with the prior's late-stage spread
      (``stage_sigma``): ``(kappa + late events seen) / (kappa + late events expected)``.
    - *Worth*: the expected attributable deep value of a conversion now (stages that would mature
      after the attribution window do not count), over its target CPA (the oCPM price at the
      platform's mature prediction).

    Plans are then funded from the best down, each up to ``headroom`` x the spend it can absorb
    (:class:`FillAllocator`, as ``rank``). Its headroom is 1.1, not ``rank``'s 1.5: a ranking that
    trusts its estimates spends where it ranks (chosen on 60 family episodes, never evaluation ones:
    README "Where the learned agent stands"). It keeps the episode's conversions step by step, so it is
    not a production fallback (those decide from the current stats alone).

    Knobs (:class:`BayesRankParams`): ``headroom``, ``full_use``, ``capacity_smoothing`` (the fill's),
    ``delay_draws``.
    """

    name = "bayes_rank"
    Params = BayesRankParams

    def reset(self, scenario, portfolio=None, seed: int | None = None) -> None:
        super().reset(scenario, portfolio, seed)
        from envs.scenario import PlanMix  # research only: the production loader never resets from a scenario

        sc, draws = scenario, self.params.delay_draws
        self.mix = PlanMix()
        n_stages = max(len(v.stages) for v in sc.verticals)
        shape = (len(VERTICALS), n_stages)
        self.stage_rate, self.stage_value = np.zeros(shape), np.zeros(shape)
        self.median_cpa = np.ones(len(VERTICALS))
        self.matured = np.zeros((*shape, sc.horizon + 1))  # chance a stage's outcome is in by each age
        self.in_time = np.zeros((*shape, sc.horizon))  # chance it is by a conversion at each step's horizon
        for v, window in zip(sc.verticals, sc.vertical_attribution_steps(), strict=True):
            row, n = VERTICALS.index(v.name), len(v.stages)
            z = np.random.default_rng([row, 7]).standard_normal((n, draws))
            median = np.array([stage.delay_median_hours / sc.hours_per_step for stage in v.stages])[:, None]
            sigma = np.array([stage.delay_sigma for stage in v.stages])[:, None]
            steps = np.maximum(1.0, np.floor(median * np.exp(sigma * z) + 0.5))  # the kernel's discretisation
            cum = np.sort(np.cumsum(steps, axis=0), axis=1)  # (stages, draws) steps from a conversion to each
            self.matured[row, :n] = delay_shares(cum, np.arange(sc.horizon + 1), "right")
            self.in_time[row, :n] = delay_shares(cum, sc.horizon + window - np.arange(sc.horizon), "left")
            self.stage_rate[row, :n] = [min(stage.rate, 1.0) for stage in v.stages]
            self.stage_value[row, :n] = [stage.value for stage in v.stages]
            self.median_cpa[row] = v.target_cpa
        self.late_strength = 1.0 / math.expm1(self.mix.stage_sigma**2)  # Gamma shape of the late multiplier
        self.conversions: list[np.ndarray] = []

    def worth(self, stats, clock, active):
        if not hasattr(self, "conversions"):
            raise RuntimeError(f"{self.name} learns from the episode's reporting: call reset(scenario) first")
        vertical = np.asarray(stats["vertical"], dtype=np.int64)
        self.conversions.append(np.array(stats["conversions_last"], dtype=np.float64))
        trials = matured_trials(self.conversions, self.matured, vertical)  # (P, S)

        # The first stage: the plan's quality.
        target = np.asarray(stats["target_cpa"], dtype=np.float64)
        is_new = np.asarray(stats["age_hours"], dtype=np.float64) <= (self.t + 1) * self.hours_per_step
        p_potential, p_trap = kind_odds(is_new, np.log(target / self.median_cpa[vertical]), self.mix)
        rate, value = self.stage_rate[vertical], self.stage_value[vertical]
        mean, k = quality_prior(rate[:, 0], p_potential, p_trap, self.mix)
        events = np.asarray(stats["deep_events_total"], dtype=np.float64)
        k = np.where(np.isinf(k), 1e12, k)  # a known rate: evidence does not move it
        # A rate: events reported faster than the delays predict cannot push it past 1.
        quality = np.minimum((k * mean + events) / (k + trials[:, 0]), 1.0)

        # The later stages, one multiplier on the vertical's rates.
        later = np.cumprod(rate, axis=1) / np.maximum(rate[:, :1], 1e-300)  # reach of stage s from the first
        later[:, 0] = 0.0
        expected_events = quality * (later * trials).sum(axis=1)
        expected_value = quality * (later * value * trials).sum(axis=1)
        unit = np.where(expected_events > 0, expected_value / np.maximum(expected_events, 1e-300), 1.0)
        seen = np.maximum(np.asarray(stats["deep_value_total"], dtype=np.float64) - value[:, 0] * events, 0.0)
        multiplier = (self.late_strength + seen / unit) / (self.late_strength + expected_events)
        self.quality, self.late_multiplier = quality, multiplier  # the posterior, for diagnostics and tests

        in_time = self.in_time[:, :, min(self.t, self.in_time.shape[2] - 1)][vertical]
        per_conversion = quality * (value[:, 0] * in_time[:, 0] + multiplier * (later * value * in_time).sum(axis=1))
        return per_conversion / target


class TiltedBayesRank(Tilted, BayesRankAllocator):
    """``bayes_rank`` whose worth is multiplied by ``self.tilt`` (:class:`Tilted`): the fill of a residual
    head with ``base: bayes_rank`` (:mod:`agents.residual`). Research only: it keeps the episode's
    reporting, so the production loader does not run it (export refuses such a head)."""

    name = "bayes_rank_tilted"


HEURISTICS: dict[str, type[HeuristicAllocator]] = {
    cls.name: cls
    for cls in (
        StaticAllocator,
        UniformAllocator,
        ProportionalAllocator,
        CpaGuardAllocator,
        BoostAllocator,
        ThompsonAllocator,
        RankAllocator,
        BayesRankAllocator,
    )
}
