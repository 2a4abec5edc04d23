"""The hindsight planner ``oracle``: the upper reference that every allocator's score is normalised by.

An oracle knows everything: the portfolio's hidden parameters, the platform's rules and, because the
simulator's draws are counter-based (the same portfolio key gives the same opportunities, users,
competing bids and funnel draws whoever wins them), the episode's future under any allocation. The
planner uses that to plan in hindsight on a private copy of the episode (an
:class:`envs.simulation.PortfolioBatch` whose rows all hold the same portfolio):

1. **Candidates.** It replays the cheap oracle ``oracle_rank`` (:mod:`agents.oracle`) and, in the
   same batch, variants of it that fund one of the ``candidates`` truly best plans first (a plan's
   worth: expected attributable deep value per conversion over its target CPA). Each row measures,
   per plan and day, what the plan spent, the budget it was given and its conversions.
2. **Linear program.** From those measurements (each plan-day taken from the row where the plan
   spent most), value per cost ``v_pd`` (its conversions x the true expected attributable value of a
   conversion that day, shrunk towards the target CPA by ``price_prior`` pseudo conversions), first-
   stage deep events per cost ``e_pd`` and capacity ``c_pd`` (what it spent if it did not use
   ``full_use`` of its budget, else unbounded), it solves with HiGHS::

       max  sum_pd v_pd x_pd
       s.t. S_d <= sum_p x_pd <= B               (each day's budget, spent as far as it can be)
            sum_{p in vertical} x_pd <= cap_v B  (compliance caps)
            0 <= x_pd <= c_pd
            sum_pd x_pd <= k T sum_pd e_pd x_pd   (portfolio CPA at most k x target T)

   for each ``k`` of :data:`CPA_LEVELS`, where ``S_d`` is the most the measured plans can spend on
   day ``d`` within their capacities and the caps (shares sum to 1, so the budget is spent unless
   every funded plan is capacity-bound: a CPA cannot be met by not spending). The score
   ``V x min(1, (T / cpa)^beta)`` (DESIGN 2) is not linear, so the CPA penalty is handled by this
   parametric search: the LP's own prediction of the score picks the ``lp_plans`` best levels. A
   plan's daily spend becomes a constant share of the day (the env paces it by the plan's channel);
   budget the funded plans cannot use goes to those that are capacity-bound.
3. **Commit.** The LP plans are replayed too, beside the reporting-only rules ``bayes_rank`` and
   ``rank`` (:mod:`agents.heuristics`, default knobs: the strongest heuristics, which on some episodes
   outscore ``oracle_rank`` and the LP plans; they do not feed the LP), and the planner plays the row
   with the best replayed score, share for share: the real episode then follows the replay exactly
   (same portfolio, same draws, same shares), so its score is the best score of every plan it tried.
   In particular it never scores below ``oracle_rank``, ``bayes_rank`` nor ``rank`` with their default
   knobs.

The replays run on the numba backend and score with the scenario's :class:`envs.objective.DeepValueScore`:
an env built with ``backend="reference"`` (whose controller may differ in the last bit) or a custom
``objective`` is not what the planner replays, so its guarantees (the replay's score, never below
``oracle_rank``, ``bayes_rank`` or ``rank``) hold for the default env only.

Cost: ``1 + candidates`` replays in one batched kernel call, then ``lp_plans`` more, ``bayes_rank`` and
``rank``; large portfolios replay fewer rows (at most ``max_replay_plans`` plan-rows per batch, plus the
two rules' rows in the second, and never fewer than the ranker, one LP plan and the two rules).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from scipy.optimize import linprog

from agents.heuristics import BayesRankAllocator, HeuristicAllocator, ParamsError, RankAllocator
from agents.oracle import OracleRankAllocator, OracleRankParams, attributable_per_conversion
from envs.features import VERTICALS, Clock
from envs.kernels import BUDGET, CONVERSIONS, SPEND
from envs.shares import redistribute_over_caps
from envs.simulation import PortfolioBatch

#: CPA levels ``k`` of the parametric LP: the portfolio's deep CPA at most ``k`` x its target (inf: no bound).
CPA_LEVELS = (0.8, 0.9, 1.0, 1.05, 1.1, 1.2, 1.35, 1.5, float("inf"))


@dataclass
class OracleParams:
    candidates: int = 5  # ranker replays that fund one of the truly best plans first
    lp_plans: int = 2  # LP plans (CPA levels) replayed
    max_replay_plans: int = 200  # plan-rows per replay batch (fewer candidates on large portfolios; rank's row on top)
    full_use: float = 0.95  # a plan-day that spent this share of its budget was not capacity-bound
    price_prior: float = 5.0  # pseudo conversions at the target CPA shrinking each measured value per cost
    delay_draws: int = 256  # Monte Carlo draws of each plan's deep-funnel delays (attribution odds)

    def __post_init__(self) -> None:
        if not self.candidates >= 0:
            raise ParamsError(f"agent.params.candidates must be >= 0, got {self.candidates!r}")
        if not self.lp_plans >= 1:
            raise ParamsError(f"agent.params.lp_plans must be >= 1, got {self.lp_plans!r}")
        if not self.max_replay_plans >= 1:
            raise ParamsError(f"agent.params.max_replay_plans must be >= 1, got {self.max_replay_plans!r}")
        if not 0.0 < self.full_use <= 1.0:
            raise ParamsError(f"agent.params.full_use must be in (0, 1], got {self.full_use!r}")
        if not self.price_prior > 0.0:
            raise ParamsError(f"agent.params.price_prior must be > 0, got {self.price_prior!r}")
        if not self.delay_draws >= 1:
            raise ParamsError(f"agent.params.delay_draws must be >= 1, got {self.delay_draws!r}")


@dataclass
class Replay:
    """What a batch of replays of the episode gave, row by row."""

    shares: np.ndarray  # (R, T, P) the shares each row played (what the env received)
    spend: np.ndarray  # (R, T, P) currency
    budget: np.ndarray  # (R, T, P) currency
    conversions: np.ndarray  # (R, T, P)
    score: np.ndarray  # (R,) the episode's score


@dataclass
class PlanDays:
    """The LP's data: one entry per measured (plan, day)."""

    plan: np.ndarray  # (N,) int64
    day: np.ndarray  # (N,) int64
    value_per_cost: np.ndarray  # (N,) expected attributable deep value per unit of spend
    deep_per_cost: np.ndarray  # (N,) expected attributable first-stage deep events per unit of spend
    capacity: np.ndarray  # (N,) the most the plan can spend that day, currency (inf: not bound)


def solve_plan(
    days: PlanDays,
    n_plans: int,
    n_days: int,
    daily_budget: float,
    plan_vertical: np.ndarray,
    vertical_cap: np.ndarray,
    cpa_target: float,
    cpa_level: float,
) -> np.ndarray | None:
    """(n_days, n_plans) spend per plan and day maximising deep value under the budget, caps and CPA level.

    ``plan_vertical`` indexes :data:`envs.features.VERTICALS` like ``vertical_cap``. Returns None when
    the CPA level cannot be met.
    """
    n = len(days.plan)
    if n == 0:
        return None
    upper = np.where(np.isfinite(days.capacity), days.capacity, daily_budget)
    rows, bounds = [], []
    for d in range(n_days):
        today = days.day == d
        rows.append(np.where(today, 1.0, 0.0))
        bounds.append(daily_budget)
        # Shares sum to 1: the day's budget is spent as far as the plans' capacities and the caps allow.
        spendable = 0.0
        for v in np.unique(plan_vertical[days.plan[today]]):
            in_v = today & (plan_vertical[days.plan] == v)
            spendable += min(vertical_cap[v] * daily_budget, upper[in_v].sum())
            if vertical_cap[v] < 1.0:
                rows.append(in_v.astype(np.float64))
                bounds.append(vertical_cap[v] * daily_budget)
        rows.append(np.where(today, -1.0, 0.0))
        bounds.append(-(1.0 - 1e-9) * min(daily_budget, spendable))
    if np.isfinite(cpa_level):
        rows.append(1.0 - cpa_level * cpa_target * days.deep_per_cost)
        bounds.append(0.0)
    result = linprog(
        -days.value_per_cost,
        A_ub=np.array(rows),
        b_ub=np.array(bounds),
        bounds=np.stack([np.zeros(n), upper], axis=1),
        method="highs",
    )
    if result.status != 0:
        return None
    spend = np.zeros((n_days, n_plans))
    spend[days.day, days.plan] = np.maximum(result.x, 0.0)
    return spend


class OracleAllocator(HeuristicAllocator):
    """``oracle``: the hindsight planner; plays the best of the plans it replayed (see the module docstring).

    Knobs (:class:`OracleParams`): ``candidates``, ``lp_plans``, ``max_replay_plans``, ``full_use``,
    ``price_prior``, ``delay_draws``.
    """

    name = "oracle"
    Params = OracleParams

    def reset(self, scenario, portfolio=None, seed: int | None = None) -> None:
        super().reset(scenario, portfolio, seed)
        if portfolio is None:
            raise ValueError("the oracle needs the hidden truth: call reset(scenario, portfolio)")
        self.portfolio = pf = portfolio
        p, sc = self.params, scenario
        n = sc.n_plans
        self.value_per_conversion, self.deep_per_conversion = attributable_per_conversion(sc, pf, p.delay_draws)
        self.plan_vertical = np.array([VERTICALS.index(sc.verticals[v].name) for v in pf.vertical], dtype=np.int64)
        worth = self.value_per_conversion[0] / pf.target_cpa
        self.worth_order = np.argsort(-worth, kind="stable")

        rows_per_batch = max(1, p.max_replay_plans // n)
        leaders = list(self.worth_order[: max(0, min(p.candidates, rows_per_batch - 1))])
        rankers = [self._ranker(None)] + [self._ranker(int(leader)) for leader in leaders]
        first = self.replay(rankers)
        plans = self.lp_schedules(self.plan_days(first), max(1, min(p.lp_plans, rows_per_batch)))
        # The reporting-only rules the oracle must never score below (rank last); no portfolio: they
        # must not read the truth.
        rules = [BayesRankAllocator(), RankAllocator()]
        for rule in rules:
            rule.reset(sc, None, seed)
        replays = [first, self.replay([*plans, *rules])]
        best_score, best = -np.inf, None
        for replay in replays:
            row = int(np.argmax(replay.score))
            if replay.score[row] > best_score:
                best_score, best = replay.score[row], replay.shares[row]
        self.planned_score = float(best_score)
        self.schedule = best  # (T, P)
        self.scores = np.concatenate([r.score for r in replays])  # every plan tried, for inspection
        self.t = 0

    def _ranker(self, leader: int | None) -> OracleRankAllocator:
        ranker = OracleRankAllocator(OracleRankParams(delay_draws=self.params.delay_draws))
        ranker.reset(self.scenario, self.portfolio)
        ranker.leader = leader
        return ranker

    # ---------------------------------------------------------------------------------------------
    def replay(self, rows: list) -> Replay:
        """Play each row (an allocator, or a (T, P) schedule of shares) on a private copy of the episode."""
        sc = self.scenario
        r, n, horizon = len(rows), sc.n_plans, sc.horizon
        sim = PortfolioBatch(sc, r)
        for i in range(r):
            sim.load(i, self.portfolio)
        book = Replay(
            shares=np.zeros((r, horizon, n)),
            spend=np.zeros((r, horizon, n)),
            budget=np.zeros((r, horizon, n)),
            conversions=np.zeros((r, horizon, n)),
            score=np.zeros(r),
        )
        for t in range(horizon):
            for i, row in enumerate(rows):
                active = sim.active_mask(i)
                if isinstance(row, np.ndarray):
                    book.shares[i, t] = self.playable(row[t], active)
                else:
                    book.shares[i, t] = row.allocate(sim.reporting_stats(i), sim.clock(i), active)
            result = sim.step(book.shares[:, t].copy())
            book.spend[:, t] = result["out"][..., SPEND]
            book.budget[:, t] = result["out"][..., BUDGET]
            book.conversions[:, t] = result["out"][..., CONVERSIONS]
        for i, parts in result["score"].items():
            book.score[i] = parts.score
        return book

    def playable(self, shares: np.ndarray, active: np.ndarray) -> np.ndarray:
        """Shares on active plans summing to 1; with none funded, all to the truly best active plan."""
        shares = np.where(active, shares, 0.0)
        total = shares.sum()
        if total <= 0:
            if not active.any():
                return shares
            shares = np.zeros(active.shape)
            shares[next(q for q in self.worth_order if active[q])] = 1.0
            total = 1.0
        return redistribute_over_caps(shares / total, self.plan_vertical, self.vertical_cap, active)

    # ---------------------------------------------------------------------------------------------
    def plan_days(self, replay: Replay) -> PlanDays:
        """Value per cost, deep events per cost and capacity of every plan-day some row funded."""
        sc, pf, p = self.scenario, self.portfolio, self.params
        shape = (len(replay.score), sc.days, sc.steps_per_day, sc.n_plans)
        spend = replay.spend.reshape(shape).sum(axis=2)  # (R, days, P)
        budget = replay.budget.reshape(shape).sum(axis=2)
        conversions = replay.conversions.reshape(shape)
        value = (conversions * self.value_per_conversion.reshape(shape[1:])).sum(axis=2)
        deep = (conversions * self.deep_per_conversion.reshape(shape[1:])).sum(axis=2)
        conversions = conversions.sum(axis=2)
        row = spend.argmax(axis=0)  # (days, P) the row where each plan-day spent most
        pick = (row[None], np.arange(sc.days)[None, :, None], np.arange(sc.n_plans)[None, None, :])
        spend, budget, value, deep, conversions = (a[pick][0] for a in (spend, budget, value, deep, conversions))
        day, plan = np.nonzero(spend > 0)
        spend, budget, value, deep, conversions = (a[day, plan] for a in (spend, budget, value, deep, conversions))
        # Shrink towards the price at target: a plan-day with a handful of conversions is noisy.
        k, target = p.price_prior, pf.target_cpa[plan]
        per_conversion = np.where(conversions > 0, 1.0 / np.maximum(conversions, 1e-12), 0.0)
        prior_value = self.day_mean(self.value_per_conversion)[day, plan]
        prior_deep = self.day_mean(self.deep_per_conversion)[day, plan]
        mean_value = np.where(conversions > 0, value * per_conversion, prior_value)
        mean_deep = np.where(conversions > 0, deep * per_conversion, prior_deep)
        cost = spend + k * target
        return PlanDays(
            plan=plan,
            day=day,
            value_per_cost=(value + k * mean_value) / cost,
            deep_per_cost=(deep + k * mean_deep) / cost,
            capacity=np.where(spend < p.full_use * budget, spend, np.inf),
        )

    def day_mean(self, per_step: np.ndarray) -> np.ndarray:
        """(days, P) the mean over each day's steps of a (T, P) table."""
        sc = self.scenario
        return per_step.reshape(sc.days, sc.steps_per_day, sc.n_plans).mean(axis=1)

    def lp_schedules(self, days: PlanDays, count: int) -> list[np.ndarray]:
        """The ``count`` best LP plans over :data:`CPA_LEVELS` by their predicted score, as (T, P) shares."""
        sc = self.scenario
        predicted = []
        for level in CPA_LEVELS:
            spend = solve_plan(
                days,
                sc.n_plans,
                sc.days,
                sc.daily_budget,
                self.plan_vertical,
                self.vertical_cap,
                sc.cpa_target,
                level,
            )
            if spend is None:
                continue
            x = spend[days.day, days.plan]
            value, deep, total = float(x @ days.value_per_cost), float(x @ days.deep_per_cost), float(x.sum())
            penalty = 1.0 if total <= sc.cpa_target * deep else (sc.cpa_target * deep / total) ** sc.beta
            predicted.append((value * penalty, level, spend))
        predicted.sort(key=lambda item: -item[0])
        schedules, seen = [], []
        for _, _, spend in predicted:
            if any(np.allclose(spend, other, rtol=1e-6, atol=1e-6 * sc.daily_budget) for other in seen):
                continue
            seen.append(spend)
            schedules.append(self.to_schedule(spend, days))
            if len(schedules) == count:
                break
        return schedules

    def to_schedule(self, spend: np.ndarray, days: PlanDays) -> np.ndarray:
        """(T, P) shares that pay each plan its day's planned spend: a constant share of the day's budget
        (the env paces it by the plan's channel), budget left over going to capacity-bound funded plans."""
        sc = self.scenario
        capacity = np.full(spend.shape, np.inf)
        capacity[days.day, days.plan] = days.capacity
        shares = spend / sc.daily_budget
        for d in range(sc.days):
            left = 1.0 - shares[d].sum()
            if left <= 1e-12:
                continue
            funded = shares[d] > 0
            full = funded & (spend[d] >= 0.999 * capacity[d])
            takers = full if full.any() else funded
            if takers.any():
                shares[d] += left * np.where(takers, shares[d], 0.0) / shares[d, takers].sum()
        return np.repeat(shares, sc.steps_per_day, axis=0)

    # ---------------------------------------------------------------------------------------------
    def weights(self, stats: Mapping[str, np.ndarray], clock: Clock, active: np.ndarray) -> np.ndarray:
        return self.schedule[min(self.t, len(self.schedule) - 1)]

    def allocate(self, stats: Mapping[str, np.ndarray], clock: Clock, active: np.ndarray) -> np.ndarray:
        """The chosen replay's shares for this step, as it played them (the plan is open-loop)."""
        active = np.asarray(active, dtype=bool)
        shares = self.schedule[min(self.t, len(self.schedule) - 1)]
        self.t += 1
        self.steps_seen += 1
        if not (np.array_equal(shares > 0, (shares > 0) & active) and abs(shares.sum() - 1.0) < 1e-9):
            shares = self.playable(shares, active)  # another episode than the one planned: stay valid
        # A no-op on the planned episode (its shares respect the caps); elsewhere the reported verticals rule.
        plan_vertical = np.asarray(stats["vertical"], dtype=np.int64)
        return redistribute_over_caps(shares, plan_vertical, self.vertical_cap, active)
