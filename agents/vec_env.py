"""The Stable-Baselines3 ``VecEnv`` adapter of the native batched env.

:class:`Sb3VecEnvAdapter` wraps :class:`envs.vector_env.BudgetShiftVectorEnv` (every copy in one
kernel call) as an SB3 ``VecEnv``; it lives with the agents so that the simulator never imports a
learning library. The vector env's ``SAME_STEP`` autoreset is SB3's convention, so the adapter needs
no lookahead. Training code builds it with :func:`make_sb3_vec_env`::

    venv = VecMonitor(make_sb3_vec_env("default", n_envs=64, seed=0))
    model = PPO("MlpPolicy", VecNormalize(venv), ...)
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import gymnasium as gym
import numpy as np
from stable_baselines3.common.vec_env.base_vec_env import VecEnv, VecEnvIndices, VecEnvObs, VecEnvStepReturn

from envs.scenario import Scenario
from envs.vector_env import BudgetShiftVectorEnv


class Sb3VecEnvAdapter(VecEnv):
    """A :class:`BudgetShiftVectorEnv` as a Stable-Baselines3 ``VecEnv`` (what ``DummyVecEnv`` of
    single envs would give, in one kernel call per step).

    ``step_wait`` returns ``(obs, rewards float32, dones, infos)`` where ``infos`` is a list of
    ``num_envs`` dicts: ``TimeLimit.truncated`` always, and on a sub-env's last step
    ``terminal_observation`` and ``score`` (the episode's :class:`envs.objective.ScoreParts` as a
    dict); the returned observation is then the first of its next episode. ``seed(s)`` seeds the
    next ``reset()`` (sub-env ``i`` gets ``s + i``); ``reset_infos[i]`` holds ``n_plans`` and
    ``active``. Per-plan step details are left out of the infos (training does not read them);
    step the vector env itself to get them.
    """

    def __init__(self, venv: BudgetShiftVectorEnv) -> None:
        self.venv = venv
        self._actions: np.ndarray | None = None
        super().__init__(venv.num_envs, venv.single_observation_space, venv.single_action_space)

    def reset(self) -> VecEnvObs:
        options = self._options[0] if all(o == self._options[0] for o in self._options) else None
        if options is None:
            raise ValueError("per-sub-env reset options differ; BudgetShiftVectorEnv takes one options dict")
        obs, infos = self.venv.reset(seed=list(self._seeds), options=options or None)
        self.reset_infos = [
            {"n_plans": int(infos["n_plans"][i]), "active": infos["active"][i]} for i in range(self.num_envs)
        ]
        self._reset_seeds()
        self._reset_options()
        return obs

    def step_async(self, actions: np.ndarray) -> None:
        self._actions = actions

    def step_wait(self) -> VecEnvStepReturn:
        if self._actions is None:
            raise RuntimeError("step_async() must be called before step_wait()")
        obs, rewards, terminated, truncated, infos = self.venv.step(self._actions)
        self._actions = None
        dones = terminated | truncated
        info_list: list[dict[str, Any]] = [{"TimeLimit.truncated": False} for _ in range(self.num_envs)]
        if dones.any():
            final_obs = infos["final_obs"]
            score = infos["final_info"]["score"]
            for i in np.flatnonzero(dones):
                info = info_list[i]
                info["TimeLimit.truncated"] = bool(truncated[i] and not terminated[i])
                info["terminal_observation"] = final_obs[i]
                info["score"] = {k: float(v[i]) for k, v in score.items() if not k.startswith("_")}
                self.reset_infos[i] = {"n_plans": self.venv.n_plans, "active": infos["active"][i]}
        return obs, rewards.astype(np.float32), dones, info_list

    def close(self) -> None:
        self.venv.close()

    def _indices(self, indices: VecEnvIndices) -> list[int]:
        if indices is None:
            return list(range(self.num_envs))
        if isinstance(indices, int | np.integer):
            return [int(indices)]
        return [int(i) for i in indices]

    def get_attr(self, attr_name: str, indices: VecEnvIndices = None) -> list[Any]:
        """An attribute of the vector env (shared by every sub-env), once per index."""
        value = getattr(self.venv, attr_name)
        return [value for _ in self._indices(indices)]

    def set_attr(self, attr_name: str, value: Any, indices: VecEnvIndices = None) -> None:
        if indices is not None and sorted(self._indices(indices)) != list(range(self.num_envs)):
            raise ValueError(f"set_attr({attr_name!r}) applies to every sub-env of a batched env, not to {indices}")
        setattr(self.venv, attr_name, value)

    def env_method(
        self, method_name: str, *method_args: Any, indices: VecEnvIndices = None, **method_kwargs: Any
    ) -> list[Any]:
        """Per-sub-env methods of the vector env (``reporting_stats``, ``clock``, ``active_mask``)."""
        if method_name not in ("reporting_stats", "clock", "active_mask"):
            raise AttributeError(f"env_method supports reporting_stats, clock and active_mask, not {method_name!r}")
        method = getattr(self.venv, method_name)
        return [method(*method_args, env_index=i, **method_kwargs) for i in self._indices(indices)]

    def env_is_wrapped(self, wrapper_class: type[gym.Wrapper], indices: VecEnvIndices = None) -> list[bool]:
        return [False for _ in self._indices(indices)]


def make_sb3_vec_env(
    scenario: str | Mapping[str, Any] | Scenario = "default",
    n_envs: int = 8,
    seed: int | None = None,
    backend: str = "numba",
    **env_kwargs: Any,
) -> Sb3VecEnvAdapter:
    """An SB3 ``VecEnv`` of ``n_envs`` batched copies of ``BudgetShift-v0``; ``seed`` seeds the first
    ``reset()`` (sub-env ``i`` gets ``seed + i``, as ``make_vec_env`` does)."""
    vec = Sb3VecEnvAdapter(BudgetShiftVectorEnv(n_envs, scenario=scenario, backend=backend, **env_kwargs))
    if seed is not None:
        vec.seed(seed)
    return vec
