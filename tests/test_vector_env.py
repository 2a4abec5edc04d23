"""The batched env: alignment with single envs, Gymnasium's SAME_STEP autoreset, the SB3 adapter.

Sub-env ``i`` of :class:`BudgetShiftVectorEnv` seeded with ``s_i`` must follow exactly the trajectory
of a :class:`BudgetShiftEnv` reset with ``s_i`` (and, after the autoreset, of that env's next
``reset()``): observations, rewards and per-plan infos compared for equality, not closeness.
"""

from __future__ import annotations

import dataclasses
import warnings

import gymnasium as gym
import numpy as np
import pytest
from conftest import random_actions
from gymnasium.vector import AutoresetMode
from stable_baselines3 import PPO
from stable_baselines3.common.utils import check_for_correct_spaces
from stable_baselines3.common.vec_env import VecCheckNan, VecMonitor, VecNormalize

import envs  # noqa: F401  (registers BudgetShift-v0)
from agents.vec_env import Sb3VecEnvAdapter, make_sb3_vec_env
from envs.budget_env import BudgetShiftEnv
from envs.features import observation_size
from envs.scenario import load_scenario
from envs.vector_env import BudgetShiftVectorEnv

STEP_KEYS = ("spend", "impressions", "clicks", "conversions", "deep_events", "deep_value", "budget", "shares")


def _batched_actions(n_envs: int, max_plans: int, n_steps: int, seed: int) -> np.ndarray:
    """(n_steps, n_envs, max_plans) actions, a different random sequence per sub-env."""
    return np.stack([random_actions(max_plans, n_steps, seed + i) for i in range(n_envs)], axis=1)


def _assert_follows_single_envs(venv: BudgetShiftVectorEnv, seeds: list[int], n_steps: int) -> int:
    """Step ``venv`` and one single env per seed side by side; return how many episodes ended."""
    singles = [BudgetShiftEnv(venv.scenario) for _ in seeds]
    obs, _ = venv.reset(seed=seeds)
    for i, (env, seed) in enumerate(zip(singles, seeds, strict=True)):
        np.testing.assert_array_equal(obs[i], env.reset(seed=seed)[0], err_msg=f"reset obs of sub-env {i}")
    ended = 0
    for t, actions in enumerate(_batched_actions(len(seeds), venv.max_plans, n_steps, seed=100)):
        obs, rewards, terminated, truncated, infos = venv.step(actions)
        assert not truncated.any()
        for i, env in enumerate(singles):
            where = f"sub-env {i} step {t}"
            obs_i, reward_i, terminated_i, _, info_i = env.step(actions[i])
            assert rewards[i] == reward_i, where
            assert terminated[i] == terminated_i, where
            step_info = infos["final_info"] if terminated_i else infos
            assert step_info[f"_{STEP_KEYS[0]}"][i], where
            for key in STEP_KEYS:
                np.testing.assert_array_equal(step_info[key][i], info_i[key], err_msg=f"{key} at {where}")
            assert step_info["cap_withheld"][i] == info_i["cap_withheld"], where
            if terminated_i:
                ended += 1
                np.testing.assert_array_equal(infos["final_obs"][i], obs_i, err_msg=f"final obs at {where}")
                for key, value in info_i["score"].items():
                    assert infos["final_info"]["score"][key][i] == value, f"score.{key} at {where}"
                obs_i, _ = env.reset()  # the same generator carries on, as the vector env's autoreset does
            np.testing.assert_array_equal(obs[i], obs_i, err_msg=f"observation at {where}")
    return ended


def test_make_vec_returns_the_batched_env_with_same_step_autoreset() -> None:
    venv = gym.make_vec("BudgetShift-v0", num_envs=3, vectorization_mode="vector_entry_point", scenario="small")
    assert isinstance(venv, BudgetShiftVectorEnv)
    assert venv.metadata["autoreset_mode"] == AutoresetMode.SAME_STEP
    single = BudgetShiftEnv("small")
    assert venv.single_observation_space == single.observation_space
    assert venv.single_action_space == single.action_space
    assert venv.observation_space.shape == (3, *single.observation_space.shape)
    assert venv.action_space.shape == (3, single.max_plans)
    obs, _ = venv.reset(seed=0)
    assert obs.dtype == np.float32 and obs in venv.observation_space


def test_a_step_without_ended_episodes_gives_sync_vector_envs_infos() -> None:
    """The hot path's infos: every single-env entry batched, each with an all-True mask, as
    SyncVectorEnv lays them out; truncations are False (and read-only, shared between steps)."""
    venv = BudgetShiftVectorEnv(2, scenario="small")
    sync = gym.vector.SyncVectorEnv(
        [lambda: BudgetShiftEnv("small") for _ in range(2)], autoreset_mode=AutoresetMode.SAME_STEP
    )
    venv.reset(seed=4)
    sync.reset(seed=4)
    for actions in _batched_actions(2, venv.max_plans, 3, seed=9):
        _, _, terminated, truncated, infos = venv.step(actions)
        _, _, _, sync_truncated, sync_infos = sync.step(actions)
        assert not terminated.any() and not truncated.any() and not truncated.flags.writeable
        assert sorted(infos) == sorted(sync_infos)
        for key, value in sync_infos.items():
            if key.startswith("_"):
                assert infos[key].all(), key
            else:
                np.testing.assert_array_equal(infos[key], value, err_msg=key)


def test_sub_envs_follow_single_envs_through_two_episodes() -> None:
    # small: 48 steps; 80 steps cover a whole episode, the autoreset and most of the next one.
    venv = BudgetShiftVectorEnv(3, scenario="small")
    assert _assert_follows_single_envs(venv, seeds=[3, 11, 42], n_steps=80) == 3


def test_sub_envs_follow_single_envs_on_default() -> None:
    venv = BudgetShiftVectorEnv(3, scenario="default")
    _assert_follows_single_envs(venv, seeds=[0, 1, 7], n_steps=40)


def test_sub_envs_follow_single_envs_under_share_limits() -> None:
    # The projection onto min/max share and max change runs row by row over the batch.
    scenario = dataclasses.replace(load_scenario("small"), min_share=0.05, max_share=0.4, max_change=0.08)
    venv = BudgetShiftVectorEnv(4, scenario=scenario)
    _assert_follows_single_envs(venv, seeds=[5, 6, 7, 8], n_steps=30)


def test_reference_backend_gives_the_same_batch() -> None:
    fast = BudgetShiftVectorEnv(2, scenario="small")
    slow = BudgetShiftVectorEnv(2, scenario="small", backend="reference")
    np.testing.assert_array_equal(fast.reset(seed=9)[0], slow.reset(seed=9)[0])
    for actions in _batched_actions(2, fast.max_plans, 12, seed=3):
        obs_fast, reward_fast, *_ = fast.step(actions)
        obs_slow, reward_slow, *_ = slow.step(actions)
        np.testing.assert_allclose(reward_fast, reward_slow, rtol=1e-9)
        np.testing.assert_allclose(obs_fast, obs_slow, rtol=1e-6, atol=1e-6)
    for i in range(2):
        np.testing.assert_array_equal(fast.sim.pending(i), slow.sim.pending(i))


def test_same_step_autoreset_returns_the_next_episode_and_keeps_the_last_observation() -> None:
    venv = BudgetShiftVectorEnv(2, scenario="small")
    venv.reset(seed=[1, 2])
    actions = np.zeros((2, venv.max_plans), dtype=np.float32)
    for _ in range(venv.horizon - 1):
        _, _, terminated, _, infos = venv.step(actions)
        assert not terminated.any() and "final_obs" not in infos
    before = venv.sim.t.copy()
    obs, _, terminated, truncated, infos = venv.step(actions)
    assert before.tolist() == [venv.horizon - 1] * 2
    assert terminated.all() and not truncated.any()
    assert infos["_final_obs"].all() and infos["_final_info"].all()
    assert venv.sim.t.tolist() == [0, 0], "the ended sub-envs start their next episode in the same step"
    for i in range(2):
        assert infos["final_obs"][i].shape == venv.single_observation_space.shape
        assert not np.array_equal(infos["final_obs"][i], obs[i])
        assert np.isfinite(infos["final_info"]["score"]["score"][i])
    assert infos["_n_plans"].all() and (infos["n_plans"] == venv.n_plans).all()
    assert not infos["_spend"].any(), "the ended step's per-plan info moves to final_info"
    # The next step is the first of the new episodes, and no longer reports a final observation.
    _, _, terminated, _, infos = venv.step(actions)
    assert not terminated.any() and "final_obs" not in infos and venv.sim.t.tolist() == [1, 1]


def test_reset_mask_restarts_only_the_masked_sub_envs() -> None:
    venv = BudgetShiftVectorEnv(3, scenario="small")
    venv.reset(seed=[1, 2, 3])
    actions = np.zeros((3, venv.max_plans), dtype=np.float32)
    for _ in range(5):
        venv.step(actions)
    kept = venv.sim.observe()
    obs, infos = venv.reset(seed=[None, 20, None], options={"reset_mask": np.array([False, True, False])})
    assert venv.sim.t.tolist() == [5, 0, 5]
    np.testing.assert_array_equal(obs[[0, 2]], kept[[0, 2]])
    np.testing.assert_array_equal(obs[1], BudgetShiftEnv("small").reset(seed=20)[0])
    assert infos["_n_plans"].tolist() == [False, True, False]


@pytest.mark.parametrize(
    ("make_actions", "match"),
    [
        pytest.param(lambda n, p: np.zeros((n, p + 1), dtype=np.float32), r"shape", id="too-wide"),
        pytest.param(lambda n, p: np.zeros((n + 1, p), dtype=np.float32), r"shape \(2, 8\)", id="too-many"),
        pytest.param(lambda n, p: np.zeros(p, dtype=np.float32), r"shape \(2, 8\)", id="unbatched"),
        pytest.param(lambda n, p: np.where(np.eye(n, p) > 0, np.nan, 0.0), r"finite.*\(1, 1\)", id="nan"),
        pytest.param(lambda n, p: np.where(np.eye(n, p) > 0, 1.5, 0.0), r"\[-1, 1\].*\(0, 0\)", id="above-1"),
    ],
)
def test_bad_actions_raise_a_clear_value_error(make_actions, match: str) -> None:
    venv = BudgetShiftVectorEnv(2, scenario="small")
    venv.reset(seed=0)
    with pytest.raises(ValueError, match=match):
        venv.step(make_actions(2, venv.max_plans))
    assert venv.sim.t.tolist() == [0, 0], "a rejected action leaves the episodes untouched"


def test_step_before_reset_raises() -> None:
    venv = BudgetShiftVectorEnv(2, scenario="small")
    with pytest.raises(RuntimeError, match="reset"):
        venv.step(np.zeros((2, venv.max_plans), dtype=np.float32))


# -------------------------------------------------------------------------------------------------
# Stable-Baselines3 adapter
# -------------------------------------------------------------------------------------------------
def test_sb3_adapter_follows_the_vecenv_api_and_marks_episode_ends() -> None:
    vec = VecCheckNan(make_sb3_vec_env("small", n_envs=3, seed=4), raise_exception=True)
    assert isinstance(vec.unwrapped, Sb3VecEnvAdapter) and vec.num_envs == 3
    check_for_correct_spaces(vec, BudgetShiftEnv("small").observation_space, BudgetShiftEnv("small").action_space)
    obs = vec.reset()
    assert obs.shape == (3, *vec.observation_space.shape) and obs.dtype == np.float32
    assert [info["n_plans"] for info in vec.unwrapped.reset_infos] == [6, 6, 6]
    horizon = vec.unwrapped.venv.horizon
    returns = np.zeros(3)
    for t, actions in enumerate(_batched_actions(3, 8, horizon, seed=0)):
        obs, rewards, dones, infos = vec.step(actions)
        assert obs.shape == (3, observation_size(8)) and rewards.shape == (3,) and rewards.dtype == np.float32
        assert dones.shape == (3,) and dones.dtype == np.bool_
        assert isinstance(infos, list) and len(infos) == 3
        assert all(info["TimeLimit.truncated"] is False for info in infos)
        returns += rewards
        if t < horizon - 1:
            assert not dones.any() and all("terminal_observation" not in info for info in infos)
    assert dones.all()
    for i, info in enumerate(infos):
        terminal = info["terminal_observation"]
        assert terminal.shape == (observation_size(8),) and terminal in vec.observation_space
        assert not np.array_equal(terminal, obs[i]), "the returned observation starts the next episode"
        # An episode's return is its score (float32 rewards: summed up to rounding).
        assert returns[i] == pytest.approx(info["score"]["score"], rel=1e-5)


def test_sb3_adapter_seeds_like_make_vec_env() -> None:
    # seed(s) then reset(): sub-env i follows a single env reset with s + i; the same seed, the same run.
    runs = []
    for _ in range(2):
        vec = make_sb3_vec_env("small", n_envs=2, seed=30)
        first = vec.reset()
        runs.append([first] + [vec.step(a)[0] for a in _batched_actions(2, 8, 5, seed=1)])
    for a, b in zip(*runs, strict=True):
        np.testing.assert_array_equal(a, b)
    for i in range(2):
        np.testing.assert_array_equal(runs[0][0][i], BudgetShiftEnv("small").reset(seed=30 + i)[0])
    other = make_sb3_vec_env("small", n_envs=2, seed=31).reset()
    assert not np.array_equal(other[0], runs[0][0][0])


def test_sb3_wrappers_record_episodes_whose_return_is_the_score() -> None:
    vec = VecNormalize(VecMonitor(make_sb3_vec_env("small", n_envs=2, seed=0)))
    vec.reset()
    horizon = vec.unwrapped.venv.horizon
    for actions in _batched_actions(2, 8, horizon, seed=2):
        _, _, dones, infos = vec.step(actions)
    assert dones.all()
    for info in infos:
        assert info["episode"]["l"] == horizon
        assert info["episode"]["r"] == pytest.approx(info["score"]["score"], rel=1e-5)
        assert np.isfinite(info["terminal_observation"]).all()


def test_sb3_adapter_passes_per_sub_env_methods_through() -> None:
    vec = make_sb3_vec_env("small", n_envs=2, seed=0)
    vec.reset()
    stats = vec.env_method("reporting_stats", indices=[1])
    assert len(stats) == 1 and stats[0]["target_cpa"].shape == (6,)
    assert vec.get_attr("horizon") == [48, 48]
    assert vec.env_is_wrapped(gym.Wrapper) == [False, False]
    with pytest.raises(AttributeError):
        vec.env_method("render")


def test_ppo_trains_a_few_hundred_steps_on_the_adapter() -> None:
    vec = VecMonitor(make_sb3_vec_env("small", n_envs=4, seed=0))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no SB3 warning about the VecEnv's API or spaces
        model = PPO("MlpPolicy", vec, n_steps=64, batch_size=64, n_epochs=1, seed=0, device="cpu")
        model.learn(total_timesteps=256)
    assert model.num_timesteps >= 256
    assert len(model.ep_info_buffer) == 4, "each sub-env finished its 48-step episode"
    obs = vec.reset()
    action, _ = model.predict(obs, deterministic=True)
    assert action.shape == (4, 8)


# -------------------------------------------------------------------------------------------------
# The benchmark script (figures are not checked: only that it runs and writes what the README shows)
# -------------------------------------------------------------------------------------------------
def test_bench_script_writes_json_and_markdown(tmp_path) -> None:
    from experiments import bench

    out, table = tmp_path / "bench.json", tmp_path / "benchmarks.md"
    results = bench.main(
        [
            "--quick",
            "--seconds",
            "0.01",
            "--sections",
            "env,vector",
            "--presets",
            "small",
            "--out",
            str(out),
            "--markdown",
            str(table),
        ]
    )
    assert out.exists() and "Batched env against SyncVectorEnv" in table.read_text()
    assert set(results["vector"]) == {"1", "8", "64"}
    assert results["env"]["small"]["numba_over_reference"] > 0
    assert "batched_over_sync_64" in results["targets"]


def test_bench_measures_a_second_checkout_side_by_side(tmp_path) -> None:
    from experiments import bench

    # This checkout against itself: both processes must import their own checkout's envs.
    result = bench.bench_baseline(0.2, bench.ROOT, rounds=1)
    assert result["ratio"] > 0 and len(result["runs"]["baseline"]) == 1
    assert "Side by side" in "\n".join(bench._baseline_paragraph(result))
    with pytest.raises(SystemExit, match="not a checkout of this project"):
        bench.bench_baseline(0.2, tmp_path)
