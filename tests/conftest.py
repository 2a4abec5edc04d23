"""Shared helpers for the simulator's tests: preset names, seeded random actions and rollouts.

A rollout is a list of :class:`Transition` (what ``env.step`` returned, plus the mask of plans that
could receive budget when the step was decided), so tests compare whole trajectories at once. Test
modules import these helpers (``from conftest import rollout``); pytest puts ``tests/`` on the path.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from envs.budget_env import BudgetShiftEnv
from envs.scenario import list_presets

PRESETS: list[str] = list_presets()
#: Presets quick enough to roll out whole episodes in many tests (``large`` is ~50 steps/s).
QUICK_PRESETS: tuple[str, ...] = ("small", "default")


@dataclass
class Transition:
    active: np.ndarray  # (n_plans,) bool, plans launched when the step was decided
    action: np.ndarray  # (max_plans,) float32
    obs: np.ndarray  # observation after the step
    reward: float
    terminated: bool
    truncated: bool
    info: dict[str, Any]


def random_actions(max_plans: int, n_steps: int, seed: int) -> np.ndarray:
    """(n_steps, max_plans) float32 actions uniform in [-1, 1], corners included now and then."""
    rng = np.random.default_rng(seed)
    actions = rng.uniform(-1.0, 1.0, size=(n_steps, max_plans))
    # Saturated logits are where softmax and pacing overflow or starve; make sure they occur.
    corners = rng.random((n_steps, max_plans)) < 0.1
    actions[corners] = rng.choice([-1.0, 1.0], size=int(corners.sum()))
    return actions.astype(np.float32)


def rollout(
    env: BudgetShiftEnv, seed: int, n_steps: int | None = None, action_seed: int = 0
) -> tuple[np.ndarray, list[Transition]]:
    """Reset ``env`` with ``seed`` and step it with seeded random actions.

    :param n_steps: steps to take (default: the whole episode).
    :return: the first observation and the transitions.
    """
    obs0, _ = env.reset(seed=seed)
    n_steps = env.horizon if n_steps is None else n_steps
    transitions = []
    for action in random_actions(env.max_plans, n_steps, action_seed):
        active = env.active_mask().copy()
        obs, reward, terminated, truncated, info = env.step(action)
        transitions.append(Transition(active, action, obs, reward, terminated, truncated, info))
        if terminated or truncated:
            break
    return obs0, transitions
