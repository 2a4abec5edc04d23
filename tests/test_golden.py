"""Golden numbers: the same seed gives the same trajectories and metrics as the recorded version.

Refactors must not change behaviour. ``tests/golden/golden.json`` holds, for a few presets, the
SHA-256 of a seeded random-action rollout (every observation, reward and info array, bit for bit),
the batched env's returns, and the score parts of each heuristic allocator's episode. A change of
the simulator's *model* (a new platform behaviour, a recalibrated preset) changes them on purpose:
regenerate with ``python tests/test_golden.py --write`` and say why in the commit.

The drivers below use only the public API (``gym.make``, ``step_shares``, ``make_allocator``), so
the test survives moving code around.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
from conftest import random_actions

import envs  # noqa: F401  (registers BudgetShift-v0)
from agents.registry import make_allocator

GOLDEN = Path(__file__).resolve().parent / "golden" / "golden.json"
ROLLOUT_PRESETS = ("small", "default", "credit", "insurance", "securities", "default_shock")
ALLOCATOR_PRESETS = ("small", "default")
ALLOCATORS = ("static", "uniform", "proportional", "cpa_guard", "boost", "thompson", "rank", "oracle")
INFO_ARRAYS = ("spend", "impressions", "clicks", "conversions", "deep_events", "deep_value", "budget", "shares")


def rollout_digest(preset: str, seed: int = 3, action_seed: int = 7) -> dict[str, object]:
    env = gym.make("BudgetShift-v0", scenario=preset).unwrapped
    obs, _ = env.reset(seed=seed)
    digest = hashlib.sha256(np.ascontiguousarray(obs).tobytes())
    total = 0.0
    for action in random_actions(env.max_plans, env.horizon, action_seed):
        obs, reward, terminated, truncated, info = env.step(action)
        total += reward
        digest.update(np.ascontiguousarray(obs).tobytes())
        digest.update(np.float64(reward).tobytes())
        for key in INFO_ARRAYS:
            digest.update(np.ascontiguousarray(info[key], dtype=np.float64).tobytes())
        if terminated or truncated:
            break
    return {"sha256": digest.hexdigest(), "return": total, "score": info["score"]}


def vector_returns(preset: str = "small", num_envs: int = 3, seed: int = 5) -> list[float]:
    vec = gym.make_vec("BudgetShift-v0", num_envs=num_envs, vectorization_mode="vector_entry_point", scenario=preset)
    vec.reset(seed=seed)
    horizon = vec.unwrapped.horizon if hasattr(vec.unwrapped, "horizon") else None
    actions = random_actions(vec.single_action_space.shape[0], 2 * (horizon or 48), 11)
    returns = np.zeros(num_envs)
    finished: list[float] = []
    for action in actions:
        _, reward, terminated, truncated, _ = vec.step(
            np.tile(action, (num_envs, 1)) * np.linspace(0.2, 1.0, num_envs)[:, None]
        )
        returns += reward
        for i in np.flatnonzero(terminated | truncated):
            finished.append(float(returns[i]))
            returns[i] = 0.0
    vec.close()
    return finished


def allocator_score(preset: str, agent: str, seed: int = 2) -> dict[str, float]:
    env = gym.make("BudgetShift-v0", scenario=preset).unwrapped
    allocator = make_allocator({"name": agent, "kind": "heuristic"})
    env.reset(seed=seed)
    allocator.reset(env.scenario, env.portfolio, seed=seed + 1000)
    while True:
        shares = allocator.allocate(env.reporting_stats(), env.clock(), env.active_mask())
        _, _, terminated, _, info = env.step_shares(shares)
        if terminated:
            return info["score"]


def compute() -> dict[str, object]:
    return {
        "rollouts": {p: rollout_digest(p) for p in ROLLOUT_PRESETS},
        "vector_small": vector_returns(),
        "allocators": {p: {a: allocator_score(p, a) for a in ALLOCATORS} for p in ALLOCATOR_PRESETS},
    }


@pytest.fixture(scope="module")
def golden() -> dict[str, object]:
    return json.loads(GOLDEN.read_text())


@pytest.mark.parametrize("preset", ROLLOUT_PRESETS)
def test_rollout_matches_golden(golden, preset: str) -> None:
    got = rollout_digest(preset)
    want = golden["rollouts"][preset]
    assert got["score"] == pytest.approx(want["score"], rel=1e-12), f"{preset}: score parts changed"
    assert got["sha256"] == want["sha256"], f"{preset}: trajectory bits changed (same score parts)"


def test_vector_env_returns_match_golden(golden) -> None:
    assert vector_returns() == pytest.approx(golden["vector_small"], rel=1e-12)


@pytest.mark.parametrize("preset", ALLOCATOR_PRESETS)
@pytest.mark.parametrize("agent", ALLOCATORS)
def test_allocator_score_matches_golden(golden, preset: str, agent: str) -> None:
    assert allocator_score(preset, agent) == pytest.approx(golden["allocators"][preset][agent], rel=1e-12)


if __name__ == "__main__":
    if sys.argv[1:] != ["--write"]:
        sys.exit("usage: python tests/test_golden.py --write   (regenerates tests/golden/golden.json)")
    GOLDEN.parent.mkdir(exist_ok=True)
    GOLDEN.write_text(json.dumps(compute(), indent=1, sort_keys=True) + "\n")
    print(f"wrote {GOLDEN}")
