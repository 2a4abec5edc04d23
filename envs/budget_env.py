"""The Gymnasium environment: shift a portfolio's daily budget between its ad plans, step by step."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from envs import kernels
from envs.features import (
    CHANNELS,
    GLOBAL_FEATURES,
    OBS_HIGH,
    OBS_LOW,
    PLAN_FEATURES,
    VERTICALS,
    Clock,
    build_observation,
    observation_size,
)
from envs.kernels import CLICKS, CONVERSIONS, DEEP0, DEEP_VALUE, IMPRESSIONS, SPEND
from envs.objective import DeepValueScore
from envs.scenario import MAX_STAGES, Portfolio, PortfolioGenerator, Scenario, load_scenario

BACKENDS = ("numba", "reference")


def _feature_table() -> str:
    rows = [f"    | {i} | `{f.name}` | {f.meaning} | {f.unit} |" for i, f in enumerate(PLAN_FEATURES)]
    grows = [f"    | {i} | `{f.name}` | {f.meaning} | {f.unit} |" for i, f in enumerate(GLOBAL_FEATURES)]
    head = "    | # | feature | meaning | unit |\n    |---|---|---|---|\n"
    return (head + "\n".join(rows), head + "\n".join(grows))


class BudgetShiftEnv(gym.Env):
    """An advertiser's portfolio of ad plans competing in simulated oCPM auctions, hour by hour.

    ## Description

    Several accounts, each with several plans (an ad group with its own budget, target CPA,
    audience and creative), on the feed, the ad network and search. Every step the agent shares
    what is left of today's budget between the plans; the env paces each plan's share over the rest
    of the day by its channel's expected traffic, runs the step's auctions (``envs/kernels.py``),
    and reports what an advertiser's reporting would show. Deep conversions (approval, first
    premium, account opened, ...) arrive hours to weeks after the click. New plans bid erratically
    until the platform's predictions have learned from ~20 conversions; some of them are truly
    good (potential plans), and some established plans produce cheap leads that rarely convert
    deeply (traps). See ``DESIGN.md`` and :mod:`envs.scenario` for the model.

    ## Action Space

    ``Box(-1, 1, (max_plans,), float32)``. ``logits = action * temperature`` (the scenario's
    ``temperature``, 5 by default, so shares can differ by up to ``e^10``); a softmax masked to the
    plans that exist gives each plan's share of the remaining daily budget. Optional limits
    (``min_share``, ``max_share``, ``max_change``) project the shares onto the allowed set; a
    vertical's ``max_spend_share`` (compliance) withholds what exceeds it for this step. An action
    with the wrong shape, a NaN/inf entry or an entry outside [-1, 1] raises ``ValueError``.

    ## Observation Space

    ``Box(-1, 1e6, (max_plans * 28 + 5,), float32)`` built by :func:`envs.features.build_observation`
    from reporting stats only, the same function a production allocator calls. Per plan (padded
    plans are zeros):

{plan_table}

    Then, once:

{global_table}

    ## Rewards

    Each step: the value of the deep events that matured in it. The last step adds the value of
    events still pending that mature within the attribution window, and the CPA penalty
    ``score - V`` of ``score = V * min(1, (cpa_target / cpa) ** beta)``, so the return of an
    episode equals its score (:mod:`envs.objective`).

    ## Starting State

    ``reset(seed=...)`` draws the portfolio's hidden truth from the scenario
    (:class:`envs.scenario.PortfolioGenerator`) with ``self.np_random``: plan kinds, rates, target
    CPAs, prediction errors, fatigue, audiences, launch days, day-level competition, and the root
    key of the counter-based draws of the dynamics. Nothing else is random.

    ## Episode End

    Terminates after ``days * steps_per_day`` steps (the time is in the observation). Never
    truncated by the env itself.

    ## Arguments

    - ``scenario``: a preset name (``conf/env/<name>.yaml``), a YAML path, a mapping with the
      fields of a preset, or a :class:`envs.scenario.Scenario`.
    - ``backend``: ``"numba"`` (default) or ``"reference"`` (the slow NumPy oracle, for tests).
    - ``generator``: a callable ``(scenario, rng) -> Portfolio`` (default :class:`PortfolioGenerator`).
    - ``objective``: the reward piece (default :class:`envs.objective.DeepValueScore` with the
      scenario's ``beta``).

    ``info`` of every step holds per-plan arrays for the step (``spend``, ``impressions``,
    ``clicks``, ``conversions``, ``deep_events`` of shape ``(n_plans, n_stages)``, ``deep_value``,
    ``budget`` and ``shares``), ``cap_withheld`` (share withheld by compliance caps) and, on the last
    step, ``score`` with its parts (:class:`envs.objective.ScoreParts`).

    ## Version History

    - v0: initial release.
    """

    # render_fps is required by Gymnasium's checker whenever a render mode is declared; an ansi frame is one
    # decision step, so it only paces a viewer that replays frames.
    metadata = {"render_modes": ["ansi"], "render_fps": 4}

    def __init__(self, scenario: str | Mapping[str, Any] | Scenario = "default", backend: str = "numba",
                 generator: Any = None, objective: DeepValueScore | None = None,
                 render_mode: str | None = None) -> None:
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"render_mode must be one of {self.metadata['render_modes']}, got {render_mode!r}")
        self.scenario = sc = load_scenario(scenario)
        self.backend = backend
        self.render_mode = render_mode
        self.generator = generator if generator is not None else PortfolioGenerator()
        self.objective = objective if objective is not None else DeepValueScore(beta=sc.beta)
        self.n_plans = sc.n_plans
        self.max_plans = sc.max_plans
        self.n_stages = MAX_STAGES
        self.horizon = sc.horizon
        self.pending_horizon = sc.horizon + sc.attribution_steps
        self.window = max(1, 24 // sc.hours_per_step)  # steps in the 24-hour reporting window

        self.action_space = spaces.Box(-1.0, 1.0, shape=(sc.max_plans,), dtype=np.float32)
        self.observation_space = spaces.Box(OBS_LOW, OBS_HIGH, shape=(observation_size(sc.max_plans),),
                                            dtype=np.float32)

        # Scenario-level channel arrays, shared by every episode.
        self.chan = np.array([[c.volume, c.market_bid, c.market_sigma, c.ctr_mult, c.cvr_mult,
                               1.0 if c.auction == "first" else 0.0] for c in sc.channels])
        self.chan_diurnal = np.array([np.asarray(c.diurnal) / np.mean(c.diurnal) for c in sc.channels])
        self.chan_market_hour = np.array([c.market_diurnal for c in sc.channels], dtype=np.float64)
        # pace[c, k]: share of the rest of the day's traffic on channel c that arrives in the k-th
        # step of the day; a plan's step budget is share * budget left today * pace.
        hours = np.arange(sc.steps_per_day) * sc.hours_per_step
        traffic = self.chan_diurnal[:, hours]
        self.pace = traffic / np.cumsum(traffic[:, ::-1], axis=1)[:, ::-1]
        self.channel_vocab = np.array([CHANNELS.index(c.name) for c in sc.channels], dtype=np.int64)
        self.vertical_vocab = np.array([VERTICALS.index(v.name) for v in sc.verticals], dtype=np.int64)
        self.vertical_cap = np.array([v.max_spend_share for v in sc.verticals])
        if backend == "numba":
            self._step_fn = kernels.step_kernel
        else:
            from envs.reference import step_reference

            self._step_fn = step_reference
        self.portfolio: Portfolio | None = None

    # ---------------------------------------------------------------------------------------------
    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        sc = self.scenario
        pf = self.portfolio = self.generator(sc, self.np_random)
        n = self.n_plans
        self.plan = np.column_stack([pf.ctr, pf.cvr, pf.target_cpa, pf.bias0, pf.noise0, pf.fatigue_scale,
                                     pf.fatigue_floor, pf.channel.astype(np.float64),
                                     pf.launch_step.astype(np.float64)])
        self.stage = np.stack([pf.stage_rate, pf.stage_value, pf.delay_median, pf.delay_sigma], axis=-1)
        self.chan_plans = np.argsort(pf.channel, kind="stable").astype(np.int64)
        self.chan_start = np.concatenate([[0], np.cumsum(np.bincount(pf.channel, minlength=len(sc.channels)))])
        self.key = np.uint64(pf.key)
        self.state = np.column_stack([pf.prior_conversions, pf.prior_impressions])
        self.pending = np.zeros((n, self.n_stages, self.pending_horizon), dtype=np.int32)
        self.plan_channel_vocab = self.channel_vocab[pf.channel]
        self.plan_vertical_vocab = self.vertical_vocab[pf.vertical]

        k = kernels.n_step_fields(self.n_stages)
        self.out = np.zeros((n, k))
        self.last = np.zeros((n, k))
        self.total = np.zeros((n, k))
        self.ring = np.zeros((self.window, n, k))
        self.shares = np.zeros(n)
        self.t = 0
        self.spent_today = 0.0
        self.episode_return = 0.0
        return self._observation(), {"n_plans": n, "active": self.active_mask()}

    # ---------------------------------------------------------------------------------------------
    def step(self, action: np.ndarray):
        if self.portfolio is None:
            raise RuntimeError("call reset() before step()")
        if self.t >= self.horizon:
            raise RuntimeError("the episode has ended; call reset()")
        shares = self.action_to_shares(action)
        return self.step_shares(shares)

    def action_to_shares(self, action: np.ndarray) -> np.ndarray:
        """Validate an action and turn it into budget shares over the plans (masked softmax + limits)."""
        a = np.asarray(action, dtype=np.float64)
        if a.shape != (self.max_plans,):
            raise ValueError(f"action must have shape ({self.max_plans},), got {a.shape}")
        if not np.all(np.isfinite(a)):
            raise ValueError(f"action must be finite, got NaN/inf at plans {np.flatnonzero(~np.isfinite(a)).tolist()}")
        if np.any(np.abs(a) > 1.0 + 1e-6):
            bad = np.flatnonzero(np.abs(a) > 1.0 + 1e-6).tolist()
            raise ValueError(f"action entries must lie in [-1, 1] (logits are action x temperature), "
                             f"got {a[bad].tolist()} at plans {bad}")
        return masked_softmax(a[: self.n_plans] * self.scenario.temperature, self.active_mask())

    def step_shares(self, shares: np.ndarray):
        """Step with budget shares directly (heuristic allocators); limits and caps still apply."""
        sc = self.scenario
        n = self.n_plans
        shares = np.asarray(shares, dtype=np.float64)
        if shares.shape != (n,) or not np.all(np.isfinite(shares)) or np.any(shares < 0):
            raise ValueError(f"shares must be {n} finite non-negative numbers, got shape {shares.shape}")
        active = self.active_mask()
        shares = np.where(active, shares, 0.0)
        total = shares.sum()
        shares = shares / total if total > 0 else masked_softmax(np.zeros(n), active)
        if sc.min_share > 0 or sc.max_share < 1 or sc.max_change is not None:
            shares = project_shares(shares, self.shares, active, sc.min_share, sc.max_share, sc.max_change)
        shares, withheld = self._apply_caps(shares)
        self.shares = shares

        step_in_day = self.t % sc.steps_per_day
        if step_in_day == 0:
            self.spent_today = 0.0
        left_today = max(0.0, sc.daily_budget - self.spent_today)
        step_budget = shares * left_today * self.pace[self.portfolio.channel, step_in_day]

        self._step_fn(self.t, self.key, sc.hours_per_step, sc.steps_per_day, sc.impressions_per_opportunity,
                      sc.user_quality_sigma, sc.learning_conversions, sc.noise_floor, self.chan,
                      self.chan_diurnal, self.chan_market_hour, self.portfolio.market_day, self.plan,
                      self.portfolio.audience, self.stage, self.chan_plans, self.chan_start, self.state,
                      self.pending, step_budget, self.out)
        out = self.out
        self.spent_today += out[:, SPEND].sum()
        self.last[:] = out
        self.total += out
        self.ring[self.t % self.window] = out
        reward = float(out[:, DEEP_VALUE].sum())
        info: dict[str, Any] = {
            "step": self.t,
            "spend": out[:, SPEND].copy(),
            "impressions": out[:, IMPRESSIONS].copy(),
            "clicks": out[:, CLICKS].copy(),
            "conversions": out[:, CONVERSIONS].copy(),
            "deep_events": out[:, DEEP0:].copy(),
            "deep_value": out[:, DEEP_VALUE].copy(),
            "budget": step_budget,
            "shares": shares.copy(),
            "cap_withheld": withheld,
        }
        self.t += 1
        terminated = self.t >= self.horizon
        if terminated:
            parts = self.settle()
            reward += self.objective.final_reward(parts)
            info["score"] = parts.as_dict()
        self.episode_return += reward
        return self._observation(), reward, terminated, False, info

    # ---------------------------------------------------------------------------------------------
    def settle(self):
        """Score parts of the episode so far, settling pending events within the attribution window."""
        settled = self.pending[:, :, self.t:].sum(axis=2).astype(np.float64)  # (P, S)
        settled_value = float((settled * self.stage[:, :, kernels.ST_VALUE]).sum())
        deep = float(self.total[:, DEEP0].sum() + settled[:, 0].sum())
        return self.objective.settle(matured_value=float(self.total[:, DEEP_VALUE].sum()),
                                     settled_value=settled_value, spend=float(self.total[:, SPEND].sum()),
                                     deep_conversions=deep, cpa_target=self.scenario.cpa_target)

    def _apply_caps(self, shares: np.ndarray) -> tuple[np.ndarray, float]:
        vertical = self.portfolio.vertical
        per_vertical = np.bincount(vertical, weights=shares, minlength=len(self.vertical_cap))
        scale = np.where(per_vertical > self.vertical_cap, self.vertical_cap / np.maximum(per_vertical, 1e-300), 1.0)
        capped = shares * scale[vertical]
        return capped, float(shares.sum() - capped.sum())

    def active_mask(self) -> np.ndarray:
        """(n_plans,) bool: plans launched by the step about to be decided."""
        return self.portfolio.launch_step <= min(self.t, self.horizon - 1)

    def clock(self) -> Clock:
        sc = self.scenario
        t = min(self.t, self.horizon - 1)
        step_in_day = t % sc.steps_per_day
        spent = 0.0 if step_in_day == 0 else self.spent_today
        return Clock(hour=step_in_day * sc.hours_per_step, day=t // sc.steps_per_day, days=sc.days,
                     daily_budget=sc.daily_budget, budget_left_today=max(0.0, sc.daily_budget - spent))

    def reporting_stats(self) -> dict[str, np.ndarray]:
        """What the advertiser's reporting shows per plan now (the input of :mod:`envs.features`)."""
        pf = self.portfolio
        sc = self.scenario
        day = self.ring.sum(axis=0)
        age_steps = np.maximum(0, self.t - pf.launch_step) + pf.prior_age_steps
        stats = {
            "channel": self.plan_channel_vocab,
            "vertical": self.plan_vertical_vocab,
            "age_hours": (age_steps * sc.hours_per_step).astype(np.float64),
            "learning": (self.state[:, kernels.STATE_CONVERSIONS] < sc.learning_conversions).astype(np.float64),
            "target_cpa": pf.target_cpa,
            "budget_last": self.last[:, kernels.BUDGET],
        }
        for window, arr in (("last", self.last), ("24h", day), ("total", self.total)):
            stats[f"spend_{window}"] = arr[:, SPEND]
            stats[f"impressions_{window}"] = arr[:, IMPRESSIONS]
            stats[f"clicks_{window}"] = arr[:, CLICKS]
            stats[f"conversions_{window}"] = arr[:, CONVERSIONS]
            stats[f"deep_events_{window}"] = arr[:, DEEP0]
            stats[f"deep_value_{window}"] = arr[:, DEEP_VALUE]
        return stats

    def _observation(self) -> np.ndarray:
        return build_observation(self.reporting_stats(), self.clock(), self.max_plans, self.active_mask())

    def render(self) -> str | None:
        if self.render_mode != "ansi" or self.portfolio is None:
            return None
        lines = [f"step {self.t}/{self.horizon}  spent today {self.spent_today:,.0f}"]
        for p in range(self.n_plans):
            lines.append(f"plan {p:3d}  share {self.shares[p]:.3f}  spend {self.total[p, SPEND]:>12,.0f}  "
                         f"conv {self.total[p, CONVERSIONS]:>6.0f}  deep value {self.total[p, DEEP_VALUE]:>12,.0f}")
        return "\n".join(lines)


_plan_table, _global_table = _feature_table()
BudgetShiftEnv.__doc__ = BudgetShiftEnv.__doc__.replace("{plan_table}", _plan_table).replace(
    "{global_table}", _global_table)


def masked_softmax(logits: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Softmax over the entries where ``mask`` is true; masked entries get 0."""
    if not mask.any():
        return np.zeros_like(logits)
    z = np.where(mask, logits, -np.inf)
    z = np.exp(z - z[mask].max())
    return z / z.sum()


def project_shares(shares: np.ndarray, previous: np.ndarray, active: np.ndarray, min_share: float,
                   max_share: float, max_change: float | None) -> np.ndarray:
    """The closest shares (in the sense of a shift ``s_i - tau``) inside per-plan bounds that sum to 1.

    Bounds are ``[min_share, max_share]`` intersected with ``previous +- max_change`` (only once the
    plan had a share). Infeasible bounds are relaxed towards feasibility (the sum of lower bounds is
    capped at 1, the sum of upper bounds raised to 1) rather than failing mid-episode.
    """
    lo = np.where(active, min_share, 0.0)
    hi = np.where(active, max_share, 0.0)
    if max_change is not None and previous.sum() > 0:
        lo = np.maximum(lo, previous - max_change)
        hi = np.minimum(hi, previous + max_change)
        lo = np.where(active, np.minimum(lo, hi), 0.0)
    if lo.sum() > 1.0:
        lo = lo / lo.sum()
    if hi.sum() < 1.0:
        return hi / hi.sum() if hi.sum() > 0 else shares
    a, b = shares.min() - hi.max() - 1.0, shares.max() - lo.min() + 1.0
    for _ in range(100):  # bisection on the shift tau
        tau = 0.5 * (a + b)
        if np.clip(shares - tau, lo, hi).sum() > 1.0:
            a = tau
        else:
            b = tau
    out = np.clip(shares - 0.5 * (a + b), lo, hi)
    return out / out.sum()
