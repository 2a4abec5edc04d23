"""The heuristic allocators: valid shares under any reporting stats, each rule's defining behaviour on
a hand-made situation, and the ranking on the default portfolio that the comparison relies on."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy import stats

from agents.config import HEURISTIC_ALLOCATORS
from agents.heuristics import (
    BayesRankAllocator,
    BoostAllocator,
    BoostParams,
    CpaGuardAllocator,
    ProportionalAllocator,
    RankAllocator,
    RankParams,
    StaticAllocator,
    ThompsonAllocator,
    ThompsonParams,
    UniformAllocator,
)
from agents.oracle import OracleRankAllocator
from agents.registry import make_allocator
from envs.features import CHANNELS, GOALS, NUMERIC_STATS, STATUSES, VERTICALS, Clock
from envs.scenario import KIND_POTENTIAL, KIND_REGULAR, KIND_TRAP, PortfolioGenerator, load_scenario
from envs.shares import diurnal_traffic, pacing, redistribute_over_caps
from experiments.common import episode_seeds
from experiments.evaluate import evaluate_allocator

CREDIT, SECURITIES = VERTICALS.index("credit"), VERTICALS.index("securities")
LEARNING, LEARNED = STATUSES.index("learning"), STATUSES.index("learned")


def scenario_with(n_plans: int, securities_cap: float = 0.6, days: int = 2):
    """The small preset with ``n_plans`` plans in credit and capped securities."""
    base = load_scenario("small")
    return load_scenario(
        {
            "name": "test",
            "accounts": 1,
            "plans_per_account": n_plans,
            "max_plans": max(n_plans, 8),
            "days": days,
            "steps_per_day": 24,
            "daily_budget": base.daily_budget,
            "cpa_target": base.cpa_target,
            "channels": {"feed": {"share": 0.5}, "network": {"share": 0.3}, "search": {"share": 0.2}},
            "verticals": {"credit": {"share": 0.5}, "securities": {"share": 0.5, "max_spend_share": securities_cap}},
        }
    )


def make(name: str, n_plans: int, seed: int = 0, **params):
    scenario = scenario_with(n_plans)
    portfolio = PortfolioGenerator()(scenario, np.random.default_rng(seed))
    allocator = make_allocator({"name": name, "kind": "heuristic", "params": params})
    allocator.reset(scenario, portfolio, seed=seed)
    return allocator, scenario, portfolio


def blank_stats(n: int, vertical=None, target_cpa: float = 100.0) -> dict[str, np.ndarray]:
    stats = {k: np.zeros(n) for k in NUMERIC_STATS}
    stats["channel"] = np.zeros(n, dtype=np.int64)
    stats["vertical"] = np.full(n, CREDIT, dtype=np.int64) if vertical is None else np.asarray(vertical)
    stats["status"] = np.full(n, STATUSES.index("learned"), dtype=np.int64)
    stats["goal"] = np.zeros(n, dtype=np.int64)
    stats["target_cpa"] = np.full(n, target_cpa)
    stats["age_hours"] = np.full(n, 24.0 * 30)
    return stats


def clock(hour: int = 10, budget_left: float = 8000.0) -> Clock:
    return Clock(hour=hour, day=1, days=2, daily_budget=8000.0, budget_left_today=budget_left)


def assert_valid(shares: np.ndarray, active: np.ndarray) -> None:
    assert shares.shape == active.shape
    assert np.all(np.isfinite(shares))
    assert np.all(shares >= 0)
    assert np.all(shares[~active] == 0)
    assert shares.sum() == pytest.approx(1.0, abs=1e-9)


# --------------------------------------------------------------------------------------------
# Valid shares under random reporting stats
# --------------------------------------------------------------------------------------------


@st.composite
def situations(draw):
    n = draw(st.integers(2, 10))
    money = st.floats(0.0, 1e6, allow_nan=False, allow_infinity=False)
    stats = {k: np.array(draw(st.lists(money, min_size=n, max_size=n))) for k in NUMERIC_STATS}
    stats["status"] = np.array(draw(st.lists(st.integers(0, len(STATUSES) - 1), min_size=n, max_size=n)))
    stats["goal"] = np.array(draw(st.lists(st.integers(0, len(GOALS) - 1), min_size=n, max_size=n)))
    stats["target_cpa"] = np.array(draw(st.lists(st.floats(1.0, 1e4), min_size=n, max_size=n)))
    stats["channel"] = np.array(draw(st.lists(st.integers(0, 2), min_size=n, max_size=n)))
    stats["vertical"] = np.array(draw(st.lists(st.sampled_from([CREDIT, SECURITIES]), min_size=n, max_size=n)))
    active = np.array(draw(st.lists(st.booleans(), min_size=n, max_size=n)))
    active[draw(st.integers(0, n - 1))] = True
    hour = draw(st.integers(0, 23))
    left = draw(st.floats(0.0, 8000.0))
    return stats, active, hour, left


@pytest.mark.parametrize("name", sorted(HEURISTIC_ALLOCATORS))
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(situation=situations(), steps=st.integers(1, 3))
def test_shares_are_valid_under_random_stats(name, situation, steps):
    stats, active, hour, left = situation
    allocator, _, _ = make(name, len(active))
    for _ in range(steps):  # stateful rules (cpa_guard, oracle) see the same stats several times
        shares = allocator.allocate(stats, clock(hour, left), active)
        assert_valid(shares, active)
        securities = active & (stats["vertical"] == SECURITIES)
        if (active & ~securities).any():  # the cap is satisfiable: it holds
            assert shares[securities].sum() <= 0.6 + 1e-9


def test_vertical_caps_move_the_excess_to_other_verticals():
    shares = np.array([0.5, 0.3, 0.2])
    vertical = np.array([SECURITIES, SECURITIES, CREDIT])
    caps = np.ones(len(VERTICALS))
    caps[SECURITIES] = 0.6
    capped = redistribute_over_caps(shares, vertical, caps, np.ones(3, dtype=bool))
    assert capped[:2].sum() == pytest.approx(0.6)
    assert capped[2] == pytest.approx(0.4)
    assert capped[0] / capped[1] == pytest.approx(0.5 / 0.3)  # within a vertical, proportions are kept


# --------------------------------------------------------------------------------------------
# Each rule's defining behaviour
# --------------------------------------------------------------------------------------------


def test_uniform_splits_equally_over_active_plans():
    allocator = UniformAllocator()
    allocator.reset(scenario_with(4))
    active = np.array([True, False, True, True])
    np.testing.assert_allclose(allocator.allocate(blank_stats(4), clock(), active), [1 / 3, 0, 1 / 3, 1 / 3])


def test_static_keeps_the_morning_budgets():
    allocator, _, portfolio = make("static", 6)
    active = np.ones(6, dtype=bool)
    active[5] = False
    shares = allocator.allocate(blank_stats(6), clock(), active)
    expected = np.where(active, portfolio.static_share, 0.0)
    np.testing.assert_allclose(shares, expected / expected.sum())
    with pytest.raises(ValueError, match="morning"):
        StaticAllocator().reset(scenario_with(6))


def test_cpa_guard_cuts_a_plan_at_twice_its_target_and_boosts_a_cheap_one():
    allocator = CpaGuardAllocator()
    allocator.reset(scenario_with(4))
    stats = blank_stats(4)
    stats["conversions_total"] = np.array([20.0, 20.0, 20.0, 2.0])
    stats["spend_total"] = stats["conversions_total"] * stats["target_cpa"] * np.array([2.0, 1.0, 0.5, 3.0])
    active = np.ones(4, dtype=bool)
    shares = allocator.allocate(stats, clock(), active)
    assert shares[0] < shares[1] < shares[2]  # CPA 2x target cut, on target kept, half target boosted
    assert shares[3] == pytest.approx(shares[1])  # too few conversions to judge
    review_steps = allocator.params.review_hours  # hourly steps
    for _ in range(review_steps * 10):
        later = allocator.allocate(stats, clock(), active)
    assert later[0] < shares[0]  # every review cuts again, down to min_weight
    assert later[0] / later[1] == pytest.approx(allocator.params.min_weight)


def test_proportional_favours_higher_value_per_cost():
    allocator = ProportionalAllocator()
    allocator.reset(scenario_with(3))
    stats = blank_stats(3)
    active = np.ones(3, dtype=bool)
    np.testing.assert_allclose(allocator.allocate(stats, clock(), active), 1 / 3)  # nothing matured: uniform
    stats["spend_total"] = np.full(3, 5000.0)
    stats["deep_value_total"] = np.array([20000.0, 10000.0, 0.0])
    shares = allocator.allocate(stats, clock(), active)
    assert shares[0] > shares[1] > shares[2] > 0


def test_boost_funds_a_young_learning_plan_until_it_exits_learning():
    allocator = BoostAllocator(BoostParams(boost_factor=3.0, max_boost_hours=72.0))
    allocator.reset(scenario_with(3))
    stats = blank_stats(3)
    stats["status"] = np.array([LEARNING, LEARNED, LEARNING])
    stats["age_hours"] = np.array([10.0, 10.0, 200.0])  # plan 2 has been learning for too long
    active = np.ones(3, dtype=bool)
    shares = allocator.allocate(stats, clock(), active)
    assert shares[0] > 2.0 * shares[1]
    assert shares[2] == pytest.approx(shares[1])
    stats["status"][0] = LEARNED
    np.testing.assert_allclose(allocator.allocate(stats, clock(), active), 1 / 3)  # out of learning: no boost


def bayes(n_plans: int) -> tuple[BayesRankAllocator, object]:
    scenario = scenario_with(n_plans, days=7)  # a week: day 0's credit approvals all mature
    allocator = BayesRankAllocator()
    allocator.reset(scenario)
    return allocator, scenario


def test_bayes_rank_starts_from_a_prior_read_from_target_cpa_and_age():
    allocator, scenario = bayes(3)
    credit = next(v for v in scenario.verticals if v.name == "credit")
    stats = blank_stats(3, target_cpa=credit.target_cpa)
    stats["target_cpa"][1] *= 0.6  # an established plan as cheap as a trap is set up
    stats["age_hours"][2] = 0.0  # launched with the episode: maybe a potential plan
    worth = allocator.worth(stats, clock(), np.ones(3, dtype=bool))
    rate = credit.stages[0].rate
    assert allocator.quality[0] == pytest.approx(rate, rel=0.01)  # an ordinary plan, most likely
    assert allocator.quality[1] < 0.5 * rate and allocator.quality[2] > 1.1 * rate  # a trap, maybe a potential plan
    assert worth[2] > worth[0] > worth[1]  # the trap-cheap plan is worth less per cost though it is cheaper


def test_bayes_rank_believes_matured_evidence_and_the_late_value_it_reports():
    allocator, scenario = bayes(3)
    credit = next(v for v in scenario.verticals if v.name == "credit")
    rate, first_value = credit.stages[0].rate, credit.stages[0].value
    stats = blank_stats(3, target_cpa=credit.target_cpa)
    active = np.ones(3, dtype=bool)
    for t in range(scenario.horizon):
        stats["conversions_last"] = np.full(3, 100.0 if t < 12 else 0.0)  # 1,200 conversions on day 0
        stats["deep_events_total"] = np.array([2.0, 1.0, 1.0]) * rate * 1200.0  # plan 0 twice the vertical's rate
        late = allocator.late_multiplier if t else np.ones(3)
        stats["deep_value_total"] = stats["deep_events_total"] * first_value
        stats["deep_value_total"][2] += 10 * rate * 1200.0 * credit.stages[1].rate * credit.stages[1].value
        allocator.worth(stats, clock(), active)
    assert allocator.quality[0] == pytest.approx(2 * allocator.quality[1], rel=0.05)  # matured: the evidence
    assert allocator.quality[1] == pytest.approx(rate, rel=0.05)
    assert late[2] > 1.0 > late[1]  # more value past the first stage than expected, or none at all
    with pytest.raises(RuntimeError, match="reset"):
        BayesRankAllocator().worth(stats, clock(), active)


def test_bayes_rank_keeps_its_rates_rates_whatever_the_reporting_says():
    allocator, _ = bayes(2)
    stats = blank_stats(2)
    stats["conversions_last"] = np.array([1.0, 0.0])  # young conversions: nothing due yet
    stats["deep_events_total"] = np.array([500.0, 0.0])  # yet many events reported
    worth = allocator.worth(stats, clock(), np.ones(2, dtype=bool))
    assert np.all(allocator.quality <= 1.0) and np.all(np.isfinite(worth))


def test_bayes_rank_plays_a_deterministic_episode_unlike_rank():
    seeds = episode_seeds(4, 2)
    scores = [
        [e["score"] for e in evaluate_allocator(make_allocator({"name": n, "kind": "heuristic"}), "default", seeds)]
        for n in ("bayes_rank", "bayes_rank", "rank")
    ]
    assert scores[0] == scores[1]
    assert scores[0] != scores[2]


def test_thompson_concentrates_on_the_plan_with_the_best_posterior_and_is_seeded():
    def run(seed):
        allocator = ThompsonAllocator(ThompsonParams(top_fraction=0.4))  # each draw funds 2 of the 5 plans
        allocator.reset(scenario_with(5), seed=seed)
        stats = blank_stats(5)
        stats["spend_total"] = np.full(5, 20000.0)
        stats["deep_events_total"] = np.array([80.0, 40.0, 38.0, 36.0, 10.0])
        stats["deep_value_total"] = stats["deep_events_total"] * 500.0
        return allocator.allocate(stats, clock(), np.ones(5, dtype=bool))

    shares = run(1)
    assert shares.argmax() == 0
    assert shares[4] == shares.min()
    np.testing.assert_array_equal(run(1), shares)  # same seed, same draws
    assert not np.array_equal(run(2), shares)


def test_rank_funds_the_best_observed_plan_first_and_moves_on_when_it_is_full():
    allocator = RankAllocator()
    allocator.reset(scenario_with(4))  # no portfolio: it reads the reporting only
    active = np.ones(4, dtype=bool)
    stats = blank_stats(4)
    stats["spend_total"] = np.full(4, 4000.0)
    stats["deep_value_total"] = np.array([4000.0, 12000.0, 8000.0, 2000.0])  # plan 1 best, then 2
    first = allocator.allocate(stats, clock(hour=0), active)
    assert first[1] > 0.9  # capacity unknown: the best plan takes it all
    stats["budget_last"] = first * 1000.0
    stats["spend_last"] = np.where(np.arange(4) == 1, 20.0, 0.0)  # it could spend only a fraction
    after = allocator.allocate(stats, clock(hour=1), active)
    assert 0 < after[1] < 0.5
    assert after[2] > after[1] > after[0]  # the next best takes the rest, the worse ones wait
    assert after[3] <= after[0]


def test_rank_says_what_is_wrong_when_not_reset_for_the_portfolio():
    allocator = RankAllocator()
    with pytest.raises(RuntimeError, match=r"call reset\(scenario\) before allocate"):
        allocator.allocate(blank_stats(3), clock(), np.ones(3, dtype=bool))
    allocator.reset(scenario_with(3))
    with pytest.raises(ValueError, match="reset for 3 plans and given 4"):
        allocator.allocate(blank_stats(4), clock(), np.ones(4, dtype=bool))


def test_rank_puts_learning_plans_ahead_by_its_bonus():
    stats = blank_stats(2)
    stats["spend_total"] = np.full(2, 4000.0)
    stats["deep_value_total"] = np.array([8000.0, 4000.0])  # plan 0 worth about twice plan 1
    stats["status"] = np.array([LEARNED, LEARNING])
    for bonus, leader in ((1.0, 0), (3.0, 1)):
        allocator = RankAllocator(RankParams(learning_bonus=bonus))
        allocator.reset(scenario_with(2))
        assert allocator.allocate(stats, clock(hour=0), np.ones(2, dtype=bool)).argmax() == leader


def test_rank_paces_a_plan_by_its_own_channel_even_where_the_scenario_lists_channels_otherwise():
    """The reporting names channels by CHANNELS' index; a scenario may list fewer, in another order."""
    base = load_scenario("small")
    search_network = load_scenario(
        {
            "name": "test",
            "accounts": 1,
            "plans_per_account": 2,
            "max_plans": 8,
            "days": 2,
            "steps_per_day": 24,
            "daily_budget": base.daily_budget,
            "cpa_target": base.cpa_target,
            "channels": {"search": {"share": 0.6}, "network": {"share": 0.4}},
            "verticals": {"credit": {"share": 1.0}},
        }
    )
    assert [c.name for c in search_network.channels] == ["search", "network"]
    traffic, _ = pacing(diurnal_traffic(search_network.channels), search_network.steps_per_day)
    allocator = RankAllocator()
    allocator.reset(search_network)
    stats = blank_stats(2)
    stats["channel"] = np.array([CHANNELS.index("search"), CHANNELS.index("network")])
    active = np.ones(2, dtype=bool)
    allocator.allocate(stats, clock(hour=0), active)  # first step: nothing to learn yet
    stats["budget_last"] = np.array([1000.0, 1000.0])
    stats["spend_last"] = np.array([100.0, 300.0])  # both capacity-bound
    allocator.allocate(stats, clock(hour=1), active)
    # Each capacity is its spend over its own channel's share of the day's traffic in the step just played.
    np.testing.assert_allclose(allocator.capacity, [100.0 / traffic[0, 0], 300.0 / traffic[1, 0]])


def test_oracle_rank_funds_the_truly_best_plan_first_and_moves_on_when_it_is_full():
    allocator, scenario, portfolio = make("oracle_rank", 6, seed=3)
    portfolio.kind[:] = KIND_REGULAR
    portfolio.vertical[:] = 0  # credit: no cap in the way
    allocator.reset(scenario, portfolio, seed=0)
    worth = allocator.plan_worth(0)
    best, second = np.argsort(-worth)[:2]
    active = np.ones(6, dtype=bool)
    stats = blank_stats(6)
    first = allocator.allocate(stats, clock(hour=0), active)
    assert first.argmax() == best and first[best] > 0.9  # capacity unknown: the best plan takes it all
    stats["budget_last"] = first * 1000.0
    stats["spend_last"] = np.where(np.arange(6) == best, 50.0, 0.0)  # it could spend only a fraction
    after = allocator.allocate(stats, clock(hour=1), active)
    assert 0 < after[best] < 0.5
    assert after[second] > after[best]


def test_oracle_rank_values_potential_plans_above_traps():
    scenario = load_scenario("default")
    portfolio = PortfolioGenerator()(scenario, np.random.default_rng(0))
    oracle = OracleRankAllocator()
    oracle.reset(scenario, portfolio)
    worth = oracle.plan_worth(0)
    assert worth[portfolio.kind == KIND_POTENTIAL].min() > worth[portfolio.kind == KIND_TRAP].max()


# --------------------------------------------------------------------------------------------
# The ranking on the default portfolio
# --------------------------------------------------------------------------------------------

RANKING_SEEDS = episode_seeds(0, 16)


@pytest.fixture(scope="module")
def default_scores() -> dict[str, np.ndarray]:
    scores = {}
    for name in HEURISTIC_ALLOCATORS:
        allocator = make_allocator({"name": name, "kind": "heuristic"})
        episodes = evaluate_allocator(allocator, "default", RANKING_SEEDS)
        scores[name] = np.array([e["score"] for e in episodes])
    return scores


@pytest.mark.slow
def test_oracle_scores_at_least_as_high_as_every_heuristic_on_default(default_scores):
    oracle = default_scores["oracle"]
    for name, scores in default_scores.items():
        assert np.all(oracle >= scores), f"{name} beat the oracle on some seed: {scores} vs {oracle}"


@pytest.mark.slow
@pytest.mark.parametrize(
    ("learner", "baseline"),
    # What 16 paired episodes resolve on the platform-layer economics (6 did not: one episode where
    # static does well and one outlier leave the t-interval across 0; boost - proportional stays
    # unresolved at 16: +23k, lower bound -33k).
    [
        ("boost", "static"),
        ("boost", "uniform"),
        ("proportional", "static"),
        ("thompson", "static"),
        ("proportional", "uniform"),
        ("thompson", "uniform"),
        ("boost", "thompson"),
        ("rank", "boost"),
        ("rank", "thompson"),
    ],
)
def test_adaptive_heuristics_beat_static_and_uniform_on_default(default_scores, learner, baseline):
    # "A beats B" on paired episodes: the 95% t-interval of the mean paired difference excludes 0.
    diff = default_scores[learner] - default_scores[baseline]
    low = diff.mean() - stats.t.ppf(0.975, len(diff) - 1) * diff.std(ddof=1) / np.sqrt(len(diff))
    assert low > 0, f"{learner} - {baseline}: {diff} (95% lower bound {low:.0f})"
