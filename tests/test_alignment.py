"""Alignment (envpool-style): the Numba kernel and the NumPy reference agree step by step.

Both draw every random number from the same counter-based hash, so counts must be exactly equal and
money equal up to floating-point summation order (1e-9 relative). The hidden pending deep events (their
dense view) are compared too: a deep event scheduled at the wrong step would otherwise only show up days later; and
so is the platform's state (the numba backend runs envs.platform_kernels, the reference the NumPy
methods of envs.platform.Platform).
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import random_actions

from envs.budget_env import BudgetShiftEnv
from envs.kernels import IMPRESSIONS

COUNTS = ("impressions", "clicks", "conversions", "deep_events")
MONEY = ("spend", "deep_value", "budget")
RTOL = 1e-9
PLATFORM_EXACT = ("status", "learn_start", "edits", "relearning", "learned_all_day", "conversions_seen", "deep_seen")
PLATFORM_MONEY = ("mult", "smoothed_target", "value", "compensation", "day_spend", "previous_day_budget")


def _assert_aligned(preset: str, seed: int, n_steps: int | None) -> None:
    fast = BudgetShiftEnv(preset, backend="numba")
    slow = BudgetShiftEnv(preset, backend="reference")
    obs_fast, _ = fast.reset(seed=seed)
    obs_slow, _ = slow.reset(seed=seed)
    np.testing.assert_array_equal(obs_fast, obs_slow)
    n_steps = fast.horizon if n_steps is None else n_steps
    for t, action in enumerate(random_actions(fast.max_plans, n_steps, seed)):
        obs_fast, reward_fast, term_fast, trunc_fast, info_fast = fast.step(action)
        obs_slow, reward_slow, term_slow, trunc_slow, info_slow = slow.step(action)
        where = f"{preset} seed={seed} step={t}"
        for key in COUNTS:
            np.testing.assert_array_equal(info_fast[key], info_slow[key], err_msg=f"{key} at {where}")
        for key in MONEY:
            np.testing.assert_allclose(info_fast[key], info_slow[key], rtol=RTOL, atol=0, err_msg=f"{key} at {where}")
        np.testing.assert_array_equal(fast.pending, slow.pending, err_msg=f"pending at {where}")
        np.testing.assert_allclose(fast.state, slow.state, rtol=RTOL, atol=0, err_msg=f"state at {where}")
        # The platform layer: Numba kernels (envs.platform_kernels) against the NumPy methods.
        for name in PLATFORM_EXACT:
            np.testing.assert_array_equal(
                getattr(fast.sim.platform, name), getattr(slow.sim.platform, name), err_msg=f"{name} at {where}"
            )
        for name in PLATFORM_MONEY:
            np.testing.assert_allclose(
                getattr(fast.sim.platform, name),
                getattr(slow.sim.platform, name),
                rtol=RTOL,
                err_msg=f"{name} at {where}",
            )
        # float32 features of equal inputs; the tolerance only absorbs a rounding-boundary flip.
        np.testing.assert_allclose(obs_fast, obs_slow, rtol=1e-6, atol=1e-6, err_msg=f"observation at {where}")
        assert reward_fast == pytest.approx(reward_slow, rel=RTOL, abs=1e-9), where
        assert (term_fast, trunc_fast) == (term_slow, trunc_slow), where
    if term_fast:
        for key, value in info_fast["score"].items():
            assert value == pytest.approx(info_slow["score"][key], rel=RTOL), f"score.{key} for {preset}"
    # A vacuous comparison (nothing sold, nothing matured) would prove nothing.
    assert fast.total[:, IMPRESSIONS].sum() > 0, f"no impressions in {preset}"


@pytest.mark.parametrize("seed", [0, 1])
def test_small_full_episode_is_aligned(seed: int) -> None:
    _assert_aligned("small", seed, None)


def test_default_full_episode_is_aligned() -> None:
    # The whole week: late launches, day boundaries, the compliance cap and the final settlement.
    _assert_aligned("default", seed=3, n_steps=None)


@pytest.mark.parametrize("preset", ["credit", "insurance", "securities"])
def test_vertical_presets_are_aligned_over_three_days(preset: str) -> None:
    # Three days: first-stage deep events (medians 18-36 h) mature inside the comparison, and plans
    # launched on day 2 start bidding.
    _assert_aligned(preset, seed=7, n_steps=72)


@pytest.mark.parametrize("steps_per_day", [4, 6])
def test_coarse_steps_are_aligned(steps_per_day: int, tmp_path) -> None:
    # Steps of several hours: the hour a step reads its traffic at, delays rounded to coarse steps,
    # day boundaries every few steps and the platform's end-of-day books.
    import yaml

    from envs.scenario import preset_path

    cfg = yaml.safe_load(preset_path("small").read_text())
    cfg.update(name=f"small-{steps_per_day}-steps", steps_per_day=steps_per_day, days=3)
    path = tmp_path / f"small_{steps_per_day}_steps.yaml"
    path.write_text(yaml.safe_dump(cfg))
    _assert_aligned(str(path), seed=5, n_steps=None)


@pytest.mark.parametrize("backend", ["numba", "reference"])
def test_a_full_event_pool_grows_without_changing_the_episode(backend: str, monkeypatch) -> None:
    # Scheduled deep events live in a pool that doubles when a step finds it full; the step is then
    # run again with the same draws. Starting from room for 4 events, every step of a `small` episode
    # must give what a roomy pool gives, in a single env and in a batch (where one env's growth grows all).
    from envs import kernels
    from envs.vector_env import BudgetShiftVectorEnv

    roomy = BudgetShiftEnv("small", backend=backend)
    roomy_batch = BudgetShiftVectorEnv(3, scenario="small", backend=backend)
    monkeypatch.setattr(kernels, "EVENT_CAPACITY", 4)
    tight = BudgetShiftEnv("small", backend=backend)
    tight_batch = BudgetShiftVectorEnv(3, scenario="small", backend=backend)
    assert tight.sim.inputs.ev_code.shape[-1] == 4
    np.testing.assert_array_equal(roomy.reset(seed=2)[0], tight.reset(seed=2)[0])
    np.testing.assert_array_equal(roomy_batch.reset(seed=5)[0], tight_batch.reset(seed=5)[0])
    actions = random_actions(roomy.max_plans, roomy.horizon, seed=2)
    for t, action in enumerate(actions):
        obs_roomy, reward_roomy, _, _, info_roomy = roomy.step(action)
        obs_tight, reward_tight, _, _, info_tight = tight.step(action)
        np.testing.assert_array_equal(obs_roomy, obs_tight, err_msg=f"step {t}")
        assert reward_roomy == reward_tight, t
        np.testing.assert_array_equal(info_roomy["deep_events"], info_tight["deep_events"], err_msg=f"step {t}")
        batch_actions = np.stack([action, action[::-1], -action])
        obs_roomy, reward_roomy, *_ = roomy_batch.step(batch_actions)
        obs_tight, reward_tight, *_ = tight_batch.step(batch_actions)
        np.testing.assert_array_equal(obs_roomy, obs_tight, err_msg=f"batch step {t}")
        np.testing.assert_array_equal(reward_roomy, reward_tight, err_msg=f"batch step {t}")
    np.testing.assert_array_equal(roomy.pending, tight.pending)
    assert roomy.settle() == tight.settle()
    assert tight.sim.inputs.ev_code.shape[-1] > 4, "the pool never grew: the test proves nothing"
    assert tight_batch.sim.inputs.ev_code.shape[-1] > 4, "the batch's pool never grew"


def _lot_outcome(winner: int, best: float, second: float, market: float) -> tuple:
    """What a lot's auction decides: who wins (or nobody: the market), at what second price, and
    whether the advertiser's own runner-up set it."""
    if winner < 0 or best <= market:
        return (-1, 0.0, 0.0, False)
    return (winner, best, max(second, market), second > market)


@pytest.mark.parametrize("seed", range(4))
def test_only_bidders_that_could_beat_the_market_change_a_lot(seed: int) -> None:
    # The kernel hashes only the bidders whose ceiling and remaining budget reach the market
    # (kernels.candidates). On lots built to sit on every edge (market exactly at the best bid, one ulp
    # below it, exactly at a bidder's ceiling; budgets exactly at a bid; no noise; learning 0 and 1;
    # throttled delivery), the filtered auction must decide exactly what the full auction decides.
    from envs import kernels

    rng = np.random.default_rng(seed)
    n = 24
    base = rng.lognormal(0.0, 1.0, n)
    amp = rng.choice([0.0, 0.05, 0.4, 1.0], n)
    learning = rng.choice([0.0, 1.0, 0.3, 0.9], n)
    delivery = rng.choice([1.0, 0.5], n, p=[0.8, 0.2])
    offset = ((np.arange(n, dtype=np.uint64) + np.uint64(kernels.SLOT_BIDDER + 1)) * kernels.GOLDEN).astype(np.uint64)
    ceil_a, ceil_b = kernels.bid_ceilings(base, amp, learning, n)
    every = np.arange(n)
    scratch, cand = np.empty(n), np.empty(n, dtype=np.int64)
    rich = np.full(n, np.inf)
    filtered_lots = decided = 0
    for lot in range(400):
        h = np.uint64(rng.integers(0, 2**63))
        quality = float(rng.lognormal(0.0, 0.5))
        lo, hi = sorted(rng.integers(0, n + 1, 2))
        _, _, _ = kernels.auction(h, quality, every, n, base, amp, learning, delivery, offset, rich, scratch)
        bids = scratch.copy()
        remaining = rng.choice([np.inf, 0.0, 1.0], n)
        tight = rng.random(n) < 0.3
        remaining[tight] = bids[tight]  # exactly the bid: affordable
        ceilings = ceil_a + ceil_b * quality
        pick = int(rng.integers(lo, max(lo + 1, hi))) if hi > lo else 0
        edges = [bids[pick], np.nextafter(bids[pick], -np.inf), ceilings[pick], float(rng.lognormal(0.0, 1.0))]
        for market in edges:
            sub = every[lo:hi]
            full = kernels.auction(h, quality, sub, len(sub), base, amp, learning, delivery, offset, remaining, scratch)
            n_cand = kernels.candidates(lo, hi, quality, market, ceil_a, ceil_b, remaining, cand)
            assert list(cand[:n_cand]) == sorted(cand[:n_cand]), "candidates out of order"
            kept = kernels.auction(h, quality, cand, n_cand, base, amp, learning, delivery, offset, remaining, scratch)
            expected = _lot_outcome(*full, market)
            got = _lot_outcome(*kept, market) if n_cand else (-1, 0.0, 0.0, False)
            assert got == expected, f"lot {lot} market {market!r}"
            filtered_lots += n_cand < len(sub)
            decided += expected[0] >= 0
    assert filtered_lots > 100 and decided > 100, "the lots never exercised the filter or never sold"
