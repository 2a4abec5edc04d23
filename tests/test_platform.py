"""The platform layer by hand (DESIGN 2b): the learning schedule, the lifecycle (learned, failed,
relearning after a significant edit), the bid multiplier it writes, and the cost controller.

The lifecycle tests drive :class:`envs.platform.Platform` directly with hand-written step outputs
on a tiny scenario (4 steps a day, 4 conversions to learn, 1 day to do it), so every status change
falls on a step computed here; each runs on both implementations (the NumPy reference methods and
the Numba kernels of :mod:`envs.platform_kernels`), and a randomised test holds the two together
on every field of the platform's state.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import yaml

from envs.kernels import (
    CONVERSIONS,
    DYN_BID_MULT,
    DYN_BID_VALUE,
    DYN_DELIVERY,
    DYN_LEARNING,
    N_DYN_FIELDS,
    n_step_fields,
)
from envs.platform import Platform, controller_update, learning_level
from envs.scenario import (
    MAX_STAGES,
    STATUS_FAILED,
    STATUS_LEARNED,
    STATUS_LEARNING,
    preset_path,
    scenario_from_mapping,
)

N_LEARN = 4  # conversions that end the learning phase
PREMIUM = 0.5  # explore_premium
THROTTLE = 0.25  # failed_throttle
RELEARN = 0.5  # relearn_level
STEPS_PER_DAY = 4
TARGET_CPA = 100.0


@pytest.fixture(params=[True, False], ids=["numba", "numpy"])
def fast(request) -> bool:
    """Which implementation of the platform's updates: the Numba kernels or the NumPy reference."""
    return request.param


def _platform(fast: bool = True) -> Platform:
    """A Platform over the 6 plans of ``small`` with 4 steps a day, fresh (every plan learning since
    step 0, shallow goal), the cost controller and compensation off so only the lifecycle moves."""
    cfg = yaml.safe_load(preset_path("small").read_text())
    cfg.update(
        steps_per_day=STEPS_PER_DAY,
        learning_conversions=float(N_LEARN),
        platform=dict(
            cost_control=False,
            compensation=False,
            explore_premium=PREMIUM,
            failed_throttle=THROTTLE,
            relearn_level=RELEARN,
            learning_days=1.0,
            edit_threshold=0.5,
        ),
    )
    platform = Platform(scenario_from_mapping(cfg), 1, fast=fast)
    platform.target_cpa[...] = TARGET_CPA
    return platform


def _bids(platform: Platform) -> np.ndarray:
    """(P, N_DYN_FIELDS) what the platform writes for the next step."""
    dyn = np.zeros((1, platform.status.shape[1], N_DYN_FIELDS))
    platform.write_bids(dyn)
    return dyn[0]


def _after(platform: Platform, t: int, conversions: list[float], budget: list[float] | float = 10.0) -> None:
    n = platform.status.shape[1]
    out = np.zeros((1, n, n_step_fields(MAX_STAGES)))
    out[0, :, CONVERSIONS] = conversions
    platform.after_step(np.array([t]), out, np.broadcast_to(np.asarray(budget, dtype=float), (1, n)).copy())


# -------------------------------------------------------------------------------------------------
# The learning schedule
# -------------------------------------------------------------------------------------------------
def test_learning_level_falls_with_conversions() -> None:
    status = np.array([STATUS_LEARNING] * 4 + [STATUS_LEARNED, STATUS_FAILED])
    conversions = np.array([0.0, 1.0, 3.0, 3.0, 5.0, 2.0])
    relearning = np.array([False, False, False, True, False, False])
    level = learning_level(status, conversions, float(N_LEARN), relearning, RELEARN)
    # 1 - k/N; a relearning plan from relearn_level; 0 once learned; a failed plan keeps its level.
    np.testing.assert_array_equal(level, [1.0, 0.75, 0.25, 0.125, 0.0, 0.5])


def test_plans_learn_at_n_conversions_and_fail_when_the_days_run_out(fast: bool) -> None:
    platform = _platform(fast)
    dyn = _bids(platform)
    np.testing.assert_array_equal(dyn[:, DYN_LEARNING], 1.0)
    np.testing.assert_array_equal(dyn[:, DYN_BID_MULT], 1.0 + PREMIUM)  # exploration at lambda = 1
    np.testing.assert_array_equal(dyn[:, DYN_BID_VALUE], TARGET_CPA)  # shallow goal: the target CPA
    np.testing.assert_array_equal(dyn[:, DYN_DELIVERY], 1.0)  # every plan enters every auction

    # Step 0: plan 3 reaches 4 conversions at once; the others 0, 1, 2.
    _after(platform, 0, [0, 1, 2, 4, 0, 0])
    assert platform.status[0].tolist() == [STATUS_LEARNING] * 3 + [STATUS_LEARNED] + [STATUS_LEARNING] * 2
    dyn = _bids(platform)
    np.testing.assert_array_equal(dyn[:, DYN_LEARNING], [1.0, 0.75, 0.5, 0.0, 1.0, 1.0])
    np.testing.assert_array_equal(dyn[:, DYN_BID_MULT], [1.5, 1.375, 1.25, 1.0, 1.5, 1.5])

    # Steps 1-3: plan 1 learns at step 1 (1 + 3), plan 4 at the last step of its day (4 at step 3).
    _after(platform, 1, [0, 3, 0, 0, 0, 0])
    _after(platform, 2, [0, 0, 1, 0, 0, 0])
    assert (platform.status[0] == STATUS_FAILED).sum() == 0  # a day (4 steps) has not passed yet
    _after(platform, 3, [0, 0, 0, 0, 4, 3])
    # learning_days = 1: after step 3 every plan still short of 4 conversions has failed.
    expected = [STATUS_FAILED, STATUS_LEARNED, STATUS_FAILED, STATUS_LEARNED, STATUS_LEARNED, STATUS_FAILED]
    assert platform.status[0].tolist() == expected
    dyn = _bids(platform)
    # A failed plan keeps its level (plan 0: 0 conversions, plan 2: 3, plan 5: 3), has no exploration
    # premium and its delivery is throttled: it enters fewer auctions, at its full bid.
    np.testing.assert_array_equal(dyn[:, DYN_LEARNING], [1.0, 0.0, 0.25, 0.0, 0.0, 0.25])
    np.testing.assert_array_equal(dyn[:, DYN_BID_MULT], 1.0)
    np.testing.assert_array_equal(dyn[:, DYN_DELIVERY], [THROTTLE, 1.0, THROTTLE, 1.0, 1.0, THROTTLE])
    # Conversions after failing do not revive a plan.
    _after(platform, 4, [10, 0, 10, 0, 0, 10])
    assert platform.status[0].tolist() == expected


def test_a_significant_edit_sends_a_learned_plan_back_to_learning(fast: bool) -> None:
    platform = _platform(fast)
    platform.status[...] = STATUS_LEARNED
    platform.status[0, 4] = STATUS_LEARNING  # entered learning at step 5: it cannot fail before step 8
    platform.learn_conversions[0, 4] = 2.0
    platform.learn_start[0, 4] = 5
    none = [0.0] * 6
    # Day 0: every plan is given 25 a step (100 for the day). No edit can happen on the first day.
    for t in range(4):
        _after(platform, t, none, 25.0)
    assert platform.edits[0].tolist() == [0] * 6
    # Day 1, against 100: plan 0 gets 160 (+60%), plan 1 140 (+40%), plan 2 40 (-60%), plan 3 150
    # (+50%: not more than the threshold), plan 4 (learning) 200, plan 5 nothing (no budget: no edit).
    day1 = [40.0, 35.0, 10.0, 37.5, 50.0, 0.0]
    for t in range(4, 7):
        _after(platform, t, none, day1)
        assert platform.edits[0].tolist() == [0] * 6  # edits are judged at the end of the day
    _after(platform, 7, none, day1)
    assert platform.edits[0].tolist() == [1, 0, 1, 0, 1, 0]
    assert platform.status[0].tolist() == [
        STATUS_LEARNING,
        STATUS_LEARNED,
        STATUS_LEARNING,
        STATUS_LEARNED,
        STATUS_LEARNING,
        STATUS_LEARNED,
    ]
    np.testing.assert_array_equal(platform.learn_start[0, [0, 2, 4]], 8)  # the clock restarts next day
    np.testing.assert_array_equal(platform.learn_conversions[0, [0, 2, 4]], 0.0)
    dyn = _bids(platform)
    # A learned plan relearns from relearn_level; a plan that was learning restarts from 1.
    np.testing.assert_array_equal(dyn[:, DYN_LEARNING], [RELEARN, 0.0, RELEARN, 0.0, 1.0, 0.0])
    np.testing.assert_array_equal(
        dyn[:, DYN_BID_MULT], [1.0 + PREMIUM * RELEARN, 1.0, 1.0 + PREMIUM * RELEARN, 1.0, 1.0 + PREMIUM, 1.0]
    )
    # Relearning runs on the same schedule: 2 conversions halve what is left, 4 end it.
    _after(platform, 8, [2, 0, 4, 0, 0, 0], day1)
    dyn = _bids(platform)
    np.testing.assert_array_equal(dyn[[0, 2], DYN_LEARNING], [RELEARN * 0.5, 0.0])
    assert platform.status[0, 2] == STATUS_LEARNED


# -------------------------------------------------------------------------------------------------
# The cost controller: m <- clip(m x exp(-gain x (spend - target) / (rho G + v))), then G <- rho G + target.
# -------------------------------------------------------------------------------------------------
def _update(*, mult=1.0, g=0.0, spend=0.0, target=0.0, value=100.0, update=True, rho=0.5, gain=1.0, lo=0.3, hi=4.0):
    m, g_new = controller_update(
        np.array([mult]),
        np.array([g]),
        np.array([spend]),
        np.array([target]),
        np.array([value]),
        np.array([update]),
        rho,
        gain,
        lo,
        hi,
    )
    return float(m[0]), float(g_new[0])


def test_cost_above_target_lowers_the_multiplier() -> None:
    # One conversion (target spend 100) bought for 300, no history: exp(-(300 - 100) / (0 + 100)) = e^-2.
    assert _update(spend=300.0, target=100.0, lo=0.01) == (math.exp(-2.0), 100.0)
    assert _update(spend=300.0, target=100.0, gain=0.5, lo=0.01) == (math.exp(-1.0), 100.0)


def test_cost_below_target_raises_the_multiplier() -> None:
    # Three conversions (300 at target) bought for 100, G = 200 before: exp(200 / (0.5 x 200 + 100)) = e.
    assert _update(mult=1.25, g=200.0, spend=100.0, target=300.0) == (1.25 * math.e, 400.0)


def test_the_step_is_scaled_by_the_books_before_it() -> None:
    # The same undershoot with more history moves the multiplier less: rho G + v = 0.5 x 1800 + 100 = 1000.
    assert _update(g=1800.0, spend=100.0, target=300.0)[0] == pytest.approx(math.exp(0.2), rel=1e-15)


def test_a_step_without_spend_or_conversions_leaves_the_multiplier_alone() -> None:
    # No stale error is re-applied: one costly hour moves m once, idle hours after it do not.
    m, g = _update(spend=300.0, target=100.0, lo=0.01)
    for _ in range(5):
        m_next, g = _update(mult=m, g=g, lo=0.01)
        assert m_next == m


def test_the_multiplier_is_clipped_to_its_bounds() -> None:
    assert _update(spend=10_000.0)[0] == 0.3
    assert _update(target=10_000.0)[0] == 4.0


def test_no_update_when_not_asked() -> None:
    assert _update(mult=1.7, g=20.0, spend=300.0, target=100.0, update=False) == (1.7, 20.0)


# -------------------------------------------------------------------------------------------------
# The two implementations: the Numba kernels follow the NumPy reference on every field.
# -------------------------------------------------------------------------------------------------
_STATE_FIELDS = (
    "value",
    "conversions_seen",
    "deep_seen",
    "value_seen",
    "mult",
    "smoothed_target",
    "status",
    "learn_conversions",
    "learn_start",
    "relearning",
    "learned_all_day",
    "day_budget",
    "previous_day_budget",
    "day_spend",
    "day_target_spend",
    "compensation",
    "edits",
)


def test_the_numba_kernels_follow_the_numpy_reference_on_random_books() -> None:
    from envs.kernels import DEEP0, DEEP_VALUE, SPEND
    from envs.scenario import PortfolioGenerator, load_scenario

    sc = load_scenario("default")
    n_envs, k = 3, n_step_fields(MAX_STAGES)
    platforms = {fast: Platform(sc, n_envs, fast=fast) for fast in (True, False)}
    rng = np.random.default_rng(0)
    for i in range(n_envs):
        pf = PortfolioGenerator()(sc, np.random.default_rng(i))
        for platform in platforms.values():
            platform.load(i, pf)
    n = sc.n_plans
    statuses, edits, credited = set(), 0, 0.0
    rate = rng.choice([0.02, 0.6], size=(n_envs, n))  # conversions a step: some plans too thin to learn
    for t in range(5 * sc.steps_per_day):
        if t % sc.steps_per_day == 0:  # a day's budget level per plan: some cut, some doubled, some off
            level = rng.choice([0.0, 0.3, 1.0, 2.5], size=(n_envs, n), p=[0.1, 0.2, 0.5, 0.2]) * 40.0
        dyn = {fast: np.zeros((n_envs, n, N_DYN_FIELDS)) for fast in platforms}
        for fast, platform in platforms.items():
            platform.write_bids(dyn[fast])
        np.testing.assert_allclose(dyn[True], dyn[False], rtol=1e-12, atol=0, err_msg=f"bids at step {t}")
        out = np.zeros((n_envs, n, k))
        conversions = rng.poisson(rate).astype(float)
        out[..., CONVERSIONS] = conversions
        out[..., SPEND] = conversions * platforms[False].value * rng.uniform(0.3, 2.5, size=(n_envs, n))  # spend
        out[..., DEEP0] = rng.binomial(conversions.astype(int), 0.3)
        out[..., DEEP_VALUE] = out[..., DEEP0] * 500.0
        budget = level * rng.uniform(0.8, 1.2, size=(n_envs, n))
        for platform in platforms.values():
            platform.after_step(np.full(n_envs, t), out.copy(), budget.copy())
        fast, ref = platforms[True], platforms[False]
        for name in _STATE_FIELDS:
            a, b = getattr(fast, name), getattr(ref, name)
            if a.dtype.kind == "f":
                np.testing.assert_allclose(a, b, rtol=1e-12, atol=0, err_msg=f"{name} at step {t}")
            else:
                np.testing.assert_array_equal(a, b, err_msg=f"{name} at step {t}")
        statuses |= set(np.unique(ref.status).tolist())
        edits, credited = int(ref.edits.sum()), float(ref.compensation.sum())
    # Not vacuous: every status, edits, compensation and a moving controller were exercised.
    assert statuses == {STATUS_LEARNING, STATUS_LEARNED, STATUS_FAILED}
    assert edits > 0 and credited > 0
    assert np.ptp(platforms[False].mult) > 0.1
