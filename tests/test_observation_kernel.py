"""The simulator's Numba observation (:mod:`envs.observation_kernel`) is :func:`envs.features.build_observation`.

``features.py`` states the observation and is what a production allocator runs; the ``numba``
backend builds the same vector from its books in one kernel. They must agree on every feature, on
books a simulation writes and on books no simulation would (zeros, huge values that clip, inactive
and padded plans, the clock at day boundaries and past the horizon), in a batch and one env at a
time. Only the last bit of ``log``/``log1p``/``sin`` may differ (libm against NumPy's vectorised
functions), which the float32 cast almost always hides: the tolerance is one float32 rounding.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import random_actions

from envs.budget_env import BudgetShiftEnv
from envs.features import N_GLOBAL_FEATURES, N_PLAN_FEATURES, OBS_HIGH, build_observation, feature_names
from envs.scenario import PortfolioGenerator, load_scenario
from envs.simulation import PortfolioBatch


def _reference(batch: PortfolioBatch, env_index: int | None = None) -> np.ndarray:
    active = batch.active if env_index is None else batch.active[env_index]
    return build_observation(batch.reporting_stats(env_index), batch.clock(env_index), batch.max_plans, active)


def _assert_same(fast: np.ndarray, slow: np.ndarray, where: str) -> None:
    assert fast.dtype == slow.dtype == np.float32 and fast.shape == slow.shape, where
    bad = ~np.isclose(fast, slow, rtol=2e-7, atol=1e-7)
    if bad.any():
        first = tuple(np.argwhere(bad)[0])
        name = feature_names((fast.shape[-1] - N_GLOBAL_FEATURES) // N_PLAN_FEATURES)[first[-1]]
        raise AssertionError(f"{where}: {name} (entry {first}) is {fast[first]} against {slow[first]}")


@pytest.mark.parametrize("preset", ["small", "default", "credit", "insurance"])
def test_the_kernel_observes_simulated_books_as_features_py_does(preset: str) -> None:
    env = BudgetShiftEnv(preset)
    obs, _ = env.reset(seed=4)
    _assert_same(obs, _reference(env.sim, 0), f"{preset} at reset")
    for t, action in enumerate(random_actions(env.max_plans, min(60, env.horizon), 9)):
        obs, *_ = env.step(action)
        _assert_same(obs, _reference(env.sim, 0), f"{preset} after step {t}")


def test_the_kernel_observes_any_books_as_features_py_does() -> None:
    sc = load_scenario("default")
    n_envs = 4
    batch = PortfolioBatch(sc, n_envs)
    for i in range(n_envs):
        batch.load(i, PortfolioGenerator()(sc, np.random.default_rng(i)))
    rng = np.random.default_rng(1)
    for trial in range(20):
        # Counts, money and the clock drawn wide: zeros, fractions, values past every clip bound.
        scale = rng.choice([0.0, 1.0, 1e3, 1e12], size=batch.last.shape)
        batch.last[...] = rng.uniform(0, 1, size=batch.last.shape) * scale
        batch.total[...] = batch.last * rng.choice([1.0, 50.0], size=batch.last.shape)
        batch.ring[...] = rng.uniform(0, 1, size=batch.ring.shape) * rng.choice([0.0, 1.0, 1e6], size=batch.ring.shape)
        batch.platform.compensation[...] = rng.choice([0.0, 5.0, 1e13], size=batch.platform.compensation.shape)
        batch.platform.status[...] = rng.integers(0, 3, size=batch.platform.status.shape)
        batch.platform.goal[...] = rng.integers(0, 3, size=batch.platform.goal.shape)
        batch.t[...] = rng.choice([0, 1, 23, 24, 100, sc.horizon - 1, sc.horizon], size=n_envs)
        batch.spent_today[...] = rng.uniform(0, 2 * sc.daily_budget, size=n_envs)
        batch.active[...] = rng.uniform(size=batch.active.shape) < (0.3 if trial % 2 else 1.0)
        fast = batch.observe()
        _assert_same(fast, _reference(batch), f"trial {trial}")
        for i in range(n_envs):
            np.testing.assert_array_equal(batch.observe(i), fast[i], err_msg=f"env {i} alone, trial {trial}")
    assert (fast == OBS_HIGH).any(), "the huge books should have reached the upper clip bound"
