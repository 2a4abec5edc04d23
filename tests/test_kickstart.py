"""Kickstart (agents.kickstart): a heuristic's behaviour cloned into the set policy before PPO.

The action that stands for a heuristic's shares must give those shares back through the env's
softmax; the returns the critic is fitted to stop at episode ends and exist only for episodes that
ended; cloning moves the policy's mean towards the teacher's actions, reproducibly; bad specs and
vector envs the heuristic cannot read are refused by name; a kickstarted training run records it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch as th

from agents.heuristics import RankAllocator, TiltedBayesRank
from agents.kickstart import (
    PRIVILEGED,
    BayesTiltTeacher,
    KickstartSpec,
    TiltTeacher,
    actions_from_shares,
    collect,
    discounted_returns,
    kickstart,
    kickstart_spec,
    privileged_tilt,
)
from agents.oracle import OracleRankAllocator, OracleRankParams
from agents.residual import HeadSpec, tilt_from_action
from agents.sb3 import AgentSpecError, build_model, build_vec_normalize, make_envs
from envs.family import load_family
from envs.scenario import load_scenario
from envs.shares import masked_softmax

ROOT = Path(__file__).resolve().parent.parent


def test_actions_give_the_heuristics_shares_back_through_the_softmax():
    rng = np.random.default_rng(0)
    temperature = 5.0
    for n, max_plans in [(1, 4), (6, 8), (30, 96)]:
        active = rng.random(n) < 0.8
        active[0] = True
        weights = np.where(active, rng.lognormal(0.0, 1.0, n), 0.0)
        shares = weights / weights.sum()
        action = actions_from_shares(shares, active, temperature, max_plans)
        assert action.shape == (max_plans,) and action.dtype == np.float32
        assert action.max() == pytest.approx(1.0) and action.min() >= -1.0
        assert np.all(action[n:] == 0.0) and np.all(action[:n][~active] == 0.0)
        back = masked_softmax(action[:n].astype(np.float64) * temperature, active)
        np.testing.assert_allclose(back, shares, rtol=1e-5, atol=1e-9)
    # A share of 0, or below exp(-2 T) of the largest, gets the smallest action the box allows.
    action = actions_from_shares(np.array([0.7, 0.3, 0.0, 1e-9]), np.ones(4, dtype=bool), temperature, 4)
    assert action[2] == -1.0 and action[3] == -1.0 and -1.0 < action[1] < 1.0


def test_returns_stop_at_episode_ends_and_need_a_collected_end():
    rewards = np.array([[1.0, 1.0], [2.0, 1.0], [3.0, 1.0], [4.0, 1.0]])
    dones = np.array([[False, False], [True, False], [False, False], [False, True]])
    target, valid = discounted_returns(rewards, dones, gamma=0.5)
    # Copy 0: an episode of steps 0-1, then one still running at the end (steps 2-3: no complete return).
    np.testing.assert_allclose(target[:2, 0], [1.0 + 0.5 * 2.0, 2.0])
    assert valid[:2, 0].all() and not valid[2:, 0].any()
    # Copy 1: one episode of four steps that ended on the last one.
    np.testing.assert_allclose(target[:, 1], [1.875, 1.75, 1.5, 1.0])
    assert valid[:, 1].all()


@pytest.mark.parametrize(
    ("node", "message"),
    [
        ({"allocater": "boost"}, "unknown field agent.kickstart.allocater"),
        ({"allocator": "oracle"}, "agent.kickstart.allocator must be one of"),
        ({"steps": 0}, r"agent.kickstart.steps must be an integer >= 1, got 0"),
        ({"epochs": 2.5}, r"agent.kickstart.epochs must be an integer >= 1"),
        ({"learning_rate": float("nan")}, "agent.kickstart.learning_rate must be a finite number"),
        ({"learning_rate": 0}, "agent.kickstart.learning_rate must be > 0"),
        ({"value_weight": -1}, "agent.kickstart.value_weight must be a finite number >= 0"),
        ({"log_std": "low"}, "agent.kickstart.log_std must be a finite number or null"),
        ({"log_std": float("inf")}, "agent.kickstart.log_std must be a finite number or null"),
        ({"dagger_rounds": -1}, r"agent.kickstart.dagger_rounds must be an integer >= 0, got -1"),
        ({"dagger_rounds": True}, r"agent.kickstart.dagger_rounds must be an integer >= 0"),
        ("boost", "agent.kickstart must be a mapping or null"),
        ({"allocator": PRIVILEGED, "late_stages": "all"}, r"agent.kickstart.late_stages must be one of \['plan'"),
        ({"allocator": "boost", "late_stages": "vertical"}, "agent.kickstart.late_stages is the privileged"),
    ],
)
def test_a_bad_spec_is_refused_by_name(node, message):
    with pytest.raises(AgentSpecError, match=message):
        kickstart_spec(node)


def test_the_defaults_and_null():
    assert kickstart_spec(None) is None
    assert kickstart_spec({}) == KickstartSpec()
    assert kickstart_spec({"allocator": "thompson", "steps": 10}).allocator == "thompson"
    assert kickstart_spec({"allocator": PRIVILEGED, "dagger_rounds": 2}).dagger_rounds == 2


AGENT = {
    "name": "generalist",
    "kind": "sb3",
    "algo": "PPO",
    "policy": "set",
    "n_envs": 2,
    "hyperparams": {"n_steps": 32, "batch_size": 64, "n_epochs": 1, "gamma": 0.99},
    "policy_kwargs": {"embed_arch": [16], "net_arch": {"pi": [16], "vf": [16]}, "logprob_plans": 24},
    "normalize": {"norm_obs": True, "norm_reward": True, "clip_obs": 10.0, "gamma": 0.99},
}


def family_learner(seed: int = 0, head: HeadSpec | None = None):
    family = load_family("finance")
    scenario = load_scenario("default")
    venv = build_vec_normalize(make_envs(scenario, 2, seed, "dummy", family, head), AGENT, family.max_plans)
    return build_model(AGENT, venv, seed), venv


def imitation_error(policy, obs: np.ndarray, actions: np.ndarray) -> float:
    with th.no_grad():
        scores, mask = policy.mlp_extractor.actor(th.as_tensor(obs))
    m = mask.numpy()
    return float((((scores.squeeze(-1).numpy() - actions) ** 2) * m).sum() / m.sum())


@pytest.fixture
def one_torch_thread():
    """Training runs torch on ``torch_threads`` (1) threads; with more, a loaded machine may split sums differently."""
    threads = th.get_num_threads()
    th.set_num_threads(1)
    yield
    th.set_num_threads(threads)


def test_cloning_moves_the_policy_to_the_teacher_reproducibly(one_torch_thread):
    spec = KickstartSpec(allocator="boost", steps=600, epochs=4, batch_size=64)
    runs = []
    for _ in range(2):
        model, venv = family_learner()
        before = {k: v.clone() for k, v in model.policy.state_dict().items()}
        summary = kickstart(model, venv, spec, seed=3, gamma=0.99)
        runs.append((model, venv, before, summary))
    (model, venv, before, summary), (model2, _, _, summary2) = runs
    assert summary["steps_collected"] == 600 and summary["episodes_completed"] >= 1
    assert summary["actor_loss"][-1] < 0.5 * summary["actor_loss"][0]
    assert summary["value_loss"][-1] < summary["value_loss"][0]
    for key, value in model.policy.state_dict().items():  # same seed, same weights
        th.testing.assert_close(value, model2.policy.state_dict()[key], rtol=0, atol=0)
    assert summary["actor_loss"] == summary2["actor_loss"]
    th.testing.assert_close(model.policy.log_std, before["log_std"])  # the exploration noise is PPO's to set

    # On fresh states of the teacher (new episodes), the clone is far closer to it than the untrained policy.
    fresh = collect(venv, "boost", 200, seed=99)
    obs = venv.normalize_obs(fresh["obs"].reshape(-1, fresh["obs"].shape[-1])).astype(np.float32)
    actions = fresh["action"].reshape(-1, fresh["action"].shape[-1])
    untrained, _ = family_learner()
    assert imitation_error(model.policy, obs, actions) < 0.5 * imitation_error(untrained.policy, obs, actions)


def test_log_std_sets_the_exploration_ppo_starts_from(one_torch_thread):
    model, venv = family_learner()
    kickstart(model, venv, KickstartSpec(steps=64, epochs=1, batch_size=32, log_std=-1.5), seed=0, gamma=0.99)
    assert model.policy.log_std.detach().tolist() == [-1.5]
    with th.no_grad():
        dist = model.policy.get_distribution(th.as_tensor(venv.normalize_obs(venv.get_original_obs())))
    np.testing.assert_allclose(dist.distribution.stddev.numpy(), np.exp(-1.5), rtol=1e-6)


def test_the_native_batch_is_refused():
    scenario = load_scenario("small")
    venv = build_vec_normalize(make_envs(scenario, 2, 0, "native"), AGENT, scenario.max_plans)
    with pytest.raises(AgentSpecError, match="vec_env=dummy"):
        collect(venv, "boost", 10, seed=0)


def test_a_kickstarted_training_run_records_it_and_a_resume_does_not_repeat_it(tmp_path):
    from hydra import compose, initialize_config_dir

    from experiments.train import train
    from tests.test_family import _family_run

    kick = "+agent.kickstart={steps: 48, epochs: 2, batch_size: 32}"
    summary = train(_family_run(kick, "export=false"), tmp_path / "run")
    assert summary["num_timesteps"] == 96  # PPO's steps; the teacher's are counted apart
    assert summary["kickstart"]["steps_collected"] == 48 and len(summary["kickstart"]["actor_loss"]) == 2
    resumed = train(_family_run(kick, "export=false", "resume=true", "total_timesteps=144"), tmp_path / "run")
    assert resumed["resumed_from"] == 96 and "kickstart" not in resumed  # the checkpoint already holds it

    overrides = ["agent=ppo", "env=small", "agent.n_envs=2", "+agent.kickstart={steps: 8}", "eval.freq=0"]
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        native = compose("train", overrides=[*overrides, "progress_bar=false", "tensorboard=false", "export=false"])
    with pytest.raises(AgentSpecError, match="vec_env=dummy"):
        train(native, tmp_path / "native")


def test_the_privileged_tilt_turns_ranks_worth_into_the_true_one():
    rank_worth = np.array([1.0, 2.0, 0.5, 3.0, 1.0, 4.0])
    true_worth = np.array([2.0, 1.0, 0.5, 3.0 * np.exp(5.0), 0.0, 9.0])
    active = np.array([True, True, True, True, True, False])
    scale = 2.0
    action = privileged_tilt(rank_worth, true_worth, active, scale, max_plans=8)
    assert action.shape == (8,) and action.dtype == np.float32
    tilted = rank_worth * tilt_from_action(action[:6], scale)
    np.testing.assert_allclose(tilted[:3], true_worth[:3], rtol=1e-6)  # within the head's range: exact
    assert action[3] == 1.0 and action[4] == -1.0  # beyond it (e^5 > e^2, a worthless plan): the range's ends
    assert np.all(action[5:] == 0.0)  # inactive and padded plans
    with pytest.raises(ValueError, match="rank's worth must be finite and > 0"):
        privileged_tilt(np.array([0.0, 1.0]), np.ones(2), np.ones(2, dtype=bool), scale, 2)


@pytest.mark.parametrize("base", ["rank", "bayes_rank"])
def test_the_privileged_labels_are_oracle_ranks_worth_seen_through_the_heads_base(base):
    """Each label, applied as the tilt of the head's base worth (rank's, or bayes_rank's) on the state it
    labels, gives oracle_rank's worth. bayes_rank records each step's reporting once: the label and the
    fill share the step's worth."""
    model, venv = family_learner(head=HeadSpec("rank_residual", base=base))
    data = collect(venv, PRIVILEGED, 40, seed=0)
    copy = venv.venv.envs[0]
    residual, env = copy.env.env, copy.unwrapped.env  # PlanDetailsDropped(Monitor(RankResidualEnv(FamilyEnv)))
    oracle = OracleRankAllocator()
    oracle.reset(env.scenario, env.portfolio)
    stats, active = env.reporting_stats(), env.active_mask()
    teacher = TiltTeacher(residual, venv.action_space.shape[0])
    teacher.start(copy, seed=0)
    label = teacher.label(copy)
    n = env.n_plans
    base_worth = residual.rank.base_worth(stats, env.clock(), active)
    if base == "rank":
        np.testing.assert_array_equal(base_worth, RankAllocator.worth(residual.rank, stats, env.clock(), active))
    else:
        assert type(residual.rank).__name__ == "TiltedBayesRank"
        assert len(residual.rank.conversions) == env.t + 1  # one record a step: steps 0..t
    true_worth = oracle.plan_worth(env.t)
    inside = active & (np.abs(np.log(true_worth / base_worth)) < residual.scale) & (true_worth > 0)
    assert inside.sum() >= 2
    tilted = base_worth * tilt_from_action(label[:n], residual.scale)
    np.testing.assert_allclose(tilted[inside], true_worth[inside], rtol=1e-5)
    assert np.all(np.abs(data["action"]) <= 1.0) and np.any(data["action"] != 0.0)
    assert data["action"].shape == (20, 2, venv.action_space.shape[0])


def test_a_late_blind_teacher_labels_with_the_late_blind_worth():
    """``late_stages: vertical``: the labels turn rank's worth into the late-blind oracle_rank's."""
    model, venv = family_learner(head=HeadSpec("rank_residual"))
    collect(venv, PRIVILEGED, 8, seed=0, late_stages="vertical")  # a few steps in, so reporting has data
    copy = venv.venv.envs[0]
    residual, env = copy.env.env, copy.unwrapped.env
    blind = OracleRankAllocator(OracleRankParams(late_stages="vertical"))
    blind.reset(env.scenario, env.portfolio)
    full = OracleRankAllocator()
    full.reset(env.scenario, env.portfolio)
    stats, active = env.reporting_stats(), env.active_mask()
    rank_worth = RankAllocator.worth(residual.rank, stats, env.clock(), active)
    scale, width = residual.scale, venv.action_space.shape[0]
    teacher = TiltTeacher(residual, width, late_stages="vertical")
    teacher.start(copy, seed=0)
    np.testing.assert_array_equal(
        teacher.label(copy), privileged_tilt(rank_worth, blind.plan_worth(env.t), active, scale, width)
    )
    whole_truth = privileged_tilt(rank_worth, full.plan_worth(env.t), active, scale, width)
    assert not np.array_equal(teacher.label(copy), whole_truth)
    assert TiltTeacher(residual, width).oracle.params.late_stages == "plan"  # the default: the whole truth


def test_the_distilled_labels_turn_ranks_worth_into_bayes_ranks():
    """``allocator: bayes_rank`` on a rank_residual head: each label, applied as the tilt of rank's worth,
    gives the worth bayes_rank itself ranks by on that step (the teacher records each step's reporting
    once, as bayes_rank playing the episode would), while the teacher's labels play the episode."""
    _, venv = family_learner(head=HeadSpec("rank_residual"))
    venv.reset()
    copy = venv.venv.envs[0]
    residual, env = copy.env.env, copy.unwrapped.env
    width = venv.action_space.shape[0]
    teacher = BayesTiltTeacher(residual, width)
    teacher.start(copy, seed=0)
    reference = TiltedBayesRank()  # tilt None: bayes_rank itself, its worth read once a step
    reference.reset(env.scenario)
    checked = 0
    for _ in range(30):
        stats, clock, active = env.reporting_stats(), env.clock(), env.active_mask()
        rank_worth = RankAllocator.worth(residual.rank, stats, clock, active)
        label = teacher.label(copy)
        bayes_worth = reference.base_worth(stats, clock, active)
        reference.allocate(stats, clock, active)  # its step counter moves on, as the teacher's does
        n = env.n_plans
        inside = active & (np.abs(np.log(bayes_worth / rank_worth)) < residual.scale)
        tilted = rank_worth * tilt_from_action(label[:n], residual.scale)
        np.testing.assert_allclose(tilted[inside], bayes_worth[inside], rtol=1e-5)
        assert np.all(label[n:] == 0.0) and np.all(np.abs(label) <= 1.0)
        checked += int(inside.sum())
        venv.step(np.stack([label, np.zeros(width, dtype=np.float32)]))
    assert checked > 30 and len(teacher.bayes.conversions) == 30


def test_the_distilled_teacher_collects_the_same_labels_for_the_same_seed():
    runs = []
    for _ in range(2):
        _, venv = family_learner(head=HeadSpec("rank_residual"))
        runs.append(collect(venv, "bayes_rank", 60, seed=4))
    for key in ("obs", "action", "reward"):
        np.testing.assert_array_equal(runs[0][key], runs[1][key])
    assert np.any(runs[0]["action"] != 0.0)


def test_a_teacher_that_does_not_fit_the_head_is_refused():
    _, residual = family_learner(head=HeadSpec("rank_residual"))
    with pytest.raises(
        AgentSpecError, match=r"set agent.kickstart.allocator to one of \['oracle_rank', 'bayes_rank'\]"
    ):
        collect(residual, "boost", 4, seed=0)
    _, on_bayes = family_learner(head=HeadSpec("rank_residual", base="bayes_rank"))
    with pytest.raises(AgentSpecError, match="agent.head.base is bayes_rank already"):
        collect(on_bayes, "bayes_rank", 4, seed=0)
    _, softmax = family_learner()
    with pytest.raises(AgentSpecError, match="set agent.head.kind rank_residual"):
        collect(softmax, PRIVILEGED, 4, seed=0)


def test_dagger_rounds_let_the_clone_play_and_the_teacher_label_reproducibly(one_torch_thread):
    spec = KickstartSpec(allocator=PRIVILEGED, steps=400, epochs=3, batch_size=64, dagger_rounds=1)
    runs = []
    for _ in range(2):
        model, venv = family_learner(head=HeadSpec("rank_residual"))
        runs.append((model, venv, kickstart(model, venv, spec, seed=5, gamma=0.99)))
    (model, venv, summary), (model2, _, summary2) = runs
    assert [r["player"] for r in summary["rounds"]] == ["teacher", "clone"]
    assert summary["steps_collected"] == 800 and [r["steps"] for r in summary["rounds"]] == [400, 400]
    assert len(summary["actor_loss"]) == 6  # 3 epochs a round
    assert summary == {**summary2, "collect_s": summary["collect_s"], "wall_s": summary["wall_s"]}
    for key, value in model.policy.state_dict().items():
        th.testing.assert_close(value, model2.policy.state_dict()[key], rtol=0, atol=0)

    # A clone's round is played by the clone: the env follows its actions, not the teacher's labels.
    venv.training = False  # frozen statistics: the last observation normalises as it did when it was played
    played = collect(venv, PRIVILEGED, 4, seed=5, player=model.policy, round_=1)
    venv.training = True
    last_obs = venv.normalize_obs(played["obs"][-1])
    with th.no_grad():
        chosen, _ = model.policy.predict(last_obs, deterministic=True)
    for i, copy in enumerate(venv.venv.envs):
        residual, n = copy.env.env, copy.unwrapped.env.n_plans
        np.testing.assert_allclose(residual.rank.tilt, tilt_from_action(chosen[i, :n], residual.scale))
        assert not np.allclose(residual.rank.tilt, tilt_from_action(played["action"][-1, i, :n], residual.scale))

    # On fresh states the clone is far closer to the teacher's labels than the untrained policy.
    fresh = collect(venv, PRIVILEGED, 200, seed=99, player=model.policy, round_=3)
    obs = venv.normalize_obs(fresh["obs"].reshape(-1, fresh["obs"].shape[-1])).astype(np.float32)
    labels = fresh["action"].reshape(-1, fresh["action"].shape[-1])
    untrained, _ = family_learner(head=HeadSpec("rank_residual"))
    assert imitation_error(model.policy, obs, labels) < 0.7 * imitation_error(untrained.policy, obs, labels)
