"""Market non-stationarity: competition and demand events and price drift do what the scenario says."""

from __future__ import annotations

import numpy as np
import pytest

from envs.budget_env import BudgetShiftEnv
from envs.scenario import PortfolioGenerator, load_scenario, market_conditions


def test_events_and_drift_multiply_exactly_the_days_and_channels_they_name() -> None:
    sc = load_scenario("default_shock")
    drawn = np.random.default_rng(0).lognormal(0.0, 0.1, size=(sc.days, len(sc.channels)))
    competition, demand = market_conditions(sc, drawn.copy())
    feed = [c.name for c in sc.channels].index("feed")
    drift = np.exp(sc.market_drift * np.arange(sc.days))[:, None]
    expected = drawn * drift
    expected[3:5, feed] *= 1.6
    np.testing.assert_allclose(competition, expected)
    expected_demand = np.ones_like(drawn)
    expected_demand[5, :] = 1.4
    np.testing.assert_allclose(demand, expected_demand)
    pf = PortfolioGenerator()(sc, np.random.default_rng(1))
    assert pf.market_day.shape == pf.demand_day.shape == (sc.days, len(sc.channels))


def _feed_price_per_impression(preset: str, days: tuple[int, ...], seeds: range) -> float:
    spend = impressions = 0.0
    env = BudgetShiftEnv(preset)
    for seed in seeds:
        env.reset(seed=seed)
        feed = env.portfolio.channel == [c.name for c in env.scenario.channels].index("feed")
        for t in range(env.horizon):
            _, _, _, _, info = env.step_shares(env.active_mask().astype(float))
            if t // env.scenario.steps_per_day in days:
                spend += info["spend"][feed].sum()
                impressions += info["impressions"][feed].sum()
    return spend / impressions


@pytest.mark.slow
def test_a_competitor_surge_raises_the_feed_price_on_its_days() -> None:
    seeds = range(3)
    before = _feed_price_per_impression("default_shock", (1, 2), seeds)
    during = _feed_price_per_impression("default_shock", (3, 4), seeds)
    assert during > 1.2 * before, (before, during)
