"""Kickstart: a PPO learner that starts from a heuristic's behaviour instead of from noise.

A learner started from random weights spends its first hundred thousand steps finding out what any
sensible heuristic already does (fund plans with value per cost, let new plans learn). With
``kickstart`` in an agent's config, :func:`kickstart` runs before PPO on a fresh run:

1. **Collect.** The heuristic (one of :data:`agents.heuristics.HEURISTICS`, ``boost`` by default)
   plays ``steps`` env steps in the training env copies (the same vector env PPO then trains on,
   whose VecNormalize statistics it warms up). Its budget shares become the action that gives them:
   :func:`actions_from_shares`, the inverse of the env's masked softmax at the scenario's
   ``temperature`` (exact unless a plan's share is below ``exp(-2 temperature)`` of the largest).
2. **Clone.** The policy's mean is fitted to those actions (mean squared error over the active
   plans) and its critic to the discounted returns of the normalised rewards (on episodes that end
   inside the collected data, so no return is cut short), for ``epochs`` passes with Adam.

PPO then starts from a policy whose deterministic action is (close to) the heuristic's and a critic
that already values its states; ``log_std`` sets the exploration noise it starts from (the
default ``log_std_init`` of -0.5 is logit noise 3 at temperature 5, enough to drown the clone's
allocation). This is behaviour cloning as a warm start ("kickstarting",
Schmitt et al. 2018, in its simplest form: the teacher's term is dropped once RL starts); the
policy stays a plain set policy, so export and the production loader are unchanged. The collected
steps are counted in ``train_summary.json`` (``kickstart.steps``), not in PPO's ``num_timesteps``.

Needs the single-env vector envs in this process (``vec_env=dummy``): the heuristic reads each
copy's reporting stats. Deterministic: the same seed gives the same collected data and weights.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np
import torch as th
from stable_baselines3.common.vec_env import DummyVecEnv, VecNormalize

from agents.heuristics import HEURISTICS
from agents.sb3 import AgentSpecError
from envs.budget_env import BudgetShiftEnv
from envs.family import FamilyEnv


@dataclass(frozen=True)
class KickstartSpec:
    """The ``kickstart`` node of an agent config (all optional)."""

    allocator: str = "boost"  # the heuristic to clone
    steps: int = 40_000  # env steps collected over all copies
    epochs: int = 10  # passes over the collected steps
    batch_size: int = 336
    learning_rate: float = 1.0e-3
    value_weight: float = 0.5  # the critic's loss weight beside the actor's
    log_std: float | None = None  # PPO's exploration log-std from the clone on (None: the policy's log_std_init)


def kickstart_spec(node: Mapping[str, Any] | None) -> KickstartSpec | None:
    """The validated spec of an agent's ``kickstart`` node (None: no kickstart); errors name the field."""
    if node is None:
        return None
    if not isinstance(node, Mapping):
        raise AgentSpecError(f"agent.kickstart must be a mapping or null, got {node!r}")
    known = [f.name for f in fields(KickstartSpec)]
    unknown = sorted(set(node) - set(known))
    if unknown:
        raise AgentSpecError(f"unknown field agent.kickstart.{unknown[0]}; expected one of {known}")
    spec = KickstartSpec(**node)
    if spec.allocator not in HEURISTICS:
        raise AgentSpecError(f"agent.kickstart.allocator must be one of {sorted(HEURISTICS)}, got {spec.allocator!r}")
    for name in ("steps", "epochs", "batch_size"):
        value = getattr(spec, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise AgentSpecError(f"agent.kickstart.{name} must be an integer >= 1, got {value!r}")
    for name in ("learning_rate", "value_weight"):
        value = getattr(spec, name)
        if not _finite(value) or value < 0:
            raise AgentSpecError(f"agent.kickstart.{name} must be a finite number >= 0, got {value!r}")
    if spec.log_std is not None and not _finite(spec.log_std):
        raise AgentSpecError(f"agent.kickstart.log_std must be a finite number or null, got {spec.log_std!r}")
    if spec.learning_rate == 0:
        raise AgentSpecError("agent.kickstart.learning_rate must be > 0, got 0")
    return spec


def _finite(value: Any) -> bool:
    return not isinstance(value, bool) and isinstance(value, int | float) and math.isfinite(value)


def actions_from_shares(shares: np.ndarray, active: np.ndarray, temperature: float, max_plans: int) -> np.ndarray:
    """The action ``(max_plans,)`` in [-1, 1] whose masked softmax (``x temperature``) gives ``shares``.

    The largest share's plan gets 1 and plan ``i`` gets ``1 + log(share_i / largest) / temperature``,
    clipped at -1 (a share below ``exp(-2 temperature)`` of the largest gets that much); inactive and
    padded plans get 0 (they are masked out of the softmax).
    """
    n = len(shares)
    action = np.zeros(max_plans, dtype=np.float32)
    on = np.asarray(active, dtype=bool) & (np.asarray(shares) > 0)
    if on.any():
        rel = np.asarray(shares, dtype=np.float64)[on] / shares[on].max()
        action[:n][on] = np.clip(1.0 + np.log(rel) / temperature, -1.0, 1.0)
        action[:n][np.asarray(active, dtype=bool) & ~on] = -1.0
    return action


def _episode_env(env: Any) -> BudgetShiftEnv:
    inner = env.unwrapped
    return inner.env if isinstance(inner, FamilyEnv) else inner


def collect(vec_env: VecNormalize, allocator: str, steps: int, seed: int) -> dict[str, np.ndarray]:
    """``allocator`` plays ``steps`` env steps (rounded up to whole steps of every copy) in ``vec_env``.

    Returns per step and copy: ``obs`` (raw, the observation the action was chosen on), ``action``,
    ``reward`` (raw) and ``done``; and ``episode_return`` (raw) of every episode that ended.
    """
    if not isinstance(vec_env, VecNormalize) or not isinstance(vec_env.venv, DummyVecEnv):
        raise AgentSpecError(
            "agent.kickstart needs the training copies in this process (vec_env=dummy): the heuristic reads "
            f"each copy's reporting stats; got {type(getattr(vec_env, 'venv', vec_env)).__name__}"
        )
    envs = vec_env.venv.envs
    n_envs = len(envs)
    rounds = -(-steps // n_envs)
    seeds = np.random.SeedSequence([seed, 0x4B53]).generate_state(rounds * n_envs + n_envs, dtype=np.uint32)
    heuristics = [HEURISTICS[allocator]() for _ in envs]
    episodes = 0

    def start(i: int) -> None:
        nonlocal episodes
        env = _episode_env(envs[i])
        heuristics[i].reset(env.scenario, None, seed=int(seeds[episodes]))  # never the hidden portfolio
        episodes += 1

    vec_env.reset()
    for i in range(n_envs):
        start(i)
    width = vec_env.observation_space.shape[0]
    max_plans = vec_env.action_space.shape[0]
    out = {
        "obs": np.empty((rounds, n_envs, width), dtype=np.float32),
        "action": np.empty((rounds, n_envs, max_plans), dtype=np.float32),
        "reward": np.empty((rounds, n_envs)),
        "done": np.empty((rounds, n_envs), dtype=bool),
    }
    returns: list[float] = []
    running = np.zeros(n_envs)
    for t in range(rounds):
        out["obs"][t] = vec_env.get_original_obs()
        for i, e in enumerate(envs):
            env = _episode_env(e)
            active = env.active_mask()
            shares = heuristics[i].allocate(env.reporting_stats(), env.clock(), active)
            out["action"][t, i] = actions_from_shares(shares, active, env.scenario.temperature, max_plans)
        _, _, dones, _ = vec_env.step(out["action"][t])
        out["reward"][t] = vec_env.get_original_reward()
        out["done"][t] = dones
        running += out["reward"][t]
        for i in np.flatnonzero(dones):
            returns.append(float(running[i]))
            running[i] = 0.0
            start(int(i))
    out["episode_return"] = np.array(returns)
    return out


def discounted_returns(rewards: np.ndarray, dones: np.ndarray, gamma: float) -> tuple[np.ndarray, np.ndarray]:
    """Per step the discounted return to the end of its episode, and whether that end was collected.

    ``rewards``, ``dones``: ``(T, E)``. Steps of an episode still running when the data ends have no
    complete return (``valid`` False).
    """
    target = np.zeros_like(rewards, dtype=np.float64)
    valid = np.zeros(rewards.shape, dtype=bool)
    acc = np.zeros(rewards.shape[1])
    ended = np.zeros(rewards.shape[1], dtype=bool)
    for t in range(rewards.shape[0] - 1, -1, -1):
        acc = np.where(dones[t], 0.0, acc)
        ended |= dones[t]
        acc = rewards[t] + gamma * acc
        target[t] = acc
        valid[t] = ended
    return target, valid


def fit(
    policy: Any,
    obs: np.ndarray,
    actions: np.ndarray,
    returns: np.ndarray,
    valid: np.ndarray,
    spec: KickstartSpec,
    seed: int,
) -> dict[str, list[float]]:
    """Fit the set policy's mean to ``actions`` and its critic to ``returns`` (where ``valid``).

    ``obs`` are normalised observations ``(N, width)``. Returns each epoch's mean losses.
    """
    x = th.as_tensor(obs)
    target = th.as_tensor(actions)
    ret = th.as_tensor(returns, dtype=th.float32)
    ok = th.as_tensor(valid)
    params = [p for name, p in policy.named_parameters() if name != "log_std"]
    optimizer = th.optim.Adam(params, lr=spec.learning_rate)
    generator = th.Generator().manual_seed(seed)
    history: dict[str, list[float]] = {"actor_loss": [], "value_loss": []}
    policy.set_training_mode(True)
    for _ in range(spec.epochs):
        order = th.randperm(len(x), generator=generator)
        actor_sum, value_sum, batches = 0.0, 0.0, 0
        for start in range(0, len(x), spec.batch_size):
            idx = order[start : start + spec.batch_size]
            scores, mask = policy.mlp_extractor.actor(x[idx])
            m = mask.to(scores.dtype)
            actor_loss = (((scores.squeeze(-1) - target[idx]) ** 2) * m).sum() / m.sum().clamp(min=1.0)
            values = policy.predict_values(x[idx]).squeeze(-1)
            w = ok[idx].to(values.dtype)
            value_loss = (((values - ret[idx]) ** 2) * w).sum() / w.sum().clamp(min=1.0)
            loss = actor_loss + spec.value_weight * value_loss
            optimizer.zero_grad()
            loss.backward()
            th.nn.utils.clip_grad_norm_(params, 0.5)
            optimizer.step()
            actor_sum += float(actor_loss.detach())
            value_sum += float(value_loss.detach())
            batches += 1
        history["actor_loss"].append(actor_sum / batches)
        history["value_loss"].append(value_sum / batches)
    policy.set_training_mode(False)
    return history


def kickstart(model: Any, vec_env: VecNormalize, spec: KickstartSpec, seed: int, gamma: float) -> dict[str, Any]:
    """Collect ``spec.steps`` of the heuristic in ``vec_env`` and clone it into ``model.policy``.

    Returns what ``train_summary.json`` records under ``kickstart``.
    """
    if not hasattr(model.policy, "mlp_extractor") or not hasattr(model.policy.mlp_extractor, "actor"):
        raise AgentSpecError("agent.kickstart needs the set policy of PPO or A2C (agent.policy: set)")
    start = time.perf_counter()
    data = collect(vec_env, spec.allocator, spec.steps, seed)
    collected = time.perf_counter() - start
    rounds, n_envs = data["reward"].shape
    obs = vec_env.normalize_obs(data["obs"].reshape(rounds * n_envs, -1)).astype(np.float32)
    rewards = vec_env.normalize_reward(data["reward"]) if vec_env.norm_reward else data["reward"]
    returns, valid = discounted_returns(rewards, data["done"], gamma)
    history = fit(
        model.policy,
        obs,
        data["action"].reshape(rounds * n_envs, -1),
        returns.reshape(-1),
        valid.reshape(-1),
        spec,
        seed,
    )
    if spec.log_std is not None:
        with th.no_grad():
            model.policy.log_std.fill_(spec.log_std)
    return {
        **asdict(spec),
        "steps_collected": int(rounds * n_envs),
        "episodes_completed": int(len(data["episode_return"])),
        "teacher_mean_episode_return": float(data["episode_return"].mean()) if len(data["episode_return"]) else None,
        "actor_loss": history["actor_loss"],
        "value_loss": history["value_loss"],
        "collect_s": round(collected, 2),
        "wall_s": round(time.perf_counter() - start, 2),
    }
