"""The objective: deep value, discounted when the portfolio's deep CPA overshoots its target.

``score = V * min(1, (cpa_target / cpa) ** beta)`` where ``V`` is the value of every deep event
attributed to the episode (matured during it, or pending at its end and maturing within the
attribution window) and ``cpa = spend / deep conversions`` (first deep stage, same attribution).
The form is that of a public auto-bidding benchmark's CPA-constrained score.

:class:`DeepValueScore` is the reward piece handed to the env (swappable with ``_target_``): each
step pays the value matured in it, and the last step adds the settlement and the penalty, so an
episode's return equals its score.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class ScoreParts:
    score: float  # the episode's score (= its return)
    value: float  # V: matured + settled deep value, currency
    matured_value: float  # deep value that matured during the episode
    settled_value: float  # pending deep value settled within the attribution window
    spend: float  # total spend, currency
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
        return cpa, min(1.0, (cpa_target / cpa) ** self.beta)

    def settle(self, matured_value: float, settled_value: float, spend: float, deep_conversions: float,
               cpa_target: float) -> ScoreParts:
        value = matured_value + settled_value
        cpa, penalty = self.penalty(spend, deep_conversions, cpa_target)
        return ScoreParts(score=value * penalty, value=value, matured_value=matured_value,
                          settled_value=settled_value, spend=spend, deep_conversions=deep_conversions,
                          cpa=cpa, cpa_target=cpa_target, penalty=penalty)

    def final_reward(self, parts: ScoreParts) -> float:
        """The last step's reward on top of what matured in it: the rest of the score."""
        return parts.score - parts.matured_value
