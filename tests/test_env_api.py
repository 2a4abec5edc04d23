"""The env honours the Gymnasium and Stable-Baselines3 APIs on every preset, and rejects misuse."""

from __future__ import annotations

import warnings

import gymnasium
import numpy as np
import pytest
import yaml
from conftest import PRESETS
from gymnasium.utils.env_checker import check_env as gym_check_env
from stable_baselines3.common.env_checker import check_env as sb3_check_env

import envs
from envs.budget_env import BudgetShiftEnv
from envs.scenario import preset_path


def _messages(caught: list[warnings.WarningMessage]) -> list[str]:
    return [f"{w.category.__name__}: {w.message}" for w in caught]


@pytest.mark.parametrize("preset", PRESETS)
def test_gymnasium_check_env_passes_without_warnings(preset: str) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        # Made through the registry so the checker also exercises the declared render modes.
        env = gymnasium.make(envs.ENV_ID, scenario=preset)
        gym_check_env(env.unwrapped)
    assert _messages(caught) == []


@pytest.mark.parametrize("preset", PRESETS)
def test_sb3_check_env_passes_without_warnings(preset: str) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        sb3_check_env(BudgetShiftEnv(preset), warn=True)
    assert _messages(caught) == []


def test_make_by_preset_name_runs_an_episode_without_warnings() -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        # gymnasium.make wraps the env in its passive checker, which warns about API slips.
        env = gymnasium.make(envs.ENV_ID, scenario="small")
        obs, info = env.reset(seed=0)
        assert env.observation_space.contains(obs)
        assert info["n_plans"] == 6
        terminated = truncated = False
        steps = 0
        while not (terminated or truncated):
            obs, reward, terminated, truncated, info = env.step(env.action_space.sample())
            steps += 1
        env.close()
    assert _messages(caught) == []
    assert steps == env.unwrapped.horizon == 2 * 24
    assert terminated and not truncated
    assert "score" in info


def test_make_with_a_mapping_scenario_uses_its_fields() -> None:
    cfg = yaml.safe_load(preset_path("small").read_text())
    cfg["daily_budget"] = 1234.0
    cfg["days"] = 1
    env = gymnasium.make(envs.ENV_ID, scenario=cfg)
    sc = env.unwrapped.scenario
    assert sc.daily_budget == 1234.0
    assert sc.horizon == 24
    env.reset(seed=0)
    total_spend = 0.0
    for _ in range(sc.horizon):
        _, _, terminated, _, info = env.step(np.ones(sc.max_plans, dtype=np.float32))
        total_spend += info["spend"].sum()
    assert terminated
    assert 0.0 < total_spend <= 1234.0 * (1 + 1e-12)
    # The caller's mapping is not modified by building a scenario from it.
    assert cfg["daily_budget"] == 1234.0 and "source" not in cfg


def test_spaces_match_the_scenario() -> None:
    env = BudgetShiftEnv("default")
    assert env.action_space.shape == (env.scenario.max_plans,)
    assert env.action_space.dtype == np.float32
    assert np.all(env.action_space.low == -1.0) and np.all(env.action_space.high == 1.0)
    assert env.observation_space.dtype == np.float32
    obs, _ = env.reset(seed=0)
    assert obs.shape == env.observation_space.shape and obs.dtype == np.float32


def test_render_ansi_describes_every_plan() -> None:
    env = BudgetShiftEnv("small", render_mode="ansi")
    env.reset(seed=0)
    env.step(np.zeros(env.max_plans, dtype=np.float32))
    text = env.render()
    assert isinstance(text, str)
    assert sum(line.startswith("plan ") for line in text.splitlines()) == env.n_plans


def test_unknown_backend_and_render_mode_are_rejected() -> None:
    with pytest.raises(ValueError, match="backend"):
        BudgetShiftEnv("small", backend="cuda")
    with pytest.raises(ValueError, match="render_mode"):
        BudgetShiftEnv("small", render_mode="human")


def test_step_before_reset_raises() -> None:
    env = BudgetShiftEnv("small")
    with pytest.raises(RuntimeError, match="reset"):
        env.step(np.zeros(env.max_plans, dtype=np.float32))


def test_step_after_the_episode_ended_raises() -> None:
    env = BudgetShiftEnv("small")
    env.reset(seed=0)
    action = np.zeros(env.max_plans, dtype=np.float32)
    for _ in range(env.horizon):
        env.step(action)
    with pytest.raises(RuntimeError, match="reset"):
        env.step(action)


@pytest.mark.parametrize(
    ("make_action", "match"),
    [
        pytest.param(lambda n: np.full(n, np.nan, dtype=np.float32), r"finite.*NaN", id="nan"),
        pytest.param(lambda n: np.r_[np.zeros(n - 1), np.inf].astype(np.float32), r"finite.*inf", id="inf"),
        pytest.param(lambda n: np.zeros(n + 1, dtype=np.float32), r"shape \(8,\)", id="too-long"),
        pytest.param(lambda n: np.zeros((1, n), dtype=np.float32), r"shape \(8,\)", id="batched"),
        pytest.param(lambda n: np.r_[np.zeros(n - 1), 1.5].astype(np.float32), r"\[-1, 1\]", id="above-1"),
        pytest.param(lambda n: np.r_[-1.01, np.zeros(n - 1)].astype(np.float32), r"\[-1, 1\]", id="below-minus-1"),
        pytest.param(lambda n: np.zeros(n) + 0.5j, r"real numbers, got dtype complex", id="complex"),
        pytest.param(lambda n: np.array(["0.5"] * n), r"real numbers, got dtype <U3", id="strings"),
    ],
)
def test_bad_actions_raise_a_clear_value_error(make_action, match: str) -> None:
    env = BudgetShiftEnv("small")
    env.reset(seed=0)
    with pytest.raises(ValueError, match=match):
        env.step(make_action(env.max_plans))


def test_a_rejected_action_leaves_the_episode_untouched() -> None:
    env = BudgetShiftEnv("small")
    env.reset(seed=0)
    with pytest.raises(ValueError):
        env.step(np.full(env.max_plans, np.nan, dtype=np.float32))
    assert env.t == 0 and env.total.sum() == 0.0


@pytest.mark.parametrize(
    ("make_shares", "match"),
    [
        pytest.param(lambda n: np.r_[np.ones(n - 1), np.nan], r"got nan at plan 5", id="nan-names-plan"),
        pytest.param(lambda n: np.r_[np.ones(2), -0.1, np.ones(n - 3)], r"got -0\.1 at plan 2", id="negative"),
        pytest.param(lambda n: np.full(n, 1e308), r"finite sum", id="overflowing-sum"),
        pytest.param(lambda n: np.ones(n) * 1j, r"real numbers, got dtype complex", id="complex"),
        pytest.param(lambda n: np.array(["1"] * n), r"real numbers", id="strings"),
        pytest.param(lambda n: np.ones(n + 1), r"shape \(6,\)", id="too-long"),
    ],
)
def test_bad_shares_name_the_plan_and_leave_the_episode_untouched(make_shares, match: str) -> None:
    env = BudgetShiftEnv("small")
    env.reset(seed=0)
    with pytest.raises(ValueError, match=match):
        env.step_shares(make_shares(env.n_plans))
    assert env.t == 0 and env.total.sum() == 0.0
