"""The cheap oracle ``oracle_rank``: knows every plan's hidden parameters and ranks plans by them.

With :mod:`agents.planner` (the hindsight planner ``oracle``, the upper reference) it is one of the
two allocators that read :class:`envs.scenario.Portfolio` beyond the morning budgets. This module
also holds what both compute from the truth: each plan's expected attributable deep value (and
first-stage deep events) per conversion, by the step the conversion happens
(:func:`attributable_per_conversion`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from agents.heuristics import FillAllocator, FillParams, ParamsError
from envs.features import CHANNELS
from envs.scenario import MAX_STAGES

PRICES = ("target", "observed")
LATE_STAGES = ("plan", "vertical")


def late_blind(scenario, portfolio):
    """``portfolio`` with each plan's rates after its first deep stage replaced by its vertical's (the
    catalogue's) mean rates: the truth less what no reporting shows within an episode (an insurance
    renewal comes 30 days after the premium; a securities account is funded ~5.5 days after the lead).
    The first stage (the plan's quality) and everything else are kept."""
    rate = np.array(portfolio.stage_rate, dtype=np.float64)
    vertical = np.asarray(portfolio.vertical)
    for v_idx, v in enumerate(scenario.verticals):
        rows = vertical == v_idx
        for s_idx, stage in enumerate(v.stages[1:], start=1):
            rate[rows, s_idx] = min(stage.rate, 1.0)
    return replace(portfolio, stage_rate=rate)


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
class OracleRankParams(FillParams):
    delay_draws: int = 256  # Monte Carlo draws of each plan's deep-funnel delays (attribution odds)
    price: str = "target"  # cost per conversion: "target" (its target CPA) or "observed" (reporting)
    price_prior: float = 5.0  # "observed": pseudo conversions at the target CPA shrinking the observed price
    late_stages: str = "plan"  # rates after the first deep stage: the plan's own, or its "vertical"'s mean

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.delay_draws >= 1:
            raise ParamsError(f"agent.params.delay_draws must be >= 1, got {self.delay_draws!r}")
        if self.price not in PRICES:
            raise ParamsError(f"agent.params.price must be one of {list(PRICES)}, got {self.price!r}")
        if not self.price_prior > 0.0:
            raise ParamsError(f"agent.params.price_prior must be > 0, got {self.price_prior!r}")
        if self.late_stages not in LATE_STAGES:
            raise ParamsError(f"agent.params.late_stages must be one of {list(LATE_STAGES)}, got {self.late_stages!r}")


class OracleRankAllocator(FillAllocator):
    """``oracle_rank``: knows the hidden truth; funds plans in order of true deep value per cost.

    Rule: a plan's worth is its expected attributable deep value per conversion
    (:func:`attributable_per_conversion`: the true stage rates, values and delay distributions)
    divided by a cost per conversion: with ``price: target`` the plan's target CPA (oCPM bids
    ``target_cpa x pCTR x pCVR``: the price at the platform's mature prediction), with ``price:
    observed`` the cost per conversion its reporting shows so far, shrunk towards the target by
    ``price_prior`` pseudo conversions (it sees what the platform's goals, controllers and auctions
    actually charge). So it knows which plans are potential plans (good, still underpriced by the
    platform) and which are traps (cheap leads, poor deep rates).

    Plans are funded from the best down, each up to ``headroom`` x the spend it can absorb this step,
    learned from reporting (:class:`agents.heuristics.FillAllocator`, shared with ``rank``, its
    reporting-only twin, which ranks by observed value per cost instead).

    It is the cheap variant of the oracle: one pass, no look-ahead. The upper reference is the
    hindsight planner ``oracle`` (:mod:`agents.planner`), which also replays this rule as one of
    its candidate plans.

    With ``late_stages: vertical`` it is *late-blind* (:func:`late_blind`): each plan's rates after its
    first deep stage are its vertical's mean rates, so it knows the plan's quality but not what comes
    too late to be seen in an episode (insurance renewals, securities funding). It measures how much
    of the oracles' lead no reporting-only policy can have in time, and is a variant of the privileged
    teacher (``agent.kickstart.late_stages``; level with the full teacher over three training seeds,
    README "Where the learned agent stands").

    Knobs (:class:`OracleRankParams`): ``headroom``, ``full_use``, ``capacity_smoothing``,
    ``delay_draws``, ``price``, ``price_prior``, ``late_stages``.
    """

    name = "oracle_rank"
    Params = OracleRankParams

    def reset(self, scenario, portfolio=None, seed: int | None = None) -> None:
        if portfolio is None:
            raise ValueError(f"{self.name} needs the hidden truth: call reset(scenario, portfolio)")
        super().reset(scenario, portfolio, seed)
        sc, pf = scenario, portfolio
        self.portfolio = pf
        vocabulary = np.array([CHANNELS.index(c.name) for c in sc.channels], dtype=np.int64)
        self.plan_channel = vocabulary[np.asarray(pf.channel, dtype=np.int64)]  # the truth's, not the reporting's
        known = pf if self.params.late_stages == "plan" else late_blind(sc, pf)
        self.value_per_conversion, _ = attributable_per_conversion(sc, known, self.params.delay_draws)  # (T, P)

    def plan_channels(self, stats) -> np.ndarray:
        return self.plan_channel

    def plan_worth(self, t: int, stats=None) -> np.ndarray:
        """(n_plans,) expected attributable deep value per unit of cost of a conversion made at step ``t``
        (``stats``: the reporting, needed by ``price: observed``)."""
        value = self.value_per_conversion[min(t, len(self.value_per_conversion) - 1)]
        target = self.portfolio.target_cpa
        if self.params.price == "target" or stats is None:
            return value / target
        k = self.params.price_prior
        return value * (stats["conversions_total"] + k) / (stats["spend_total"] + k * target)

    def worth(self, stats, clock, active) -> np.ndarray:
        return self.plan_worth(self.t, stats)
