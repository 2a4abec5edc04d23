"""The score by hand: ``score = V * min(1, (cpa_target / cpa) ** beta)`` on its edge cases."""

from __future__ import annotations

import math

import numpy as np
import pytest

from envs.objective import DeepValueScore


def _settle(objective: DeepValueScore, *, matured_value, matured_deep, spend, pending, stage_value, target):
    return objective.settle(
        matured_value=np.asarray(matured_value, dtype=float),
        matured_deep=np.asarray(matured_deep, dtype=float),
        spend=np.asarray(spend, dtype=float),
        pending=np.asarray(pending, dtype=np.int32),
        stage_value=np.asarray(stage_value, dtype=float),
        cpa_target=target,
    )


def test_no_spend_is_no_overshoot() -> None:
    assert DeepValueScore(beta=2.0).penalty(0.0, 0.0, 100.0) == (0.0, 1.0)


def test_spend_without_deep_conversions_scores_zero() -> None:
    cpa, penalty = DeepValueScore(beta=2.0).penalty(500.0, 0.0, 100.0)
    assert math.isinf(cpa) and penalty == 0.0


def test_cpa_at_or_below_target_is_not_discounted() -> None:
    objective = DeepValueScore(beta=2.0)
    assert objective.penalty(1000.0, 10.0, 100.0) == (100.0, 1.0)
    assert objective.penalty(500.0, 10.0, 100.0) == (50.0, 1.0)


def test_cpa_twice_the_target_quarters_the_score_at_beta_2() -> None:
    # 2 plans, 2 stages; 1 first-stage event matured, 1 pending (settled), values 100 and 50.
    parts = _settle(
        DeepValueScore(beta=2.0),
        matured_value=[100.0, 0.0],
        matured_deep=[1.0, 0.0],
        spend=[300.0, 100.0],
        pending=[[[0, 0], [0, 0]], [[1, 0], [0, 1]]],  # (P, S, steps)
        stage_value=[[100.0, 40.0], [100.0, 50.0]],
        target=100.0,
    )
    assert parts.value == 100.0 + 100.0 + 50.0
    assert parts.settled_value == 150.0
    assert parts.deep_conversions == 2.0  # first stage only: matured 1 + settled 1
    assert parts.cpa == 200.0
    assert parts.penalty == 0.25
    assert parts.score == 250.0 * 0.25


def test_a_large_beta_far_below_target_does_not_overflow() -> None:
    # (target / cpa) ** beta would overflow a float: below the target there is nothing to compute.
    assert DeepValueScore(beta=20.0).penalty(1e-4, 1.0, 1e12) == (1e-4, 1.0)  # (1e16) ** 20 overflows
    cpa, penalty = DeepValueScore(beta=20.0).penalty(1e12, 1.0, 1e-3)
    assert cpa == 1e12 and penalty == (1e-3 / 1e12) ** 20  # far above target: a tiny, finite discount


def test_the_last_reward_completes_the_score() -> None:
    objective = DeepValueScore(beta=2.0)
    parts = _settle(
        objective,
        matured_value=[300.0],
        matured_deep=[3.0],
        spend=[900.0],
        pending=[[[0]]],
        stage_value=[[100.0]],
        target=200.0,
    )
    assert parts.score == pytest.approx(300.0 * (200.0 / 300.0) ** 2)
    assert objective.final_reward(parts) + parts.matured_value == parts.score
