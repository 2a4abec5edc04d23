"""The rank_residual head (agents.residual): a policy that tilts rank's ranking, rank's fill spends.

Action 0 must be ``rank`` exactly (same shares every step, same score), in the training wrapper and
in the evaluation allocator; a tilt must reorder the fill; bad ``head`` nodes, a heuristic kickstart and the
native batch are refused by name; a trained run evaluates through the same tilt and fill as it
trained; its bundle replays the training fill hour by hour in the production loader, handing the
fill's state from call to call (also through the CLI), and a broken head or state is refused by name.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from agents.heuristics import BayesRankAllocator, BayesRankParams, RankAllocator, RankParams, TiltedRank
from agents.residual import HeadSpec, RankResidualEnv, head_spec, tilt_from_action
from agents.sb3 import AgentSpecError, check_agent, make_envs
from envs.budget_env import BudgetShiftEnv
from envs.family import FamilyEnv
from envs.scenario import load_scenario
from experiments.evaluate import evaluate_allocator


@pytest.mark.parametrize(
    "node, message",
    [
        ({"kind": "tilt"}, "agent.head.kind must be one of"),
        ({"kind": "rank_residual", "scale": 0}, r"agent.head.scale must be a number in \(0, 50\]"),
        ({"kind": "rank_residual", "scale": 51}, "agent.head.scale"),
        ({"kind": "rank_residual", "scale": float("inf")}, "agent.head.scale"),
        ({"kind": "rank_residual", "scale": True}, "agent.head.scale"),
        ({"kind": "rank_residual", "temperature": 2}, "unknown field agent.head.temperature"),
        ("rank_residual", "agent.head must be a mapping or null"),
        ({"kind": "rank_residual", "fill": {"headroom": 0.5}}, "agent.head.fill.headroom must be >= 1, got 0.5"),
        ({"kind": "rank_residual", "fill": {"headroom": "1.1"}}, "agent.head.fill.headroom must be a number"),
        ({"kind": "rank_residual", "fill": {"speed": 1}}, "unknown field agent.head.fill.speed; expected one of"),
        ({"kind": "rank_residual", "fill": 1.1}, "agent.head.fill must be a mapping of rank's knobs"),
        ({"fill": {"headroom": 1.1}}, "agent.head.fill sets a rank_residual head's fill; head kind 'softmax'"),
        ({"kind": "rank_residual", "base": "thompson"}, r"agent.head.base must be one of \['rank', 'bayes_rank'\]"),
        ({"base": "bayes_rank"}, "agent.head.base sets a rank_residual head's ranking; head kind 'softmax'"),
        (
            {"kind": "rank_residual", "base": "bayes_rank", "fill": {"prior_spend": 0.1}},
            "unknown field agent.head.fill.prior_spend",  # rank's knob, not bayes_rank's
        ),
    ],
)
def test_a_bad_head_is_refused_by_name(node, message):
    with pytest.raises(ValueError, match=message):
        head_spec(node)


def test_the_default_head_is_the_softmax():
    assert head_spec(None) == HeadSpec() and not head_spec(None).residual
    assert head_spec({"kind": "rank_residual"}) == HeadSpec("rank_residual", 2.0)


def test_the_heads_fill_overrides_ranks_knobs_and_runs_in_the_wrapper():
    head = head_spec({"kind": "rank_residual", "fill": {"headroom": 1.1, "full_use": 0.9}})
    assert head.rank_params == RankParams(headroom=1.1, full_use=0.9)
    assert head_spec({"kind": "rank_residual", "fill": {}}).rank_params == RankParams()
    scenario = load_scenario("small")
    wrapped = RankResidualEnv(BudgetShiftEnv(scenario), params=head.rank_params)
    assert wrapped.rank.params.headroom == 1.1
    # Action 0 is rank with the same knobs, step for step (and not rank with its own knobs).
    zero = np.zeros(wrapped.action_space.shape, dtype=np.float32)
    total, _ = _play(wrapped, lambda obs: zero, seed=3)
    assert total != _play(RankResidualEnv(BudgetShiftEnv(scenario)), lambda obs: zero, seed=3)[0]
    assert total == _rule_return(RankAllocator(RankParams(headroom=1.1, full_use=0.9)), scenario, seed=3)


def test_the_tilt_clips_the_action_and_keeps_the_portfolio_slots():
    tilt = tilt_from_action(np.array([0.0, 1.0, -3.0, 0.5, 9.0], dtype=np.float32)[:4], 2.0)
    np.testing.assert_allclose(tilt, np.exp([0.0, 2.0, -2.0, 1.0]))


def _play(env, action_fn, seed):
    obs, _ = env.reset(seed=seed)
    done, total, shares = False, 0.0, []
    while not done:
        obs, reward, done, _, info = env.step(action_fn(obs))
        total += reward
        shares.append(info["shares"])
    return total, np.array(shares)


def _rule_return(rule, scenario, seed: int) -> float:
    """The episode return of a ranking rule played directly (``step_shares``), for the zero-tilt checks."""
    env = BudgetShiftEnv(scenario)
    env.reset(seed=seed)
    rule.reset(scenario)
    done, total = False, 0.0
    while not done:
        _, reward, done, _, _ = env.step_shares(rule.allocate(env.reporting_stats(), env.clock(), env.active_mask()))
        total += reward
    return total


def test_a_head_on_bayes_rank_tilts_its_worth_and_fills_with_its_knobs():
    head = head_spec({"kind": "rank_residual", "base": "bayes_rank", "fill": {"headroom": 1.25}})
    assert head.base == "bayes_rank" and head.rank_params == BayesRankParams(headroom=1.25)
    assert head_spec({"kind": "rank_residual"}).base == "rank"
    scenario = load_scenario("default")
    wrapped = RankResidualEnv(BudgetShiftEnv(scenario), params=head.rank_params, base=head.base)
    zero = np.zeros(wrapped.action_space.shape, dtype=np.float32)
    total, _ = _play(wrapped, lambda obs: zero, seed=3)
    # Action 0 is bayes_rank with the head's knobs, step for step.
    assert total == pytest.approx(
        _rule_return(BayesRankAllocator(BayesRankParams(headroom=1.25)), scenario, 3), rel=1e-12
    )
    assert total != pytest.approx(_play(RankResidualEnv(BudgetShiftEnv(scenario)), lambda obs: zero, seed=3)[0])
    with pytest.raises(ValueError, match="base must be one of"):
        RankResidualEnv(BudgetShiftEnv(scenario), base="boost")


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


def test_a_heuristic_kickstart_and_the_native_batch_are_refused():
    agent = {"name": "r", "kind": "sb3", "algo": "PPO", "policy": "set", "n_envs": 2}
    residual = {**agent, "head": {"kind": "rank_residual"}}
    check_agent(residual)
    check_agent({**residual, "kickstart": {"allocator": "oracle_rank", "dagger_rounds": 1}})
    check_agent({**residual, "kickstart": {"allocator": "bayes_rank"}})  # distilled
    for kick in ({"allocator": "boost"}, {}):  # a heuristic's shares are no tilt (boost is the default teacher)
        with pytest.raises(AgentSpecError, match="allocator oracle_rank .* bayes_rank .* or agent.kickstart=null"):
            check_agent({**residual, "kickstart": kick})
    with pytest.raises(AgentSpecError, match="agent.head.base is bayes_rank already"):
        check_agent(
            {
                **residual,
                "head": {"kind": "rank_residual", "base": "bayes_rank"},
                "kickstart": {"allocator": "bayes_rank"},
            }
        )
    with pytest.raises(AgentSpecError, match="oracle_rank teaches a rank_residual head's tilt"):
        check_agent({**agent, "kickstart": {"allocator": "oracle_rank"}})
    with pytest.raises(AgentSpecError, match="agent.head.kind"):
        check_agent({**agent, "head": {"kind": "bad"}})
    with pytest.raises(AgentSpecError, match="vec_env=dummy"):
        make_envs(load_scenario("small"), 2, 0, "native", head=HeadSpec("rank_residual"))


@pytest.fixture(scope="module")
def residual_run(tmp_path_factory):
    from experiments.train import train
    from tests.test_family import _family_run

    run_dir = tmp_path_factory.mktemp("residual_run")
    # A fill knob off rank's default: training, evaluation and the bundle must all run the head's fill.
    summary = train(_family_run("+agent.head={kind: rank_residual, scale: 2.0, fill: {headroom: 1.2}}"), run_dir)
    return run_dir, summary


@pytest.mark.slow
def test_a_run_on_bayes_rank_trains_and_evaluates_as_it_trained_but_is_not_exported(tmp_path):
    from agents.trained import TrainedAllocator
    from experiments.train import train
    from tests.test_family import _family_run

    cfg = _family_run(
        "+agent.head={kind: rank_residual, base: bayes_rank, fill: {headroom: 1.2}}",
        "+agent.kickstart={allocator: oracle_rank, steps: 48, dagger_rounds: 1, epochs: 1}",
    )
    summary = train(cfg, tmp_path)
    assert summary["bundle"] is None  # export refuses a fill the production loader does not run
    trained = TrainedAllocator(tmp_path)
    assert type(trained.rank).__name__ == "TiltedBayesRank" and trained.rank.params.headroom == 1.2
    _assert_evaluates_as_in_training(trained)


@pytest.mark.slow
def test_a_run_distilled_from_bayes_rank_ships_with_ranks_fill(tmp_path):
    """``kickstart.allocator: bayes_rank`` on a rank head: the labels come from bayes_rank, the fill stays
    rank's, so the run exports a bundle (export replays its parity episode through the loader)."""
    from agents.allocator import Bundle
    from experiments.train import train
    from tests.test_family import _family_run

    cfg = _family_run(
        "+agent.head={kind: rank_residual, fill: {headroom: 1.1}}",
        "+agent.kickstart={allocator: bayes_rank, steps: 48, dagger_rounds: 1, epochs: 1}",
    )
    summary = train(cfg, tmp_path)
    assert summary["kickstart"]["allocator"] == "bayes_rank" and summary["kickstart"]["steps_collected"] == 96
    assert summary["bundle"] is not None
    head = Bundle.load(tmp_path / summary["bundle"]).residual
    assert head is not None and head.params.headroom == 1.1


@pytest.mark.slow
def test_a_residual_run_evaluates_as_it_trained(residual_run):
    from agents.trained import TrainedAllocator

    run_dir, _ = residual_run
    trained = TrainedAllocator(run_dir)
    assert trained.rank is not None and trained.rank.params.headroom == 1.2
    _assert_evaluates_as_in_training(trained)


def _assert_evaluates_as_in_training(trained) -> None:
    """The trained allocator's episode on small (seed 5) scores what the same deterministic policy scores
    in the training wrapper (the head's base and fill knobs)."""
    scenario = load_scenario("small")
    score = evaluate_allocator(trained, scenario, [5])[0]["score"]
    env = RankResidualEnv(
        BudgetShiftEnv(dataclasses.replace(scenario, max_plans=trained.max_plans)),
        params=trained.head.rank_params,
        base=trained.head.base,
    )
    obs, _ = env.reset(seed=5)
    done = False
    while not done:
        action = trained.model.predict(trained.normalize(obs[None]), deterministic=True)[0][0]
        obs, _, done, _, info = env.step(action)
    assert info["score"]["score"] == pytest.approx(score, rel=1e-12)


@pytest.mark.slow
def test_the_bundle_replays_the_training_fill_hour_by_hour_with_its_state(residual_run, tmp_path):
    """Export replays its parity episode through the loader, each call given the last one's state, and
    refuses a bundle whose fill differs; the state travels through the CLI's --previous JSON."""
    import json
    import subprocess
    import sys

    from agents.allocator import AllocationInputError, Bundle, BundleError, read_stats_csv
    from envs.features import Clock

    run_dir, summary = residual_run
    bundle_dir = run_dir / summary["bundle"]
    manifest = json.loads((bundle_dir / "manifest.json").read_text())
    assert manifest["schema_version"] == 3 and manifest["head"]["kind"] == "rank_residual"
    assert manifest["head"]["rank"]["headroom"] == 1.2  # the head's fill, not rank's default
    assert manifest["parity"]["fill_max_abs_diff"] == 0.0 and manifest["parity"]["n_observations"] > 0
    bundle = Bundle.load(bundle_dir)
    with pytest.raises(BundleError, match="policy_tilt"):
        bundle.policy_shares(np.zeros((1, bundle.width)), np.ones((1, bundle.max_plans)))

    stats = read_stats_csv(bundle_dir / "example_stats.csv")
    clock = Clock(**manifest["example"]["clock"])
    first = bundle.allocate(stats, clock)
    assert set(first.state["capacity"]) == set(first.plan_ids)
    assert (first.state["day"], first.state["hour"]) == (clock.day, clock.hour)
    assert first.shares.sum() == pytest.approx(1.0)
    with pytest.raises(BundleError, match="use allocate"):
        bundle.shares(bundle.parse(stats), clock)
    # A known capacity bounds what the plan walked first gets (headroom x capacity x its traffic share).
    top = int(np.argmax(first.shares))
    earlier = {"day": clock.day, "hour": clock.hour - 1}
    tight = {"capacity": {first.plan_ids[top]: 1e-3}, **earlier}
    assert bundle.allocate(stats, clock, state=tight).shares[top] < first.shares[top]
    # A call given its own answer's state would learn its hour twice: refused.
    with pytest.raises(AllocationInputError, match="which this call repeats"):
        bundle.allocate(stats, clock, state=first.state)

    cli = [sys.executable, "-m", "agents.allocator", str(bundle_dir), str(bundle_dir / "example_stats.csv")]
    args = [
        "--budget",
        str(clock.daily_budget),
        "--hour",
        str(clock.hour),
        "--budget-left",
        str(clock.budget_left_today),
        "--day",
        str(clock.day),
        "--days",
        str(clock.days),
    ]
    out = subprocess.run([*cli, *args], capture_output=True, text=True, check=True).stdout
    (tmp_path / "prev.json").write_text(out)
    assert json.loads(out)["state"] == json.loads(json.dumps(first.state))
    # The next hour (the example's stats again, for the sake of the test) with the previous hour's state.
    args[3] = str(clock.hour + 1)
    again = subprocess.run([*cli, *args, "--previous", str(tmp_path / "prev.json")], capture_output=True, text=True)
    assert again.returncode == 0, again.stderr
    later = Clock(clock.hour + 1, clock.day, clock.days, clock.daily_budget, clock.budget_left_today)
    expected = bundle.allocate(stats, later, state=json.loads(out)["state"])
    assert [p["share"] for p in json.loads(again.stdout)["plans"]] == pytest.approx(expected.shares.tolist(), abs=0)


@pytest.mark.slow
@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda h: h["traffic"][0].__setitem__(0, 0.9), r"head.traffic' row 0 \(feed\) sums to"),
        (lambda h: h["traffic"].pop(), "'head.traffic' must hold 3 rows"),
        (lambda h: h["rank"].update(headroom=0.5), "head.rank' holds no valid rank knobs: .*headroom must be >= 1"),
        (lambda h: h["rank"].update(speed=1), r"'head.rank' has knobs .*; expected exactly"),
        (lambda h: h["rank"].pop("headroom"), r"'head.rank' has knobs .*; expected exactly"),
        (lambda h: h["rank"].update(headroom=True), "'head.rank.headroom' is True; expected a finite number"),
        (lambda h: h["traffic"][1].__setitem__(3, 0.0), "each entry a number in \\(0, 1\\]"),
        (lambda h: h.update(scale=-1), "head.scale"),
        (lambda h: h.update(extra=1), r"unknown field\(s\) \['extra'\] in head"),
    ],
)
def test_a_broken_head_is_refused_by_name(residual_run, tmp_path, edit, message):
    import json
    import shutil

    from agents.allocator import Bundle, BundleError

    run_dir, summary = residual_run
    copy = tmp_path / "bundle"
    shutil.copytree(run_dir / summary["bundle"], copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    edit(manifest["head"])
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match=message):
        Bundle.load(copy)


def test_a_bad_state_is_refused_by_name():
    from agents.allocator import AllocationInputError, check_state
    from envs.features import Clock

    at = {"day": 1, "hour": 5}
    assert check_state(None, ["a"]) is None
    got = check_state({"capacity": {"a": 2.0, "gone": 1.0}, **at}, ["a", "b"])
    np.testing.assert_array_equal(got, [2.0, np.inf])  # b: new, not known; gone: dropped
    np.testing.assert_array_equal(check_state({"capacity": {"a": None}, **at}, ["a"]), [np.inf])
    # Capacity is spend per unit of traffic share: beyond any currency bound on a thin hour, still accepted.
    np.testing.assert_array_equal(check_state({"capacity": {"a": 5e12}, **at}, ["a"]), [5e12])
    for bad in (-1.0, "x", True, 10**400):
        with pytest.raises(AllocationInputError, match="state capacity .* of plan 'a'"):
            check_state({"capacity": {"a": bad}, **at}, ["a"])
    for state in ({"capacities": {}, **at}, {"capacity": {}}, {"capacity": {}, "day": 1, "hour": 24}):
        with pytest.raises(AllocationInputError, match="state must be the previous allocation's state"):
            check_state(state, ["a"])
    same = Clock(hour=5, day=1, days=7, daily_budget=1.0, budget_left_today=1.0)
    with pytest.raises(AllocationInputError, match="day 1, hour 5, which this call repeats"):
        check_state({"capacity": {}, **at}, ["a"], same)
    next_period = Clock(hour=0, day=0, days=7, daily_budget=1.0, budget_left_today=1.0)
    assert check_state({"capacity": {}, **at}, ["a"], next_period) is not None  # a new planning period
