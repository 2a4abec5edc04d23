"""The NumPy reference of one step's dynamics: slow, obvious, and independent of the kernels.

It implements the model documented in :mod:`envs.kernels` with Python integers for the hash (so
nothing relies on Numba's unsigned arithmetic) and NumPy vectors over a channel's bidders, in the same
order of events. It shares one draw primitive with the kernel, :func:`envs.kernels.lognormal_quantile` (a
knot table of the scenario's log-normal and the normal's tail function), called on uniforms it draws
itself with the tables of the inputs it is given; the dynamics are its own. The
alignment test steps the kernel and this function side by side and expects equal counts and money equal
to 1e-9 relative. :func:`step_reference` has the kernel's signature (``t``, the fields of
:class:`envs.kernels.KernelInputs` for one episode, ``step_budget``, ``out``) and runs through the same
:func:`envs.kernels.step_episodes`.
"""

from __future__ import annotations

import math

import numpy as np

from envs.kernels import (
    BUDGET,
    CH_CTR_MULT,
    CH_CVR_MULT,
    CH_FIRST_PRICE,
    CH_MARKET,
    CH_MARKET_SIGMA,
    CH_PRED_CVR_MULT,
    CH_VOLUME,
    CLICKS,
    CONVERSIONS,
    DEEP0,
    DEEP_VALUE,
    DELIVERY_BITS,
    DYN_BID_MULT,
    DYN_BID_VALUE,
    DYN_DELIVERY,
    DYN_LEARNING,
    IMPRESSIONS,
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
    SLOT_CLICKS,
    SLOT_CONVERSIONS,
    SLOT_DEEP,
    SLOT_SEGMENT,
    SLOT_Z1,
    SPEND,
    ST_DELAY_MEDIAN,
    ST_DELAY_SIGMA,
    ST_RATE,
    ST_VALUE,
    STATE_CONVERSIONS,
    STATE_IMPRESSIONS,
    STREAM_COUNT,
    lognormal_quantile,
)
from envs.scenario import N_SEGMENTS

MASK = (1 << 64) - 1
GOLDEN = 0x9E3779B97F4A7C15


def mix(x: int) -> int:
    x &= MASK
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & MASK
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & MASK
    return x ^ (x >> 31)


def child(h: int, index: int) -> int:
    return mix(h + (index + 1) * GOLDEN)


def uniform(h: int, slot: int) -> float:
    return ((child(h, slot) >> 11) + 0.5) * 2.0**-53


def uniforms(h: int, slots: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Vectorised :func:`uniform` over many slots (NumPy uint64 arithmetic wraps like the kernel's), and
    the delivery draws from the same hashes' low ``DELIVERY_BITS`` bits."""
    with np.errstate(over="ignore"):
        x = np.uint64(h) + (slots.astype(np.uint64) + np.uint64(1)) * np.uint64(GOLDEN)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        x = x ^ (x >> np.uint64(31))
    low = (x & np.uint64((1 << DELIVERY_BITS) - 1)).astype(np.float64)
    return ((x >> np.uint64(11)).astype(np.float64) + 0.5) * 2.0**-53, (low + 0.5) / (1 << DELIVERY_BITS)


def uniform_pair32(h: int, slot: int) -> tuple[float, float]:
    """Two uniforms from the high and low 32 bits of one hash (the kernel's ``uniform_pair32``)."""
    x = child(h, slot)
    return ((x >> 32) + 0.5) * 2.0**-32, ((x & 0xFFFFFFFF) + 0.5) * 2.0**-32


def normal_pair(h: int, slot: int) -> tuple[float, float]:
    r = math.sqrt(-2.0 * math.log(uniform(h, slot)))
    angle = 2.0 * math.pi * uniform(h, slot + 1)
    return r * math.cos(angle), r * math.sin(angle)


def poisson(h: int, lam: float) -> int:
    if lam <= 0.0:
        return 0
    if lam < 30.0:
        u, k, p = uniform(h, 0), 0, math.exp(-lam)
        c = p
        while u > c and k < 1000:
            k += 1
            p *= lam / k
            c += p
        return k
    z, _ = normal_pair(h, 1)
    return max(0, math.floor(lam + math.sqrt(lam) * z + 0.5))


def binomial(h: int, slot: int, n: int, p: float) -> int:
    if n <= 0 or p <= 0.0:
        return 0
    if p >= 1.0:
        return n
    if n * p > 50.0:
        z, _ = normal_pair(h, slot + 1)
        return min(n, max(0, math.floor(n * p + math.sqrt(n * p * (1.0 - p)) * z + 0.5)))
    u, q = uniform(h, slot), 1.0 - p
    pmf = q**n
    c, k = pmf, 0
    while u > c and k < n:
        pmf *= (p / q) * (n - k) / (k + 1)
        k += 1
        c += pmf
    return k


def step_reference(
    t,
    hours_per_step,
    steps_per_day,
    horizon,
    lot,
    quality_sigma,
    quality_knots,
    noise_floor,
    dedup,
    chan,
    market_knots,
    chan_diurnal,
    chan_market_hour,
    key,
    market_day,
    demand_day,
    plan,
    dyn,
    audience,
    stage,
    chan_plans,
    chan_start,
    state,
    ev_code,
    ev_step,
    ev_count,
    late,
    step_budget,
    out,
):
    key = int(key)
    n_stages = stage.shape[1]
    scheduled = []  # this step's deep events: (plan, stage, step it matures at)
    hour = (t % steps_per_day) * hours_per_step
    day = t // steps_per_day
    out[:] = 0.0

    learning = dyn[:, DYN_LEARNING]
    delivery = dyn[:, DYN_DELIVERY]
    floor = plan[:, PL_FATIGUE_FLOOR]
    fatigue = floor + (1.0 - floor) * np.exp(-state[:, STATE_IMPRESSIONS] / plan[:, PL_FATIGUE_SCALE])
    channel = plan[:, PL_CHANNEL].astype(np.int64)
    click_p = np.minimum(1.0, plan[:, PL_CTR] * fatigue * chan[channel, CH_CTR_MULT])
    base_bid = (
        dyn[:, DYN_BID_VALUE]
        * dyn[:, DYN_BID_MULT]
        * click_p
        * plan[:, PL_CVR]
        * chan[channel, CH_PRED_CVR_MULT]
        * np.exp(plan[:, PL_BIAS0] * learning)
        * lot
    )
    noise_amp = noise_floor + (plan[:, PL_NOISE0] - noise_floor) * learning
    active = (t >= plan[:, PL_LAUNCH]).astype(np.float64)
    remaining = step_budget.astype(np.float64).copy()
    out[:, BUDGET] = step_budget

    h_step = child(key, t)
    for c in range(chan.shape[0]):
        h_chan = child(h_step, c)
        lam = chan[c, CH_VOLUME] * chan_diurnal[c, hour] * hours_per_step * demand_day[day, c]
        n_opp = poisson(child(h_chan, STREAM_COUNT), lam)
        bidders = chan_plans[chan_start[c] : chan_start[c + 1]]
        if len(bidders) == 0:
            continue
        market_base = chan[c, CH_MARKET] * chan_market_hour[c, hour] * market_day[day, c] * lot
        first_price = chan[c, CH_FIRST_PRICE] > 0.5
        targeted_by_segment = [
            ((audience[bidders] >> np.uint64(s)) & np.uint64(1)).astype(np.float64) for s in range(N_SEGMENTS)
        ]
        for o in range(n_opp):
            h = child(h_chan, o)
            segment = int(uniform(h, SLOT_SEGMENT) * N_SEGMENTS)
            u_quality, u_market = uniform_pair32(h, SLOT_Z1)
            quality = lognormal_quantile(u_quality, quality_sigma, -0.5 * quality_sigma * quality_sigma, quality_knots)
            market = market_base * lognormal_quantile(u_market, chan[c, CH_MARKET_SIGMA], 0.0, market_knots[c])
            u, delivery_draw = uniforms(h, SLOT_BIDDER + bidders)
            targeting = learning[bidders] + (1.0 - learning[bidders]) * quality
            bids = base_bid[bidders] * targeting * (1.0 + noise_amp[bidders] * (2.0 * u - 1.0))
            bids = np.where(delivery_draw < delivery[bidders], bids, 0.0)  # a failed plan's throttled delivery
            eligible = active[bidders] * targeted_by_segment[segment] * (remaining[bidders] >= bids)
            bids = bids * eligible
            order = np.argsort(-bids, kind="stable")  # ties: the earlier bidder wins, as in the scan
            best = bids[order[0]]
            second = bids[order[1]] if len(bids) > 1 else 0.0
            if best <= 0.0 or best <= market:
                continue
            winner = int(bidders[order[0]])
            if first_price:
                price = best
            elif dedup:  # one ad per advertiser: its runner-up never enters, the market sets the price
                price = market
            else:
                price = max(second, market)
                out[winner, OWN_PRICED] += 1.0 if second > market else 0.0
            remaining[winner] -= price
            out[winner, SPEND] += price
            out[winner, IMPRESSIONS] += lot
            clicks = binomial(h, SLOT_CLICKS, lot, click_p[winner])
            cvr = min(1.0, plan[winner, PL_CVR] * chan[c, CH_CVR_MULT] * quality)
            conversions = binomial(h, SLOT_CONVERSIONS, clicks, cvr)
            out[winner, CLICKS] += clicks
            out[winner, CONVERSIONS] += conversions
            attributed = int(plan[winner, PL_HORIZON])
            for j in range(conversions):
                t_event = t
                for s in range(n_stages):
                    slot = SLOT_DEEP + 4 * (j * n_stages + s)
                    if uniform(h, slot) >= stage[winner, s, ST_RATE]:
                        break
                    z_delay, _ = normal_pair(h, slot + 1)
                    median, sigma = stage[winner, s, ST_DELAY_MEDIAN], stage[winner, s, ST_DELAY_SIGMA]
                    t_event += max(1, math.floor(median * math.exp(sigma * z_delay) + 0.5))
                    if t_event >= attributed:
                        break
                    scheduled.append((winner, s, t_event))

    count = int(ev_count[0])
    if count + len(scheduled) > ev_code.shape[0]:
        return False  # the pool is too small for this step's events: nothing committed
    # The pool keeps the events still to mature: those of step t are counted and leave it, this
    # step's join it (those after the episode only as their (plan, stage) total).
    old_code, old_step = ev_code[:count].copy(), ev_step[:count].copy()
    now = old_step == t
    matured = np.zeros((out.shape[0], n_stages))
    np.add.at(matured, (old_code[now] // n_stages, old_code[now] % n_stages), 1.0)
    kept_code, kept_step = list(old_code[~now]), list(old_step[~now])
    for plan_index, s, t_event in scheduled:
        if t_event >= horizon:  # after the episode: only its total is ever settled
            late[plan_index, s] += 1
        else:
            kept_code.append(plan_index * n_stages + s)
            kept_step.append(t_event)
    ev_code[: len(kept_code)] = kept_code
    ev_step[: len(kept_step)] = kept_step
    ev_count[0] = len(kept_code)
    state[:, STATE_CONVERSIONS] += out[:, CONVERSIONS]
    state[:, STATE_IMPRESSIONS] += out[:, IMPRESSIONS]
    if t < horizon:
        out[:, DEEP0 : DEEP0 + n_stages] = matured
        out[:, DEEP_VALUE] = (matured * stage[:, :, ST_VALUE]).sum(axis=1)
    return True
