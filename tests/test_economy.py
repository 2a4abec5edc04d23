"""The economy by hand: auction prices, affordability, the learning level in the bid, the deep funnel's
delays and attribution, and pacing, each on a tiny market where every number is known.

Each auction test builds one episode's :class:`envs.kernels.KernelInputs` by hand: one channel, every
plan targeting every segment, CTR 1, no user-quality spread, no bid noise and a competing bid with no
spread, so every opportunity of the step is the same auction and its price is a number computed
here. Only the opportunity count is drawn; it is recomputed with the reference's hash and Poisson
(the draws the alignment test already pins). The numbers are binary fractions, so money is exact.
The kernel and the NumPy reference are held to the same hand-computed values.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from envs import reference
from envs.kernels import (
    BUDGET,
    CH_CTR_MULT,
    CH_CVR_MULT,
    CH_FIRST_PRICE,
    CH_MARKET,
    CH_MARKET_SIGMA,
    CH_PRED_CVR_MULT,
    CH_VOLUME,
    CONVERSIONS,
    DEEP0,
    DEEP_VALUE,
    DYN_BID_MULT,
    DYN_BID_VALUE,
    DYN_DELIVERY,
    DYN_LEARNING,
    IMPRESSIONS,
    N_CHANNEL_FIELDS,
    N_DYN_FIELDS,
    N_PLAN_FIELDS,
    N_STAGE_FIELDS,
    N_STATE_FIELDS,
    OWN_PRICED,
    PL_BIAS0,
    PL_CHANNEL,
    PL_CTR,
    PL_CVR,
    PL_FATIGUE_FLOOR,
    PL_FATIGUE_SCALE,
    PL_HORIZON,
    PL_LAUNCH,
    PL_NOISE0,
    SLOT_BIDDER,
    SPEND,
    ST_DELAY_MEDIAN,
    ST_DELAY_SIGMA,
    ST_RATE,
    ST_VALUE,
    STREAM_COUNT,
    KernelInputs,
    empty_events,
    lognormal_knots,
    n_step_fields,
    pending_counts,
    step_episodes,
    step_kernel,
)
from envs.reference import step_reference
from envs.scenario import MAX_STAGES, N_SEGMENTS
from envs.shares import pacing, step_budgets

LOT = 10  # impressions per opportunity
STEPS_PER_DAY = 24
PENDING_STEPS = 48  # the episode's steps + 1: pending_counts' slots, the last one after the episode
EVERY_SEGMENT = (1 << N_SEGMENTS) - 1
UNLIMITED = 1e9  # a step budget no plan can exhaust

BACKENDS = pytest.mark.parametrize("step_fn", [step_kernel, step_reference], ids=["kernel", "reference"])


def _market(
    bid_value: list[float],
    *,
    market: float = 1.0,
    first_price: bool = False,
    dedup: bool = True,
    volume: float = 8.0,
    cvr: float = 0.5,
    true_cvr_mult: float = 0.0,
    learning: list[float] | None = None,
    bias0: list[float] | None = None,
    horizon: list[float] | None = None,
    delivery: list[float] | None = None,
    key: int = 20240611,
) -> KernelInputs:
    """One episode of plans on one channel; plan ``p`` bids ``bid_value[p] x cvr x LOT`` per lot.

    CTR is 1 (every impression clicks), the prediction uses ``cvr`` and the true conversion rate is
    ``cvr x true_cvr_mult`` (0 by default: no conversions, so only money and impressions move). The
    competing bid is ``market`` per impression, ``market x LOT`` per lot, at every hour.
    """
    n = len(bid_value)
    chan = np.zeros((1, N_CHANNEL_FIELDS))
    chan[0, CH_VOLUME] = volume
    chan[0, CH_MARKET] = market
    chan[0, CH_MARKET_SIGMA] = 0.0
    chan[0, CH_CTR_MULT] = 1.0
    chan[0, CH_CVR_MULT] = true_cvr_mult
    chan[0, CH_FIRST_PRICE] = 1.0 if first_price else 0.0
    chan[0, CH_PRED_CVR_MULT] = 1.0
    plan = np.zeros((1, n, N_PLAN_FIELDS))
    plan[0, :, PL_CTR] = 1.0
    plan[0, :, PL_CVR] = cvr
    plan[0, :, PL_HORIZON] = PENDING_STEPS if horizon is None else horizon
    plan[0, :, PL_BIAS0] = 0.0 if bias0 is None else bias0
    plan[0, :, PL_NOISE0] = 0.0
    plan[0, :, PL_FATIGUE_SCALE] = 1.0
    plan[0, :, PL_FATIGUE_FLOOR] = 1.0  # no creative fatigue
    plan[0, :, PL_CHANNEL] = 0
    plan[0, :, PL_LAUNCH] = 0
    dyn = np.zeros((1, n, N_DYN_FIELDS))
    dyn[0, :, DYN_BID_VALUE] = bid_value
    dyn[0, :, DYN_LEARNING] = 0.0 if learning is None else learning
    dyn[0, :, DYN_BID_MULT] = 1.0
    dyn[0, :, DYN_DELIVERY] = 1.0 if delivery is None else delivery
    days = 3
    return KernelInputs(
        hours_per_step=1,
        steps_per_day=STEPS_PER_DAY,
        horizon=PENDING_STEPS - 1,
        lot=LOT,
        quality_sigma=0.0,
        quality_knots=lognormal_knots(0.0, 0.0),
        noise_floor=0.0,
        dedup=dedup,
        chan=chan,
        market_knots=lognormal_knots(0.0, 0.0)[None],
        chan_diurnal=np.ones((1, 24)),
        chan_market_hour=np.ones((1, 24)),
        key=np.array([key], dtype=np.uint64),
        market_day=np.ones((1, days, 1)),
        demand_day=np.ones((1, days, 1)),
        plan=plan,
        dyn=dyn,
        audience=np.full((1, n), EVERY_SEGMENT, dtype=np.uint64),
        stage=np.zeros((1, n, MAX_STAGES, N_STAGE_FIELDS)),
        chan_plans=np.arange(n, dtype=np.int64)[None],
        chan_start=np.array([[0, n]], dtype=np.int64),
        state=np.zeros((1, n, N_STATE_FIELDS)),
        **empty_events(1, n, 1 << 16),
    )


def _opportunities(inputs: KernelInputs, t: int) -> int:
    """The step's opportunity count on channel 0 (flat diurnal curve: the volume is the mean)."""
    h_count = reference.child(reference.child(reference.child(int(inputs.key[0]), t), 0), STREAM_COUNT)
    return reference.poisson(h_count, float(inputs.chan[0, CH_VOLUME]))


def _step(step_fn, inputs: KernelInputs, budget: list[float], t: int = 0) -> np.ndarray:
    """(P, k) the per-plan output of step ``t`` with the given step budgets."""
    out = np.zeros((1, inputs.plan.shape[1], n_step_fields(MAX_STAGES)))
    kept = step_episodes(inputs, np.array([t], dtype=np.int64), np.array([budget], dtype=np.float64), out, step_fn)
    assert kept is inputs, "the test's event pool had to grow: give it more room"
    return out[0]


def _count(inputs: KernelInputs, t: int = 0, at_least: int = 4) -> int:
    n = _opportunities(inputs, t)
    assert n >= at_least, f"the hand-built market needs {at_least} opportunities, drew {n}: change its key"
    return n


# -------------------------------------------------------------------------------------------------
# Prices. Plan 0 bids 4 x 0.5 x 10 = 20 per lot, plan 1 bids 2.5 x 0.5 x 10 = 12.5; the market 10.
# -------------------------------------------------------------------------------------------------
@BACKENDS
def test_second_price_under_dedup_pays_the_market(step_fn) -> None:
    inputs = _market([4.0, 2.5])
    n = _count(inputs)
    out = _step(step_fn, inputs, [UNLIMITED, UNLIMITED])
    # One ad per advertiser: the runner-up (its own plan, 12.5) never enters, the market (10) sets it.
    assert out[0, IMPRESSIONS] == n * LOT
    assert out[0, SPEND] == n * 10.0
    assert out[0, OWN_PRICED] == 0.0
    assert out[1, IMPRESSIONS] == 0.0 and out[1, SPEND] == 0.0
    np.testing.assert_array_equal(out[:, BUDGET], [UNLIMITED, UNLIMITED])


@BACKENDS
@pytest.mark.parametrize(
    ("runner_up_value", "price", "own_priced"),
    [(2.5, 12.5, True), (1.5, 10.0, False)],  # runner-up 12.5 above the market / 7.5 below it
    ids=["runner-up-sets-price", "market-sets-price"],
)
def test_second_price_without_dedup_pays_max_of_runner_up_and_market(
    step_fn, runner_up_value: float, price: float, own_priced: bool
) -> None:
    inputs = _market([4.0, runner_up_value], dedup=False)
    n = _count(inputs)
    out = _step(step_fn, inputs, [UNLIMITED, UNLIMITED])
    assert out[0, IMPRESSIONS] == n * LOT
    assert out[0, SPEND] == n * price
    assert out[0, OWN_PRICED] == (n if own_priced else 0)
    assert out[1, SPEND] == 0.0


@BACKENDS
@pytest.mark.parametrize("dedup", [True, False])
def test_first_price_pays_the_bid(step_fn, dedup: bool) -> None:
    inputs = _market([4.0, 2.5], first_price=True, dedup=dedup)
    n = _count(inputs)
    out = _step(step_fn, inputs, [UNLIMITED, UNLIMITED])
    assert out[0, IMPRESSIONS] == n * LOT
    assert out[0, SPEND] == n * 20.0
    assert out[0, OWN_PRICED] == 0.0  # only second-price lots can be priced by an own plan


@BACKENDS
@pytest.mark.parametrize("first_price", [True, False])
def test_a_throttled_plan_enters_fewer_auctions_at_its_full_bid(step_fn, first_price: bool) -> None:
    # Plan 0 (a failed plan, delivery 0.25) bids 20 a lot, plan 1 bids 12.5, the market 10. Plan 0
    # enters exactly the auctions whose delivery draw (the low bits of its noise hash) is below 0.25 and
    # wins them at its full price; plan 1 takes the others. Never a discount: first price pays 20.
    inputs = _market([4.0, 2.5], first_price=first_price, volume=400.0, delivery=[0.25, 1.0])
    n = _count(inputs, at_least=200)
    h_chan = reference.child(reference.child(int(inputs.key[0]), 0), 0)
    draws = np.array([reference.uniforms(reference.child(h_chan, o), np.array([SLOT_BIDDER]))[1][0] for o in range(n)])
    entered = int((draws < 0.25).sum())
    assert 0.15 * n < entered < 0.35 * n  # about a quarter of the auctions
    out = _step(step_fn, inputs, [UNLIMITED, UNLIMITED])
    assert out[0, IMPRESSIONS] == entered * LOT and out[1, IMPRESSIONS] == (n - entered) * LOT
    assert out[0, SPEND] == entered * (20.0 if first_price else 10.0)
    assert out[1, SPEND] == (n - entered) * (12.5 if first_price else 10.0)


@BACKENDS
def test_a_market_above_every_bid_takes_every_lot(step_fn) -> None:
    inputs = _market([4.0, 2.5], market=2.5)  # 25 per lot beats the best bid, 20
    _count(inputs)
    out = _step(step_fn, inputs, [UNLIMITED, UNLIMITED])
    np.testing.assert_array_equal(out[:, [SPEND, IMPRESSIONS]], 0.0)


# -------------------------------------------------------------------------------------------------
# Affordability: a plan bids only while at least its bid is left of its step budget.
# -------------------------------------------------------------------------------------------------
@BACKENDS
def test_a_plan_whose_budget_is_below_its_bid_cannot_win(step_fn) -> None:
    inputs = _market([4.0, 2.5])
    _count(inputs)  # at least 4 lots: more than plan 1 can afford
    # Plan 0 (bid 20) has 15: never eligible. Plan 1 (bid 12.5) has 35 and pays the market, 10, per
    # lot: 35 -> 25 -> 15 -> 5, and with 5 < 12.5 left it drops out; the market takes the rest.
    out = _step(step_fn, inputs, [15.0, 35.0])
    assert out[0, IMPRESSIONS] == 0.0 and out[0, SPEND] == 0.0
    assert out[1, IMPRESSIONS] == 3 * LOT
    assert out[1, SPEND] == 30.0
    assert np.all(out[:, SPEND] <= out[:, BUDGET])


@BACKENDS
def test_a_budget_equal_to_the_bid_buys_one_lot(step_fn) -> None:
    inputs = _market([4.0, 2.5])
    n = _count(inputs)
    # Plan 0 can afford its first lot exactly (20 >= 20), pays 10 and is out (10 < 20); plan 1, now
    # the advertiser's best eligible plan, wins every later lot at the market price.
    out = _step(step_fn, inputs, [20.0, UNLIMITED])
    assert out[0, IMPRESSIONS] == LOT and out[0, SPEND] == 10.0
    assert out[1, IMPRESSIONS] == (n - 1) * LOT and out[1, SPEND] == (n - 1) * 10.0


# -------------------------------------------------------------------------------------------------
# The learning level in the bid: the platform's estimate is biased by exp(bias0 x lambda).
# -------------------------------------------------------------------------------------------------
@BACKENDS
@pytest.mark.parametrize("level", [0.0, 0.5, 1.0])
def test_the_learning_level_scales_the_bid_by_the_estimate_bias(step_fn, level: float) -> None:
    # First price, so the price is the bid: 4 x 0.5 x 10 x exp(-2 x lambda) per lot.
    inputs = _market([4.0], first_price=True, market=0.05, learning=[level], bias0=[-2.0])
    n = _count(inputs)
    out = _step(step_fn, inputs, [UNLIMITED])
    assert out[0, IMPRESSIONS] == n * LOT
    assert out[0, SPEND] == pytest.approx(n * 20.0 * math.exp(-2.0 * level), rel=1e-12)


# -------------------------------------------------------------------------------------------------
# The deep funnel: fixed delays, each stage counted from the previous one, cut at the horizon.
# -------------------------------------------------------------------------------------------------
def _funnel(delay_steps: tuple[float, float], horizon: float) -> KernelInputs:
    """One plan that converts every click (CTR = CVR = 1) into a two-stage funnel with rate 1, no
    delay spread, and stage values 100 and 1000."""
    inputs = _market([4.0], market=0.05, cvr=1.0, true_cvr_mult=1.0, horizon=[horizon])
    stage = inputs.stage[0, 0]
    stage[:2, ST_RATE] = 1.0
    stage[:2, ST_VALUE] = [100.0, 1000.0]
    stage[:2, ST_DELAY_MEDIAN] = delay_steps
    stage[:2, ST_DELAY_SIGMA] = 0.0
    return inputs


@BACKENDS
@pytest.mark.parametrize(
    ("delay_steps", "expected"),
    [((3.0, 5.0), (3, 8)), ((2.6, 0.2), (3, 4))],  # round(2.6) = 3; round(0.2) = 0 -> at least 1 step
    ids=["3+5", "rounded-and-at-least-one"],
)
def test_deep_stages_are_chained_with_their_delays(step_fn, delay_steps, expected) -> None:
    t = 2
    inputs = _funnel(delay_steps, horizon=PENDING_STEPS)
    n = _count(inputs, t, at_least=1)
    out = _step(step_fn, inputs, [UNLIMITED], t=t)
    conversions = n * LOT
    assert out[0, CONVERSIONS] == conversions
    pending = pending_counts(inputs, 0)[0]
    first, second = t + expected[0], t + expected[1]  # stage 1 counts from stage 0, not the conversion
    assert pending[0, first] == conversions and pending[0].sum() == conversions
    assert pending[1, second] == conversions and pending[1].sum() == conversions
    assert pending[2].sum() == 0
    # Each stage matures (is reported and paid) at its own step.
    for step, stage, value in ((first, 0, 100.0), (second, 1, 1000.0)):
        matured = _step(step_fn, inputs, [0.0], t=step)
        assert matured[0, DEEP0 + stage] == conversions
        assert matured[0, DEEP_VALUE] == conversions * value


@BACKENDS
@pytest.mark.parametrize(("horizon", "second_kept"), [(10, False), (11, True)])
def test_a_deep_event_past_the_attribution_horizon_is_dropped(step_fn, horizon: int, second_kept: bool) -> None:
    # Conversions at step 2: stage 0 at 5, stage 1 at 10. A plan attributed up to (not including)
    # step 10 keeps the first and drops the second.
    t = 2
    inputs = _funnel((3.0, 5.0), horizon=horizon)
    n = _count(inputs, t, at_least=1)
    _step(step_fn, inputs, [UNLIMITED], t=t)
    pending = pending_counts(inputs, 0)[0]
    assert pending[0, 5] == n * LOT and pending[0].sum() == n * LOT
    assert pending[1, 10] == (n * LOT if second_kept else 0)
    assert pending[1].sum() == (n * LOT if second_kept else 0)


@BACKENDS
def test_events_after_the_episode_share_the_last_slot_until_the_attribution_horizon(step_fn) -> None:
    # The dense view of the pending events has the episode's steps and one slot for everything after
    # it: with 48 slots the episode is 47 steps. Conversions at step 40: stage 0 at 45 (in the episode), stage 1
    # at 50 (after it: the last slot), both within a plan attributed up to step 60; a plan
    # attributed up to step 50 drops stage 1, one attributed up to 45 both.
    t, last = 40, PENDING_STEPS - 1
    for horizon, kept in ((60, (1, 1)), (50, (1, 0)), (45, (0, 0))):
        inputs = _funnel((5.0, 5.0), horizon=horizon)
        n = _count(inputs, t, at_least=1) * LOT
        _step(step_fn, inputs, [UNLIMITED], t=t)
        pending = pending_counts(inputs, 0)[0]
        assert pending[0, 45] == kept[0] * n and pending[0].sum() == kept[0] * n, horizon
        assert pending[1, last] == kept[1] * n and pending[1].sum() == kept[1] * n, horizon


# -------------------------------------------------------------------------------------------------
# Pacing: a plan's share of the rest of the day -> its step budget, by its channel's traffic.
# -------------------------------------------------------------------------------------------------
def _four_step_curves() -> np.ndarray:
    """(2, 24) traffic by hour: channel 0 reads 1, 2, 3, 2 at hours 0, 6, 12, 18 (the hours a
    4-step day starts its steps at; other hours are never read), channel 1 is flat."""
    diurnal = np.full((2, 24), 100.0)
    diurnal[0, [0, 6, 12, 18]] = [1.0, 2.0, 3.0, 2.0]
    diurnal[1] = 1.0
    return diurnal


def test_pacing_shares_of_a_four_step_day() -> None:
    day_share, rest_share = pacing(_four_step_curves(), 4)
    np.testing.assert_array_equal(day_share, [[1 / 8, 2 / 8, 3 / 8, 2 / 8], [1 / 4] * 4])
    np.testing.assert_array_equal(rest_share, [[1.0, 7 / 8, 5 / 8, 2 / 8], [1.0, 3 / 4, 2 / 4, 1 / 4]])


DAILY = 800.0
SHARES = np.array([0.25, 0.75])  # plan 0 on channel 0, plan 1 on channel 1


def _plan_pacing() -> tuple[np.ndarray, np.ndarray]:
    """(4, 2) each plan's day and rest share at each step of the day, by its own channel."""
    day_share, rest_share = pacing(_four_step_curves(), 4)
    return day_share.T, rest_share.T


def test_a_share_held_all_day_spends_its_share_by_its_channel_traffic() -> None:
    day_share, rest_share = _plan_pacing()
    left, total = DAILY, np.zeros(2)
    for step in range(4):
        budget = step_budgets(SHARES, day_share[step], rest_share[step], np.array(left), DAILY)
        # Every plan spends all it is given: each step gets share x the channel's traffic share.
        np.testing.assert_allclose(budget, SHARES * day_share[step] * DAILY, rtol=1e-12)
        left -= budget.sum()
        total += budget
    np.testing.assert_allclose(total, SHARES * DAILY, rtol=1e-12)
    assert left == pytest.approx(0.0, abs=1e-9)
    # The first step is exact: the 1-in-8 morning of channel 0 and a quarter day of the flat one.
    first = step_budgets(SHARES, day_share[0], rest_share[0], np.array(DAILY), DAILY)
    np.testing.assert_array_equal(first, [25.0, 150.0])


def test_money_not_spent_earlier_is_not_dumped_later() -> None:
    day_share, rest_share = _plan_pacing()
    # Nothing sells all day: the whole budget is still left at every step, yet no step hands out more
    # than share x its traffic share x the daily budget (the last step: 1/4 of each plan's share).
    for step in range(4):
        budget = step_budgets(SHARES, day_share[step], rest_share[step], np.array(DAILY), DAILY)
        np.testing.assert_array_equal(budget, SHARES * day_share[step] * DAILY)
    np.testing.assert_array_equal(budget, [50.0, 150.0])


def test_the_last_step_gives_what_is_left() -> None:
    day_share, rest_share = _plan_pacing()
    # 100 left at the last step: D = min(800, 100 / (0.25 x 1/4 + 0.75 x 1/4)) = 400.
    budget = step_budgets(SHARES, day_share[3], rest_share[3], np.array(100.0), DAILY)
    np.testing.assert_array_equal(budget, [25.0, 75.0])
    # Mid-day, a shortfall is spread over the rest of the day: 340 left at step 2 supports
    # D = 340 / (0.25 x 5/8 + 0.75 x 1/2) = 640 of a day, of which step 2 gets its traffic share.
    budget = step_budgets(SHARES, day_share[2], rest_share[2], np.array(340.0), DAILY)
    np.testing.assert_array_equal(budget, [0.25 * 3 / 8 * 640.0, 0.75 * 1 / 4 * 640.0])


def test_pacing_a_batch_row_by_row() -> None:
    day_share, rest_share = _plan_pacing()
    left = np.array([DAILY, 100.0])
    budget = step_budgets(np.stack([SHARES, SHARES]), day_share[3], rest_share[3], left, DAILY)
    np.testing.assert_array_equal(budget, [[50.0, 150.0], [25.0, 75.0]])
