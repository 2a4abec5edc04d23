"""The oracle: an allocator that knows every plan's hidden parameters, the upper reference.

It is the only allocator that reads :class:`envs.scenario.Portfolio` beyond the morning budgets. The
report normalises scores as ``(s - s_uniform) / (s_oracle - s_uniform)``, so the oracle must be
strong: it ranks plans by their true deep value per unit of cost and fills the best plans up to
what they can actually spend each step (capacity, learned from reporting) before funding the next.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from agents.heuristics import HeuristicAllocator, ParamsError
from envs.scenario import MAX_STAGES
from envs.shares import diurnal_traffic, pacing


@dataclass
class OracleParams:
    headroom: float = 1.5  # budget given to a plan = headroom x its estimated capacity this step
    full_use: float = 0.95  # a plan that spent this share of its budget was not capacity-bound
    capacity_smoothing: float = 0.5  # weight of a new capacity observation in its running estimate
    delay_draws: int = 256  # Monte Carlo draws of each plan's deep-funnel delays (attribution odds)

    def __post_init__(self) -> None:
        if not self.headroom >= 1.0:
            raise ParamsError(f"agent.params.headroom must be >= 1, got {self.headroom!r}")
        if not 0.0 < self.full_use <= 1.0:
            raise ParamsError(f"agent.params.full_use must be in (0, 1], got {self.full_use!r}")
        if not 0.0 < self.capacity_smoothing <= 1.0:
            raise ParamsError(f"agent.params.capacity_smoothing must be in (0, 1], got {self.capacity_smoothing!r}")
        if not self.delay_draws >= 1:
            raise ParamsError(f"agent.params.delay_draws must be >= 1, got {self.delay_draws!r}")


class OracleAllocator(HeuristicAllocator):
    """``oracle``: knows the hidden truth; funds plans in order of true deep value per cost.

    Rule: a plan's worth is its expected attributable deep value per conversion divided by its cost
    per conversion at the platform's mature prediction (its target CPA: oCPM bids
    ``target_cpa x pCTR x pCVR``). The value counts each funnel stage's value times the chance of
    reaching it (the true stage rates) and of maturing before the attribution window closes (the
    true delay distributions, by Monte Carlo). So it knows which plans are potential plans (good,
    still underpriced by the platform) and which are traps (cheap leads, poor deep rates).

    Each step it walks the plans from best to worst and gives each ``headroom`` x the spend it can
    absorb this step (its capacity, unknown at first: the first plan takes everything), until the
    shares sum to 1; verticals' compliance caps are respected on the way. Capacity is learned from
    reporting: a plan that spent less than ``full_use`` of its last budget was capacity-bound, and
    what it spent, divided by its channel's traffic that hour, updates its capacity estimate
    (weight ``capacity_smoothing``); one that used its budget may absorb ``headroom`` x more.

    Knobs (:class:`OracleParams`): ``headroom``, ``full_use``, ``capacity_smoothing``,
    ``delay_draws``.
    """

    name = "oracle"
    Params = OracleParams

    def reset(self, scenario, portfolio=None, seed: int | None = None) -> None:
        super().reset(scenario, portfolio, seed)
        if portfolio is None:
            raise ValueError("the oracle needs the hidden truth: call reset(scenario, portfolio)")
        sc, pf = scenario, portfolio
        n = sc.n_plans
        self.portfolio = pf
        self.plan_channel = np.asarray(pf.channel, dtype=np.int64)
        # Each channel's share of the day's traffic by step (what a plan's capacity scales with) and
        # of the rest of the day (the env's pacing), both (C, steps_per_day).
        self.traffic, self.rest = pacing(diurnal_traffic(sc.channels), sc.steps_per_day)

        # Cumulative delays (in steps) to each stage, Monte Carlo with a fixed stream per portfolio.
        rng = np.random.default_rng([int(pf.key) % (2**63), 7])
        z = rng.standard_normal((n, MAX_STAGES, self.params.delay_draws))
        steps = np.maximum(1.0, np.floor(pf.delay_median[:, :, None] * np.exp(pf.delay_sigma[:, :, None] * z) + 0.5))
        self.cum_delay = np.cumsum(steps, axis=1)  # (P, S, draws)
        self.reach = np.cumprod(pf.stage_rate, axis=1)  # (P, S) chance a conversion reaches stage s
        self.attribution_end = sc.horizon + sc.attribution_steps
        self.capacity = np.full(n, np.inf)  # spend per unit of traffic index; inf = not yet known
        self.t = 0

    def plan_worth(self, t: int) -> np.ndarray:
        """(n_plans,) expected attributable deep value per unit of cost of a conversion made at step ``t``."""
        in_time = (t + self.cum_delay < self.attribution_end).mean(axis=2)  # (P, S)
        value_per_conversion = (self.reach * in_time * self.portfolio.stage_value).sum(axis=1)
        return value_per_conversion / self.portfolio.target_cpa

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
        worth = self.plan_worth(self.t)
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
