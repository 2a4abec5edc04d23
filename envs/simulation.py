"""The simulation state: any number of episodes of one scenario as arrays, stepped together.

:class:`PortfolioBatch` holds ``n_envs`` episodes with a leading env axis: the kernel inputs
(:class:`envs.kernels.KernelInputs`: hidden truth, plan state, pending deep events), the
advertiser's reporting books and the clock. One :meth:`PortfolioBatch.step` turns shares into step
budgets (:mod:`envs.shares`), runs the step kernel and pays the reward (:mod:`envs.objective`).
:class:`envs.budget_env.BudgetShiftEnv` is a batch of one and
:class:`envs.vector_env.BudgetShiftVectorEnv` a batch of many. Every per-episode computation is a
NumPy operation along the trailing (plan) axes, or the step kernel env by env, so an episode's
numbers do not depend on the batch it sits in: a sub-env of the vector env seeded with ``s`` follows
exactly the trajectory of a single env reset with ``s``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from envs import kernels, step_kernels
from envs.features import CHANNELS, VERTICALS, Clock, build_observation, observation_size
from envs.kernels import BUDGET, CLICKS, CONVERSIONS, DEEP0, DEEP_VALUE, IMPRESSIONS, SPEND
from envs.objective import DeepValueScore, ScoreParts
from envs.observation_kernel import GLOBAL_POSITIONS, PLAN_POSITIONS, observation_kernel
from envs.platform import Platform
from envs.scenario import MAX_STAGES, Portfolio, Scenario
from envs.shares import (
    check_actions,
    has_share_limits,
    masked_softmax,
    pacing,
    project_shares,
    step_budgets,
    vertical_caps,
    withhold_over_caps,
)

BACKENDS = ("numba", "reference")
# Step-output columns kept for the 24-hour reporting window, in this order.
WINDOW_COLUMNS = (SPEND, IMPRESSIONS, CLICKS, CONVERSIONS, DEEP0, DEEP_VALUE)
_WINDOW_STATS = ("spend", "impressions", "clicks", "conversions", "deep_events", "deep_value")
# The ring of the last 24 hours keeps these columns of each step's output, in this order.
_WINDOW_INDEX = np.array(WINDOW_COLUMNS, dtype=np.int64)
_RING_FIELDS = len(WINDOW_COLUMNS)
# Actions the numba backend's softmax takes as they are (others go through check_actions first).
_FAST_ACTION_DTYPES = (np.dtype(np.float64), np.dtype(np.float32))
# Where the observation kernel finds spend, impressions, clicks, conversions, first-stage deep events
# and deep value in the ring.
RING_POSITIONS = np.array(
    [WINDOW_COLUMNS.index(c) for c in (SPEND, IMPRESSIONS, CLICKS, CONVERSIONS, DEEP0, DEEP_VALUE)], dtype=np.int64
)


class PortfolioBatch:
    """``n_envs`` independent episodes of one scenario, as arrays with a leading env axis ``E``.

    Hidden truth (``inputs.plan``, ``inputs.stage``, ``inputs.audience``, ...) is loaded from a
    :class:`Portfolio` per env by :meth:`load`; :meth:`step` allocates shares, paces them into step
    budgets, runs the step kernel (``step_batch_kernel`` for a numba batch, ``step_kernel`` or the
    NumPy reference env by env otherwise) and keeps the advertiser's reporting books. Autoreset,
    seeding and the Gymnasium API live in the envs built on it.

    The ``reference`` backend allocates with the NumPy functions of :mod:`envs.shares` and keeps the
    books with NumPy; the ``numba`` backend runs the same rules as the kernels of
    :mod:`envs.step_kernels`, bit for bit. The books (``t``, ``active``, ``last``, ...) are updated in
    place, so views of them stay valid.
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
        self.pending_horizon = sc.horizon + 1  # pending steps: the episode's, then one slot for every later event
        self.window = max(1, 24 // sc.hours_per_step)  # steps in the 24-hour reporting window
        self.has_limits = has_share_limits(sc.min_share, sc.max_share, sc.max_change)

        e = n_envs
        k = kernels.n_step_fields(self.n_stages)
        # The kernel's inputs: the scenario's channels and, per episode, hidden truth and plan state.
        self.inputs = kernels.pack_inputs(sc, n_envs)
        # The platform's controllers between allocation and auction: Numba kernels, or NumPy for the reference.
        self.platform = Platform(sc, n_envs, fast=backend == "numba")
        # (C, steps_per_day) each channel's share of the day's traffic per step, and of the rest of the day.
        self.day_share, self.rest_share = pacing(self.inputs.chan_diurnal, sc.steps_per_day)
        self.channel_vocab = np.array([CHANNELS.index(c.name) for c in sc.channels], dtype=np.int64)
        self.vertical_vocab = np.array([VERTICALS.index(v.name) for v in sc.verticals], dtype=np.int64)
        self.vertical_cap = vertical_caps(sc.verticals)  # (len(VERTICALS),) by vocabulary index
        self.portfolios: list[Portfolio | None] = [None] * e
        # Per-episode structure the env and its reporting read.
        self.launch_step = np.zeros((e, n), dtype=np.int64)  # (E, P)
        self.prior_age_steps = np.zeros((e, n), dtype=np.int64)  # (E, P)
        self.target_cpa = np.ones((e, n))  # (E, P) currency
        self.plan_channel_vocab = np.zeros((e, n), dtype=np.int64)  # (E, P) index into features.CHANNELS
        self.plan_vertical_vocab = np.zeros((e, n), dtype=np.int64)  # (E, P) index into features.VERTICALS
        # Dynamic state.
        self.t = np.zeros(e, dtype=np.int64)  # (E,) next step to simulate
        self.spent_today = np.zeros(e)  # (E,) currency
        self.episode_return = np.zeros(e)  # (E,)
        self.shares = np.zeros((e, n))  # (E, P) shares given at the last step
        self.last = np.zeros((e, n, k))  # (E, P, k) the last step's per-plan output
        self.total = np.zeros((e, n, k))  # (E, P, k) per-plan output since the episode started
        self.ring = np.zeros((e, self.window, n, _RING_FIELDS))  # (E, W, P, 6) the last 24 hours' WINDOW_COLUMNS
        # Reporting derived from the books when stats are read, in place (the stats dicts are views).
        self._day = np.zeros((e, n, _RING_FIELDS))  # (E, P, 6) sums over the last 24 hours
        self._age_steps = np.zeros((e, n), dtype=np.int64)  # (E, P)
        self._age_hours = np.zeros((e, n))  # (E, P)
        self._stats_views: dict[int | None, dict[str, np.ndarray]] = {}
        self.active = np.zeros((e, n), dtype=bool)  # (E, P) plans launched by the step about to be decided
        self.plan_channel = np.zeros((e, n), dtype=np.int64)  # (E, P) index into the scenario's channels
        self._rows = np.arange(e)
        # The numba backend's scratch rows (envs.step_kernels.allocate_budgets) and observe()'s arguments.
        self._scratch = np.zeros((5, n))
        self._vertical_scratch = np.zeros(len(VERTICALS))
        self._observe_args: dict[int | None, tuple] = {}
        self._obs_size = observation_size(self.max_plans)
        # The kernels' arguments that never change object (envs.step_kernels' signatures, in order).
        self._allocate_arguments = (
            self.active,
            self.shares,
            self.t,
            self.spent_today,
            self.has_limits,
            float(sc.min_share),
            float(sc.max_share),
            sc.max_change is not None,
            0.0 if sc.max_change is None else float(sc.max_change),
            self.plan_vertical_vocab,
            self.vertical_cap,
            self.plan_channel,
            self.day_share,
            self.rest_share,
            sc.steps_per_day,
            float(sc.daily_budget),
            self._scratch,
            self._vertical_scratch,
        )
        self._books_arguments = (
            self.t,
            self.last,
            self.total,
            self.ring,
            self.spent_today,
            self.active,
            self.launch_step,
            _WINDOW_INDEX,
            SPEND,
            self.horizon,
        )
        # The kernel for a single episode (or the reference, env by env); None: one batched call.
        self._step_fn = None
        if backend == "reference":
            from envs.reference import step_reference

            self._step_fn = step_reference
        elif n_envs == 1:
            self._step_fn = kernels.step_kernel
        self._single_inputs: kernels.KernelInputs | None = None  # what _single_args are views of
        self._single_args: tuple = ()

    # ---------------------------------------------------------------------------------------------
    def load(self, env_index: int, pf: Portfolio) -> None:
        """Start a new episode in row ``env_index`` with the hidden truth of ``pf``."""
        i = env_index
        self.portfolios[i] = pf
        kernels.load_portfolio(self.inputs, i, pf)
        self.plan_channel[i] = pf.channel
        self.platform.load(i, pf)
        self.launch_step[i] = pf.launch_step
        self.prior_age_steps[i] = pf.prior_age_steps
        self.target_cpa[i] = pf.target_cpa
        self.plan_channel_vocab[i] = self.channel_vocab[pf.channel]
        self.plan_vertical_vocab[i] = self.vertical_vocab[pf.vertical]
        self.t[i] = 0
        self.spent_today[i] = 0.0
        self.episode_return[i] = 0.0
        self.shares[i] = 0.0
        self.last[i] = 0.0
        self.total[i] = 0.0
        self.ring[i] = 0.0
        self.active[i] = self.launch_step[i] <= 0

    # ---------------------------------------------------------------------------------------------
    def shares_from_actions(self, actions: np.ndarray) -> np.ndarray:
        """Budget shares: :func:`envs.shares.masked_softmax` of ``actions[..., :P] x temperature`` over
        the active plans, after :func:`envs.shares.check_actions` (whose errors it raises).

        :param actions: (E, max_plans), or (max_plans,) for a batch of one (shares (P,) then).
        """
        single = actions.ndim == 1
        batch = actions[None, :] if single else actions
        fast = batch.dtype in _FAST_ACTION_DTYPES and batch.shape == (self.n_envs, self.max_plans)
        if self.backend == "numba" and fast:
            z = np.empty((self.n_envs, self.n_plans))
            if step_kernels.shift_logits(batch, self.scenario.temperature, self.active, z):
                np.exp(z, out=z)  # NumPy's exp, as masked_softmax's (libm's differs in the last bit)
                step_kernels.normalise_softmax(z, self.active)
                return z[0] if single else z
        a = check_actions(actions, self.max_plans)
        active = self.active[0] if single else self.active
        return masked_softmax(a[..., : self.n_plans] * self.scenario.temperature, active)

    def step(self, shares: np.ndarray) -> dict[str, Any]:
        """Simulate one step of every env with non-negative budget shares ``(E, P)``.

        Shares are renormalised over active plans (uniform when they are all 0), projected onto the
        scenario's share limits and capped by compliance. Returns this step's arrays (fresh, never
        written again): ``out`` (E, P, k) kernel output, ``budget`` and ``shares`` (E, P),
        ``cap_withheld``, ``reward`` and ``terminated`` (E,), ``step`` (E,) the step simulated, and
        ``score`` mapping each env that terminated to its :class:`ScoreParts`.
        """
        if self.backend == "numba":
            shares, withheld, step_budget = self._allocate_fast(np.asarray(shares, dtype=np.float64))
        else:
            shares, withheld, step_budget = self._allocate(shares)
        out = np.empty((self.n_envs, self.n_plans, self.last.shape[-1]))
        self.platform.write_bids(self.inputs.dyn)
        # One env runs the kernel on argument views kept between steps; a full event pool (or a batch, or
        # the reference) goes through step_episodes, which grows the pool and runs the step again.
        if not (self._step_fn is kernels.step_kernel and self._single_step(step_budget, out)):
            self.inputs = kernels.step_episodes(self.inputs, self.t, step_budget, out, self._step_fn)
        self.platform.after_step(self.t, out, step_budget)
        if self.backend == "numba":
            t, terminated, ended = self._keep_books_fast(out)
        else:
            t, terminated, ended = self._keep_books(out)
        reward = self.objective.step_reward(out[..., DEEP_VALUE])
        score: dict[int, ScoreParts] = {}
        if ended:
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

    def _single_step(self, step_budget: np.ndarray, out: np.ndarray) -> bool:
        """Step the single env's kernel on its per-episode views, built once per ``self.inputs`` (a
        grown pool is a new ``KernelInputs``); ``False`` when the event pool was full (nothing in use
        changed: :func:`kernels.step_episodes` then grows it and runs the step again)."""
        inputs = self.inputs
        if self._single_inputs is not inputs:
            self._single_inputs = inputs
            self._single_args = (inputs[: kernels.N_SHARED_INPUTS], kernels.episode_views(inputs, 0))
        shared, views = self._single_args
        return kernels.step_kernel(int(self.t[0]), *shared, inputs.key[0], *views, step_budget[0], out[0])

    def _allocate(self, shares: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(shares, withheld, budget)``: the shares after renormalisation, limits and caps (kept as
        ``self.shares``), the share the caps withheld, and each plan's budget for the step; starts the
        day's books (``spent_today``) where a day starts."""
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
        capped = withhold_over_caps(shares, self.plan_vertical_vocab, self.vertical_cap)
        withheld = np.add.reduce(shares, axis=-1) - np.add.reduce(capped, axis=-1)
        self.shares[...] = shares = capped

        step_in_day = self.t % sc.steps_per_day
        self.spent_today[step_in_day == 0] = 0.0
        left_today = np.maximum(0.0, sc.daily_budget - self.spent_today)
        step_budget = step_budgets(
            shares,
            self.day_share[self.plan_channel, step_in_day[:, None]],
            self.rest_share[self.plan_channel, step_in_day[:, None]],
            left_today,
            sc.daily_budget,
        )
        return shares, withheld, step_budget

    def _allocate_fast(self, shares: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """:meth:`_allocate` in one kernel (:func:`envs.step_kernels.allocate_budgets`)."""
        e, n = self.n_envs, self.n_plans
        capped, withheld, step_budget = np.empty((e, n)), np.empty(e), np.empty((e, n))
        step_kernels.allocate_budgets(shares, capped, withheld, step_budget, *self._allocate_arguments)
        return capped, withheld, step_budget

    def _keep_books(self, out: np.ndarray) -> tuple[np.ndarray, np.ndarray, bool]:
        """Book step ``self.t`` of each env from its output ``out`` (E, P, k) and move the clock on;
        returns ``(step, terminated, ended)``: (E,) the step simulated and whether the episode ended,
        and whether any did."""
        t = self.t.copy()
        self.spent_today += np.add.reduce(out[..., SPEND], axis=-1)
        self.last[...] = out
        self.total += out
        if self.n_envs == 1:
            self.ring[0, t[0] % self.window] = out[0][:, _WINDOW_INDEX]
        else:
            self.ring[self._rows, t % self.window] = out[..., _WINDOW_INDEX]
        self.t += 1
        np.less_equal(self.launch_step, np.minimum(self.t, self.horizon - 1)[:, None], out=self.active)
        terminated = self.t >= self.horizon
        return t, terminated, bool(np.logical_or.reduce(terminated))

    def _keep_books_fast(self, out: np.ndarray) -> tuple[np.ndarray, np.ndarray, bool]:
        """:meth:`_keep_books` in one kernel (:func:`envs.step_kernels.keep_books`)."""
        t, terminated = np.empty(self.n_envs, dtype=np.int64), np.empty(self.n_envs, dtype=bool)
        ended = step_kernels.keep_books(out, t, terminated, *self._books_arguments)
        return t, terminated, ended

    # ---------------------------------------------------------------------------------------------
    def settle(self, env_index: int) -> ScoreParts:
        """Score parts of env ``env_index``'s episode so far, settling pending events within the
        attribution window."""
        i, t = env_index, int(self.t[env_index])
        total = self.total[i]
        return self.objective.settle(
            matured_value=total[:, DEEP_VALUE],
            matured_deep=total[:, DEEP0],
            spend=total[:, SPEND],
            compensation=self.platform.compensation[i],
            pending=kernels.pending_after(self.inputs, i, t)[:, :, None],
            stage_value=self.inputs.stage[i, :, :, kernels.ST_VALUE],
            cpa_target=self.scenario.cpa_target,
        )

    def pending(self, env_index: int) -> np.ndarray:
        """(P, S, horizon + 1) int64 env ``env_index``'s deep events still to mature, by the step they
        mature at (the last slot: after the episode, within attribution); matured ones are in the books
        (``total``). A fresh array (:func:`envs.kernels.pending_counts`)."""
        return kernels.pending_counts(self.inputs, env_index)

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
        views = self._stats_views.get(env_index)
        if views is None:
            rows = slice(None) if env_index is None else env_index
            last, day, total = self.last[rows], self._day[rows], self.total[rows]
            views = {
                "channel": self.plan_channel_vocab[rows],
                "vertical": self.plan_vertical_vocab[rows],
                "age_hours": self._age_hours[rows],
                "status": self.platform.status[rows],  # index into envs.features.STATUSES
                "goal": self.platform.goal[rows],  # index into envs.features.GOALS
                "compensation_total": self.platform.compensation[rows],
                "target_cpa": self.target_cpa[rows],
                "budget_last": last[..., BUDGET],
            }
            for j, (name, column) in enumerate(zip(_WINDOW_STATS, WINDOW_COLUMNS, strict=True)):
                views[f"{name}_last"] = last[..., column]
                views[f"{name}_24h"] = day[..., j]  # the ring keeps WINDOW_COLUMNS in order
                views[f"{name}_total"] = total[..., column]
            self._stats_views[env_index] = views
        return dict(views)

    def _observation_arguments(self, env_index: int | None) -> tuple:
        """:func:`observation_kernel`'s arguments after ``obs`` for every env or one: views of the books,
        which every step updates in place, so they are built once."""
        rows = slice(None) if env_index is None else slice(env_index, env_index + 1)
        sc, platform = self.scenario, self.platform
        return (
            PLAN_POSITIONS,
            GLOBAL_POSITIONS,
            self.last[rows],
            self.ring[rows],
            RING_POSITIONS,
            self.total[rows],
            self.t[rows],
            self.launch_step[rows],
            self.prior_age_steps[rows],
            self.target_cpa[rows],
            platform.compensation[rows],
            self.plan_channel_vocab[rows],
            self.plan_vertical_vocab[rows],
            platform.status[rows],
            platform.goal[rows],
            self.active[rows],
            self.spent_today[rows],
            self.horizon,
            sc.steps_per_day,
            sc.hours_per_step,
            sc.days,
            float(sc.daily_budget),
            self.max_plans,
        )

    def observe(self, env_index: int | None = None) -> np.ndarray:
        """Observations (E, obs_size) float32, or (obs_size,) for one env (:func:`build_observation`;
        the numba backend computes the same vector with :func:`envs.observation_kernel.observation_kernel`)."""
        if self.backend == "numba":
            arguments = self._observe_args.get(env_index)
            if arguments is None:
                arguments = self._observe_args[env_index] = self._observation_arguments(env_index)
            obs = np.empty((self.n_envs if env_index is None else 1, self._obs_size), dtype=np.float32)
            observation_kernel(obs, *arguments)
            return obs if env_index is None else obs[0]
        return build_observation(
            self.reporting_stats(env_index),
            self.clock(env_index),
            self.max_plans,
            self.active if env_index is None else self.active[env_index],
        )
