"""The objective: deep value, discounted when the portfolio's deep CPA overshoots its target.

``score = V * min(1, (cpa_target / cpa) ** beta)`` where ``V`` is the value of every deep event
attributed to the episode (matured during it, or pending at its end and maturing within the
attribution window) and ``cpa = spend / deep conversions`` (first deep stage, same attribution).
The form is that of a public auto-bidding benchmark's CPA-constrained score.

:class:`DeepValueScore` is the reward piece handed to the env (swappable with ``_target_``): each
step pays the value matured in it (:meth:`~DeepValueScore.step_reward`), and the last step adds the
settlement of the events still pending and the penalty (:meth:`~DeepValueScore.settle`,
:meth:`~DeepValueScore.final_reward`), so an episode's return equals its score. The simulation state
hands it per-plan arrays and knows nothing of the formula.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class ScoreParts:
    score: float  # the episode's score (= its return)
    value: float  # V: matured + settled deep value, currency
    matured_value: float  # deep value that matured during the episode
    settled_value: float  # pending deep value settled within the attribution window
    spend: float  # total spend net of compensation (the advertiser's cost), currency
    compensation: float  # what the platform credited back to overshooting learned plans, currency
    deep_conversions: float  # first-stage deep events attributed (matured + settled)
    cpa: float  # spend / deep_conversions (inf when there are none and spend > 0)
    cpa_target: float
    penalty: float  # min(1, (cpa_target / cpa) ** beta)

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


@dataclass(frozen=True)
class DeepValueScore:
    """Per-step reward and end-of-episode settlement for ``score = V * min(1, (target/cpa)^beta)``."""

    beta: float = 2.0

    def penalty(self, spend: float, deep_conversions: float, cpa_target: float) -> tuple[float, float]:
        """``(cpa, penalty)``: no spend is no overshoot; spend without deep conversions scores 0."""
        if spend <= 0.0:
            return 0.0, 1.0
        if deep_conversions <= 0.0:
            return float("inf"), 0.0
        cpa = spend / deep_conversions
        # Below the target there is no discount; testing first keeps (target / cpa) ** beta from overflowing.
        return cpa, 1.0 if cpa <= cpa_target else (cpa_target / cpa) ** self.beta

    def step_reward(self, matured_value: np.ndarray) -> np.ndarray:
        """A step's reward: the value of the deep events that matured in it, summed over plans.

        :param matured_value: (..., n_plans) currency; returns (...).
        """
        return np.add.reduce(matured_value, axis=-1)

    def settle(
        self,
        matured_value: np.ndarray,
        matured_deep: np.ndarray,
        spend: np.ndarray,
        pending: np.ndarray,
        stage_value: np.ndarray,
        cpa_target: float,
        compensation: np.ndarray | None = None,
    ) -> ScoreParts:
        """Score parts of an episode so far, settling the deep events still pending.

        :param matured_value: (n_plans,) deep value matured so far, currency.
        :param matured_deep: (n_plans,) first-stage deep events matured so far.
        :param spend: (n_plans,) spend so far, currency.
        :param pending: (n_plans, n_stages, steps) deep events scheduled from now on, within the
            attribution window (the simulator drops the later ones).
        :param stage_value: (n_plans, n_stages) currency per event.
        :param cpa_target: the portfolio's target cost per deep conversion.
        :param compensation: (n_plans,) what the platform credited back (overshooting learned plans),
            currency: the advertiser's cost is its spend net of it.
        """
        settled = pending.sum(axis=2).astype(np.float64)  # (P, S)
        settled_value = float((settled * stage_value).sum())
        matured = float(matured_value.sum())
        deep_conversions = float(matured_deep.sum() + settled[:, 0].sum())
        credited = 0.0 if compensation is None else float(compensation.sum())
        total_spend = float(spend.sum()) - credited
        value = matured + settled_value
        cpa, penalty = self.penalty(total_spend, deep_conversions, cpa_target)
        return ScoreParts(
            score=value * penalty,
            value=value,
            matured_value=matured,
            settled_value=settled_value,
            spend=total_spend,
            compensation=credited,
            deep_conversions=deep_conversions,
            cpa=cpa,
            cpa_target=cpa_target,
            penalty=penalty,
        )

    def final_reward(self, parts: ScoreParts) -> float:
        """The last step's reward on top of what matured in it: the rest of the score."""
        return parts.score - parts.matured_value
