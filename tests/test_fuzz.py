"""Fuzzing: every valid scenario and every valid action gives a finite, consistent episode.

Hypothesis draws scenario fields anywhere inside the validator's bounds (zero-traffic hours, extreme
rates, multipliers, budgets, betas, share limits, steps per day) and actions anywhere in [-1, 1]
(saturated corners included), plays one short episode and checks what a user relies on:

- observations, step budgets and rewards are finite;
- no plan spends more than the budget it was given for the step, nor the portfolio more than its day;
- the funnel keeps its order: clicks <= impressions, conversions <= clicks, each deep stage (matured
  or still pending) <= the previous one, the first <= conversions;
- the return equals the score.

The search is derandomised (a fixed seed), so CI runs the same examples every time; a failure
prints the scenario as a reproducible example.
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from envs.budget_env import BudgetShiftEnv
from envs.kernels import CLICKS, CONVERSIONS, DEEP0, IMPRESSIONS, SPEND
from envs.scenario import MAX_BETA, MAX_MULT, load_scenario, preset_path

BASE = yaml.safe_load(preset_path("small").read_text())
FUZZ = settings(
    max_examples=60,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

finite = {"allow_nan": False, "allow_infinity": False}


def _curve() -> st.SearchStrategy[list[float]]:
    """24 non-negative values with a positive sum; zero-traffic hours are common, even at day's end."""
    hour = st.one_of(st.just(0.0), st.floats(1e-6, 50.0, **finite))
    return st.lists(hour, min_size=24, max_size=24).filter(lambda c: sum(c) > 0)


@st.composite
def scenarios(draw: st.DrawFn) -> dict[str, Any]:
    cfg = copy.deepcopy(BASE)
    cfg["days"] = draw(st.integers(1, 2))
    cfg["steps_per_day"] = draw(st.sampled_from([1, 2, 3, 4, 6, 8, 12, 24]))
    cfg["accounts"] = draw(st.integers(1, 2))
    cfg["plans_per_account"] = draw(st.integers(1, 4))
    cfg["max_plans"] = cfg["accounts"] * cfg["plans_per_account"] + draw(st.integers(0, 3))
    cfg["daily_budget"] = draw(st.floats(1.0, 1e9, **finite))
    cfg["cpa_target"] = draw(st.floats(1e-3, 1e6, **finite))
    cfg["beta"] = draw(st.floats(0.0, MAX_BETA, **finite))
    cfg["attribution_window_days"] = draw(st.floats(0.0, 40.0, **finite))
    cfg["learning_conversions"] = draw(st.floats(1e-3, 1e3, **finite))
    cfg["user_quality_sigma"] = draw(st.floats(0.0, 2.0, **finite))
    cfg["temperature"] = draw(st.floats(1e-3, 50.0, **finite))
    n_plans = cfg["accounts"] * cfg["plans_per_account"]
    cfg["min_share"] = draw(st.floats(0.0, 1.0 / n_plans, **finite))
    cfg["max_share"] = draw(st.floats(max(cfg["min_share"], 1e-3), 1.0, **finite))
    cfg["max_change"] = draw(st.one_of(st.none(), st.floats(1e-3, 1.0, **finite)))
    for name in cfg["channels"]:
        cfg["channels"][name].update(
            volume=draw(st.floats(1e-3, 3e3, **finite)),
            diurnal=draw(_curve()),
            market_bid=draw(st.floats(1e-4, 1e3, **finite)),
            market_sigma=draw(st.floats(0.0, 3.0, **finite)),
            ctr_mult=draw(st.floats(1e-3, 20.0, **finite)),
            cvr_mult=draw(st.floats(1e-3, 20.0, **finite)),
        )
    cfg["verticals"] = {
        "credit": {
            "share": 1.0,
            "target_cpa": draw(st.floats(1e-2, 1e6, **finite)),
            "ctr": draw(st.floats(1e-6, 1.0, **finite)),
            "cvr": draw(st.floats(1e-6, 1.0, **finite)),
            "max_spend_share": draw(st.floats(1e-3, 1.0, **finite)),
            "stages": [
                {
                    "name": f"stage{i}",
                    "rate": draw(st.floats(0.0, 1.0, **finite)),
                    "delay_median_hours": draw(st.floats(1.0, 2000.0, **finite)),
                    "delay_sigma": draw(st.floats(0.0, 3.0, **finite)),
                    "value": draw(st.floats(0.0, 1e6, **finite)),
                }
                for i in range(draw(st.integers(1, 3)))
            ],
        }
    }
    cfg["plans"] = {
        "potential_fraction": draw(st.floats(0.0, 0.4, **finite)),
        "trap_fraction": draw(st.floats(0.0, 0.4, **finite)),
        "new_fraction": draw(st.floats(0.0, 0.2, **finite)),
        "cpa_sigma": draw(st.floats(0.0, 3.0, **finite)),
        "ctr_sigma": draw(st.floats(0.0, 3.0, **finite)),
        "deep_sigma": draw(st.floats(0.0, 3.0, **finite)),
        "trap_cpa_mult": draw(st.floats(1e-3, MAX_MULT, **finite)),
        "trap_cvr_mult": draw(st.floats(1e-3, MAX_MULT, **finite)),
        "potential_deep_mult": draw(st.floats(1e-3, MAX_MULT, **finite)),
        "potential_bias": draw(st.floats(-5.0, 5.0, **finite)),
        "learning_noise": draw(st.floats(0.0, 0.95, **finite)),
    }
    return cfg


def _actions(max_plans: int) -> st.SearchStrategy[np.ndarray]:
    entry = st.one_of(st.sampled_from([-1.0, 0.0, 1.0]), st.floats(-1.0, 1.0, **finite))
    return st.lists(entry, min_size=max_plans, max_size=max_plans).map(lambda a: np.array(a, dtype=np.float32))


@FUZZ
@given(cfg=scenarios(), data=st.data(), seed=st.integers(0, 2**31 - 1))
def test_any_valid_scenario_and_actions_give_a_finite_consistent_episode(cfg, data, seed) -> None:
    scenario = load_scenario(cfg)
    env = BudgetShiftEnv(scenario)
    obs, _ = env.reset(seed=seed)
    assert np.all(np.isfinite(obs)), "observation at reset"
    episode_return, spent_today = 0.0, 0.0
    for t in range(env.horizon):
        if t % scenario.steps_per_day == 0:
            spent_today = 0.0
        action = data.draw(_actions(env.max_plans), label=f"action {t}")
        obs, reward, terminated, _, info = env.step(action)
        assert np.all(np.isfinite(obs)), f"observation at step {t}"
        assert np.isfinite(reward), f"reward at step {t}"
        assert np.all(np.isfinite(info["budget"])) and np.all(info["budget"] >= 0), f"budgets at step {t}"
        assert np.all(info["spend"] <= info["budget"] * (1 + 1e-9) + 1e-9), f"a plan overspent at step {t}"
        spent_today += float(info["spend"].sum())
        assert spent_today <= scenario.daily_budget * (1 + 1e-9), f"the day's budget overspent at step {t}"
        episode_return += reward
        if terminated:
            break
    total = env.total
    assert np.all(total[:, CLICKS] <= total[:, IMPRESSIONS])
    assert np.all(total[:, CONVERSIONS] <= total[:, CLICKS])
    deep = total[:, DEEP0:] + env.pending.sum(axis=2)  # (P, S) every deep event scheduled: matured + pending
    assert np.all(deep[:, 0] <= total[:, CONVERSIONS])
    assert np.all(deep[:, 1:] <= deep[:, :-1])
    assert total[:, SPEND].sum() <= scenario.daily_budget * scenario.days * (1 + 1e-9)
    score = info["score"]
    assert np.isfinite(score["score"])
    assert episode_return == pytest.approx(score["score"], rel=1e-9, abs=1e-6)
