"""Stable-Baselines3 learners from ``conf/agent/<name>.yaml``: vectorised envs, normalisation, algorithm.

The names of a training run folder's files (:data:`RUN_CONFIG`, :data:`RUN_MODELS`) live here too:
``experiments.train`` writes them, :mod:`agents.trained` and :mod:`agents.export` read them.

An agent config of ``kind: sb3`` is data in SB3's own words (rl-baselines3-zoo style)::

    algo: PPO               # PPO | A2C | SAC | TD3 | RecurrentPPO
    policy: set             # mlp (SB3's flat MLP) | set (agents.policies, permutation-invariant)
    n_envs: 8               # training envs stepped together
    hyperparams: {...}      # keyword arguments of the algorithm (learning_rate, n_steps, gamma, ...)
    policy_kwargs: {...}    # keyword arguments of the policy (net_arch, activation_fn, ...)
    normalize: {...}        # keyword arguments of VecNormalize (norm_obs, norm_reward, clip_obs, gamma)

Strings stand in for what YAML cannot hold: ``activation_fn: tanh|relu|elu|leaky_relu``, a linear
schedule ``lin_3e-4`` for ``learning_rate``/``clip_range`` (rl-zoo's notation), and for off-policy
algorithms ``action_noise: {type: normal|ornstein_uhlenbeck, sigma: 0.1}``.

Observation normalisation: ``policy: mlp`` uses SB3's :class:`VecNormalize` as is (statistics per
observation entry). ``policy: set`` swaps its running statistics for
:class:`PlanPooledRunningMeanStd`: one mean and variance per plan *feature*, pooled over every active
plan of every slot, tiled over the slots. The normalised observation then treats all plans alike
(the set policy's permutation invariance survives normalisation), the statistics extend to any
number of plans (:meth:`PlanPooledRunningMeanStd.stats_for`), and the ``active`` flag stays 0/1 for
the policy's mask. VecNormalize's file format, ``normalize_obs`` and its ``mean``/``var`` arrays are
unchanged, so loaders and the ONNX export read it like any VecNormalize.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
from sb3_contrib import RecurrentPPO
from stable_baselines3 import A2C, PPO, SAC, TD3
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.noise import NormalActionNoise, OrnsteinUhlenbeckActionNoise
from stable_baselines3.common.running_mean_std import RunningMeanStd
from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv, VecEnv, VecMonitor, VecNormalize
from torch import nn

from agents.policies import ACTIVE, SET_POLICIES
from agents.vec_env import make_sb3_vec_env
from envs.budget_env import BudgetShiftEnv
from envs.features import N_GLOBAL_FEATURES, N_PLAN_FEATURES, observation_size
from envs.scenario import Scenario

#: Every algorithm an agent config's ``algo`` may name.
ALGOS: dict[str, type[BaseAlgorithm]] = {"PPO": PPO, "A2C": A2C, "SAC": SAC, "TD3": TD3, "RecurrentPPO": RecurrentPPO}
OFF_POLICY = ("SAC", "TD3")
POLICIES = ("mlp", "set")
ACTIVATIONS: dict[str, type[nn.Module]] = {"tanh": nn.Tanh, "relu": nn.ReLU, "elu": nn.ELU, "leaky_relu": nn.LeakyReLU}
VEC_ENVS = {"native": None, "dummy": DummyVecEnv, "subproc": SubprocVecEnv}
AGENT_KEYS = ("name", "kind", "algo", "policy", "n_envs", "hyperparams", "policy_kwargs", "normalize")

# A training run folder (written by experiments.train, read by agents.trained and agents.export).
#: The resolved config of the run.
RUN_CONFIG = "config.yaml"
#: ``which`` model -> (learner file, its VecNormalize statistics): ``final`` at the end of training,
#: ``best`` at the best periodic evaluation (EvalCallback's ``best_model.zip``).
RUN_MODELS = {"final": ("model.zip", "vecnormalize.pkl"), "best": ("best_model.zip", "best_vecnormalize.pkl")}


class AgentSpecError(ValueError):
    """A ``kind: sb3`` agent config that no learner can be built from."""


# -------------------------------------------------------------------------------------------------
# Normalisation
# -------------------------------------------------------------------------------------------------


class PlanPooledRunningMeanStd(RunningMeanStd):
    """Running observation statistics shared by all plans: one mean/variance per plan feature.

    ``mean``/``var`` have the full observation's shape (what :class:`VecNormalize` reads): the
    pooled plan statistics tiled over ``max_plans`` slots, then the global features' own. Only
    active plans (``active`` flag 1) count; the flag itself is left unscaled (mean 0, variance 1).
    """

    def __init__(self, max_plans: int, epsilon: float = 1e-4) -> None:
        super().__init__(epsilon=epsilon, shape=(observation_size(max_plans),))
        self.max_plans = max_plans
        self.plan_rms = RunningMeanStd(epsilon=epsilon, shape=(N_PLAN_FEATURES,))
        self.global_rms = RunningMeanStd(epsilon=epsilon, shape=(N_GLOBAL_FEATURES,))
        self._tile()

    def stats_for(self, max_plans: int) -> tuple[np.ndarray, np.ndarray]:
        """``(mean, var)`` of shape ``(observation_size(max_plans),)`` for a layout of any width."""
        plan_mean, plan_var = self.plan_rms.mean.copy(), self.plan_rms.var.copy()
        plan_mean[ACTIVE], plan_var[ACTIVE] = 0.0, 1.0
        mean = np.concatenate([np.tile(plan_mean, max_plans), self.global_rms.mean])
        var = np.concatenate([np.tile(plan_var, max_plans), self.global_rms.var])
        return mean, var

    def _tile(self) -> None:
        self.mean, self.var = self.stats_for(self.max_plans)
        self.count = self.global_rms.count

    def update(self, arr: np.ndarray) -> None:
        arr = np.asarray(arr, dtype=np.float64).reshape(-1, self.mean.shape[0])
        rows = arr[:, :-N_GLOBAL_FEATURES].reshape(-1, N_PLAN_FEATURES)
        rows = rows[rows[:, ACTIVE] > 0.5]
        if len(rows):
            self.plan_rms.update(rows)
        self.global_rms.update(arr[:, -N_GLOBAL_FEATURES:])
        self._tile()

    def combine(self, other: RunningMeanStd) -> None:
        if not isinstance(other, PlanPooledRunningMeanStd):
            raise TypeError(f"cannot combine PlanPooledRunningMeanStd with {type(other).__name__}")
        self.plan_rms.combine(other.plan_rms)
        self.global_rms.combine(other.global_rms)
        self._tile()

    def copy(self) -> PlanPooledRunningMeanStd:
        return copy.deepcopy(self)


def build_vec_normalize(venv: VecEnv, agent: Mapping[str, Any], max_plans: int, training: bool = True) -> VecNormalize:
    """Wrap ``venv`` in VecNormalize with the agent's ``normalize`` kwargs (pooled stats for ``policy: set``).

    Evaluation envs (``training=False``) never normalise rewards, so they report raw scores.
    """
    kwargs = dict(agent.get("normalize") or {})
    if not training:
        kwargs["norm_reward"] = False
    vec_normalize = VecNormalize(venv, training=training, **kwargs)
    if agent["policy"] == "set":
        vec_normalize.obs_rms = PlanPooledRunningMeanStd(max_plans)
    return vec_normalize


# -------------------------------------------------------------------------------------------------
# Environments
# -------------------------------------------------------------------------------------------------


def make_envs(scenario: Scenario, n_envs: int, seed: int, vec_env: str = "native") -> VecEnv:
    """``n_envs`` copies of the env with episode statistics; copy ``i`` is first reset with ``seed + i``.

    ``native``: :class:`envs.vector_env.BudgetShiftVectorEnv` (every copy in one kernel call) behind
    its SB3 adapter; ``dummy``/``subproc``: SB3's vector envs of single Monitor-wrapped envs. All three
    give the same episodes for the same seed.
    """
    if vec_env not in VEC_ENVS:
        raise AgentSpecError(f"vec_env must be one of {list(VEC_ENVS)}, got {vec_env!r}")
    if vec_env == "native":
        return VecMonitor(make_sb3_vec_env(scenario, n_envs=n_envs, seed=seed))
    kwargs = {"start_method": "fork"} if vec_env == "subproc" else None
    return make_vec_env(
        BudgetShiftEnv,
        n_envs=n_envs,
        seed=seed,
        env_kwargs={"scenario": scenario},
        vec_env_cls=VEC_ENVS[vec_env],
        vec_env_kwargs=kwargs,
    )


# -------------------------------------------------------------------------------------------------
# Algorithm
# -------------------------------------------------------------------------------------------------


def check_agent(agent: Mapping[str, Any]) -> None:
    """Raise :class:`AgentSpecError` naming the field if ``agent`` is not a usable ``kind: sb3`` config."""
    unknown = sorted(set(agent) - set(AGENT_KEYS))
    if unknown:
        raise AgentSpecError(f"unknown field agent.{unknown[0]}; expected one of {list(AGENT_KEYS)}")
    if agent.get("kind") != "sb3":
        raise AgentSpecError(
            f"agent.kind must be 'sb3' to train, got {agent.get('kind')!r} (agent {agent.get('name')!r})"
        )
    if agent.get("algo") not in ALGOS:
        raise AgentSpecError(f"agent.algo must be one of {list(ALGOS)}, got {agent.get('algo')!r}")
    if agent.get("policy") not in POLICIES:
        raise AgentSpecError(f"agent.policy must be one of {list(POLICIES)}, got {agent.get('policy')!r}")
    if agent["policy"] == "set" and agent["algo"] not in SET_POLICIES:
        raise AgentSpecError(
            f"agent.policy 'set' is available for {list(SET_POLICIES)}, not {agent['algo']} "
            "(its LSTM reads the flat observation); use policy: mlp"
        )
    n_envs = agent.get("n_envs", 1)
    if not isinstance(n_envs, int) or n_envs < 1:
        raise AgentSpecError(f"agent.n_envs must be an integer >= 1, got {n_envs!r}")


def policy_class(agent: Mapping[str, Any]) -> str | type:
    if agent["policy"] == "set":
        return SET_POLICIES[agent["algo"]]
    return "MlpLstmPolicy" if agent["algo"] == "RecurrentPPO" else "MlpPolicy"


def linear_schedule(start: float) -> Callable[[float], float]:
    """``start`` decaying linearly to 0 over training (SB3 passes the remaining progress, 1 -> 0)."""

    def schedule(progress_remaining: float) -> float:
        return progress_remaining * start

    return schedule


_LINEAR = re.compile(r"^lin_([0-9.eE+-]+)$")


def _value(key: str, value: Any) -> Any:
    if isinstance(value, str) and (match := _LINEAR.match(value)):
        return linear_schedule(float(match.group(1)))
    return value


def policy_kwargs(agent: Mapping[str, Any]) -> dict[str, Any]:
    kwargs = dict(agent.get("policy_kwargs") or {})
    if "activation_fn" in kwargs:
        name = kwargs["activation_fn"]
        if name not in ACTIVATIONS:
            raise AgentSpecError(f"agent.policy_kwargs.activation_fn must be one of {list(ACTIVATIONS)}, got {name!r}")
        kwargs["activation_fn"] = ACTIVATIONS[name]
    if agent["policy"] == "mlp" and "embed_arch" in kwargs:
        raise AgentSpecError("agent.policy_kwargs.embed_arch belongs to policy: set, not policy: mlp")
    return kwargs


def hyperparams(agent: Mapping[str, Any], n_actions: int) -> dict[str, Any]:
    kwargs = {key: _value(key, value) for key, value in (agent.get("hyperparams") or {}).items()}
    noise = kwargs.pop("action_noise", None)
    if noise is not None:
        if agent["algo"] not in OFF_POLICY:
            raise AgentSpecError(f"agent.hyperparams.action_noise is for {list(OFF_POLICY)}, not {agent['algo']}")
        kind, sigma = noise.get("type", "normal"), float(noise.get("sigma", 0.1))
        zeros, sigmas = np.zeros(n_actions), sigma * np.ones(n_actions)
        if kind == "normal":
            kwargs["action_noise"] = NormalActionNoise(zeros, sigmas)
        elif kind == "ornstein_uhlenbeck":
            kwargs["action_noise"] = OrnsteinUhlenbeckActionNoise(zeros, sigmas)
        else:
            raise AgentSpecError(
                f"agent.hyperparams.action_noise.type must be normal or ornstein_uhlenbeck, got {kind!r}"
            )
    return kwargs


def build_model(
    agent: Mapping[str, Any],
    env: VecEnv,
    seed: int,
    tensorboard_log: str | None = None,
    device: str = "cpu",
    verbose: int = 0,
) -> BaseAlgorithm:
    """A fresh learner for ``agent`` on ``env`` (SB3 seeds Python, NumPy, torch and the env with ``seed``)."""
    check_agent(agent)
    algo = ALGOS[agent["algo"]]
    return algo(
        policy_class(agent),
        env,
        seed=seed,
        device=device,
        verbose=verbose,
        tensorboard_log=tensorboard_log,
        policy_kwargs=policy_kwargs(agent),
        **hyperparams(agent, env.action_space.shape[0]),
    )


def load_model(
    agent: Mapping[str, Any], path: str, env: VecEnv | None = None, device: str = "cpu", **kwargs: Any
) -> BaseAlgorithm:
    """Load a saved learner of ``agent``'s algorithm (set-policy classes are found by import path)."""
    return ALGOS[agent["algo"]].load(path, env=env, device=device, **kwargs)
