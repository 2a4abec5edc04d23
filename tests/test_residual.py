"""The rank_residual head (agents.residual): a policy that tilts rank's ranking, rank's fill spends.

Action 0 must be ``rank`` exactly (same shares every step, same score), in the training wrapper and
in the evaluation allocator; a tilt must reorder the fill; bad ``head`` nodes, a kickstart and the
native batch are refused by name; a trained run evaluates through the same tilt and fill as it
trained, and export refuses it, saying why.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from agents.heuristics import RankAllocator
from agents.residual import HeadSpec, RankResidualEnv, TiltedRank, head_spec, tilt_from_action
from agents.sb3 import AgentSpecError, check_agent, make_envs
from envs.budget_env import BudgetShiftEnv
from envs.family import FamilyEnv
from envs.scenario import load_scenario
from experiments.evaluate import evaluate_allocator


@pytest.mark.parametrize(
    "node, message",
    [
        ({"kind": "tilt"}, "agent.head.kind must be one of"),
        ({"kind": "rank_residual", "scale": 0}, "agent.head.scale must be a finite number > 0"),
        ({"kind": "rank_residual", "scale": float("inf")}, "agent.head.scale"),
        ({"kind": "rank_residual", "scale": True}, "agent.head.scale"),
        ({"kind": "rank_residual", "temperature": 2}, "unknown field agent.head.temperature"),
        ("rank_residual", "agent.head must be a mapping or null"),
    ],
)
def test_a_bad_head_is_refused_by_name(node, message):
    with pytest.raises(ValueError, match=message):
        head_spec(node)


def test_the_default_head_is_the_softmax():
    assert head_spec(None) == HeadSpec() and not head_spec(None).residual
    assert head_spec({"kind": "rank_residual"}) == HeadSpec("rank_residual", 2.0)


def test_the_tilt_clips_the_action_and_keeps_the_portfolio_slots():
    tilt = tilt_from_action(np.array([0.0, 1.0, -3.0, 0.5, 9.0], dtype=np.float32), 4, 2.0)
    np.testing.assert_allclose(tilt, np.exp([0.0, 2.0, -2.0, 1.0]))


def _play(env, action_fn, seed):
    obs, _ = env.reset(seed=seed)
    done, total, shares = False, 0.0, []
    while not done:
        obs, reward, done, _, info = env.step(action_fn(obs))
        total += reward
        shares.append(info["shares"])
    return total, np.array(shares)


def test_action_zero_is_rank_exactly():
    scenario = load_scenario("small")
    wrapped = RankResidualEnv(BudgetShiftEnv(scenario))
    zero = np.zeros(wrapped.action_space.shape, dtype=np.float32)
    total, shares = _play(wrapped, lambda obs: zero, seed=3)

    rank, env = RankAllocator(), BudgetShiftEnv(scenario)
    env.reset(seed=3)
    rank.reset(scenario)
    done, ref_total, ref_shares = False, 0.0, []
    while not done:
        given = rank.allocate(env.reporting_stats(), env.clock(), env.active_mask())
        _, reward, done, _, info = env.step_shares(given)
        ref_total += reward
        ref_shares.append(info["shares"])
    assert total == ref_total
    np.testing.assert_array_equal(shares, np.array(ref_shares))


def test_a_tilt_reorders_the_fill():
    scenario = load_scenario("small")
    env = BudgetShiftEnv(scenario)
    env.reset(seed=0)
    stats, clock, active = env.reporting_stats(), env.clock(), env.active_mask()
    rank = TiltedRank()
    rank.reset(scenario)
    plain = rank.allocate(stats, clock, active)
    last = int(np.flatnonzero(active)[-1])
    rank.reset(scenario)
    rank.tilt = np.where(np.arange(scenario.n_plans) == last, np.e**2, 1.0)
    tilted = rank.allocate(stats, clock, active)
    # Before any capacity is known, the plan walked first takes all its vertical allows.
    assert tilted[last] > plain[last] and tilted[last] == tilted.max()
    rank.reset(scenario)
    rank.tilt = np.ones(scenario.n_plans - 1)
    with pytest.raises(ValueError, match="tilt has shape"):
        rank.allocate(stats, clock, active)


def test_the_wrapper_over_a_family_scales_rewards_like_the_family_env():
    env = RankResidualEnv(FamilyEnv("finance"))
    _, info = env.reset(seed=1)
    assert env.rank.scenario is env.env.env.scenario  # rank is reset with each drawn scenario
    inner_before = env.env.env.episode_return
    _, reward, _, _, step_info = env.step(np.zeros(env.action_space.shape, dtype=np.float32))
    assert reward == pytest.approx((env.env.env.episode_return - inner_before) * info["reward_scale"])
    with pytest.raises(ValueError, match="action must have shape"):
        env.step(np.zeros(3, dtype=np.float32))


def test_a_kickstart_and_the_native_batch_are_refused():
    agent = {"name": "r", "kind": "sb3", "algo": "PPO", "policy": "set", "n_envs": 2}
    check_agent({**agent, "head": {"kind": "rank_residual"}})
    with pytest.raises(AgentSpecError, match="kickstart=null"):
        check_agent({**agent, "head": {"kind": "rank_residual"}, "kickstart": {"allocator": "boost"}})
    with pytest.raises(AgentSpecError, match="agent.head.kind"):
        check_agent({**agent, "head": {"kind": "bad"}})
    with pytest.raises(AgentSpecError, match="vec_env=dummy"):
        make_envs(load_scenario("small"), 2, 0, "native", head=HeadSpec("rank_residual"))


@pytest.mark.slow
def test_a_residual_run_evaluates_as_it_trained_and_is_not_exported(tmp_path):
    from agents.export import ExportError, export_bundle
    from agents.trained import TrainedAllocator
    from experiments.train import train
    from tests.test_family import _family_run

    summary = train(_family_run("+agent.head={kind: rank_residual, scale: 2.0}"), tmp_path)
    assert summary["bundle"] is None  # refused by export, logged, training kept
    with pytest.raises(ExportError, match="rank_residual head"):
        export_bundle(tmp_path, tmp_path / "bundle")

    trained = TrainedAllocator(tmp_path)
    assert trained.rank is not None
    scenario = load_scenario("small")
    score = evaluate_allocator(trained, scenario, [5])[0]["score"]
    # The same episode in the training wrapper, driven by the same deterministic policy.
    env = RankResidualEnv(BudgetShiftEnv(dataclasses.replace(scenario, max_plans=trained.max_plans)))
    obs, _ = env.reset(seed=5)
    done = False
    while not done:
        action = trained.model.predict(trained.normalize(obs[None]), deterministic=True)[0][0]
        obs, _, done, _, info = env.step(action)
    assert info["score"]["score"] == pytest.approx(score, rel=1e-12)
