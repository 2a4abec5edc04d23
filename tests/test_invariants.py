"""Properties that hold for every seed and every action sequence (hypothesis-driven).

Each example rolls out a whole episode of a quick preset with random actions and checks, step by
step, what a user of the simulator relies on: budgets are never overspent, the funnel only narrows,
the observation is finite and inside its space, and the episode's return is its score.
"""

from __future__ import annotations

import numpy as np
import pytest
import yaml
from conftest import QUICK_PRESETS, rollout
from hypothesis import given, settings
from hypothesis import strategies as st

from envs.budget_env import BudgetShiftEnv
from envs.features import N_PLAN_FEATURES
from envs.kernels import CONVERSIONS, DEEP0
from envs.scenario import preset_path

# Money is summed in float64 over many auctions; this only absorbs rounding.
MONEY_RTOL = 1e-9

seeds = st.integers(min_value=0, max_value=2**32 - 1)
presets = st.sampled_from(QUICK_PRESETS)
examples = settings(max_examples=15, deadline=None)

_ENVS: dict[str, BudgetShiftEnv] = {}


def _env(preset: str) -> BudgetShiftEnv:
    """One env per preset, reused across examples (``reset`` must make reuse safe)."""
    if preset not in _ENVS:
        _ENVS[preset] = BudgetShiftEnv(preset)
    return _ENVS[preset]


@examples
@given(preset=presets, seed=seeds, action_seed=seeds)
def test_spend_never_exceeds_the_budget_given(preset: str, seed: int, action_seed: int) -> None:
    env = _env(preset)
    _, transitions = rollout(env, seed, action_seed=action_seed)
    sc = env.scenario
    daily_spend = np.zeros(sc.days)
    for t, tr in enumerate(transitions):
        spend, budget = tr.info["spend"], tr.info["budget"]
        assert np.all(spend >= 0.0) and np.all(budget >= 0.0)
        assert np.all(spend <= budget * (1 + MONEY_RTOL) + 1e-9), f"plan overspent at step {t}"
        day = t // sc.steps_per_day
        # The budgets handed out in one step never exceed what is left of the day.
        assert budget.sum() <= (sc.daily_budget - daily_spend[day]) * (1 + MONEY_RTOL) + 1e-9, f"step {t}"
        daily_spend[day] += spend.sum()
    assert np.all(daily_spend <= sc.daily_budget * (1 + MONEY_RTOL)), daily_spend


@examples
@given(preset=presets, seed=seeds, action_seed=seeds)
def test_the_funnel_only_narrows(preset: str, seed: int, action_seed: int) -> None:
    env = _env(preset)
    _, transitions = rollout(env, seed, action_seed=action_seed)
    for tr in transitions:
        info = tr.info
        assert np.all(info["impressions"] >= info["clicks"])
        assert np.all(info["clicks"] >= info["conversions"])
        assert np.all(info["conversions"] >= 0) and np.all(info["deep_events"] >= 0)
    # Deep events of a conversion mature after it, and stage s + 1 after stage s, so cumulative
    # counts per plan narrow down the funnel at every point in time (checked at the end).
    total = env.total
    assert np.all(total[:, CONVERSIONS] >= total[:, DEEP0])
    for s in range(1, env.n_stages):
        assert np.all(total[:, DEEP0 + s - 1] >= total[:, DEEP0 + s])
    # Pending (matured later or settled) events narrow the same way.
    all_events = total[:, DEEP0:] + env.pending[:, :, env.t :].sum(axis=2)
    assert np.all(total[:, CONVERSIONS] >= all_events[:, 0])
    assert np.all(np.diff(all_events, axis=1) <= 0)


@examples
@given(preset=presets, seed=seeds, action_seed=seeds)
def test_observations_and_rewards_are_finite_and_in_bounds(preset: str, seed: int, action_seed: int) -> None:
    env = _env(preset)
    obs0, transitions = rollout(env, seed, action_seed=action_seed)
    n, width = env.n_plans, N_PLAN_FEATURES
    # Each observation is followed by a decision over the plans active then (the final one: the last).
    observations = [obs0] + [tr.obs for tr in transitions]
    masks = [tr.active for tr in transitions] + [transitions[-1].active]
    for obs, active in zip(observations, masks, strict=True):
        assert np.all(np.isfinite(obs))
        assert env.observation_space.contains(obs)
        # The per-plan "active" flags are the mask a policy relies on; padding is all zeros.
        np.testing.assert_array_equal(obs[: n * width : width], active.astype(np.float32))
        assert np.all(obs[n * width : env.max_plans * width] == 0.0)
    for tr in transitions:
        assert np.isfinite(tr.reward)
        assert not tr.truncated
    assert [tr.terminated for tr in transitions] == [False] * (env.horizon - 1) + [True]


@examples
@given(preset=presets, seed=seeds, action_seed=seeds)
def test_episode_return_equals_the_score(preset: str, seed: int, action_seed: int) -> None:
    env = _env(preset)
    _, transitions = rollout(env, seed, action_seed=action_seed)
    episode_return = sum(tr.reward for tr in transitions)
    score = transitions[-1].info["score"]
    assert episode_return == pytest.approx(score["score"], rel=MONEY_RTOL, abs=1e-6)
    # Every step before the last pays exactly what matured in it.
    for tr in transitions[:-1]:
        assert tr.reward == pytest.approx(tr.info["deep_value"].sum(), rel=MONEY_RTOL, abs=1e-9)
    matured = sum(tr.info["deep_value"].sum() for tr in transitions)
    assert score["matured_value"] == pytest.approx(matured, rel=MONEY_RTOL, abs=1e-9)
    assert score["value"] == pytest.approx(score["matured_value"] + score["settled_value"], rel=MONEY_RTOL)
    # The score's spend is the advertiser's cost: spend net of the platform's compensation.
    gross = sum(tr.info["spend"].sum() for tr in transitions)
    assert score["spend"] == pytest.approx(gross - score["compensation"], rel=MONEY_RTOL)
    assert 0.0 <= score["compensation"] <= gross
    assert 0.0 <= score["penalty"] <= 1.0
    assert 0.0 <= score["score"] <= score["value"] * (1 + MONEY_RTOL)


@examples
@given(preset=presets, seed=seeds, action_seed=seeds)
def test_shares_sum_to_one_and_skip_inactive_plans(preset: str, seed: int, action_seed: int) -> None:
    env = _env(preset)
    _, transitions = rollout(env, seed, action_seed=action_seed)
    for t, tr in enumerate(transitions):
        shares = tr.info["shares"]
        assert np.all(shares >= 0.0)
        # Compliance caps withhold part of the budget; what is handed out plus that is everything.
        assert shares.sum() + tr.info["cap_withheld"] == pytest.approx(1.0, abs=1e-9), f"step {t}"
        assert np.all(shares[~tr.active] == 0.0), f"an inactive plan got a share at step {t}"
        for v, cap in enumerate(env.vertical_cap):  # by vocabulary index (envs.features.VERTICALS)
            assert shares[env.plan_vertical_vocab == v].sum() <= cap + 1e-9
        for key in ("budget", "spend", "impressions"):
            assert np.all(tr.info[key][~tr.active] == 0.0), f"{key} of an inactive plan at step {t}"


@examples
@given(
    seed=seeds,
    min_share=st.floats(0.0, 1.0 / 6),
    max_share=st.floats(1.0 / 6, 1.0),
    max_change=st.floats(0.01, 1.0),
)
def test_share_limits_hold_every_step(seed: int, min_share: float, max_share: float, max_change: float) -> None:
    # `small` has no compliance cap and all its plans live from the start, so the limits are always
    # feasible and must hold exactly (up to the projection's bisection).
    cfg = yaml.safe_load(preset_path("small").read_text())
    cfg.update(min_share=min_share, max_share=max_share, max_change=max_change)
    env = BudgetShiftEnv(cfg)
    _, transitions = rollout(env, seed, action_seed=seed)
    previous = None
    for t, tr in enumerate(transitions):
        shares = tr.info["shares"]
        assert shares.sum() == pytest.approx(1.0, abs=1e-9)
        assert np.all(shares >= min_share - 1e-9) and np.all(shares <= max_share + 1e-9), f"step {t}"
        if previous is not None:
            assert np.all(np.abs(shares - previous) <= max_change + 1e-9), f"share moved too fast at step {t}"
        previous = shares


def test_invariant_examples_reach_the_deep_funnel() -> None:
    """Guard against vacuous properties: a quick episode does sell, convert and mature deep events."""
    env = _env("small")
    _, transitions = rollout(env, seed=0)
    assert env.total[:, CONVERSIONS].sum() > 0
    assert env.total[:, DEEP0].sum() > 0
    assert transitions[-1].info["score"]["score"] > 0


def _coarse_preset(steps_per_day: int) -> str:
    """``small`` with steps of several hours, registered under its own name in the env cache."""
    name = f"small-{steps_per_day}-steps"
    if name not in _ENVS:
        cfg = yaml.safe_load(preset_path("small").read_text())
        cfg.update(name=name, steps_per_day=steps_per_day, days=3)
        _ENVS[name] = BudgetShiftEnv(cfg)
    return name


@pytest.mark.parametrize("steps_per_day", [4, 6])
@pytest.mark.parametrize(
    "check",
    [
        test_spend_never_exceeds_the_budget_given,
        test_the_funnel_only_narrows,
        test_observations_and_rewards_are_finite_and_in_bounds,
        test_episode_return_equals_the_score,
        test_shares_sum_to_one_and_skip_inactive_plans,
    ],
    ids=lambda check: check.__name__.removeprefix("test_"),
)
def test_invariants_hold_with_coarse_steps(check, steps_per_day: int) -> None:
    # The same properties (each test's body, without hypothesis) on a few seeds of 4- and 6-step days.
    preset = _coarse_preset(steps_per_day)
    for seed in range(3):
        check.hypothesis.inner_test(preset=preset, seed=seed, action_seed=seed + 100)
    assert _ENVS[preset].total[:, CONVERSIONS].sum() > 0  # the last episode sold and converted
