"""The numba backend's step kernels (:mod:`envs.step_kernels`) are the NumPy rules of :mod:`envs.shares`
and :class:`envs.simulation.PortfolioBatch`'s books, bit for bit.

``envs/shares.py`` states how actions and shares become step budgets and is what the reference
backend and the production loader run; the numba backend runs the kernels. Any difference, even in
the last bit or the sign of a zero, would change trajectories (the golden digests hash them), so the
comparisons here are exact: on random inputs and on ones no simulation would give (all-zero shares,
inactive plans, binding caps, infeasible limits, empty days, rows longer than NumPy's 128-term
pairwise block), one row and batches.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import random_actions

from envs.budget_env import BudgetShiftEnv
from envs.features import VERTICALS
from envs.kernels import SPEND
from envs.scenario import PortfolioGenerator, load_scenario, load_yaml, preset_path
from envs.shares import (
    check_actions,
    masked_softmax,
    project_shares,
    step_budgets,
    withhold_over_caps,
)
from envs.simulation import PortfolioBatch
from envs.step_kernels import (
    add_reduce,
    finite_non_negative,
    normalise_softmax,
    project_shares_kernel,
    shift_logits,
    step_budgets_kernel,
    withhold_over_caps_kernel,
)

SIZES = (1, 2, 3, 7, 8, 9, 16, 24, 31, 128, 129, 300)


def _assert_identical(fast: np.ndarray, slow: np.ndarray, where: str) -> None:
    """Equal shapes, dtypes and values, and for floats the same sign of every zero."""
    fast, slow = np.asarray(fast), np.asarray(slow)
    assert fast.shape == slow.shape and fast.dtype == slow.dtype, f"{where}: {fast.shape} {fast.dtype} {slow.dtype}"
    np.testing.assert_array_equal(fast, slow, err_msg=where, strict=True)
    if fast.dtype.kind == "f":
        np.testing.assert_array_equal(np.signbit(fast), np.signbit(slow), err_msg=f"{where}: sign of a zero")


def _wide(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Non-negative numbers over many magnitudes, with exact zeros: sums whose order shows."""
    x = rng.uniform(0, 1, size=shape) * 10.0 ** rng.integers(-9, 9, size=shape)
    x[rng.random(shape) < 0.15] = 0.0
    return x


# -------------------------------------------------------------------------------------------------
# Sums in NumPy's order
# -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("n", (0, *SIZES, 1000, 4097))
def test_add_reduce_sums_in_numpys_pairwise_order(n: int) -> None:
    rng = np.random.default_rng(n)
    for _ in range(20):
        x = rng.standard_normal(n) * 10.0 ** rng.integers(-9, 9, size=n)
        _assert_identical(add_reduce(x), np.add.reduce(x), f"n={n}")
        rows = x.reshape(1, n) if n else x.reshape(1, 0)
        _assert_identical(add_reduce(rows[0]), np.add.reduce(rows, axis=-1)[0], f"n={n} as a row")
        columns = np.stack([-x, x, 2 * x], axis=-1)  # a column of it: a view with stride 3
        _assert_identical(add_reduce(columns[:, 1]), np.add.reduce(columns[:, 1]), f"n={n} strided")
    assert add_reduce(np.array([-0.0])) == 0.0 and not np.signbit(add_reduce(np.array([-0.0])))


def test_finite_non_negative_is_the_envs_shares_check() -> None:
    for x in ([0.0, 1.0], [-0.0, 2.0], [np.nan, 1.0], [np.inf], [-1e-300], [1e308, 1e308], []):
        a = np.array(x, dtype=np.float64)
        assert finite_non_negative(a) == bool(np.all(np.isfinite(a)) and not np.any(a < 0)), x


# -------------------------------------------------------------------------------------------------
# Actions: check_actions' range test and the masked softmax around NumPy's exp
# -------------------------------------------------------------------------------------------------
def _softmax_kernels(actions: np.ndarray, temperature: float, active: np.ndarray) -> np.ndarray:
    z = np.empty(active.shape)
    assert shift_logits(actions, temperature, active, z)
    np.exp(z, out=z)
    normalise_softmax(z, active)
    return z


@pytest.mark.parametrize("dtype", (np.float64, np.float32))
@pytest.mark.parametrize("n_envs, n_plans, max_plans", ((1, 24, 32), (5, 7, 7), (64, 24, 32), (3, 150, 160)))
def test_the_softmax_kernels_are_masked_softmax(dtype, n_envs: int, n_plans: int, max_plans: int) -> None:
    rng = np.random.default_rng(n_envs * 1000 + n_plans)
    for trial in range(30):
        actions = rng.uniform(-1, 1, size=(n_envs, max_plans)).astype(dtype)
        corners = rng.random(actions.shape) < 0.2
        actions[corners] = rng.choice([-1.0, 1.0, 0.0, 1.0 + 1e-7], size=int(corners.sum()))
        active = rng.random((n_envs, n_plans)) < (0.7 if trial % 3 else 1.0)
        active[0] = False  # a row without any active plan
        if n_envs > 1:
            active[1] = False
            active[1, rng.integers(n_plans)] = True  # one active plan
        temperature = float(rng.choice([1.0, 3.0, 5.0, 40.0]))
        expected = masked_softmax(check_actions(actions, max_plans)[:, :n_plans] * temperature, active)
        _assert_identical(_softmax_kernels(actions, temperature, active), expected, f"trial {trial}")


def test_shift_logits_refuses_what_check_actions_refuses() -> None:
    active = np.ones((2, 4), dtype=bool)
    z = np.empty((2, 4))
    for bad in (np.nan, np.inf, -np.inf, 1.0 + 2e-6, -1.5):
        actions = np.zeros((2, 6))
        actions[1, 5] = bad  # a padded plan beyond n_plans is checked too
        assert not shift_logits(actions, 5.0, active, z)
        with pytest.raises(ValueError, match="action"):
            check_actions(actions, 6)
    assert shift_logits(np.full((2, 6), -1.0 - 1e-6), 5.0, active, z)


# -------------------------------------------------------------------------------------------------
# Share limits, caps and pacing
# -------------------------------------------------------------------------------------------------
def _limit_cases(rng: np.random.Generator, n: int):
    """(min_share, max_share, max_change): feasible, infeasible lower or upper bounds, no max_change."""
    yield 0.0, 1.0, 0.05
    yield rng.uniform(0, 1.0 / n), 1.0, None
    yield rng.uniform(0, 1.0 / n), rng.uniform(1.0 / n, 1.0), float(rng.uniform(0.001, 0.5))
    yield 0.0, rng.uniform(0.1, 0.99) / n, None  # upper bounds that cannot reach 1
    yield min(1.0, 2.0 / n), 1.0, 0.1  # lower bounds above 1 in total: relaxed
    yield 0.5, 0.5, 1e-3


@pytest.mark.parametrize("n_envs", (1, 6))
@pytest.mark.parametrize("n", (1, 3, 8, 24, 129))
def test_the_projection_kernel_is_project_shares(n_envs: int, n: int) -> None:
    rng = np.random.default_rng(7 * n + n_envs)
    for trial in range(12):
        active = rng.random((n_envs, n)) < 0.8
        active[0, :] = trial % 4 != 0  # a row with every plan inactive, now and then
        shares = _wide(rng, (n_envs, n)) * active
        if trial % 3 == 0:
            shares[-1] = 0.0  # all-zero shares
        total = shares.sum(axis=-1, keepdims=True)
        np.divide(shares, total, out=shares, where=total > 0)
        previous = rng.dirichlet(np.ones(n), size=n_envs) * active
        previous[rng.random(n_envs) < 0.3] = 0.0  # no share yet: max_change does not apply
        for min_share, max_share, max_change in _limit_cases(rng, n):
            out = np.empty_like(shares)
            project_shares_kernel(
                shares, previous, active, min_share, max_share, max_change is not None, max_change or 0.0, out
            )
            expected = project_shares(shares, previous, active, min_share, max_share, max_change)
            _assert_identical(out, expected, f"trial {trial} limits {(min_share, max_share, max_change)}")


@pytest.mark.parametrize("n_envs, n", ((1, 24), (7, 5), (64, 24), (2, 200)))
def test_the_caps_kernel_is_withhold_over_caps(n_envs: int, n: int) -> None:
    rng = np.random.default_rng(n_envs + n)
    for trial in range(20):
        plan_vertical = rng.integers(0, len(VERTICALS), size=(n_envs, n))
        shares = _wide(rng, (n_envs, n))
        if trial % 2:
            shares /= shares.sum(axis=-1, keepdims=True) + (trial % 4 == 1)
        shares[0] = 0.0 if trial % 5 == 0 else shares[0]
        caps = np.where(rng.random(len(VERTICALS)) < 0.6, rng.choice([0.0, 0.1, 0.3, 0.6, 1.0], len(VERTICALS)), 1.0)
        out = np.empty_like(shares)
        withhold_over_caps_kernel(shares, plan_vertical, caps, out)
        _assert_identical(out, withhold_over_caps(shares, plan_vertical, caps), f"trial {trial}")


@pytest.mark.parametrize("n_envs, n", ((1, 24), (9, 3), (64, 24), (2, 150)))
def test_the_pacing_kernel_is_step_budgets(n_envs: int, n: int) -> None:
    rng = np.random.default_rng(n_envs * n)
    for trial in range(20):
        shares = rng.dirichlet(np.ones(n), size=n_envs) * (rng.random((n_envs, n)) < 0.8)
        shares[0] = 0.0 if trial % 4 == 0 else shares[0]  # no weight: the daily budget itself
        day_share = rng.uniform(0, 0.2, size=(n_envs, n))
        rest_share = day_share + rng.uniform(0, 1, size=(n_envs, n)) * (trial % 3 != 0)
        left_today = rng.choice([0.0, 1.0, 5e3, 36000.0, 1e9], size=n_envs)
        daily_budget = float(rng.choice([36000.0, 1.0, 7777.7]))
        out = np.empty_like(shares)
        step_budgets_kernel(shares, day_share, rest_share, left_today, daily_budget, out)
        expected = step_budgets(shares, day_share, rest_share, left_today, daily_budget)
        _assert_identical(out, expected, f"trial {trial}")


# -------------------------------------------------------------------------------------------------
# PortfolioBatch: the numba backend's step before and after the auction
# -------------------------------------------------------------------------------------------------
def _scenario(preset: str, **limits: float) -> object:
    cfg = load_yaml(preset_path(preset))
    cfg.update(limits)
    return load_scenario(cfg)


def _twin_batches(scenario, n_envs: int) -> tuple[PortfolioBatch, PortfolioBatch]:
    batches = PortfolioBatch(scenario, n_envs, "numba"), PortfolioBatch(scenario, n_envs, "reference")
    for i in range(n_envs):
        portfolio = PortfolioGenerator()(scenario, np.random.default_rng(i))
        for batch in batches:
            batch.load(i, portfolio)
    return batches


BOOKS = ("t", "active", "spent_today", "shares", "last", "total", "ring")
LIMITS = ({}, {"max_change": 0.05}, {"min_share": 0.01, "max_change": 0.05}, {"max_share": 0.02})


@pytest.mark.parametrize("limits", LIMITS, ids=lambda x: ",".join(f"{k}={v}" for k, v in x.items()) or "none")
@pytest.mark.parametrize("n_envs", (1, 5))
def test_allocate_budgets_is_the_numpy_allocation(limits: dict[str, float], n_envs: int) -> None:
    """Renormalisation, limits, caps and pacing of PortfolioBatch.step: the kernel against NumPy, on
    states drawn at random (steps at a day's start, spend beyond the budget, plans not launched)."""
    sc = _scenario("default", **limits)
    fast, slow = _twin_batches(sc, n_envs)
    rng = np.random.default_rng(n_envs)
    for trial in range(40):
        t = rng.choice([0, 1, 23, 24, 25, 100, sc.horizon - 1], size=n_envs)
        active = rng.random((n_envs, sc.n_plans)) < (0.6 if trial % 2 else 1.0)
        active[0] = active[0] if trial % 7 else False
        previous = rng.dirichlet(np.ones(sc.n_plans), size=n_envs) * (rng.random((n_envs, 1)) < 0.8)
        spent = rng.uniform(0, 1.2 * sc.daily_budget, size=n_envs)
        given = _wide(rng, (n_envs, sc.n_plans))
        given[rng.random(n_envs) < 0.3] = 0.0  # nothing given: uniform over active plans
        for batch in (fast, slow):
            batch.t[...], batch.active[...], batch.shares[...], batch.spent_today[...] = t, active, previous, spent
        for fast_out, slow_out, name in zip(
            fast._allocate_fast(given.copy()),
            slow._allocate(given.copy()),
            ("shares", "withheld", "budget"),
            strict=True,
        ):
            _assert_identical(fast_out, slow_out, f"{name} in trial {trial}")
        for name in ("shares", "spent_today"):
            _assert_identical(getattr(fast, name), getattr(slow, name), f"{name} kept in trial {trial}")


@pytest.mark.parametrize("n_envs", (1, 4))
def test_keep_books_is_the_numpy_books(n_envs: int) -> None:
    sc = load_scenario("default")
    fast, slow = _twin_batches(sc, n_envs)
    rng = np.random.default_rng(3)
    for trial in range(60):
        if trial % 20 == 0:  # the last steps of an episode: termination
            fast.t[...] = slow.t[...] = rng.choice([sc.horizon - 2, sc.horizon - 1, 3], size=n_envs)
        out = _wide(rng, fast.last.shape)
        out[..., SPEND] *= rng.random(out.shape[:-1]) < 0.9
        fast_step, fast_done, fast_ended = fast._keep_books_fast(out)
        slow_step, slow_done, slow_ended = slow._keep_books(out)
        _assert_identical(fast_step, slow_step, f"step in trial {trial}")
        _assert_identical(fast_done, slow_done, f"terminated in trial {trial}")
        assert fast_ended is slow_ended, f"trial {trial}"
        for name in BOOKS:
            _assert_identical(getattr(fast, name), getattr(slow, name), f"{name} in trial {trial}")


@pytest.mark.parametrize("preset", ("small", "default"))
def test_shares_from_actions_is_check_actions_then_masked_softmax(preset: str) -> None:
    sc = load_scenario(preset)
    fast, slow = _twin_batches(sc, 3)
    rng = np.random.default_rng(5)
    for trial in range(10):
        actions = rng.uniform(-1, 1, size=(3, sc.max_plans)).astype(np.float32 if trial % 2 else np.float64)
        active = rng.random(fast.active.shape) < (0.7 if trial % 3 else 1.0)
        fast.active[...] = slow.active[...] = active
        _assert_identical(fast.shares_from_actions(actions), slow.shares_from_actions(actions), f"trial {trial}")
        _assert_identical(
            fast.shares_from_actions(actions.astype(np.int64)), slow.shares_from_actions(actions.astype(np.int64)), ""
        )
    actions[1, -1] = 2.0
    for batch in (fast, slow):
        with pytest.raises(ValueError, match=r"action entries must lie in \[-1, 1\].*\(env, plan\) \[\(1, "):
            batch.shares_from_actions(actions)


@pytest.mark.parametrize(
    "preset, limits", (("default", {"min_share": 0.01, "max_change": 0.05}), ("small", {}), ("credit", {}))
)
def test_an_episode_allocates_as_numpy_does_at_every_step(preset: str, limits: dict[str, float]) -> None:
    """On the states an episode actually reaches (shares moved by limits, days starting, plans
    launching), every step's kernels give exactly what the NumPy path would from the same state."""
    env = BudgetShiftEnv(_scenario(preset, **limits))
    sim = env.sim
    allocate_fast, shares_fast = sim._allocate_fast, sim.shares_from_actions

    def checked_allocation(given: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        before = sim.shares.copy(), sim.spent_today.copy()
        expected = sim._allocate(given.copy())
        after = sim.shares.copy(), sim.spent_today.copy()
        sim.shares[...], sim.spent_today[...] = before
        got = allocate_fast(given)
        for name, fast_out, slow_out in zip(("shares", "withheld", "budget"), got, expected, strict=True):
            _assert_identical(fast_out, slow_out, f"{name} at step {env.t}")
        _assert_identical(sim.shares, after[0], f"shares kept at step {env.t}")
        _assert_identical(sim.spent_today, after[1], f"spent_today at step {env.t}")
        return got

    def checked_softmax(actions: np.ndarray) -> np.ndarray:
        got = shares_fast(actions)
        a = check_actions(actions, sim.max_plans)
        expected = masked_softmax(a[..., : sim.n_plans] * sim.scenario.temperature, sim.active[0])
        _assert_identical(got, expected, f"softmax at step {env.t}")
        return got

    sim._allocate_fast, sim.shares_from_actions = checked_allocation, checked_softmax
    env.reset(seed=11)
    for t, action in enumerate(random_actions(env.max_plans, env.horizon, 11)):
        if t % 5 == 4:
            env.step_shares(np.zeros(env.n_plans))  # nothing given: uniform over active plans
        else:
            env.step(action)
    assert env.t == env.horizon
