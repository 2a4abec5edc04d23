"""The Gymnasium environment: shift a portfolio's daily budget between its ad plans, step by step.

:class:`PortfolioBatch` holds the state of any number of episodes of one scenario as arrays with a
leading env axis and steps them together; :class:`BudgetShiftEnv` is a batch of one and
:class:`envs.vector_env.BudgetShiftVectorEnv` a batch of many. Every per-episode computation is a
NumPy operation along the trailing (plan) axes, or the step kernel env by env, so an episode's
numbers do not depend on the batch it sits in: a sub-env of the vector env seeded with ``s`` follows
exactly the trajectory of a single env reset with ``s``.
"""

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
from envs.kernels import BUDGET, CLICKS, CONVERSIONS, DEEP0, DEEP_VALUE, IMPRESSIONS, SPEND
from envs.objective import DeepValueScore, ScoreParts
from envs.scenario import MAX_STAGES, Portfolio, PortfolioGenerator, Scenario, load_scenario
from envs.shares import masked_softmax, project_shares

BACKENDS = ("numba", "reference")
# Step-output columns kept for the 24-hour reporting window, in this order.
WINDOW_COLUMNS = (SPEND, IMPRESSIONS, CLICKS, CONVERSIONS, DEEP0, DEEP_VALUE)
_WINDOW_STATS = ("spend", "impressions", "clicks", "conversions", "deep_events", "deep_value")
# The ring of the last 24 hours keeps the step output's first columns, up to the first deep stage (a
# slice, so storing a step is one copy).
_RING_FIELDS = max(WINDOW_COLUMNS) + 1


def _feature_table() -> str:
    rows = [f"    | {i} | `{f.name}` | {f.meaning} | {f.unit} |" for i, f in enumerate(PLAN_FEATURES)]
    grows = [f"    | {i} | `{f.name}` | {f.meaning} | {f.unit} |" for i, f in enumerate(GLOBAL_FEATURES)]
    head = "    | # | feature | meaning | unit |\n    |---|---|---|---|\n"
    return (head + "\n".join(rows), head + "\n".join(grows))


# -------------------------------------------------------------------------------------------------
# Action checks (the softmax and share limits live in envs/shares.py). Every function works on one
# portfolio (plans on the last axis) or a batch (leading axes), row by row.
# -------------------------------------------------------------------------------------------------
def check_actions(actions: np.ndarray, max_plans: int) -> np.ndarray:
    """Actions as float64, shaped ``(..., max_plans)``, finite and in [-1, 1]; else ``ValueError``.

    ``actions`` has one leading axis per batch dimension; errors name the plan (and the env of a batch).
    """
    a = np.asarray(actions, dtype=np.float64)
    if a.ndim == 0 or a.shape[-1] != max_plans:
        raise ValueError(f"action must have shape (..., {max_plans}) with max_plans={max_plans} last, got {a.shape}")
    if np.logical_and.reduce(np.abs(a) <= 1.0 + 1e-6, axis=None):  # also false for NaN
        return a
    bad = ~np.isfinite(a)
    if bad.any():
        raise ValueError(f"action must be finite, got NaN/inf at {_positions(bad)}")
    bad = np.abs(a) > 1.0 + 1e-6
    if bad.any():
        raise ValueError(
            f"action entries must lie in [-1, 1] (logits are action x temperature), "
            f"got {a[bad][:10].tolist()} at {_positions(bad)}"
        )
    return a


def _positions(bad: np.ndarray) -> str:
    """Where a boolean mask over ``(..., plans)`` is true, for error messages (the first ten)."""
    if bad.ndim == 1:
        return f"plans {np.flatnonzero(bad)[:10].tolist()}"
    return f"(env, plan) {[tuple(int(i) for i in ix) for ix in np.argwhere(bad)[:10]]}"


# -------------------------------------------------------------------------------------------------
# The simulation state of a batch of episodes.
# -------------------------------------------------------------------------------------------------
class PortfolioBatch:
    """``n_envs`` independent episodes of one scenario, as arrays with a leading env axis ``E``.

    Hidden truth (``plan``, ``stage``, ``audience``, ...) is loaded from a :class:`Portfolio` per env
    by :meth:`load`; :meth:`step` allocates shares, paces them into step budgets, runs the step
    kernel (``step_batch_kernel`` for a numba batch, ``step_kernel`` or the NumPy reference env by
    env otherwise) and keeps the advertiser's reporting books. Autoreset, seeding and the Gymnasium
    API live in the envs built on it.
    """

    def __init__(
        self, scenario: Scenario, n_envs: int, backend: str = "numba", objective: DeepValueScore | None = None
    ) -> None:
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        if n_envs < 1:
            raise ValueError(f"n_envs must be >= 1, got {n_envs}")
        self.scenario = sc = scenario
        self.n_envs = n_envs
        self.backend = backend
        self.objective = objective if objective is not None else DeepValueScore(beta=sc.beta)
        self.n_plans = n = sc.n_plans
        self.max_plans = sc.max_plans
        self.n_stages = MAX_STAGES
        self.horizon = sc.horizon
        self.pending_horizon = sc.horizon + sc.attribution_steps
        self.window = max(1, 24 // sc.hours_per_step)  # steps in the 24-hour reporting window
        self.has_limits = sc.min_share > 0 or sc.max_share < 1 or sc.max_change is not None

        # Scenario-level channel arrays, shared by every episode.
        self.chan = np.array(
            [
                [c.volume, c.market_bid, c.market_sigma, c.ctr_mult, c.cvr_mult, 1.0 if c.auction == "first" else 0.0]
                for c in sc.channels
            ]
        )
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

        e, s, c = n_envs, self.n_stages, len(sc.channels)
        k = kernels.n_step_fields(s)
        self.portfolios: list[Portfolio | None] = [None] * e
        # Per-episode hidden truth (kernel inputs).
        self.key = np.zeros(e, dtype=np.uint64)  # (E,) root of the counter-based draws
        self.plan = np.zeros((e, n, kernels.N_PLAN_FIELDS))  # (E, P, N_PLAN_FIELDS)
        self.stage = np.zeros((e, n, s, kernels.N_STAGE_FIELDS))  # (E, P, S, N_STAGE_FIELDS)
        self.audience = np.zeros((e, n), dtype=np.uint64)  # (E, P) segment bit masks
        self.market_day = np.ones((e, sc.days, c))  # (E, days, C) competitor pressure by day
        self.chan_plans = np.zeros((e, n), dtype=np.int64)  # (E, P) plans sorted by channel
        self.chan_start = np.zeros((e, c + 1), dtype=np.int64)  # (E, C + 1) offsets into chan_plans
        # Per-episode structure the env and its reporting read.
        self.channel = np.zeros((e, n), dtype=np.int64)  # (E, P) index into scenario.channels
        self.vertical = np.zeros((e, n), dtype=np.int64)  # (E, P) index into scenario.verticals
        self.launch_step = np.zeros((e, n), dtype=np.int64)  # (E, P)
        self.prior_age_steps = np.zeros((e, n), dtype=np.int64)  # (E, P)
        self.target_cpa = np.ones((e, n))  # (E, P) currency
        self.plan_channel_vocab = np.zeros((e, n), dtype=np.int64)  # (E, P) index into features.CHANNELS
        self.plan_vertical_vocab = np.zeros((e, n), dtype=np.int64)  # (E, P) index into features.VERTICALS
        # Dynamic state.
        self.t = np.zeros(e, dtype=np.int64)  # (E,) next step to simulate
        self.spent_today = np.zeros(e)  # (E,) currency
        self.episode_return = np.zeros(e)  # (E,)
        self.state = np.zeros((e, n, kernels.N_STATE_FIELDS))  # (E, P, 2) conversions, impressions
        self.pending = np.zeros((e, n, s, self.pending_horizon), dtype=np.int32)  # (E, P, S, H) deep events
        self.shares = np.zeros((e, n))  # (E, P) shares given at the last step
        self.last = np.zeros((e, n, k))  # (E, P, k) the last step's per-plan output
        self.total = np.zeros((e, n, k))  # (E, P, k) per-plan output since the episode started
        self.ring = np.zeros((e, self.window, n, _RING_FIELDS))  # (E, W, P, 7) the last 24 hours' outputs
        # Reporting derived from the books when stats are read, in place (the stats dicts are views).
        self._day = np.zeros((e, n, _RING_FIELDS))  # (E, P, 7) sums over the last 24 hours
        self._age_steps = np.zeros((e, n), dtype=np.int64)  # (E, P)
        self._age_hours = np.zeros((e, n))  # (E, P)
        self._learning = np.zeros((e, n))  # (E, P) 1.0 while in the learning phase
        self._stats_views: dict[int | None, dict[str, np.ndarray]] = {}
        self.active = np.zeros((e, n), dtype=bool)  # (E, P) plans launched by the step about to be decided
        self.plan_pace = np.zeros((e, sc.steps_per_day, n))  # (E, steps_per_day, P) pace of each plan's channel
        self._cap_index = np.zeros((e, n), dtype=np.int64)  # (E, P) row * n_verticals + vertical
        self._rows = np.arange(e)
        # Per-env kernel arguments (views of the arrays above, which are only ever written in place).
        self._env_args = [
            (
                self.market_day[i],
                self.plan[i],
                self.audience[i],
                self.stage[i],
                self.chan_plans[i],
                self.chan_start[i],
                self.state[i],
                self.pending[i],
            )
            for i in range(e)
        ]
        self._scenario_args = (
            sc.hours_per_step,
            sc.steps_per_day,
            sc.impressions_per_opportunity,
            sc.user_quality_sigma,
            sc.learning_conversions,
            sc.noise_floor,
            self.chan,
            self.chan_diurnal,
            self.chan_market_hour,
        )
        if backend == "numba":
            self._step_fn = kernels.step_kernel
        else:
            from envs.reference import step_reference

            self._step_fn = step_reference

    # ---------------------------------------------------------------------------------------------
    def load(self, env_index: int, pf: Portfolio) -> None:
        """Start a new episode in row ``env_index`` with the hidden truth of ``pf``."""
        i = env_index
        sc = self.scenario
        self.portfolios[i] = pf
        self.key[i] = np.uint64(pf.key)
        self.plan[i] = np.column_stack(
            [
                pf.ctr,
                pf.cvr,
                pf.target_cpa,
                pf.bias0,
                pf.noise0,
                pf.fatigue_scale,
                pf.fatigue_floor,
                pf.channel.astype(np.float64),
                pf.launch_step.astype(np.float64),
            ]
        )
        self.stage[i] = np.stack([pf.stage_rate, pf.stage_value, pf.delay_median, pf.delay_sigma], axis=-1)
        self.audience[i] = pf.audience
        self.market_day[i] = pf.market_day
        self.chan_plans[i] = np.argsort(pf.channel, kind="stable")
        self.chan_start[i] = np.concatenate([[0], np.cumsum(np.bincount(pf.channel, minlength=len(sc.channels)))])
        self.channel[i] = pf.channel
        self.vertical[i] = pf.vertical
        self.plan_pace[i] = self.pace[pf.channel].T
        self._cap_index[i] = i * len(self.vertical_cap) + pf.vertical
        self.launch_step[i] = pf.launch_step
        self.prior_age_steps[i] = pf.prior_age_steps
        self.target_cpa[i] = pf.target_cpa
        self.plan_channel_vocab[i] = self.channel_vocab[pf.channel]
        self.plan_vertical_vocab[i] = self.vertical_vocab[pf.vertical]
        self.t[i] = 0
        self.spent_today[i] = 0.0
        self.episode_return[i] = 0.0
        self.state[i] = np.column_stack([pf.prior_conversions, pf.prior_impressions])
        self.pending[i] = 0
        self.shares[i] = 0.0
        self.last[i] = 0.0
        self.total[i] = 0.0
        self.ring[i] = 0.0
        self.active[i] = self.launch_step[i] <= 0

    # ---------------------------------------------------------------------------------------------
    def step(self, shares: np.ndarray) -> dict[str, Any]:
        """Simulate one step of every env with non-negative budget shares ``(E, P)``.

        Shares are renormalised over active plans (uniform when they are all 0), projected onto the
        scenario's share limits and capped by compliance. Returns this step's arrays (fresh, never
        written again): ``out`` (E, P, k) kernel output, ``budget`` and ``shares`` (E, P),
        ``cap_withheld``, ``reward`` and ``terminated`` (E,), ``step`` (E,) the step simulated, and
        ``score`` mapping each env that terminated to its :class:`ScoreParts`.
        """
        sc = self.scenario
        active = self.active
        shares = np.where(active, shares, 0.0)
        total = np.add.reduce(shares, axis=-1, keepdims=True)
        given = total > 0
        np.divide(shares, total, out=shares, where=given)
        if not np.logical_and.reduce(given, axis=None):
            shares = np.where(given, shares, masked_softmax(np.zeros_like(shares), active))
        if self.has_limits:
            shares = project_shares(shares, self.shares, active, sc.min_share, sc.max_share, sc.max_change)
        shares, withheld = self._apply_caps(shares)
        self.shares[...] = shares

        t = self.t  # the step simulated (self.t is rebound to t + 1 below)
        step_in_day = t % sc.steps_per_day
        self.spent_today[step_in_day == 0] = 0.0
        left_today = np.maximum(0.0, sc.daily_budget - self.spent_today)
        step_budget = shares * left_today[:, None] * self.plan_pace[self._rows, step_in_day]

        out = np.empty((self.n_envs, self.n_plans, self.last.shape[-1]))
        if self.backend == "numba" and self.n_envs > 1:
            kernels.step_batch_kernel(
                t,
                self.key,
                *self._scenario_args,
                self.market_day,
                self.plan,
                self.audience,
                self.stage,
                self.chan_plans,
                self.chan_start,
                self.state,
                self.pending,
                step_budget,
                out,
            )
        else:
            for i, env_args in enumerate(self._env_args):
                self._step_fn(int(t[i]), self.key[i], *self._scenario_args, *env_args, step_budget[i], out[i])

        self.spent_today += np.add.reduce(out[..., SPEND], axis=-1)
        self.last[...] = out
        self.total += out
        if self.n_envs == 1:
            self.ring[0, t[0] % self.window] = out[0, :, :_RING_FIELDS]
        else:
            self.ring[self._rows, t % self.window] = out[..., :_RING_FIELDS]
        reward = np.add.reduce(out[..., DEEP_VALUE], axis=-1)
        self.t = t + 1
        self.active = self.launch_step <= np.minimum(self.t, self.horizon - 1)[:, None]
        terminated = self.t >= self.horizon
        score: dict[int, ScoreParts] = {}
        if np.logical_or.reduce(terminated):
            for i in np.flatnonzero(terminated):
                score[int(i)] = parts = self.settle(int(i))
                reward[i] += self.objective.final_reward(parts)
        self.episode_return += reward
        return {
            "out": out,
            "budget": step_budget,
            "shares": shares,
            "cap_withheld": withheld,
            "reward": reward,
            "terminated": terminated,
            "step": t,
            "score": score,
        }

    # ---------------------------------------------------------------------------------------------
    def settle(self, env_index: int) -> ScoreParts:
        """Score parts of env ``env_index``'s episode so far, settling pending events within the
        attribution window."""
        i = env_index
        t = int(self.t[i])
        total = self.total[i]
        settled = self.pending[i, :, :, t:].sum(axis=2).astype(np.float64)  # (P, S)
        settled_value = float((settled * self.stage[i, :, :, kernels.ST_VALUE]).sum())
        deep = float(total[:, DEEP0].sum() + settled[:, 0].sum())
        return self.objective.settle(
            matured_value=float(total[:, DEEP_VALUE].sum()),
            settled_value=settled_value,
            spend=float(total[:, SPEND].sum()),
            deep_conversions=deep,
            cpa_target=self.scenario.cpa_target,
        )

    def _apply_caps(self, shares: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Compliance caps: each vertical's shares scaled down to its ``max_spend_share``.

        Returns the capped shares and the share withheld (E,). One bincount over all rows (offset by
        row): each row's sums run over its plans in order, as a bincount of that row alone would.
        """
        cap = self.vertical_cap
        per_vertical = np.bincount(self._cap_index.ravel(), weights=shares.ravel(), minlength=self.n_envs * len(cap))
        per_vertical = per_vertical.reshape(self.n_envs, len(cap))
        scale = np.where(per_vertical > cap, cap / np.maximum(per_vertical, 1e-300), 1.0)
        capped = shares * scale.ravel()[self._cap_index]
        return capped, np.add.reduce(shares, axis=-1) - np.add.reduce(capped, axis=-1)

    def active_mask(self, env_index: int | None = None) -> np.ndarray:
        """(E, P) bool, or (P,) for one env: plans launched by the step about to be decided."""
        return (self.active if env_index is None else self.active[env_index]).copy()

    def clock(self, env_index: int | None = None) -> Clock:
        """The decision's :class:`Clock`: fields are arrays (E,), or scalars for one env."""
        sc = self.scenario
        if env_index is None:
            t = np.minimum(self.t, self.horizon - 1)
            step_in_day = t % sc.steps_per_day
            spent = np.where(step_in_day == 0, 0.0, self.spent_today)
            return Clock(
                hour=step_in_day * sc.hours_per_step,
                day=t // sc.steps_per_day,
                days=sc.days,
                daily_budget=sc.daily_budget,
                budget_left_today=np.maximum(0.0, sc.daily_budget - spent),
            )
        t = min(int(self.t[env_index]), self.horizon - 1)
        step_in_day = t % sc.steps_per_day
        spent = 0.0 if step_in_day == 0 else float(self.spent_today[env_index])
        return Clock(
            hour=step_in_day * sc.hours_per_step,
            day=t // sc.steps_per_day,
            days=sc.days,
            daily_budget=sc.daily_budget,
            budget_left_today=max(0.0, sc.daily_budget - spent),
        )

    def reporting_stats(self, env_index: int | None = None) -> dict[str, np.ndarray]:
        """What the advertiser's reporting shows per plan now (the input of :mod:`envs.features`):
        arrays (E, P), or (P,) for one env. They are views of the books, valid until the next step
        (copy them to keep them)."""
        sc = self.scenario
        np.add.reduce(self.ring, axis=1, out=self._day)
        age = self._age_steps
        np.subtract(self.t[:, None], self.launch_step, out=age)
        np.maximum(age, 0, out=age)
        age += self.prior_age_steps
        np.multiply(age, sc.hours_per_step, out=self._age_hours)
        np.less(
            self.state[..., kernels.STATE_CONVERSIONS], sc.learning_conversions, out=self._learning, casting="unsafe"
        )
        views = self._stats_views.get(env_index)
        if views is None:
            rows = slice(None) if env_index is None else env_index
            last, day, total = self.last[rows], self._day[rows], self.total[rows]
            views = {
                "channel": self.plan_channel_vocab[rows],
                "vertical": self.plan_vertical_vocab[rows],
                "age_hours": self._age_hours[rows],
                "learning": self._learning[rows],
                "target_cpa": self.target_cpa[rows],
                "budget_last": last[..., BUDGET],
            }
            for window, books in (("last", last), ("24h", day), ("total", total)):
                for name, column in zip(_WINDOW_STATS, WINDOW_COLUMNS, strict=True):
                    views[f"{name}_{window}"] = books[..., column]
            self._stats_views[env_index] = views
        return dict(views)

    def observe(self, env_index: int | None = None) -> np.ndarray:
        """Observations (E, obs_size) float32, or (obs_size,) for one env (:func:`build_observation`)."""
        return build_observation(
            self.reporting_stats(env_index),
            self.clock(env_index),
            self.max_plans,
            self.active if env_index is None else self.active[env_index],
        )


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

    def __init__(
        self,
        scenario: str | Mapping[str, Any] | Scenario = "default",
        backend: str = "numba",
        generator: Any = None,
        objective: DeepValueScore | None = None,
        render_mode: str | None = None,
    ) -> None:
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"render_mode must be one of {self.metadata['render_modes']}, got {render_mode!r}")
        self.scenario = sc = load_scenario(scenario)
        self.backend = backend
        self.render_mode = render_mode
        self.generator = generator if generator is not None else PortfolioGenerator()
        self.objective = objective if objective is not None else DeepValueScore(beta=sc.beta)
        self.sim = sim = PortfolioBatch(sc, 1, backend, self.objective)
        self.n_plans = sc.n_plans
        self.max_plans = sc.max_plans
        self.n_stages = sim.n_stages
        self.horizon = sim.horizon
        self.pending_horizon = sim.pending_horizon
        self.window = sim.window

        self.action_space = spaces.Box(-1.0, 1.0, shape=(sc.max_plans,), dtype=np.float32)
        self.observation_space = spaces.Box(
            OBS_LOW, OBS_HIGH, shape=(observation_size(sc.max_plans),), dtype=np.float32
        )

        # Scenario-level arrays, and this episode's arrays as views of row 0 of the batch.
        self.chan, self.chan_diurnal, self.chan_market_hour = sim.chan, sim.chan_diurnal, sim.chan_market_hour
        self.pace, self.channel_vocab, self.vertical_vocab = sim.pace, sim.channel_vocab, sim.vertical_vocab
        self.vertical_cap = sim.vertical_cap
        self.plan, self.stage, self.audience = sim.plan[0], sim.stage[0], sim.audience[0]
        self.chan_plans, self.chan_start = sim.chan_plans[0], sim.chan_start[0]
        self.plan_channel_vocab, self.plan_vertical_vocab = sim.plan_channel_vocab[0], sim.plan_vertical_vocab[0]
        self.state, self.pending = sim.state[0], sim.pending[0]
        self.last, self.total, self.ring = sim.last[0], sim.total[0], sim.ring[0]
        self.portfolio: Portfolio | None = None

    @property
    def t(self) -> int:
        """The next step to simulate (the number of steps taken this episode)."""
        return int(self.sim.t[0])

    @property
    def key(self) -> np.uint64:
        return self.sim.key[0]

    @property
    def spent_today(self) -> float:
        return float(self.sim.spent_today[0])

    @property
    def episode_return(self) -> float:
        return float(self.sim.episode_return[0])

    @property
    def shares(self) -> np.ndarray:
        """(n_plans,) the shares given at the last step (after limits and caps)."""
        return self.sim.shares[0]

    # ---------------------------------------------------------------------------------------------
    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        self.portfolio = self.generator(self.scenario, self.np_random)
        self.sim.load(0, self.portfolio)
        return self._observation(), {"n_plans": self.n_plans, "active": self.active_mask()}

    # ---------------------------------------------------------------------------------------------
    def step(self, action: np.ndarray):
        self._check_running()
        return self._step(self.action_to_shares(action))

    def action_to_shares(self, action: np.ndarray) -> np.ndarray:
        """Validate an action and turn it into budget shares over the plans (masked softmax + limits)."""
        a = np.asarray(action, dtype=np.float64)
        if a.shape != (self.max_plans,):
            raise ValueError(f"action must have shape ({self.max_plans},), got {a.shape}")
        a = check_actions(a, self.max_plans)
        return masked_softmax(a[: self.n_plans] * self.scenario.temperature, self.sim.active[0])

    def step_shares(self, shares: np.ndarray):
        """Step with budget shares directly (heuristic allocators); limits and caps still apply."""
        self._check_running()
        n = self.n_plans
        shares = np.asarray(shares, dtype=np.float64)
        if shares.shape != (n,) or not np.all(np.isfinite(shares)) or np.any(shares < 0):
            raise ValueError(f"shares must be {n} finite non-negative numbers, got shape {shares.shape}")
        return self._step(shares)

    def _step(self, shares: np.ndarray):
        result = self.sim.step(shares[None, :])
        out = result["out"][0]
        info: dict[str, Any] = {
            "step": int(result["step"][0]),
            "spend": out[:, SPEND],
            "impressions": out[:, IMPRESSIONS],
            "clicks": out[:, CLICKS],
            "conversions": out[:, CONVERSIONS],
            "deep_events": out[:, DEEP0:],
            "deep_value": out[:, DEEP_VALUE],
            "budget": result["budget"][0],
            "shares": result["shares"][0],
            "cap_withheld": float(result["cap_withheld"][0]),
        }
        terminated = bool(result["terminated"][0])
        if terminated:
            info["score"] = result["score"][0].as_dict()
        return self._observation(), float(result["reward"][0]), terminated, False, info

    def _check_running(self) -> None:
        if self.portfolio is None:
            raise RuntimeError("call reset() before step()")
        if self.t >= self.horizon:
            raise RuntimeError("the episode has ended; call reset()")

    # ---------------------------------------------------------------------------------------------
    def settle(self) -> ScoreParts:
        """Score parts of the episode so far, settling pending events within the attribution window."""
        return self.sim.settle(0)

    def active_mask(self) -> np.ndarray:
        """(n_plans,) bool: plans launched by the step about to be decided."""
        return self.sim.active_mask(0)

    def clock(self) -> Clock:
        return self.sim.clock(0)

    def reporting_stats(self) -> dict[str, np.ndarray]:
        """What the advertiser's reporting shows per plan now (the input of :mod:`envs.features`)."""
        return self.sim.reporting_stats(0)

    def _observation(self) -> np.ndarray:
        return self.sim.observe(0)

    def render(self) -> str | None:
        if self.render_mode != "ansi" or self.portfolio is None:
            return None
        lines = [f"step {self.t}/{self.horizon}  spent today {self.spent_today:,.0f}"]
        for p in range(self.n_plans):
            lines.append(
                f"plan {p:3d}  share {self.shares[p]:.3f}  spend {self.total[p, SPEND]:>12,.0f}  "
                f"conv {self.total[p, CONVERSIONS]:>6.0f}  deep value {self.total[p, DEEP_VALUE]:>12,.0f}"
            )
        return "\n".join(lines)


_plan_table, _global_table = _feature_table()
BudgetShiftEnv.__doc__ = BudgetShiftEnv.__doc__.replace("{plan_table}", _plan_table).replace(
    "{global_table}", _global_table
)
