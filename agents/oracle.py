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

from agents.heuristics import (
    FillAllocator,
    FillParams,
    ParamsError,
    beta_strength,
    delay_shares,
    kind_odds,
    matured_trials,
    quality_prior,
)
from envs.features import CHANNELS
from envs.scenario import KIND_POTENTIAL, KIND_TRAP, MAX_STAGES

PRICES = ("target", "observed")
LATE_STAGES = ("plan", "vertical")
EVIDENCE = ("none", "public", "kind")


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


def cumulative_delays(scenario, portfolio, delay_draws: int) -> np.ndarray:
    """(P, MAX_STAGES, delay_draws), sorted on the last axis: Monte Carlo draws of the steps from a
    conversion to each deep stage, from the true delay distributions discretised as the kernel does, from
    a stream fixed by the portfolio's key (the same tables for every caller)."""
    pf = portfolio
    rng = np.random.default_rng([int(pf.key) % (2**63), 7])
    z = rng.standard_normal((scenario.n_plans, MAX_STAGES, delay_draws))
    steps = np.maximum(1.0, np.floor(pf.delay_median[:, :, None] * np.exp(pf.delay_sigma[:, :, None] * z) + 0.5))
    return np.sort(np.cumsum(steps, axis=1), axis=2)


def in_time_odds(scenario, portfolio, cum_delay: np.ndarray) -> np.ndarray:
    """(P, MAX_STAGES, horizon): the chance that a conversion at each step reaches each stage before the
    plan's attribution horizon (the episode plus its vertical's window, as the kernel drops later ones),
    from :func:`cumulative_delays`' draws."""
    sc, pf = scenario, portfolio
    # An event of a conversion at step t counts if t + delay < sc.horizon + attribution_steps.
    room = sc.horizon + np.asarray(pf.attribution_steps)[:, None] - np.arange(sc.horizon)[None, :]  # (P, T)
    return delay_shares(cum_delay, room[:, None, :], "left")


def attributable_per_conversion(scenario, portfolio, delay_draws: int) -> tuple[np.ndarray, np.ndarray]:
    """``(value, deep)``, both (horizon, n_plans): the expected deep value and first-stage deep events of
    one conversion made at each step, counting only events that mature before the plan's attribution
    horizon (the episode plus its vertical's window, as the kernel drops later ones).

    Each stage's chance is its true cumulative rate; the chance of maturing in time comes from
    ``delay_draws`` Monte Carlo draws of the true delay distributions (:func:`cumulative_delays`).
    """
    pf = portfolio
    in_time = in_time_odds(scenario, pf, cumulative_delays(scenario, pf, delay_draws))
    reach = np.cumprod(pf.stage_rate, axis=1)  # (P, S) chance a conversion reaches stage s
    value = np.einsum("ps,ps,pst->tp", reach, pf.stage_value, in_time)
    deep = (reach[:, 0, None] * in_time[:, 0]).T
    return value, deep


def rate_prior(scenario, portfolio, by: str) -> tuple[np.ndarray, np.ndarray]:
    """``(mean, strength)``, both (P, MAX_STAGES): a Beta prior on each plan's conditional stage rates,
    matching the first two moments of the scenario's draw (:class:`envs.scenario.PortfolioGenerator`),
    ``strength`` in pseudo-trials (``inf``: the rate is known; 0 beyond the funnel's stages).

    Stages after the first: the vertical's rate, the plan's multiplier log-normal (``stage_sigma``). The
    first stage (the plan's quality) depends on its kind: ``by="kind"`` knows it (a potential plan's or
    a trap's rate is then known exactly, an ordinary plan's is log-normal with ``deep_sigma``);
    ``by="public"`` knows only what the reporting shows from the first step: a plan launched in the
    episode (or of age 0) is potential or a new ordinary plan in the mix's proportions, an established
    one is ordinary or a trap, weighed by how likely its target CPA's ratio to the vertical's median is
    under each (traps are set up at ``trap_cpa_mult`` x; log-sd ``cpa_sigma``); the prior is then that
    mixture's moments.
    """
    if by not in EVIDENCE[1:]:
        raise ValueError(f"rate_prior's by must be one of {list(EVIDENCE[1:])}, got {by!r}")
    sc, pf, mix = scenario, portfolio, scenario.plans
    vertical = np.asarray(pf.vertical)
    if by == "kind":
        kind = np.asarray(pf.kind)
        p_potential, p_trap = (kind == KIND_POTENTIAL).astype(float), (kind == KIND_TRAP).astype(float)
    else:
        is_new = (np.asarray(pf.launch_step) > 0) | (np.asarray(pf.prior_age_steps) == 0)
        median_cpa = np.array([v.target_cpa for v in sc.verticals])[vertical]
        p_potential, p_trap = kind_odds(is_new, np.log(np.asarray(pf.target_cpa) / median_cpa), mix)
    mean = np.zeros((sc.n_plans, MAX_STAGES))
    strength = np.zeros((sc.n_plans, MAX_STAGES))
    late_var = np.expm1(mix.stage_sigma**2)  # Var of a later stage's multiplier (mean 1)
    for v_idx, v in enumerate(sc.verticals):
        rows = vertical == v_idx
        for s_idx, stage in enumerate(v.stages):
            if s_idx == 0:
                mu, k = quality_prior(np.full(rows.sum(), stage.rate), p_potential[rows], p_trap[rows], mix)
            else:
                mu = np.full(rows.sum(), min(stage.rate, 1.0))
                k = beta_strength(mu, mu**2 * late_var)
            mean[rows, s_idx], strength[rows, s_idx] = mu, k
    return mean, strength


@dataclass
class OracleRankParams(FillParams):
    delay_draws: int = 256  # Monte Carlo draws of each plan's deep-funnel delays (attribution odds)
    price: str = "target"  # cost per conversion: "target" (its target CPA) or "observed" (reporting)
    price_prior: float = 5.0  # "observed": pseudo conversions at the target CPA shrinking the observed price
    late_stages: str = "plan"  # rates after the first deep stage: the plan's own, or its "vertical"'s mean
    evidence: str = "none"  # "none": the rates from step 0; "public"/"kind": only what the evidence so far shows

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
        if self.evidence not in EVIDENCE:
            raise ParamsError(f"agent.params.evidence must be one of {list(EVIDENCE)}, got {self.evidence!r}")


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

    With ``evidence: public`` (or ``kind``) it is *evidence-limited*: at each step it knows each plan's
    stage rates only as well as the plan's conversions so far could show them, noise-free. Each rate
    is the Beta posterior mean ``(k m + n r) / (k + n)``: ``m``, ``k`` the prior of :func:`rate_prior`
    (``public``: from what the reporting shows at the first step; ``kind``: knowing each plan's kind),
    ``r`` the true rate (the late-blind one with ``late_stages: vertical``), ``n`` the expected number
    of the stage's outcomes matured by now: the plan's conversions so far (its reporting), each times
    the true chance of reaching the stage before it and the chance that the stage's cumulative delay
    is within the conversion's age. The outcomes counted are the expected ones, not the drawn ones, so
    it is an optimistic reading of what a Bayesian using only the reporting could rank by: an
    estimate of the information bound of a reporting-only ranker (README, "Where the learned agent
    stands"). An insurance renewal 30 days after the premium is never matured in an episode, so its
    rate stays the prior's.

    Knobs (:class:`OracleRankParams`): ``headroom``, ``full_use``, ``capacity_smoothing``,
    ``delay_draws``, ``price``, ``price_prior``, ``late_stages``, ``evidence``.
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
        self.conversions: list[np.ndarray] = []  # "evidence": each step's reported conversions
        if self.params.evidence != "none":
            cum_delay = cumulative_delays(sc, known, self.params.delay_draws)
            self.in_time = in_time_odds(sc, known, cum_delay)  # (P, S, T)
            # (P, S, T + 1): the chance that a conversion's stage-s outcome has matured at each age (steps).
            self.matured = delay_shares(cum_delay, np.arange(sc.horizon + 1), "right")
            self.known_rate = np.asarray(known.stage_rate, dtype=np.float64)
            self.prior_mean, self.prior_strength = rate_prior(sc, pf, self.params.evidence)

    def plan_channels(self, stats) -> np.ndarray:
        return self.plan_channel

    def plan_worth(self, t: int, stats=None) -> np.ndarray:
        """(n_plans,) expected attributable deep value per unit of cost of a conversion made at step ``t``
        (``stats``: the reporting, needed by ``price: observed``)."""
        return self.per_cost(self.value_per_conversion[min(t, len(self.value_per_conversion) - 1)], stats)

    def evidence_rates(self, stats) -> np.ndarray:
        """(P, MAX_STAGES) the stage rates as the evidence so far shows them (``evidence`` not "none"):
        records the reporting's ``conversions_last`` (the conversions of the step before this one), so
        call it once a step, in order."""
        self.conversions.append(np.array(stats["conversions_last"], dtype=np.float64))
        rate = self.known_rate
        reach_before = np.concatenate([np.ones((len(rate), 1)), np.cumprod(rate, axis=1)[:, :-1]], axis=1)
        outcomes = matured_trials(self.conversions, self.matured) * reach_before  # (P, S)
        k, m = self.prior_strength, self.prior_mean
        known = np.isinf(k)
        k = np.where(known, 0.0, k)
        with np.errstate(invalid="ignore"):
            posterior = (k * m + outcomes * rate) / (k + outcomes)
        return np.where(known, m, np.where(rate > 0, posterior, 0.0))

    def worth(self, stats, clock, active) -> np.ndarray:
        if self.params.evidence == "none":
            return self.plan_worth(self.t, stats)
        reach = np.cumprod(self.evidence_rates(stats), axis=1)
        t = min(self.t, self.in_time.shape[2] - 1)
        value = np.einsum("ps,ps,ps->p", reach, self.portfolio.stage_value, self.in_time[:, :, t])
        return self.per_cost(value, stats)

    def per_cost(self, value: np.ndarray, stats=None) -> np.ndarray:
        """``value`` (per conversion) per unit of cost: over the target CPA, or (``price: observed``) the
        reporting's cost per conversion shrunk towards it."""
        target = self.portfolio.target_cpa
        if self.params.price == "target" or stats is None:
            return value / target
        k = self.params.price_prior
        return value * (stats["conversions_total"] + k) / (stats["spend_total"] + k * target)
