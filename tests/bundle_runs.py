"""Helpers of the export and loader tests: observations from rollouts, run folders, the SB3 reference.

A *run folder* here is laid out as ``experiments.train`` leaves one (``model.zip``,
``vecnormalize.npz``, ``config.yaml``, ``run_manifest.json``), but holds an untrained model whose
last actor layer is scaled up and whose VecNormalize statistics come from rollouts of the preset,
then are perturbed: the shares are far from uniform, some actions fall outside [-1, 1] before
clipping and some normalised features hit ``clip_obs``, which is what the graph has to get right.
Training would only slow the tests down without exercising anything more of the export.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import torch
import yaml
from stable_baselines3 import PPO, SAC
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.vec_env import DummyVecEnv, VecNormalize

from agents.sb3 import load_vec_normalize, save_vec_normalize, write_run_manifest
from envs.budget_env import BudgetShiftEnv
from envs.scenario import PRESET_DIR
from envs.shares import masked_softmax

ALGORITHMS = {"ppo": PPO, "sac": SAC}


@functools.cache
def observations(preset: str, n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """At least ``n`` raw observations ``(N, width)`` and plan masks ``(N, max_plans)`` from rollouts.

    Actions are uniform in [-1, 1] with saturated corners, so budgets swing between plans.
    """
    env = BudgetShiftEnv(preset)
    rng = np.random.default_rng(seed)
    obs_list, mask_list = [], []
    episode = 0
    while len(obs_list) < n:
        obs, _ = env.reset(seed=seed * 1000 + episode)
        episode += 1
        done = False
        while not done:
            mask = np.zeros(env.max_plans, dtype=bool)
            mask[: env.n_plans] = env.active_mask()
            obs_list.append(obs)
            mask_list.append(mask)
            action = rng.uniform(-1, 1, env.max_plans)
            corners = rng.random(env.max_plans) < 0.1
            action[corners] = np.sign(action[corners])
            obs, _, done, _, _ = env.step(action.astype(np.float32))
    return np.stack(obs_list), np.stack(mask_list)


def _last_actor_layer(model: BaseAlgorithm, policy: str) -> torch.nn.Linear:
    p = model.policy
    if isinstance(model, PPO):
        return p.mlp_extractor.actor.head[-1] if policy == "set" else p.action_net
    return p.actor.scorer.head[-1] if policy == "set" else p.actor.mu


def _policy_class(algo: str, policy: str):
    if policy == "mlp":
        return "MlpPolicy"
    from agents.policies import SET_POLICIES

    return SET_POLICIES[algo.upper()]


def make_vecnormalize(
    preset: str, policy: str, obs: np.ndarray, rng: np.random.Generator, clip_obs: float = 5.0
) -> VecNormalize:
    """VecNormalize statistics fitted on ``obs``, as training builds them for ``policy``.

    ``mlp``: SB3's per-entry statistics, then perturbed. ``set``: the plan-pooled statistics of
    :func:`agents.sb3.build_vec_normalize` (the ``active`` flag stays 0/1 for the set policy's mask).
    """
    venv = DummyVecEnv([lambda: BudgetShiftEnv(preset)])
    if policy == "set":
        from agents.sb3 import build_vec_normalize

        vecnormalize = build_vec_normalize(
            venv, {"policy": "set", "normalize": {"clip_obs": clip_obs}}, BudgetShiftEnv(preset).max_plans
        )
        vecnormalize.obs_rms.update(obs)
        return vecnormalize
    vecnormalize = VecNormalize(venv, clip_obs=clip_obs)
    vecnormalize.obs_rms.update(obs.astype(np.float64))
    vecnormalize.obs_rms.mean = vecnormalize.obs_rms.mean * rng.uniform(0.8, 1.2, obs.shape[1])
    vecnormalize.obs_rms.var = vecnormalize.obs_rms.var * rng.uniform(0.5, 1.5, obs.shape[1])
    return vecnormalize


def make_run(root: Path, algo: str, policy: str, preset: str, n_fit: int = 2000, seed: int = 0) -> Path:
    """A run folder with an untrained ``algo`` model (``policy``: ``mlp`` or ``set``) on ``preset``."""
    run_dir = root / f"{algo}-{policy}-{preset}"
    if (run_dir / "model.zip").is_file():
        return run_dir
    run_dir.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    obs, _ = observations(preset, n_fit, seed=99)
    venv = make_vecnormalize(preset, policy, obs, rng)
    kwargs = {"n_steps": 64, "batch_size": 64} if algo == "ppo" else {"buffer_size": 100, "learning_starts": 10}
    model = ALGORITHMS[algo](_policy_class(algo, policy), venv, seed=seed, device="cpu", **kwargs)
    # Spread the actions: std ~1.5 before PPO's clip, tanh saturating now and then for SAC.
    layer = _last_actor_layer(model, policy)
    with torch.no_grad():
        actions, _ = model.predict(venv.normalize_obs(obs[:500]), deterministic=True)
        pre = np.arctanh(np.clip(actions, -0.999, 0.999)) if algo == "sac" else actions
        layer.weight.mul_(1.5 / max(float(np.std(pre)), 1e-6))
        layer.bias.normal_(0.0, 0.3)
    model.save(run_dir / "model.zip")
    save_vec_normalize(venv, run_dir / "vecnormalize.npz")
    # As experiments.train writes it: the resolved env node (a mapping) and the agent's SB3 fields.
    env = yaml.safe_load((PRESET_DIR / f"{preset}.yaml").read_text())
    config = {"env": env, "agent": {"name": algo, "kind": "sb3", "algo": algo.upper(), "policy": policy}, "seed": seed}
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config))
    write_run_manifest(run_dir)
    return run_dir


def load_model(run_dir: Path) -> tuple[BaseAlgorithm, VecNormalize]:
    """The run's model and its VecNormalize, loaded the way SB3 users do."""
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    model = ALGORITHMS[config["agent"]["algo"].lower()].load(run_dir / "model.zip", device="cpu")
    env = DummyVecEnv([lambda: BudgetShiftEnv(config["env"]["name"])])
    return model, load_vec_normalize(run_dir / "vecnormalize.npz", env)


def sb3_shares(
    model: BaseAlgorithm, vecnormalize: VecNormalize, obs: np.ndarray, masks: np.ndarray, temperature: float
) -> np.ndarray:
    """Shares as training produced them: SB3's deterministic ``predict`` on normalised obs, then the env's softmax."""
    actions, _ = model.predict(vecnormalize.normalize_obs(obs), deterministic=True)
    return np.stack(
        [masked_softmax(a.astype(np.float64) * temperature, m) for a, m in zip(actions, masks, strict=True)]
    )
