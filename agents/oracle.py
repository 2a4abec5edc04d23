"""The cheap oracle ``oracle_rank``: knows every plan's hidden parameters and ranks plans by them.

With :mod:`agents.planner` (the hindsight planner ``oracle``, the upper reference) it is one of the
two allocators that read :class:`envs.scenario.Portfolio` beyond the morning budgets. This module
also holds what both compute from the truth: each plan's expected attributable deep value (and
first-stage deep events) per conversion, by the step the conversion happens
(:func:`attributable_per_conversion`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from agents.heuristics import HeuristicAllocator, ParamsError
from envs.scenario import MAX_STAGES
from envs.shares import diurnal_traffic, pacing

PRICES = ("target", "observed")


def attributable_per_conversion(scenario, portfolio, delay_draws: int) -> tuple[np.ndarray, np.ndarray]:
    """``(value, deep)``, both (horizon, n_plans): the expected deep value and first-stage deep events of
    one conversion made at each step, counting only events that mature before the plan's attribution
    horizon (the episode plus its vertical's window, as the kernel drops later ones).

    Each stage's chance is its true cumulative rate; the chance of maturing in time comes from
    ``delay_draws`` Monte Carlo draws of the true delay distributions (discretised as the kernel
    does), from a stream fixed by the portfolio's key, so the tables are the same for every caller.
    """
    sc, pf = scenario, portfolio
    n = sc.n_plans
    rng = np.random.default_rng([int(pf.key) % (2**63), 7])
    z = rng.standard_normal((n, MAX_STAGES, delay_draws))
    steps = np.maximum(1.0, np.floor(pf.delay_median[:, :, None] * np.exp(pf.delay_sigma[:, :, None] * z) + 0.5))
    cum_delay = np.sort(np.cumsum(steps, axis=1), axis=2)  # (P, S, draws) steps from conversion to stage s
    reach = np.cumprod(pf.stage_rate, axis=1)  # (P, S) chance a conversion reaches stage s
    # An event of a conversion at step t counts if t + delay < sc.horizon + attribution_steps.
    room = sc.horizon + np.asarray(pf.attribution_steps)[:, None] - np.arange(sc.horizon)[None, :]  # (P, T)
    in_time = np.empty((n, MAX_STAGES, sc.horizon))
    for p in range(n):
        for s in range(MAX_STAGES):
            in_time[p, s] = np.searchsorted(cum_delay[p, s], room[p], side="left") / delay_draws
    value = np.einsum("ps,ps,pst->tp", reach, pf.stage_value, in_time)
    deep = (reach[:, 0, None] * in_time[:, 0]).T
    return value, deep


@dataclass
class OracleRankParams:
    headroom: float = 1.5  # budget given to a plan = headroom x its estimated capacity this step
    full_use: float = 0.95  # a plan that spent this share of its budget was not capacity-bound
    capacity_smoothing: float = 0.5  # weight of a new capacity observation in its running estimate
    delay_draws: int = 256  # Monte Carlo draws of each plan's deep-funnel delays (attribution odds)
    price: str = "target"  # cost per conversion: "target" (its target CPA) or "observed" (reporting)
    price_prior: float = 5.0  # "observed": pseudo conversions at the target CPA shrinking the observed price

    def __post_init__(self) -> None:
        if not self.headroom >= 1.0:
            raise ParamsError(f"agent.params.headroom must be >= 1, got {self.headroom!r}")
        if not 0.0 < self.full_use <= 1.0:
            raise ParamsError(f"agent.params.full_use must be in (0, 1], got {self.full_use!r}")
        if not 0.0 < self.capacity_smoothing <= 1.0:
            raise ParamsError(f"agent.params.capacity_smoothing must be in (0, 1], got {self.capacity_smoothing!r}")
        if not self.delay_draws >= 1:
            raise ParamsError(f"agent.params.delay_draws must be >= 1, got {self.delay_draws!r}")
        if self.price not in PRICES:
            raise ParamsError(f"agent.params.price must be one of {list(PRICES)}, got {self.price!r}")
        if not self.price_prior > 0.0:
            raise ParamsError(f"agent.params.price_prior must be > 0, got {self.price_prior!r}")


class OracleRankAllocator(HeuristicAllocator):
    """``oracle_rank``: knows the hidden truth; funds plans in order of true deep value per cost.

    Rule: a plan's worth is its expected attributable deep value per conversion
    (:func:`attributable_per_conversion`: the true stage rates, values and delay distributions)
    divided by a cost per conversion: with ``price: target`` the plan's target CPA (oCPM bids
    ``target_cpa x pCTR x pCVR``: the price at the platform's mature prediction), with ``price:
    observed`` the cost per conversion its reporting shows so far, shrunk towards the target by
    ``price_prior`` pseudo conversions (it sees what the platform's goals, controllers and auctions
    actually charge). So it knows which plans are potential plans (good, still underpriced by the
    platform) and which are traps (cheap leads, poor deep rates).

    Each step it walks the plans from best to worst and gives each ``headroom`` x the spend it can
    absorb this step (its capacity, unknown at first: the first plan takes everything), until the
    shares sum to 1; verticals' compliance caps are respected on the way. Capacity is learned from
    reporting: a plan that spent less than ``full_use`` of its last budget was capacity-bound, and
    what it spent, divided by its channel's traffic that hour, updates its capacity estimate
    (weight ``capacity_smoothing``); one that used its budget may absorb ``headroom`` x more.

    It is the cheap variant of the oracle: one pass, no look-ahead. The upper reference is the
    hindsight planner ``oracle`` (:mod:`agents.planner`), which also replays this rule as one of
    its candidate plans.

    Knobs (:class:`OracleRankParams`): ``headroom``, ``full_use``, ``capacity_smoothing``,
    ``delay_draws``, ``price``, ``price_prior``.
    """

    name = "oracle_rank"
    Params = OracleRankParams

    def reset(self, scenario, portfolio=None, seed: int | None = None) -> None:
        super().reset(scenario, portfolio, seed)
        if portfolio is None:
            raise ValueError(f"{self.name} needs the hidden truth: call reset(scenario, portfolio)")
        sc, pf = scenario, portfolio
        self.portfolio = pf
        self.plan_channel = np.asarray(pf.channel, dtype=np.int64)
        # Each channel's share of the day's traffic by step (what a plan's capacity scales with) and
        # of the rest of the day (the env's pacing), both (C, steps_per_day).
        self.traffic, self.rest = pacing(diurnal_traffic(sc.channels), sc.steps_per_day)
        self.value_per_conversion, _ = attributable_per_conversion(sc, pf, self.params.delay_draws)  # (T, P)
        self.capacity = np.full(sc.n_plans, np.inf)  # spend per unit of traffic index; inf = not yet known
        self.leader: int | None = None  # a plan funded first whatever its worth (the planner's candidates)
        self.t = 0

    def plan_worth(self, t: int, stats=None) -> np.ndarray:
        """(n_plans,) expected attributable deep value per unit of cost of a conversion made at step ``t``
        (``stats``: the reporting, needed by ``price: observed``)."""
        value = self.value_per_conversion[min(t, len(self.value_per_conversion) - 1)]
        target = self.portfolio.target_cpa
        if self.params.price == "target" or stats is None:
            return value / target
        k = self.params.price_prior
        return value * (stats["conversions_total"] + k) / (stats["spend_total"] + k * target)

    def _learn_capacity(self, stats) -> None:
        p = self.params
        budget, spend = stats["budget_last"], stats["spend_last"]
        if self.t == 0:
            return
        prev = (self.t - 1) % self.scenario.steps_per_day
        traffic = self.traffic[self.plan_channel, prev]
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
        self._learn_capacity(stats)
        step_of_day = self.t % self.scenario.steps_per_day
        worth = self.plan_worth(self.t, stats)
        if self.leader is not None:
            worth = np.where(np.arange(len(worth)) == self.leader, np.inf, worth)
        self.t += 1

        # Share of the rest of the day's budget that lets plan p spend its capacity this step: the env
        # gives a share s about s x traffic share x min(daily budget, left / rest of its channel's day).
        rest = self.rest[self.plan_channel, step_of_day]
        day_budget = np.minimum(clock.daily_budget, max(clock.budget_left_today, 1e-9) / np.maximum(rest, 1e-9))
        budget_now = np.maximum(day_budget * self.traffic[self.plan_channel, step_of_day], 1e-9)
        need = p.headroom * self.capacity * self.traffic[self.plan_channel, step_of_day] / budget_now
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
