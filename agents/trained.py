"""A trained Stable-Baselines3 learner as an allocator: the policy of a training run folder.

``TrainedAllocator(run_dir)`` loads what :mod:`experiments.train` left there (``model.zip``, its
``vecnormalize.npz`` and the resolved ``config.yaml``) with :func:`agents.sb3.load_run`: each file is
checked against the run's SHA-256 manifest first (corruption and accidental edits, not tampering:
the manifest sits beside them) and nothing is unpickled. It turns reporting stats into shares exactly
as the training env did: :func:`envs.features.build_observation` (the env's own observation
function), the saved VecNormalize observation normalisation (frozen), the policy's deterministic
action, clipped to [-1, 1], times the scenario's temperature, and
:func:`envs.shares.masked_softmax` over the active plans (the env's ``action_to_shares``).

Portfolios of another size: observations are built at the model's ``max_plans`` whenever the
portfolio has at most that many plans (padded plans are inactive, as in training). A set policy
(``policy: set``) also serves *wider* portfolios: the observation is then built at the portfolio's
own width, normalised with the plan-pooled statistics tiled to that width
(:meth:`agents.sb3.PlanPooledRunningMeanStd.stats_for`), and scored by the policy's
``plan_actions`` (:mod:`agents.policies`). A flat MLP has one input per plan slot and refuses them.

A run with a ``rank_residual`` head (:mod:`agents.residual`) turns the clipped action into a tilt of
``rank``'s worth and returns rank's fill, exactly as :class:`agents.residual.RankResidualEnv` did in
training; ``reset`` then resets rank's capacity estimates for the episode's scenario.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch as th

from agents.base import Allocator
from agents.residual import head_spec, tilt_from_action
from agents.sb3 import PlanPooledRunningMeanStd, load_run
from envs.features import N_GLOBAL_FEATURES, N_PLAN_FEATURES, Clock, build_observation
from envs.shares import masked_softmax


class TrainedAllocator(Allocator):
    """Shares from a trained SB3 policy.

    :param run_dir: a training run folder of :mod:`experiments.train`.
    :param deterministic: use the policy's deterministic action (the Gaussian mean, the actor's tanh);
        otherwise sample it (seeded by ``reset``'s ``seed``).
    :param which: ``"final"`` (``model.zip``) or ``"best"`` (``best_model.zip``, the best evaluation).
    """

    name = "trained"

    def __init__(self, run_dir: str | Path, deterministic: bool = True, which: str = "final") -> None:
        self.run_dir = Path(run_dir)
        self.config, scenario, self.model, self.vec_normalize = load_run(self.run_dir, which)
        self.agent: dict[str, Any] = self.config["agent"]
        self.model.policy.set_training_mode(False)
        width = self.model.observation_space.shape[0]
        self.max_plans = (width - N_GLOBAL_FEATURES) // N_PLAN_FEATURES
        self.set_policy = self.agent["policy"] == "set"
        self.recurrent = self.agent["algo"] == "RecurrentPPO"
        self.deterministic = deterministic
        self.temperature = scenario.temperature
        self.head = head_spec(self.agent.get("head"))
        self.rank = self.head.tilted_fill() if self.head.residual else None
        self._state: Any = None
        self._episode_start = np.ones(1, dtype=bool)

    def reset(self, scenario, portfolio=None, seed: int | None = None) -> None:
        # The env turns actions into shares with its own scenario's temperature.
        self.temperature = scenario.temperature
        if self.rank is not None:
            self.rank.reset(scenario)  # never the portfolio: rank reads the reporting only
        self._state = None
        self._episode_start = np.ones(1, dtype=bool)
        if seed is not None and not self.deterministic:
            th.manual_seed(seed)

    def allocate(self, stats: Mapping[str, np.ndarray], clock: Clock, active: np.ndarray) -> np.ndarray:
        active = np.asarray(active, dtype=bool)
        n_plans = len(active)
        if n_plans <= self.max_plans:
            action = self._predict(build_observation(stats, clock, self.max_plans, active))
        else:
            action = self._predict_wide(build_observation(stats, clock, n_plans, active), n_plans)
        if self.rank is not None:
            self.rank.tilt = tilt_from_action(action[:n_plans], self.head.scale)
            return self.rank.allocate(stats, clock, active)
        logits = np.clip(np.asarray(action, dtype=np.float64)[:n_plans], -1.0, 1.0) * self.temperature
        return masked_softmax(logits, active)

    def normalize(self, obs: np.ndarray) -> np.ndarray:
        """The observation as the policy saw it in training (frozen VecNormalize statistics)."""
        return self.vec_normalize.normalize_obs(obs)

    def _predict(self, obs: np.ndarray) -> np.ndarray:
        obs = self.normalize(obs[None])
        if self.recurrent:
            action, self._state = self.model.predict(
                obs, state=self._state, episode_start=self._episode_start, deterministic=self.deterministic
            )
            self._episode_start = np.zeros(1, dtype=bool)
        else:
            action, _ = self.model.predict(obs, deterministic=self.deterministic)
        return action[0]

    def _predict_wide(self, obs: np.ndarray, n_plans: int) -> np.ndarray:
        if not self.set_policy:
            raise ValueError(
                f"the portfolio has {n_plans} plans but the {self.agent['policy']} policy of "
                f"{self.run_dir} was trained on max_plans={self.max_plans}; only policy: set runs "
                "on wider portfolios"
            )
        if not self.deterministic:
            raise ValueError("a set policy runs on portfolios wider than its training one with deterministic=True only")
        vn = self.vec_normalize
        if vn.norm_obs:
            if not isinstance(vn.obs_rms, PlanPooledRunningMeanStd):
                raise ValueError(f"{self.run_dir}'s normalisation is per plan slot; it cannot widen to {n_plans} plans")
            mean, var = vn.obs_rms.stats_for(n_plans)
            obs = np.clip((obs - mean) / np.sqrt(var + vn.epsilon), -vn.clip_obs, vn.clip_obs).astype(np.float32)
        with th.no_grad():
            return self.model.policy.plan_actions(th.as_tensor(obs[None]))[0].numpy()
