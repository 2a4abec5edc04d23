"""A learned correction of ``rank``: the policy re-weights rank's ranking, rank's fill spends the budget.

An agent config with ``head: {kind: rank_residual, scale: s}`` trains a policy whose action is not a
softmax over plans but a *tilt* of ``rank``'s ranking (:class:`agents.heuristics.RankAllocator`): its
action ``a`` (one entry per plan slot, clipped to [-1, 1]) multiplies each plan's worth by
``exp(s * a)`` before rank's fill walks the plans from the best down, each funded with ``headroom``
x the spend it can absorb. Action 0 is ``rank`` exactly; ``s = 2`` lets the policy move a plan's worth
by up to ``e^2 ~ 7.4`` either way. Why: a per-plan softmax gives the best plans a share that grows
with their score whether or not they can spend it, and the softmax generalist stays 0.12-0.28
normalised below ``rank`` (README, "Where the learned agent stands"); fill-to-capacity is a
sequential rule over a ranking, which this head keeps and the policy only has to correct.

- :class:`agents.heuristics.TiltedRank`: ``rank`` with a per-plan ``tilt`` on its worth (``None``: rank
  itself), in the NumPy-only heuristics module so that the production loader can run it.
- :class:`RankResidualEnv`: the Gymnasium wrapper training runs in: ``step(action)`` tilts, fills and
  steps the inner env with the shares (``BudgetShiftEnv.step_shares``; over a
  :class:`envs.family.FamilyEnv` the family's reward scale is applied as its ``step`` does). Observation,
  action space and info are the inner env's. Rank learns capacities over an episode, so the wrapper
  resets it with every episode's scenario (never its portfolio: rank reads the reporting only).
- :func:`head_spec`: the validated ``head`` node of an agent config. Its optional ``fill`` overrides
  rank's knobs (:class:`agents.heuristics.RankParams`, e.g. ``{headroom: 1.1}``) for the head's fill
  only: the training wrapper, the evaluation allocator and the exported bundle (manifest
  ``head.rank``) all run the head's knobs, while the heuristic ``rank`` keeps its own.
- ``head.base`` (:data:`BASES`): the ranking the action tilts, ``rank`` (default) or ``bayes_rank``
  (:class:`agents.heuristics.TiltedBayesRank`: ``bayes_rank``'s posterior worth and fill, ``fill``
  then overrides its knobs). The privileged teacher then labels the tilt that makes bayes_rank's
  worth the true one. Research only: its fill keeps the episode's reporting, which the production
  loader does not, so export refuses such a run (the training run ends without a bundle, with a
  warning). Over three training seeds it was level with or below ``bayes_rank`` itself (README,
  "Where the learned agent stands").

The evaluation allocator (:class:`agents.trained.TrainedAllocator`) runs the same tilt and fill.
Production: :mod:`agents.export` writes the graph's tilt (output ``tilt``) and the fill's knobs and
traffic curves (manifest ``head``); :class:`agents.allocator.Bundle` runs rank's fill with NumPy and
returns the fill's capacity estimates as the allocation's ``state``, which the next hour's call takes
back (the fill learns capacities over the day; without the state it starts afresh). Export replays its
parity episode through the loader that way and refuses a bundle whose fill differs from training's.
Compliance caps: a family-trained bundle has none (as for softmax bundles), so its fill caps no
vertical where the training env's drawn scenarios sometimes did.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

import gymnasium as gym
import numpy as np

from agents.allocator import MAX_TILT_SCALE
from agents.heuristics import BayesRankParams, FillParams, ParamsError, RankParams, Tilted, TiltedBayesRank, TiltedRank
from envs.budget_env import BudgetShiftEnv
from envs.family import FamilyEnv

#: ``head.kind`` values: ``softmax`` (the env's own action: logits of a masked softmax) or ``rank_residual``.
HEAD_KINDS = ("softmax", "rank_residual")
HEAD_KEYS = ("kind", "scale", "fill", "base")
#: A rank_residual head's base ranking (``head.base``): its tilted fill and that fill's knobs. ``rank`` (the
#: default, the one production runs) or ``bayes_rank`` (research only: export refuses it).
BASES: dict[str, tuple[type[Tilted], type[FillParams]]] = {
    "rank": (TiltedRank, RankParams),
    "bayes_rank": (TiltedBayesRank, BayesRankParams),
}
#: The kickstart teacher of a rank_residual head (agents/kickstart.py): oracle_rank, which knows the hidden
#: portfolio, labels each state with the tilt that makes rank's worth the true one.
PRIVILEGED_TEACHER = "oracle_rank"
#: The teachers of a rank_residual head's tilt (``agent.kickstart.allocator``): the privileged one, and
#: ``bayes_rank``, distilled (its label is the tilt that turns rank's worth into bayes_rank's posterior
#: worth: a reporting-only ranker whose own fill has no production path, learnt into one that has).
DISTILLED_TEACHER = "bayes_rank"
TILT_TEACHERS = (PRIVILEGED_TEACHER, DISTILLED_TEACHER)


class HeadSpecError(ValueError):
    """An agent's ``head`` node that names an unknown kind or a bad scale."""


@dataclass(frozen=True)
class HeadSpec:
    kind: str = "softmax"
    scale: float = 2.0  # rank_residual: worth x exp(scale x action)
    fill: tuple[tuple[str, float], ...] = ()  # rank_residual: the fill's knobs that differ from its base's defaults
    base: str = "rank"  # rank_residual: the ranking the action tilts (BASES)

    @property
    def residual(self) -> bool:
        return self.kind == "rank_residual"

    @property
    def rank_params(self) -> FillParams:
        """The knobs of the head's fill: its base's params (:class:`agents.heuristics.RankParams` for
        ``rank``) with ``fill``'s overrides."""
        return BASES[self.base][1](**dict(self.fill))

    def tilted_fill(self) -> Tilted:
        """A fresh tilted fill of the head's base with the head's knobs (reset it per episode)."""
        return BASES[self.base][0](self.rank_params)


def head_spec(node: Mapping[str, Any] | None) -> HeadSpec:
    """The validated ``head`` node of an agent config (None: the softmax head); errors name the field."""
    if node is None:
        return HeadSpec()
    if not isinstance(node, Mapping):
        raise HeadSpecError(f"agent.head must be a mapping or null, got {node!r}")
    unknown = sorted(set(node) - set(HEAD_KEYS))
    if unknown:
        raise HeadSpecError(f"unknown field agent.head.{unknown[0]}; expected one of {list(HEAD_KEYS)}")
    kind = node.get("kind", "softmax")
    if kind not in HEAD_KINDS:
        raise HeadSpecError(f"agent.head.kind must be one of {list(HEAD_KINDS)}, got {kind!r}")
    scale = node.get("scale", HeadSpec.scale)
    if isinstance(scale, bool) or not isinstance(scale, int | float) or not (0 < scale <= MAX_TILT_SCALE):
        raise HeadSpecError(f"agent.head.scale must be a number in (0, {MAX_TILT_SCALE:g}], got {scale!r}")
    base = node.get("base", HeadSpec.base)
    if base not in BASES:
        raise HeadSpecError(f"agent.head.base must be one of {list(BASES)}, got {base!r}")
    if base != HeadSpec.base and kind != "rank_residual":
        raise HeadSpecError(f"agent.head.base sets a rank_residual head's ranking; head kind {kind!r} has none")
    return HeadSpec(kind=kind, scale=float(scale), fill=_fill(node.get("fill"), kind, base), base=base)


def _fill(node: Any, kind: str, base: str = "rank") -> tuple[tuple[str, float], ...]:
    """The validated ``head.fill`` node: the base's fill knobs (``rank``'s:
    :class:`agents.heuristics.RankParams`) to override."""
    if node is None:
        return ()
    if not isinstance(node, Mapping):
        raise HeadSpecError(f"agent.head.fill must be a mapping of {base}'s knobs or null, got {node!r}")
    if node and kind != "rank_residual":
        raise HeadSpecError(f"agent.head.fill sets a rank_residual head's fill; head kind {kind!r} has none")
    params = BASES[base][1]
    known = [f.name for f in fields(params)]
    unknown = sorted(set(node) - set(known))
    if unknown:
        raise HeadSpecError(f"unknown field agent.head.fill.{unknown[0]}; expected one of {known}")
    for name, value in node.items():
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise HeadSpecError(f"agent.head.fill.{name} must be a number, got {value!r}")
    overrides = {name: float(value) for name, value in node.items()}
    try:
        params(**overrides)  # the base's own range checks
    except ParamsError as exc:  # its message names agent.params.<name>: the heuristic's node
        raise HeadSpecError(str(exc).replace("agent.params.", "agent.head.fill.", 1)) from None
    return tuple(sorted(overrides.items()))


def tilt_from_action(action: np.ndarray, scale: float) -> np.ndarray:
    """The worth multipliers ``exp(scale * clip(action, -1, 1))`` (float64, the action's shape)."""
    return np.exp(scale * np.clip(np.asarray(action, dtype=np.float64), -1.0, 1.0))


class RankResidualEnv(gym.Wrapper):
    """The training env of a ``rank_residual`` head (module docstring): action -> tilt -> rank's fill."""

    def __init__(
        self,
        env: BudgetShiftEnv | FamilyEnv,
        scale: float = HeadSpec.scale,
        params: FillParams | None = None,
        base: str = HeadSpec.base,
    ) -> None:
        if not isinstance(env, BudgetShiftEnv | FamilyEnv):
            raise TypeError(f"RankResidualEnv wraps a BudgetShiftEnv or FamilyEnv, got {type(env).__name__}")
        if base not in BASES:
            raise ValueError(f"base must be one of {list(BASES)}, got {base!r}")
        super().__init__(env)
        self.scale = float(scale)
        self.rank = BASES[base][0](params)  # params: the head's fill knobs (None: the base's defaults)
        self.last_shares: np.ndarray | None = None

    def _inner(self) -> BudgetShiftEnv:
        inner = self.env.env if isinstance(self.env, FamilyEnv) else self.env
        if inner is None:
            raise RuntimeError("call reset() before step()")
        return inner

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        obs, info = self.env.reset(seed=seed, options=options)
        self.rank.reset(self._inner().scenario)
        return obs, info

    def step(self, action: np.ndarray):
        inner = self._inner()
        if np.shape(action) != self.action_space.shape:
            raise ValueError(f"action must have shape {self.action_space.shape}, got {np.shape(action)}")
        self.rank.tilt = tilt_from_action(action[: inner.n_plans], self.scale)
        shares = self.rank.allocate(inner.reporting_stats(), inner.clock(), inner.active_mask())
        self.last_shares = shares  # before the env's limits and caps: what the production fill returns
        obs, reward, terminated, truncated, info = inner.step_shares(shares)
        if isinstance(self.env, FamilyEnv):
            reward *= self.env.reward_scale
        return obs, reward, terminated, truncated, info
