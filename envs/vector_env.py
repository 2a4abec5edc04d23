"""Many copies of the env stepped in one kernel call: the native Gymnasium ``VectorEnv``.

:class:`BudgetShiftVectorEnv` is a Gymnasium 1.x ``VectorEnv`` over a
:class:`envs.simulation.PortfolioBatch` of ``num_envs`` episodes: one ``step_batch_kernel`` call
(``prange`` over environments) simulates every copy, and allocation, pacing, the reporting books and
the features are NumPy operations over the whole batch. The batch is the same code the single
:class:`envs.budget_env.BudgetShiftEnv` runs with one row, so sub-env ``i`` reset with seed ``s_i``
follows exactly the trajectory of a single env reset with ``s_i`` (and, after an autoreset, of that
env's next ``reset()``, which draws from the same generator).

Autoreset mode: ``SAME_STEP`` (``metadata["autoreset_mode"]``). The step on which a sub-env's episode
ends returns the first observation of its next episode; the last observation of the ended one is in
``infos["final_obs"][i]`` and that step's info (with ``score``) in ``infos["final_info"]``, each with
its ``_``-prefixed mask, as ``gymnasium.vector.SyncVectorEnv(autoreset_mode=SAME_STEP)`` does. It is
the convention Stable-Baselines3 uses, so its ``VecEnv`` adapter (:mod:`agents.vec_env`, outside
the simulator: nothing here imports a learning library) needs no lookahead.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from gymnasium import spaces
from gymnasium.utils import seeding
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space

from envs.features import OBS_HIGH, OBS_LOW, observation_size
from envs.kernels import CLICKS, CONVERSIONS, DEEP0, DEEP_VALUE, IMPRESSIONS, OWN_PRICED, SPEND
from envs.objective import DeepValueScore
from envs.scenario import PortfolioGenerator, Scenario, load_scenario
from envs.shares import check_actions
from envs.simulation import BACKENDS, PortfolioBatch
from envs.step_kernels import finite_non_negative

# Per-plan step info: (key, column of the kernel output); deep_events takes every stage column.
_STEP_COLUMNS = (
    ("spend", SPEND),
    ("impressions", IMPRESSIONS),
    ("clicks", CLICKS),
    ("conversions", CONVERSIONS),
    ("deep_value", DEEP_VALUE),
    ("own_priced", OWN_PRICED),
)
_RESULT_KEYS = ("budget", "shares", "cap_withheld")
# The keys of a step's vector infos, each entry followed by its ``_`` mask (Gymnasium's layout).
_INFO_KEYS = tuple(
    k for key in ("step", *(k for k, _ in _STEP_COLUMNS), "deep_events", *_RESULT_KEYS) for k in (key, "_" + key)
)


class BudgetShiftVectorEnv(VectorEnv):
    """``num_envs`` copies of ``BudgetShift-v0`` simulated together (``gymnasium.make_vec(...,
    vectorization_mode="vector_entry_point")``).

    Spaces are those of :class:`envs.budget_env.BudgetShiftEnv`, batched: actions
    ``(num_envs, max_plans)`` in [-1, 1], observations ``(num_envs, obs_size)`` float32. Rewards,
    terminations and truncations are ``(num_envs,)``; an episode never truncates (``truncations`` is one
    read-only array of False, as the info masks of a step where no episode ended are). ``infos`` holds the
    single env's per-step entries batched (``spend``, ``impressions``, ``clicks``, ``conversions``,
    ``deep_value``, ``budget``, ``shares`` shaped ``(num_envs, n_plans)``, ``deep_events``
    ``(num_envs, n_plans, n_stages)``, ``cap_withheld`` and ``step`` ``(num_envs,)``), each with its
    ``_key`` mask; see the module docstring for the autoreset entries.

    :param num_envs: number of copies.
    :param scenario: a preset name, YAML path, mapping or :class:`Scenario` (as for the single env).
    :param backend: ``"numba"`` (one ``prange`` kernel call per step) or ``"reference"`` (the NumPy
        oracle env by env, for tests).
    :param generator: ``(scenario, rng) -> Portfolio`` (default :class:`PortfolioGenerator`).
    :param objective: the reward piece (default :class:`DeepValueScore` with the scenario's beta).
    """

    metadata: dict[str, Any] = {"autoreset_mode": AutoresetMode.SAME_STEP, "render_modes": []}

    def __init__(
        self,
        num_envs: int = 1,
        scenario: str | Mapping[str, Any] | Scenario = "default",
        backend: str = "numba",
        generator: Any = None,
        objective: DeepValueScore | None = None,
        render_mode: str | None = None,
    ) -> None:
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        if render_mode is not None:
            raise ValueError(f"render_mode must be None for the vector env, got {render_mode!r}")
        if not isinstance(num_envs, int | np.integer) or num_envs < 1:
            raise ValueError(f"num_envs must be an integer >= 1, got {num_envs!r}")
        self.scenario = sc = load_scenario(scenario)
        self.num_envs = int(num_envs)
        self.backend = backend
        self.render_mode = None
        self.generator = generator if generator is not None else PortfolioGenerator()
        self.objective = objective if objective is not None else DeepValueScore(beta=sc.beta)
        self.sim = PortfolioBatch(sc, self.num_envs, backend, self.objective)
        self.n_plans = sc.n_plans
        self.max_plans = sc.max_plans
        self.horizon = sc.horizon
        self.single_action_space = spaces.Box(-1.0, 1.0, shape=(sc.max_plans,), dtype=np.float32)
        self.single_observation_space = spaces.Box(
            OBS_LOW, OBS_HIGH, shape=(observation_size(sc.max_plans),), dtype=np.float32
        )
        self.action_space = batch_space(self.single_action_space, self.num_envs)
        self.observation_space = batch_space(self.single_observation_space, self.num_envs)
        self._rngs: list[np.random.Generator | None] = [None] * self.num_envs
        self._every_env = np.ones(self.num_envs, dtype=bool)  # the info masks of a step where no episode ended
        self._every_env.flags.writeable = False
        self._never_truncated = np.zeros(self.num_envs, dtype=bool)  # episodes end by the horizon only
        self._never_truncated.flags.writeable = False
        self._started = False

    # ---------------------------------------------------------------------------------------------
    def reset(
        self, *, seed: int | Sequence[int | None] | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """Start new episodes: all of them, or those in ``options["reset_mask"]`` ((num_envs,) bool).

        ``seed``: ``None`` (keep each sub-env's generator, or seed it at random the first time), an
        int ``s`` (sub-env ``i`` gets ``s + i``, as ``SyncVectorEnv`` does) or one seed per sub-env.
        """
        n = self.num_envs
        if seed is None:
            seeds: list[int | None] = [None] * n
        elif isinstance(seed, int | np.integer):
            seeds = [int(seed) + i for i in range(n)]
            self._np_random, self._np_random_seed = seeding.np_random(int(seed))
        else:
            seeds = list(seed)
            if len(seeds) != n:
                raise ValueError(f"seed must be an int or a list of num_envs={n} seeds, got {len(seeds)} seeds")
        mask = np.ones(n, dtype=bool)
        if options is not None and "reset_mask" in options:
            mask = np.asarray(options["reset_mask"])
            if mask.shape != (n,) or mask.dtype != np.bool_ or not mask.any():
                raise ValueError(
                    f"options['reset_mask'] must be a ({n},) bool array with a True entry, "
                    f"got {mask.dtype} {mask.shape}"
                )
            if not self._started and not mask.all():
                raise RuntimeError("reset every sub-env once before resetting some of them (reset_mask)")
        for i in np.flatnonzero(mask):
            self._start_episode(int(i), seeds[i])
        self._started = True
        infos = {
            "n_plans": np.where(mask, self.n_plans, 0),
            "_n_plans": mask.copy(),
            "active": self.sim.active_mask(),
            "_active": mask.copy(),
        }
        return self.sim.observe(), infos

    def _start_episode(self, i: int, seed: int | None) -> None:
        # gymnasium.Env.reset: a seed replaces the generator; without one it carries on (or starts at random).
        if seed is not None or self._rngs[i] is None:
            self._rngs[i], _ = seeding.np_random(seed)
        self.sim.load(i, self.generator(self.scenario, self._rngs[i]))

    # ---------------------------------------------------------------------------------------------
    def step(self, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        """Step every sub-env with actions ``(num_envs, max_plans)`` in [-1, 1]."""
        a = np.asarray(actions)
        if a.shape != (self.num_envs, self.max_plans):
            a = check_actions(a, self.max_plans)  # its errors first
            raise ValueError(f"actions must have shape ({self.num_envs}, {self.max_plans}), got {a.shape}")
        if not self._started:
            raise RuntimeError("call reset() before step()")
        return self._step(self.sim.shares_from_actions(a))  # a masked softmax: valid shares

    def step_shares(self, shares: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        """Step with budget shares ``(num_envs, n_plans)`` directly (heuristic allocators)."""
        if not self._started:
            raise RuntimeError("call reset() before step()")
        shares = np.asarray(shares, dtype=np.float64)
        shape = (self.num_envs, self.n_plans)
        if shares.shape != shape or not finite_non_negative(shares.reshape(-1)):
            raise ValueError(f"shares must be {shape} finite non-negative numbers, got shape {shares.shape}")
        return self._step(shares)

    def _step(self, shares: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        result = self.sim.step(shares)
        terminated = result["terminated"]
        truncated = self._never_truncated
        if not result["score"]:  # no episode ended (``score`` holds each one that did): the common step
            return self.sim.observe(), result["reward"], terminated, truncated, _step_info(result, self._every_env)
        step_info = _step_info(result)

        # Same-step autoreset of the sub-envs whose episode ended.
        done = terminated.copy()
        final_obs = np.full(self.num_envs, None, dtype=object)
        last_obs = self.sim.observe()
        final_info: dict[str, Any] = {}
        _add_batched(final_info, step_info, done)
        score_keys = next(iter(result["score"].values())).as_dict().keys()
        score = {k: np.zeros(self.num_envs) for k in score_keys}
        for i, parts in result["score"].items():
            final_obs[i] = last_obs[i]
            for k, v in parts.as_dict().items():
                score[k][i] = v
        _add_batched(final_info, {"score": score}, done)
        for i in np.flatnonzero(done):
            self._start_episode(int(i), None)
        infos = {
            "final_obs": final_obs,
            "_final_obs": done.copy(),
            "final_info": final_info,
            "_final_info": done.copy(),
        }
        _add_batched(infos, step_info, ~done)
        _add_batched(infos, {"n_plans": np.where(done, self.n_plans, 0), "active": self.sim.active_mask()}, done)
        return self.sim.observe(), result["reward"], terminated, truncated, infos

    # ---------------------------------------------------------------------------------------------
    def reporting_stats(self, env_index: int | None = None) -> dict[str, np.ndarray]:
        """Reporting stats (num_envs, n_plans) per name, or (n_plans,) for one sub-env."""
        return self.sim.reporting_stats(env_index)

    def clock(self, env_index: int | None = None):
        """The decision's :class:`envs.features.Clock` (array fields, or scalars for one sub-env)."""
        return self.sim.clock(env_index)

    def active_mask(self, env_index: int | None = None) -> np.ndarray:
        """(num_envs, n_plans) bool, or (n_plans,): plans launched by the step about to be decided."""
        return self.sim.active_mask(env_index)


def _step_info(result: Mapping[str, Any], mask: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """The step's per-env entries; with ``mask``, already in Gymnasium's vector layout with ``mask``
    beside every entry (a step where no episode ended: the hot path, no second dict)."""
    out = result["out"]
    info = {} if mask is None else dict.fromkeys(_INFO_KEYS, mask)  # every key in its place, masks set
    info["step"] = result["step"]
    for key, column in _STEP_COLUMNS:
        info[key] = out[..., column]
    info["deep_events"] = out[..., DEEP0:]
    for key in _RESULT_KEYS:
        info[key] = result[key]
    return info


def _add_batched(infos: dict[str, Any], entries: Mapping[str, Any], mask: np.ndarray) -> None:
    """Gymnasium's vector info layout: every entry batched, with a ``_key`` bool mask beside it. The
    entries of one call share one read-only copy of ``mask`` (one copy, not one per key: a step's
    infos are built on the hot path)."""
    shared = mask.copy()
    shared.flags.writeable = False
    _fill_batched(infos, entries, shared)


def _fill_batched(infos: dict[str, Any], entries: Mapping[str, Any], mask: np.ndarray) -> None:
    for key, value in entries.items():
        if isinstance(value, dict):
            nested: dict[str, Any] = {}
            _fill_batched(nested, value, mask)
            infos[key] = nested
        else:
            infos[key] = value
        infos["_" + key] = mask
