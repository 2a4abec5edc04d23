"""The package's layout rules: which way imports point, and the env's swappable pieces.

Arrows point one way (scenario -> simulation -> features -> allocators -> experiments): the simulator
never loads a learning library or a config framework (``gym.make_vec`` once loaded torch), the
agents never import an entry point's module, and the step kernel's positional arguments are the
fields of :class:`envs.kernels.KernelInputs`, so the one place that unpacks them stays right. The
``generator`` and ``objective`` constructor arguments (the jumanji-style hooks Hydra swaps) reach
the episode.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import json
import subprocess
import sys
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest

import envs  # noqa: F401  (registers BudgetShift-v0)
from envs.kernels import KernelInputs, step_batch_kernel, step_kernel
from envs.objective import DeepValueScore
from envs.reference import step_reference
from envs.scenario import PortfolioGenerator, load_scenario

ROOT = Path(__file__).resolve().parent.parent
LEARNING_STACK = ("torch", "stable_baselines3", "sb3_contrib", "hydra", "omegaconf")

SIMULATOR_ONLY = """
import json, sys
import gymnasium as gym
import yaml
import envs
import envs.jit
from envs.scenario import list_presets, preset_path

envs.jit.warm_up()
specs = list_presets() + [yaml.safe_load(preset_path("small").read_text())]
for spec in specs:
    env = gym.make("BudgetShift-v0", scenario=spec)
    env.reset(seed=0)
    env.step(env.action_space.sample())
vec = gym.make_vec("BudgetShift-v0", num_envs=2, vectorization_mode="vector_entry_point", scenario="small")
vec.reset(seed=0)
vec.step(vec.action_space.sample())
print(json.dumps(sorted(sys.modules)))
"""


def test_simulator_loads_no_learning_library() -> None:
    done = subprocess.run([sys.executable, "-c", SIMULATOR_ONLY], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    loaded = {name.split(".")[0] for name in json.loads(done.stdout)}
    assert "numba" in loaded, "the check ran without the kernels"
    assert not loaded & set(LEARNING_STACK), sorted(loaded & set(LEARNING_STACK))


def _imported_packages(path: Path) -> set[str]:
    """Top-level packages a module imports anywhere (function-level imports included)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize(("package", "forbidden"), [("envs", {"agents", "experiments"}), ("agents", {"experiments"})])
def test_imports_point_one_way(package: str, forbidden: set[str]) -> None:
    offenders = {
        path.name: sorted(_imported_packages(path) & forbidden) for path in sorted((ROOT / package).glob("*.py"))
    }
    offenders = {name: imports for name, imports in offenders.items() if imports}
    assert not offenders, f"{package}/ modules import {offenders}"


def test_kernel_inputs_are_the_kernels_arguments_in_order() -> None:
    expected = ["t", *KernelInputs._fields, "step_budget", "out"]
    for fn in (step_kernel.py_func, step_reference):
        assert list(inspect.signature(fn).parameters) == expected, fn.__name__
    assert list(inspect.signature(step_batch_kernel.py_func).parameters) == [*expected, "done"]


def test_custom_generator_draws_the_episode() -> None:
    drawn = []

    def dear_plans(scenario, rng):
        portfolio = PortfolioGenerator()(scenario, rng)
        portfolio.target_cpa = 2.0 * portfolio.target_cpa
        drawn.append(portfolio)
        return portfolio

    default = gym.make("BudgetShift-v0", scenario="small").unwrapped
    default.reset(seed=4)
    env = gym.make("BudgetShift-v0", scenario="small", generator=dear_plans).unwrapped
    env.reset(seed=4)
    assert env.portfolio is drawn[-1]
    want = 2.0 * default.reporting_stats()["target_cpa"]
    np.testing.assert_array_equal(env.reporting_stats()["target_cpa"], want)

    vec = gym.make_vec(
        "BudgetShift-v0", num_envs=2, vectorization_mode="vector_entry_point", scenario="small", generator=dear_plans
    )
    vec.reset(seed=[4, 5])
    np.testing.assert_array_equal(vec.unwrapped.reporting_stats(0)["target_cpa"], want)


def _episode(env) -> tuple[float, dict[str, float]]:
    env.reset(seed=1)
    total = 0.0
    while True:
        _, reward, terminated, _, info = env.step_shares(env.active_mask().astype(np.float64))
        total += reward
        if terminated:
            return total, info["score"]


def test_custom_objective_sets_the_reward() -> None:
    # A target CPA far below what the plans achieve, so the penalty (and its exponent) bites.
    scenario = dataclasses.replace(load_scenario("small"), cpa_target=1.0)
    default_return, default_score = _episode(gym.make("BudgetShift-v0", scenario=scenario).unwrapped)
    objective = DeepValueScore(beta=0.5)
    env = gym.make("BudgetShift-v0", scenario=scenario, objective=objective).unwrapped
    assert env.objective is objective
    got_return, score = _episode(env)

    assert score["value"] == default_score["value"] > 0, "same episode: only the objective differs"
    assert 0.0 < default_score["penalty"] < score["penalty"] < 1.0
    assert score["penalty"] == pytest.approx((score["cpa_target"] / score["cpa"]) ** 0.5, rel=1e-12)
    assert default_score["penalty"] == pytest.approx((1.0 / default_score["cpa"]) ** scenario.beta, rel=1e-12)
    assert got_return == pytest.approx(score["score"], rel=1e-9)
    assert default_return == pytest.approx(default_score["score"], rel=1e-9)
