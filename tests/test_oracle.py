"""The oracles: the hindsight planner ``oracle`` (agents/planner.py) and the ranker ``oracle_rank``
(agents/oracle.py). The planner's linear program on hand-computable cases, its knobs' checks, its
determinism and exactness (the real episode follows its replay), and the property the normalised score
relies on: on every preset, no heuristic and no ranker beats it on average over paired episodes."""

from __future__ import annotations

import numpy as np
import pytest

from agents.config import HEURISTIC_ALLOCATORS
from agents.heuristics import HEURISTICS
from agents.oracle import attributable_per_conversion, late_blind, rate_prior
from agents.planner import OracleAllocator, PlanDays, solve_plan
from agents.registry import AgentConfigError, make_allocator
from envs.budget_env import BudgetShiftEnv
from envs.features import VERTICALS
from envs.scenario import KIND_POTENTIAL, KIND_REGULAR, KIND_TRAP, PortfolioGenerator, load_scenario
from experiments.common import episode_seeds
from experiments.evaluate import evaluate_allocator, run_episode

SECURITIES = VERTICALS.index("securities")
NO_CAPS = np.ones(len(VERTICALS))


def two_plans(deep_per_cost=(0.1, 0.1), capacity=(60.0, np.inf)) -> PlanDays:
    """One day, plan 0 worth 3 per unit of spend, plan 1 worth 2."""
    return PlanDays(
        plan=np.array([0, 1]),
        day=np.array([0, 0]),
        value_per_cost=np.array([3.0, 2.0]),
        deep_per_cost=np.array(deep_per_cost),
        capacity=np.array(capacity),
    )


def solve(days: PlanDays, caps=NO_CAPS, vertical=(0, 0), cpa_level=float("inf")):
    return solve_plan(days, 2, 1, 100.0, np.array(vertical), caps, cpa_target=10.0, cpa_level=cpa_level)


# --------------------------------------------------------------------------------------------
# The linear program
# --------------------------------------------------------------------------------------------


def test_lp_funds_the_better_plan_up_to_its_capacity_then_the_next():
    np.testing.assert_allclose(solve(two_plans()), [[60.0, 40.0]], atol=1e-7)
    np.testing.assert_allclose(solve(two_plans(capacity=(np.inf, np.inf))), [[100.0, 0.0]], atol=1e-7)


def test_lp_keeps_a_capped_vertical_under_its_share_of_the_budget():
    caps = NO_CAPS.copy()
    caps[SECURITIES] = 0.3
    spend = solve(two_plans(capacity=(np.inf, np.inf)), caps=caps, vertical=(SECURITIES, 0))
    np.testing.assert_allclose(spend, [[30.0, 70.0]], atol=1e-7)


def test_lp_meets_the_cpa_level_by_mixing_in_the_cheaper_deep_conversions():
    # Plan 0 pays 50 per deep conversion, plan 1 pays 5; target 10. CPA <= target:
    # x0 + x1 <= 10 (0.02 x0 + 0.2 x1), i.e. x1 >= 0.8 x0; with x0 + x1 = 100: x0 = 100 / 1.8.
    days = two_plans(deep_per_cost=(0.02, 0.2), capacity=(np.inf, np.inf))
    spend = solve(days, cpa_level=1.0)
    np.testing.assert_allclose(spend, [[100 / 1.8, 100 - 100 / 1.8]], atol=1e-6)
    assert spend.sum() <= 10.0 * (spend[0] @ days.deep_per_cost) + 1e-6
    np.testing.assert_allclose(solve(days), [[100.0, 0.0]], atol=1e-7)  # no CPA bound: all on the best


def test_lp_reports_a_cpa_level_it_cannot_meet():
    assert solve(two_plans(deep_per_cost=(0.02, 0.05)), cpa_level=1.0) is None  # both dearer than target


# --------------------------------------------------------------------------------------------
# Knobs, registration, determinism, exactness
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "params", "key"),
    [
        ("oracle", {"candidates": -1}, "candidates"),
        ("oracle", {"lp_plans": 0}, "lp_plans"),
        ("oracle", {"full_use": 1.5}, "full_use"),
        ("oracle", {"price_prior": 0.0}, "price_prior"),
        ("oracle", {"max_replay_plans": 0}, "max_replay_plans"),
        ("oracle", {"lp_plan": 1}, "lp_plan"),
        ("oracle_rank", {"price": "cheapest"}, "price"),
        ("oracle_rank", {"price_prior": -1.0}, "price_prior"),
        ("oracle_rank", {"late_stages": "account"}, "late_stages"),
        ("oracle_rank", {"evidence": "posterior"}, "evidence"),
        ("bayes_rank", {"delay_draws": 0}, "delay_draws"),
    ],
)
def test_invalid_params_are_refused_naming_the_key(name, params, key):
    with pytest.raises((ValueError, AgentConfigError), match=f"agent.params.{key}"):
        make_allocator({"name": name, "kind": "heuristic", "params": params})


def test_both_oracles_are_built_from_their_config():
    assert type(make_allocator({"name": "oracle", "kind": "heuristic"})) is OracleAllocator
    ranker = make_allocator({"name": "oracle_rank", "kind": "heuristic", "params": {"price": "observed"}})
    assert ranker.params.price == "observed"
    with pytest.raises(ValueError, match="hidden truth"):
        OracleAllocator().reset(load_scenario("small"))


def test_the_late_blind_ranker_knows_each_plans_first_stage_and_its_verticals_later_rates():
    scenario = load_scenario("default")
    portfolio = PortfolioGenerator()(scenario, np.random.default_rng(3))
    blind = late_blind(scenario, portfolio)
    np.testing.assert_array_equal(blind.stage_rate[:, 0], portfolio.stage_rate[:, 0])  # the plan's quality
    for v_idx, vertical in enumerate(scenario.verticals):
        rows = np.asarray(portfolio.vertical) == v_idx
        for s_idx, stage in enumerate(vertical.stages[1:], start=1):
            assert np.all(blind.stage_rate[rows, s_idx] == min(stage.rate, 1.0))
    assert not np.array_equal(blind.stage_rate, portfolio.stage_rate)  # plans' later rates vary around them
    np.testing.assert_array_equal(blind.stage_value, portfolio.stage_value)
    np.testing.assert_array_equal(portfolio.stage_rate[:, 1:] > 0, blind.stage_rate[:, 1:] > 0)  # same funnels

    full = make_allocator({"name": "oracle_rank", "kind": "heuristic"})
    late = make_allocator({"name": "oracle_rank", "kind": "heuristic", "params": {"late_stages": "vertical"}})
    for ranker in (full, late):
        ranker.reset(scenario, portfolio, seed=0)
    expected, _ = attributable_per_conversion(scenario, blind, late.params.delay_draws)
    np.testing.assert_array_equal(late.plan_worth(0), expected[0] / portfolio.target_cpa)
    assert not np.allclose(late.plan_worth(0), full.plan_worth(0))


def test_the_rate_prior_knows_kinds_or_reads_them_from_what_the_reporting_shows():
    scenario = load_scenario("default")
    portfolio = PortfolioGenerator()(scenario, np.random.default_rng(3))
    kind, vertical = np.asarray(portfolio.kind), np.asarray(portfolio.vertical)
    first = np.array([scenario.verticals[v].stages[0].rate for v in vertical])
    mix = scenario.plans

    mean, strength = rate_prior(scenario, portfolio, "kind")
    potential, trap, ordinary = kind == KIND_POTENTIAL, kind == KIND_TRAP, kind == KIND_REGULAR
    assert potential.any() and trap.any() and ordinary.any()
    np.testing.assert_allclose(mean[potential, 0], np.minimum(first[potential] * mix.potential_deep_mult, 1.0))
    np.testing.assert_allclose(mean[trap, 0], first[trap] * mix.trap_deep_mult)
    assert np.all(np.isinf(strength[potential | trap, 0]))  # these kinds' quality is set, not drawn
    np.testing.assert_allclose(mean[ordinary, 0], first[ordinary])
    assert np.all(np.isfinite(strength[ordinary, 0]) & (strength[ordinary, 0] > 0))
    for v_idx, v in enumerate(scenario.verticals):  # later stages: the vertical's rate, finite strength
        rows = vertical == v_idx
        for s_idx, stage in enumerate(v.stages[1:], start=1):
            np.testing.assert_allclose(mean[rows, s_idx], min(stage.rate, 1.0))
            assert np.all(strength[rows, s_idx] > 0)
    beyond = portfolio.stage_rate == 0
    assert np.all(mean[beyond] == 0)

    public, public_strength = rate_prior(scenario, portfolio, "public")
    new = (portfolio.launch_step > 0) | (portfolio.prior_age_steps == 0)
    np.testing.assert_allclose(public[:, 1:], mean[:, 1:])  # kinds act on the first stage only
    ratio = public[:, 0] / first
    assert np.all(ratio[new] > 1.0)  # a new plan may be a potential one
    cheap = ~new & (portfolio.target_cpa < 0.75 * np.array([scenario.verticals[v].target_cpa for v in vertical]))
    assert cheap.any() and np.all(ratio[cheap] < ratio[~new & ~cheap].min())  # a trap-cheap target CPA
    assert np.all(np.isfinite(public_strength[:, 0]))  # no kind is certain from the reporting
    with pytest.raises(ValueError, match="by must be one of"):
        rate_prior(scenario, portfolio, "none")


def test_the_evidence_limited_ranker_starts_at_the_prior_and_learns_what_matures():
    scenario = load_scenario("insurance")
    portfolio = PortfolioGenerator()(scenario, np.random.default_rng(5))
    ranker = make_allocator({"name": "oracle_rank", "kind": "heuristic", "params": {"evidence": "public"}})
    ranker.reset(scenario, portfolio, seed=0)
    prior, _ = rate_prior(scenario, portfolio, "public")
    n = scenario.n_plans
    np.testing.assert_allclose(ranker.evidence_rates({"conversions_last": np.zeros(n)}), prior)
    for _ in range(scenario.horizon - 1):  # a flood of conversions every step
        rates = ranker.evidence_rates({"conversions_last": np.full(n, 1e7)})
    truth = portfolio.stage_rate
    np.testing.assert_allclose(rates[:, 0], truth[:, 0], rtol=1e-3)  # the first stage matures in days
    stages = scenario.verticals[0].stages
    late = [s for s, st in enumerate(stages) if st.delay_median_hours > 24 * scenario.days * 2]
    assert late, "insurance has a stage (the renewal) that matures after the episode"
    np.testing.assert_allclose(rates[:, late], prior[:, late])  # never seen in the episode: the prior's
    assert not np.allclose(truth[:, late], prior[:, late])


def test_the_evidence_limited_ranker_plays_a_deterministic_episode():
    env = BudgetShiftEnv("default")
    scores = []
    for _ in range(2):
        ranker = make_allocator({"name": "oracle_rank", "kind": "heuristic", "params": {"evidence": "public"}})
        scores.append(run_episode(env, ranker, 7)[0]["score"])
    full = run_episode(env, make_allocator({"name": "oracle_rank", "kind": "heuristic"}), 7)[0]["score"]
    assert scores[0] == scores[1] and np.isfinite(scores[0])
    assert scores[0] != full  # it ranks by less than the truth


def test_same_portfolio_same_plan():
    scenario = load_scenario("small")
    schedules = []
    for _ in range(2):
        portfolio = PortfolioGenerator()(scenario, np.random.default_rng(11))
        oracle = OracleAllocator()
        oracle.reset(scenario, portfolio, seed=0)
        schedules.append(oracle.schedule)
    np.testing.assert_array_equal(schedules[0], schedules[1])


def test_the_episode_follows_the_replay_and_never_scores_below_the_rankers():
    env = BudgetShiftEnv("small")
    oracle = make_allocator({"name": "oracle", "kind": "heuristic"})
    ranker = make_allocator({"name": "oracle_rank", "kind": "heuristic"})
    rank = make_allocator({"name": "rank", "kind": "heuristic"})
    bayes = make_allocator({"name": "bayes_rank", "kind": "heuristic"})
    for env_seed in episode_seeds(3, 3):
        played, _ = run_episode(env, oracle, env_seed)
        assert played["score"] == oracle.planned_score == oracle.scores.max()  # its replay, exactly
        assert played["score"] >= run_episode(env, ranker, env_seed)[0]["score"]  # row 0 replays the ranker
        rank_score = run_episode(env, rank, env_seed)[0]["score"]
        assert oracle.scores[-1] == rank_score  # the last row replays rank, exactly
        assert played["score"] >= rank_score
        bayes_score = run_episode(env, bayes, env_seed)[0]["score"]
        assert oracle.scores[-2] == bayes_score  # the one before it, bayes_rank
        assert played["score"] >= bayes_score


# --------------------------------------------------------------------------------------------
# The upper reference: nothing beats it on average, on any preset
# --------------------------------------------------------------------------------------------

#: Paired episodes per preset: enough for the mean difference (the oracle's lead is 15-50% of its
#: score on the 24-plan presets, and a large portfolio's 500 plans average out most of an episode's
#: noise), within the file's time budget.
EPISODES = {  # the oracle's margin is wide (normalised ~1 against <= 0.3): few episodes resolve it
    "small": 24,
    "default": 12,
    "credit": 8,
    "insurance": 8,
    "securities": 8,
    "default_shock": 6,
    "credit_payday": 4,
    "large": 2,  # 500 plans; at 1 episode (seed 2024) oracle_rank(observed) beat the oracle by 67k on that one
    "heldout_search": 8,
    "heldout_lean": 8,
    "heldout_wide": 1,
}
CHALLENGERS = {name: {"name": name, "kind": "heuristic"} for name in HEURISTICS} | {
    "oracle_rank(observed)": {"name": "oracle_rank", "kind": "heuristic", "params": {"price": "observed"}},
}


def test_every_preset_and_every_heuristic_is_in_the_comparison():
    from pathlib import Path

    presets = {p.stem for p in (Path(__file__).parents[1] / "conf" / "env").glob("*.yaml")}
    assert set(EPISODES) == presets
    assert set(HEURISTIC_ALLOCATORS) - set(CHALLENGERS) == {"oracle", "oracle_rank"}


@pytest.mark.slow
@pytest.mark.parametrize("preset", list(EPISODES))
def test_no_heuristic_nor_ranker_beats_the_oracle_on_average(preset):
    seeds = episode_seeds(2024, EPISODES[preset])

    def scores(agent_cfg) -> np.ndarray:
        return np.array([e["score"] for e in evaluate_allocator(make_allocator(agent_cfg), preset, seeds)])

    oracle = scores({"name": "oracle", "kind": "heuristic"})
    for name, cfg in CHALLENGERS.items():
        gap = scores(cfg) - oracle
        assert gap.mean() <= 0, f"{name} beats the oracle on {preset} by {gap.mean():+.0f} on average: {gap}"
