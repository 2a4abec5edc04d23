"""Kickstart: a PPO learner that starts from a teacher's behaviour instead of from noise.

A learner started from random weights spends its first hundred thousand steps finding out what any
sensible heuristic already does (fund plans with value per cost, let new plans learn). With
``kickstart`` in an agent's config, :func:`kickstart` runs before PPO on a fresh run:

1. **Collect.** The teacher plays ``steps`` env steps in the training env copies (the same vector env
   PPO then trains on, whose VecNormalize statistics it warms up); every step is labelled with the
   teacher's action. Three kinds of teacher:

   - a heuristic (one of :data:`agents.heuristics.HEURISTICS`, ``boost`` by default) for the softmax
     head: its budget shares become the action that gives them, :func:`actions_from_shares`, the
     inverse of the env's masked softmax at the scenario's ``temperature`` (exact unless a plan's
     share is below ``exp(-2 temperature)`` of the largest);
   - ``oracle_rank``, the privileged teacher of a ``rank_residual`` head (:mod:`agents.residual`): it
     knows each episode's hidden portfolio, and its label is the tilt that turns ``rank``'s worth
     (what the reporting shows) into the true worth ``oracle_rank`` ranks by, clipped to the head's
     range (:func:`privileged_tilt`). The student still sees only the reporting, so it learns the
     true worth's best guess from it (learning from a privileged expert: Chen et al. 2019, "Learning
     by Cheating"; the hidden truth is never an input, in training or after). With ``late_stages:
     vertical`` the teacher is late-blind (:func:`agents.oracle.late_blind`): its worth uses each
     plan's vertical's mean rates after the first deep stage, which no policy can see in time, so the
     labels carry less of what the student cannot learn (level with the full teacher over three
     training seeds, README);
   - ``bayes_rank``, distilled into a ``rank_residual`` head (:class:`BayesTiltTeacher`): its label is
     the tilt that turns ``rank``'s worth into ``bayes_rank``'s posterior worth. A reporting-only
     teacher: the student learns a ranking it could in principle compute, with labels free of the
     noise of the hidden truth (the privileged labels' error around what the reporting can tell), and
     the production loader runs it with rank's fill, where ``bayes_rank`` itself (which keeps the
     episode's conversions) has no production path.
2. **Clone.** The policy's mean is fitted to those labels (mean squared error over the active
   plans) and its critic to the discounted returns of the normalised rewards (on episodes that end
   inside the collected data, so no return is cut short), for ``epochs`` passes with Adam.
3. **DAgger rounds** (``dagger_rounds``, 0 by default; Ross, Gordon and Bagnell 2011): the clone
   plays ``steps`` more steps (its deterministic action) while the teacher labels the states it
   reaches, and the policy is fitted again on everything collected. A clone trained on the teacher's
   states alone meets states the teacher never led to; these rounds teach it what to do there.

PPO then starts from a policy whose deterministic action is (close to) the teacher's and a critic
that already values its states; ``log_std`` sets the exploration noise it starts from (the
default ``log_std_init`` of -0.5 is logit noise 3 at temperature 5, enough to drown the clone's
allocation). This is behaviour cloning as a warm start ("kickstarting",
Schmitt et al. 2018, in its simplest form: the teacher's term is dropped once RL starts); the
policy stays a plain set policy, so export and the production loader are unchanged. The collected
steps are counted in ``train_summary.json`` (``kickstart.steps_collected``), not in PPO's
``num_timesteps``; with ``total_timesteps=0`` the clone is the whole training.

Needs the single-env vector envs in this process (``vec_env=dummy``): the teacher reads each
copy's reporting stats. Deterministic: the same seed gives the same collected data and weights.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

import gymnasium as gym
import numpy as np
import torch as th
from stable_baselines3.common.vec_env import DummyVecEnv, VecNormalize

from agents.heuristics import HEURISTICS, BayesRankAllocator, ParamsError
from agents.oracle import OracleRankAllocator, OracleRankParams
from agents.residual import PRIVILEGED_TEACHER, TILT_TEACHERS, RankResidualEnv
from agents.sb3 import AgentSpecError
from envs.budget_env import BudgetShiftEnv
from envs.family import FamilyEnv


@dataclass(frozen=True)
class KickstartSpec:
    """The ``kickstart`` node of an agent config (all optional)."""

    allocator: str = "boost"  # the teacher: a heuristic (softmax head) or PRIVILEGED (rank_residual head)
    steps: int = 40_000  # env steps collected over all copies, per round
    dagger_rounds: int = 0  # rounds after the teacher's in which the clone plays and the teacher labels
    epochs: int = 10  # passes over the collected steps
    batch_size: int = 336
    learning_rate: float = 1.0e-3
    value_weight: float = 0.5  # the critic's loss weight beside the actor's
    log_std: float | None = None  # PPO's exploration log-std from the clone on (None: the policy's log_std_init)
    late_stages: str = "plan"  # the privileged teacher's rates after the first deep stage: "plan" or "vertical"


#: The teacher of a rank_residual head: knows the hidden portfolio (module docstring).
PRIVILEGED = PRIVILEGED_TEACHER
TEACHERS = (*HEURISTICS, PRIVILEGED)


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
    if spec.allocator not in TEACHERS:
        raise AgentSpecError(f"agent.kickstart.allocator must be one of {sorted(TEACHERS)}, got {spec.allocator!r}")
    for name in ("steps", "epochs", "batch_size"):
        value = getattr(spec, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise AgentSpecError(f"agent.kickstart.{name} must be an integer >= 1, got {value!r}")
    rounds = spec.dagger_rounds
    if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 0:
        raise AgentSpecError(f"agent.kickstart.dagger_rounds must be an integer >= 0, got {rounds!r}")
    for name in ("learning_rate", "value_weight"):
        value = getattr(spec, name)
        if not _finite(value) or value < 0:
            raise AgentSpecError(f"agent.kickstart.{name} must be a finite number >= 0, got {value!r}")
    if spec.log_std is not None and not _finite(spec.log_std):
        raise AgentSpecError(f"agent.kickstart.log_std must be a finite number or null, got {spec.log_std!r}")
    if spec.learning_rate == 0:
        raise AgentSpecError("agent.kickstart.learning_rate must be > 0, got 0")
    try:
        OracleRankParams(late_stages=spec.late_stages)  # oracle_rank's own check of the knob
    except ParamsError as exc:  # its message names agent.params.late_stages: oracle_rank's node
        raise AgentSpecError(str(exc).replace("agent.params.", "agent.kickstart.", 1)) from None
    if spec.late_stages != "plan" and spec.allocator != PRIVILEGED:
        raise AgentSpecError(
            f"agent.kickstart.late_stages is the privileged teacher's ({PRIVILEGED}); a heuristic teacher "
            f"({spec.allocator!r}) knows no hidden rates"
        )
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


def _residual_env(env: Any) -> RankResidualEnv | None:
    """The :class:`RankResidualEnv` among a training copy's wrappers (None: a softmax head's copy)."""
    while isinstance(env, gym.Wrapper):
        if isinstance(env, RankResidualEnv):
            return env
        env = env.env
    return None


def privileged_tilt(
    rank_worth: np.ndarray, true_worth: np.ndarray, active: np.ndarray, scale: float, max_plans: int
) -> np.ndarray:
    """The rank_residual action ``(max_plans,)`` whose tilt ``exp(scale x action)`` turns ``rank``'s worth
    into the true one: ``log(true / rank) / scale``, clipped to [-1, 1] (a plan worth nothing gets -1);
    0 on inactive and padded plans."""
    action = np.zeros(max_plans, dtype=np.float32)
    on = np.asarray(active, dtype=bool)
    rank_worth, true_worth = np.asarray(rank_worth, dtype=np.float64), np.asarray(true_worth, dtype=np.float64)
    if np.any(rank_worth[on] <= 0) or not np.all(np.isfinite(rank_worth[on])):
        raise ValueError("rank's worth must be finite and > 0 on active plans")
    with np.errstate(divide="ignore"):
        log_ratio = np.log(np.maximum(true_worth, 0.0)) - np.log(np.where(on, rank_worth, 1.0))
    action[: len(on)] = np.where(on, np.clip(log_ratio / scale, -1.0, 1.0), 0.0)
    return action


class HeuristicTeacher:
    """A heuristic's shares as the softmax action that gives them (never sees the hidden portfolio)."""

    def __init__(self, name: str, max_plans: int) -> None:
        self.rule, self.max_plans = HEURISTICS[name](), max_plans

    def start(self, copy: Any, seed: int) -> None:
        env = _episode_env(copy)
        self.rule.reset(env.scenario, None, seed=seed)

    def label(self, copy: Any) -> np.ndarray:
        env = _episode_env(copy)
        active = env.active_mask()
        shares = self.rule.allocate(env.reporting_stats(), env.clock(), active)
        return actions_from_shares(shares, active, env.scenario.temperature, self.max_plans)


class TiltTeacher:
    """``oracle_rank``'s true worth as a rank_residual tilt (:func:`privileged_tilt`); ``late_stages``:
    its rates after the first deep stage (:class:`agents.oracle.OracleRankParams`; "vertical": late-blind)."""

    def __init__(self, residual: RankResidualEnv, max_plans: int, late_stages: str = "plan") -> None:
        self.residual, self.max_plans = residual, max_plans
        self.oracle = OracleRankAllocator(OracleRankParams(late_stages=late_stages))

    def start(self, copy: Any, seed: int) -> None:
        env = _episode_env(copy)
        self.oracle.reset(env.scenario, env.portfolio, seed=seed)

    def target_worth(self, env: BudgetShiftEnv, stats: dict[str, np.ndarray], active: np.ndarray) -> np.ndarray:
        """The worth the label turns the head's base worth into: the true one."""
        return self.oracle.plan_worth(env.t)

    def label(self, copy: Any) -> np.ndarray:
        env = _episode_env(copy)
        stats, active = env.reporting_stats(), env.active_mask()
        base_worth = self.residual.rank.base_worth(stats, env.clock(), active)  # untilted (rank's, or bayes_rank's)
        target = self.target_worth(env, stats, active)
        return privileged_tilt(base_worth, target, active, self.residual.scale, self.max_plans)


class BayesTiltTeacher(TiltTeacher):
    """``bayes_rank``'s worth as a rank_residual tilt: ``log(bayes_rank's worth / rank's worth) / scale``
    (:func:`privileged_tilt` with bayes_rank's posterior worth in place of the true one). A distillation
    teacher: it reads the reporting only (its posterior keeps the episode's conversions, which the
    student's observation summarises), so the student learns to rank as bayes_rank does while the
    production loader keeps running rank's fill. Called once a step per copy, in step order (its
    posterior records each step's reporting)."""

    def __init__(self, residual: RankResidualEnv, max_plans: int) -> None:
        self.residual, self.max_plans = residual, max_plans
        self.bayes = BayesRankAllocator()

    def start(self, copy: Any, seed: int) -> None:
        self.bayes.reset(_episode_env(copy).scenario, None, seed=seed)

    def target_worth(self, env: BudgetShiftEnv, stats: dict[str, np.ndarray], active: np.ndarray) -> np.ndarray:
        """bayes_rank's posterior worth at this step."""
        return self.bayes.step_worth(stats, env.clock(), active)


def _teachers(
    envs: list[Any], allocator: str, max_plans: int, late_stages: str = "plan"
) -> list[HeuristicTeacher | TiltTeacher]:
    residuals = [_residual_env(e) for e in envs]
    if allocator == PRIVILEGED:
        if any(r is None for r in residuals):
            raise AgentSpecError(
                f"agent.kickstart.allocator {PRIVILEGED} teaches a rank_residual head's tilt: set agent.head.kind "
                "rank_residual, or clone a heuristic"
            )
        return [TiltTeacher(r, max_plans, late_stages) for r in residuals]
    if all(r is None for r in residuals):
        return [HeuristicTeacher(allocator, max_plans) for _ in envs]
    if allocator not in TILT_TEACHERS:
        raise AgentSpecError(
            f"a rank_residual head starts as rank itself and learns a tilt, not a heuristic's shares: set "
            f"agent.kickstart.allocator to one of {list(TILT_TEACHERS)}, or agent.kickstart=null"
        )
    if any(isinstance(r.rank, BayesRankAllocator) for r in residuals):
        raise AgentSpecError(
            f"agent.kickstart.allocator {allocator} teaches the tilt from rank's worth to its own, and "
            f"agent.head.base is bayes_rank already: set agent.head.base rank, or teach with {PRIVILEGED}"
        )
    return [BayesTiltTeacher(r, max_plans) for r in residuals]


def collect(
    vec_env: VecNormalize,
    allocator: str,
    steps: int,
    seed: int,
    player: Any = None,
    round_: int = 0,
    late_stages: str = "plan",
) -> dict[str, np.ndarray]:
    """``steps`` env steps (rounded up to whole steps of every copy) in ``vec_env``, labelled by the teacher
    ``allocator``; the teacher plays them, or ``player`` (a policy: its deterministic action) does.

    Returns per step and copy: ``obs`` (raw, the observation the action was chosen on), ``action`` (the
    teacher's label), ``reward`` (raw) and ``done``; and ``episode_return`` (raw) of every episode that
    ended. ``round_`` picks the heuristics' seed stream (round 0's is the kickstart's without rounds);
    ``late_stages`` is the privileged teacher's (:class:`TiltTeacher`).
    """
    if not isinstance(vec_env, VecNormalize) or not isinstance(vec_env.venv, DummyVecEnv):
        raise AgentSpecError(
            "agent.kickstart needs the training copies in this process (vec_env=dummy): the teacher reads "
            f"each copy's reporting stats; got {type(getattr(vec_env, 'venv', vec_env)).__name__}"
        )
    envs = vec_env.venv.envs
    n_envs = len(envs)
    rounds = -(-steps // n_envs)
    entropy = [seed, 0x4B53] if round_ == 0 else [seed, 0x4B53, round_]
    seeds = np.random.SeedSequence(entropy).generate_state(rounds * n_envs + n_envs, dtype=np.uint32)
    width = vec_env.observation_space.shape[0]
    max_plans = vec_env.action_space.shape[0]
    teachers = _teachers(envs, allocator, max_plans, late_stages)
    episodes = 0

    def start(i: int) -> None:
        nonlocal episodes
        teachers[i].start(envs[i], int(seeds[episodes]))
        episodes += 1

    vec_env.reset()
    for i in range(n_envs):
        start(i)
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
            out["action"][t, i] = teachers[i].label(e)
        play = out["action"][t]
        if player is not None:
            with th.no_grad():
                play, _ = player.predict(vec_env.normalize_obs(out["obs"][t]), deterministic=True)
        _, _, dones, _ = vec_env.step(play)
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
    """Collect ``spec.steps`` of the teacher in ``vec_env`` and clone it into ``model.policy``; then, for each
    of ``spec.dagger_rounds``, collect ``spec.steps`` more played by the clone and fit again on everything.

    Returns what ``train_summary.json`` records under ``kickstart``.
    """
    if not hasattr(model.policy, "mlp_extractor") or not hasattr(model.policy.mlp_extractor, "actor"):
        raise AgentSpecError("agent.kickstart needs the set policy of PPO or A2C (agent.policy: set)")
    start = time.perf_counter()
    parts: list[dict[str, np.ndarray]] = []
    record: list[dict[str, Any]] = []
    history: dict[str, list[float]] = {"actor_loss": [], "value_loss": []}
    collect_s = 0.0
    for k in range(1 + spec.dagger_rounds):
        began = time.perf_counter()
        parts.append(
            collect(vec_env, spec.allocator, spec.steps, seed, model.policy if k else None, k, spec.late_stages)
        )
        collect_s += time.perf_counter() - began
        obs, labels, returns, valid = [], [], [], []
        for data in parts:  # normalised with the statistics as they are now
            rounds, n_envs = data["reward"].shape
            obs.append(vec_env.normalize_obs(data["obs"].reshape(rounds * n_envs, -1)).astype(np.float32))
            labels.append(data["action"].reshape(rounds * n_envs, -1))
            rewards = vec_env.normalize_reward(data["reward"]) if vec_env.norm_reward else data["reward"]
            ret, ok = discounted_returns(rewards, data["done"], gamma)
            returns.append(ret.reshape(-1))
            valid.append(ok.reshape(-1))
        fitted = fit(
            model.policy,
            np.concatenate(obs),
            np.concatenate(labels),
            np.concatenate(returns),
            np.concatenate(valid),
            spec,
            seed + k,
        )
        del obs, labels
        for key in history:
            history[key] += fitted[key]
        ended = parts[-1]["episode_return"]
        record.append(
            {
                "player": "teacher" if k == 0 else "clone",
                "steps": int(parts[-1]["reward"].size),
                "episodes_completed": int(len(ended)),
                "mean_episode_return": float(ended.mean()) if len(ended) else None,
                "actor_loss": fitted["actor_loss"][-1],
            }
        )
    if spec.log_std is not None:
        with th.no_grad():
            model.policy.log_std.fill_(spec.log_std)
    return {
        **asdict(spec),
        "steps_collected": int(sum(r["steps"] for r in record)),
        "episodes_completed": int(len(parts[0]["episode_return"])),
        "teacher_mean_episode_return": record[0]["mean_episode_return"],
        "rounds": record,
        "actor_loss": history["actor_loss"],
        "value_loss": history["value_loss"],
        "collect_s": round(collect_s, 2),
        "wall_s": round(time.perf_counter() - start, 2),
    }
