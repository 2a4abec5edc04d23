"""Stable-Baselines3 learners from ``conf/agent/<name>.yaml``: vectorised envs, normalisation, algorithm.

A training run folder is written by ``experiments.train`` and read by :mod:`agents.trained` and
:mod:`agents.export` through this module alone: its file names (:data:`RUN_CONFIG`,
:data:`RUN_MODELS`, :data:`RUN_MANIFEST`), the VecNormalize statistics as ``.npz`` without pickle
(:func:`save_vec_normalize`, :func:`load_vec_normalize`), the SHA-256 manifest
(:func:`write_run_manifest`, :func:`verify_run_files`) and the learner loaded without unpickling
(:func:`load_model`, :func:`load_run`).

What a run folder's checks give: the manifest sits in the folder it protects, so it detects
corruption, truncation and accidental edits, not a tampering attacker who rewrites the manifest too.
What still trusts its input after the checks: ``model.zip`` is a zip of JSON fields (plain data set as
attributes of the learner) and torch tensors read with ``torch.load(weights_only=True)`` (PyTorch's
restricted unpickler: tensors and plain containers only); nothing in it is cloudpickled back, since
every such field is rebuilt from the run's config. Resuming SAC/TD3 reads the replay buffer with
SB3's pickle-based ``load_replay_buffer``: resume only runs you trust.

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
the policy's mask. VecNormalize's ``normalize_obs`` and its ``mean``/``var`` arrays are unchanged, so
loaders and the ONNX export use it like any VecNormalize.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import re
import zipfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import yaml
from gymnasium import spaces
from sb3_contrib import RecurrentPPO
from stable_baselines3 import A2C, PPO, SAC, TD3
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.noise import NormalActionNoise, OrnsteinUhlenbeckActionNoise
from stable_baselines3.common.running_mean_std import RunningMeanStd
from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv, VecEnv, VecMonitor, VecNormalize
from torch import nn

from agents.allocator import sha256_file
from agents.config import env_mapping
from agents.heuristics import FillParams
from agents.policies import ACTIVE, SET_POLICIES
from agents.residual import DISTILLED_TEACHER, PRIVILEGED_TEACHER, TILT_TEACHERS, HeadSpec, RankResidualEnv, head_spec
from agents.vec_env import make_sb3_vec_env
from envs.budget_env import BudgetShiftEnv
from envs.family import FamilyEnv, ScenarioFamily, load_family
from envs.features import N_GLOBAL_FEATURES, N_PLAN_FEATURES, OBS_HIGH, OBS_LOW, observation_size
from envs.scenario import Scenario, load_scenario

#: Every algorithm an agent config's ``algo`` may name.
ALGOS: dict[str, type[BaseAlgorithm]] = {"PPO": PPO, "A2C": A2C, "SAC": SAC, "TD3": TD3, "RecurrentPPO": RecurrentPPO}
OFF_POLICY = ("SAC", "TD3")
POLICIES = ("mlp", "set")
ACTIVATIONS: dict[str, type[nn.Module]] = {"tanh": nn.Tanh, "relu": nn.ReLU, "elu": nn.ELU, "leaky_relu": nn.LeakyReLU}
VEC_ENVS = {"native": None, "dummy": DummyVecEnv, "subproc": SubprocVecEnv}
AGENT_KEYS = (
    "name",
    "kind",
    "algo",
    "policy",
    "n_envs",
    "hyperparams",
    "policy_kwargs",
    "normalize",
    "kickstart",
    "head",
)

# A training run folder (written by experiments.train, read by agents.trained and agents.export).
#: The resolved config of the run.
RUN_CONFIG = "config.yaml"
#: ``which`` model -> (learner file, its VecNormalize statistics): ``final`` at the end of training,
#: ``best`` at the best periodic evaluation (EvalCallback's ``best_model.zip``).
RUN_MODELS = {"final": ("model.zip", "vecnormalize.npz"), "best": ("best_model.zip", "best_vecnormalize.npz")}
#: SHA-256 of every file a loader reads (config and models), written when training ends.
RUN_MANIFEST = "run_manifest.json"
#: Version of the ``.npz`` layout written by :func:`save_vec_normalize`.
VEC_NORMALIZE_FORMAT = 1


class AgentSpecError(ValueError):
    """A ``kind: sb3`` agent config that no learner can be built from."""


class RunFolderError(ValueError):
    """A training run folder that cannot be loaded: missing, modified, pickled or mismatched files."""


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


def make_envs(
    scenario: Scenario,
    n_envs: int,
    seed: int,
    vec_env: str = "native",
    family: ScenarioFamily | None = None,
    head: HeadSpec | None = None,
) -> VecEnv:
    """``n_envs`` copies of the env with episode statistics; copy ``i`` is first reset with ``seed + i``.

    ``native``: :class:`envs.vector_env.BudgetShiftVectorEnv` (every copy in one kernel call) behind
    its SB3 adapter; ``dummy``/``subproc``: SB3's vector envs of single Monitor-wrapped envs. All three
    give the same episodes for the same seed. With ``family``, the copies are
    :class:`envs.family.FamilyEnv` (a new scenario every episode; ``scenario`` is then unused), which
    only SB3's vector envs can hold: the native batch runs one scenario in one kernel call. With a
    ``rank_residual`` ``head`` (:mod:`agents.residual`) each copy is wrapped in
    :class:`agents.residual.RankResidualEnv` (inside its Monitor, which then records the shares' rewards);
    that needs single envs too. Single envs' step infos leave out the per-plan arrays
    (:class:`PlanDetailsDropped`), as the native adapter's do.
    """
    if vec_env not in VEC_ENVS:
        raise AgentSpecError(f"vec_env must be one of {list(VEC_ENVS)}, got {vec_env!r}")
    if family is not None and vec_env == "native":
        raise AgentSpecError(
            f"vec_env=native runs one scenario for all copies; family {family.name!r} draws a scenario per "
            "episode: use vec_env=dummy (or subproc)"
        )
    residual = head is not None and head.residual
    if residual and vec_env == "native":
        raise AgentSpecError(
            "agent.head rank_residual runs rank's fill in Python between the policy and each env copy: "
            "use vec_env=dummy (or subproc)"
        )
    if vec_env == "native":
        return VecMonitor(make_sb3_vec_env(scenario, n_envs=n_envs, seed=seed))
    kwargs = {"start_method": "fork"} if vec_env == "subproc" else None
    env_cls, env_kwargs = (
        (BudgetShiftEnv, {"scenario": scenario}) if family is None else (FamilyEnv, {"family": family})
    )
    if residual:
        env_kwargs = {
            "env_cls": env_cls,
            "env_kwargs": env_kwargs,
            "scale": head.scale,
            "params": head.rank_params,
            "base": head.base,
        }
        env_cls = _residual_env
    return make_vec_env(
        env_cls,
        n_envs=n_envs,
        seed=seed,
        env_kwargs=env_kwargs,
        vec_env_cls=VEC_ENVS[vec_env],
        vec_env_kwargs=kwargs,
        wrapper_class=PlanDetailsDropped,
    )


class PlanDetailsDropped(gym.Wrapper):
    """Step infos without their per-plan arrays (``spend``, ``shares``, ...; every ``np.ndarray`` entry).

    Training reads none of them, and SB3's ``DummyVecEnv`` deep-copies every copy's info at every step:
    ~0.05 ms an env step, ~5% of a residual's collection (cProfile, 16k steps). Scalars (``step``,
    ``cap_withheld``), the last step's ``score`` and Monitor's ``episode`` are kept.
    """

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        return obs, reward, terminated, truncated, {k: v for k, v in info.items() if not isinstance(v, np.ndarray)}


def _residual_env(
    env_cls: type, env_kwargs: dict[str, Any], scale: float, params: FillParams, base: str = "rank"
) -> RankResidualEnv:
    return RankResidualEnv(env_cls(**env_kwargs), scale=scale, params=params, base=base)


def run_family(config: Mapping[str, Any]) -> ScenarioFamily | None:
    """The scenario family a run trained on (its config's ``family`` node), or None."""
    node = config.get("family")
    return None if node is None else load_family(dict(node))


def run_scenario(config: Mapping[str, Any]) -> Scenario:
    """The scenario a run's networks are sized for and evaluated on: its ``env``, and for a run trained
    on a family, that env padded to the family's ``max_plans`` (the observation width it trained on)."""
    scenario = load_scenario(env_mapping(config["env"]))
    family = run_family(config)
    if family is None:
        return scenario
    if scenario.n_plans > family.max_plans:
        raise AgentSpecError(
            f"env {scenario.name!r} has {scenario.n_plans} plans, more than family {family.name!r}'s "
            f"max_plans={family.max_plans}: evaluate during training on a smaller preset"
        )
    return dataclasses.replace(scenario, max_plans=family.max_plans)


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
    try:
        head = head_spec(agent.get("head"))
    except ValueError as exc:
        raise AgentSpecError(str(exc)) from None
    kick = agent.get("kickstart")  # a node that is not a mapping is kickstart_spec's to refuse
    teacher = kick.get("allocator", "boost") if isinstance(kick, Mapping) else None
    if head.residual and teacher is not None and teacher not in TILT_TEACHERS:
        raise AgentSpecError(
            f"agent.kickstart.allocator {teacher!r} is a heuristic, whose shares a softmax head clones; a "
            "rank_residual head starts as rank itself (action 0) and learns a tilt: set agent.kickstart.allocator "
            f"{PRIVILEGED_TEACHER} (the privileged teacher, agents/kickstart.py), {DISTILLED_TEACHER} (distilled) "
            "or agent.kickstart=null"
        )
    if head.residual and teacher == DISTILLED_TEACHER and head.base == DISTILLED_TEACHER:
        raise AgentSpecError(
            f"agent.kickstart.allocator {teacher} teaches the tilt from rank's worth to its own, and "
            f"agent.head.base is {teacher} already: set agent.head.base rank, or teach with {PRIVILEGED_TEACHER}"
        )
    if not head.residual and teacher == PRIVILEGED_TEACHER:
        raise AgentSpecError(
            f"agent.kickstart.allocator {PRIVILEGED_TEACHER} teaches a rank_residual head's tilt; a softmax head "
            "clones a heuristic's shares: set agent.head.kind rank_residual or another allocator"
        )


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
    if "logprob_plans" in kwargs:
        value = kwargs["logprob_plans"]
        if agent["policy"] != "set" or agent["algo"] not in ("PPO", "A2C"):
            raise AgentSpecError(
                "agent.policy_kwargs.logprob_plans belongs to policy: set with PPO or A2C (its Gaussian), "
                f"not {agent['algo']} with policy: {agent['policy']}"
            )
        if value is not None and (isinstance(value, bool) or not isinstance(value, int | float) or not value > 0):
            raise AgentSpecError(
                f"agent.policy_kwargs.logprob_plans must be a positive number of plans or null, got {value!r}"
            )
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
    agent: Mapping[str, Any],
    path: str | Path,
    scenario: Scenario,
    env: VecEnv | None = None,
    device: str = "cpu",
    **kwargs: Any,
) -> BaseAlgorithm:
    """Load a learner of ``agent``'s algorithm on ``scenario`` from ``path`` without unpickling anything.

    SB3 cloudpickles some fields of ``model.zip``'s ``data`` (policy class, spaces, schedules, buffer
    classes, the last observations); every one of them is passed as ``custom_objects`` instead, rebuilt
    from the agent config (a learner built from it but not set up) and the scenario's spaces, so
    ``cloudpickle.loads`` never runs. The rest of the file is JSON and torch tensors, which SB3 reads
    with ``torch.load(weights_only=True)``.

    :raises RunFolderError: ``path`` pickles a field nothing here rebuilds, or its weights do not fit
        the agent on ``scenario``.
    """
    check_agent(agent)
    algo = ALGOS[agent["algo"]]
    with zipfile.ZipFile(path) as archive:
        data = json.loads(archive.read("data"))
    template = algo(
        policy_class(agent),
        env=None,
        device=device,
        _init_setup_model=False,
        policy_kwargs=policy_kwargs(agent),
        **hyperparams(agent, scenario.max_plans),
    )
    trusted: dict[str, Any] = {
        "policy_class": template.policy_class,
        "policy_kwargs": template.policy_kwargs,
        "observation_space": spaces.Box(
            OBS_LOW, OBS_HIGH, shape=(observation_size(scenario.max_plans),), dtype=np.float32
        ),
        "action_space": spaces.Box(-1.0, 1.0, shape=(scenario.max_plans,), dtype=np.float32),
        "lr_schedule": None,  # rebuilt from learning_rate when the learner is set up
    }
    for key, value in data.items():
        if key in trusted or not (isinstance(value, dict) and ":serialized:" in value):
            continue
        if not hasattr(template, key):
            raise RunFolderError(f"{path}: field {key!r} is pickled and nothing rebuilds it for {agent['algo']}")
        trusted[key] = getattr(template, key)
    try:
        return algo.load(path, env=env, device=device, custom_objects=trusted, **kwargs)
    except (RuntimeError, ValueError) as exc:
        hint = (
            " (a set policy saved before the pooled summary carried the portfolio's size, commit dc3f7be, "
            "has one input fewer: retrain it, or load it with a checkout before that commit)"
            if agent["policy"] == "set" and "size mismatch" in str(exc)
            else ""
        )
        raise RunFolderError(
            f"{path} does not fit agent {agent['algo']}/{agent['policy']} on scenario {scenario.name!r} "
            f"(max_plans {scenario.max_plans}){hint}: {exc}"
        ) from exc


# -------------------------------------------------------------------------------------------------
# Run folder
# -------------------------------------------------------------------------------------------------


def save_vec_normalize(vec_normalize: VecNormalize, path: Path) -> None:
    """Write ``vec_normalize``'s statistics and settings to ``path`` as ``.npz`` (no pickle), atomically.

    The file appears complete or not at all, so a checkpoint whose statistics exist is whole.
    """
    rms = vec_normalize.obs_rms
    arrays: dict[str, Any] = {
        "format": VEC_NORMALIZE_FORMAT,
        "norm_obs": vec_normalize.norm_obs,
        "norm_reward": vec_normalize.norm_reward,
        "clip_obs": vec_normalize.clip_obs,
        "clip_reward": vec_normalize.clip_reward,
        "gamma": vec_normalize.gamma,
        "epsilon": vec_normalize.epsilon,
    }
    parts = {"ret": vec_normalize.ret_rms}
    if isinstance(rms, PlanPooledRunningMeanStd):
        arrays["pooled_max_plans"] = rms.max_plans
        parts.update({"plan": rms.plan_rms, "global": rms.global_rms})
    else:
        parts["obs"] = rms
    for name, part in parts.items():
        arrays.update({f"{name}_mean": part.mean, f"{name}_var": part.var, f"{name}_count": part.count})
    path = Path(path)
    partial = path.with_name(path.name + ".partial")
    with open(partial, "wb") as f:
        np.savez(f, **arrays)
    os.replace(partial, path)


def _restore(rms: RunningMeanStd, stats: Mapping[str, np.ndarray], name: str) -> None:
    rms.mean, rms.var, rms.count = stats[f"{name}_mean"], stats[f"{name}_var"], float(stats[f"{name}_count"])


def load_vec_normalize(path: Path, venv: VecEnv, training: bool = False) -> VecNormalize:
    """``venv`` normalised with the statistics :func:`save_vec_normalize` wrote to ``path``.

    :raises RunFolderError: ``path`` is missing (naming a legacy ``.pkl`` beside it, which is never
        unpickled), of another format, or sized for another observation.
    """
    path = Path(path)
    _refuse_pickled_stats(path)
    with np.load(path, allow_pickle=False) as stats:
        stats = dict(stats)
    if int(stats.get("format", -1)) != VEC_NORMALIZE_FORMAT:
        raise RunFolderError(f"{path}: format {stats.get('format')}, expected {VEC_NORMALIZE_FORMAT}")
    vec_normalize = VecNormalize(
        venv,
        training=training,
        norm_obs=bool(stats["norm_obs"]),
        norm_reward=bool(stats["norm_reward"]),
        clip_obs=float(stats["clip_obs"]),
        clip_reward=float(stats["clip_reward"]),
        gamma=float(stats["gamma"]),
        epsilon=float(stats["epsilon"]),
    )
    if "pooled_max_plans" in stats:
        rms = PlanPooledRunningMeanStd(int(stats["pooled_max_plans"]))
        _restore(rms.plan_rms, stats, "plan")
        _restore(rms.global_rms, stats, "global")
        rms._tile()
    else:
        rms = RunningMeanStd(shape=venv.observation_space.shape)
        _restore(rms, stats, "obs")
    if rms.mean.shape != venv.observation_space.shape:
        raise RunFolderError(
            f"{path}: statistics for observations of shape {rms.mean.shape}, "
            f"the env's are {venv.observation_space.shape}"
        )
    vec_normalize.obs_rms = rms
    _restore(vec_normalize.ret_rms, stats, "ret")
    return vec_normalize


def _refuse_pickled_stats(path: Path) -> None:
    legacy = path.with_suffix(".pkl")
    if not path.is_file() and legacy.is_file():
        raise RunFolderError(
            f"{legacy} is a pickled VecNormalize, which is not loaded (unpickling runs whatever code the file "
            f"holds) and {path.name} is missing: re-train the run with python -m experiments.train, or convert "
            "it where you trust the file: VecNormalize.load it and write it with agents.sb3.save_vec_normalize "
            f"to {path}, then agents.sb3.write_run_manifest({path.parent})"
        )


def write_run_manifest(run_dir: Path) -> Path:
    """Record the SHA-256 of the run's config and of every model and statistics file it holds."""
    run_dir = Path(run_dir)
    names = [RUN_CONFIG, *(name for pair in RUN_MODELS.values() for name in pair)]
    manifest = {
        "note": "SHA-256 of the files loaders read; detects corruption and accidental edits, not tampering",
        "sha256": {name: sha256_file(run_dir / name) for name in names if (run_dir / name).is_file()},
    }
    path = run_dir / RUN_MANIFEST
    path.write_text(json.dumps(manifest, indent=1))
    return path


def verify_run_files(run_dir: Path, names: Sequence[str]) -> None:
    """Raise :class:`RunFolderError` naming the first of ``names`` that is missing or not as training left it.

    The manifest lives in the same folder: this detects corruption and accidental edits, not an
    attacker who rewrites the manifest too.
    """
    run_dir = Path(run_dir)
    manifest_path = run_dir / RUN_MANIFEST
    if not manifest_path.is_file():
        raise RunFolderError(
            f"{manifest_path} is missing: the run did not finish (resume it with resume=true) or predates run "
            "manifests (re-train it)"
        )
    recorded = json.loads(manifest_path.read_text()).get("sha256", {})
    for name in names:
        path = run_dir / name
        if name not in recorded:
            raise RunFolderError(f"{path} is not in {manifest_path.name}: training did not leave it")
        if not path.is_file():
            raise RunFolderError(f"{path} is missing (listed in {manifest_path.name})")
        if sha256_file(path) != recorded[name]:
            raise RunFolderError(
                f"{path} was modified since training ended (its SHA-256 differs from {manifest_path.name})"
            )


def load_run(
    run_dir: Path, which: str = "final", device: str = "cpu"
) -> tuple[dict[str, Any], Scenario, BaseAlgorithm, VecNormalize]:
    """The config, scenario, learner and frozen normalisation of a finished run.

    Every file read is checked against :data:`RUN_MANIFEST` first; nothing is unpickled.

    :param which: a key of :data:`RUN_MODELS`.
    """
    run_dir = Path(run_dir)
    if which not in RUN_MODELS:
        raise RunFolderError(f"which must be one of {list(RUN_MODELS)}, got {which!r}")
    model_file, stats_file = RUN_MODELS[which]
    _refuse_pickled_stats(run_dir / stats_file)
    verify_run_files(run_dir, (RUN_CONFIG, model_file, stats_file))
    config = yaml.safe_load((run_dir / RUN_CONFIG).read_text()) or {}
    if not isinstance(config.get("env"), Mapping) or not isinstance(config.get("agent"), Mapping):
        raise RunFolderError(f"{run_dir / RUN_CONFIG} needs the resolved 'env' and 'agent' nodes of the run")
    scenario = run_scenario(config)
    model = load_model(config["agent"], run_dir / model_file, scenario, device=device)
    vec_normalize = load_vec_normalize(run_dir / stats_file, DummyVecEnv([lambda: BudgetShiftEnv(scenario)]))
    return config, scenario, model, vec_normalize
