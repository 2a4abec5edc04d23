"""Numba kernels: one decision step of a portfolio's auctions, funnel and delayed deep events.

Kernels take arrays and return arrays; no Python objects, no global state. All randomness comes from
a counter-based hash (splitmix64 finaliser) of ``(key, step, channel, opportunity, slot)``: a draw
does not depend on loop order or thread count, and ``envs/reference.py`` reproduces every draw
exactly, so the alignment test compares counts exactly.

One step, per channel:

1. ``n ~ Poisson(volume * diurnal[hour] * hours_per_step)`` opportunities (exact inversion below a
   mean of 30, the rounded normal approximation above).
2. Each opportunity (a lot of ``lot`` impressions) draws an audience segment, a user quality
   ``q = exp(sigma_q z - sigma_q^2/2)`` and the highest competing bid
   ``market_bid * market_hour * market_day * exp(sigma_m z')`` (per impression). ``z`` and ``z'`` are
   independent standard normals from the two 32-bit halves of one hash (:func:`uniform_pair32`); each
   log-normal is read off its own quantile function :func:`lognormal_quantile`: a knot table of
   ``exp(sigma Phi^-1(u) + shift)`` in the body (``quality_knots``, ``market_knots``: built once per
   scenario, no ``exp`` per opportunity) and the exact tail function (the 32-bit uniform truncates the
   normals at ``|z| = 6.34``).
3. Each plan of the channel bids ``value * multiplier * pCTR * pCVR * (lambda + (1 - lambda) q) * lot``
   (the platform's bidding state ``dyn``: the goal's value per conversion, the controller's multiplier
   with any exploration premium; a learning plan cannot yet target good users), where the platform's
   ``pCTR * pCVR = CTR * fatigue * CVR * exp(bias0 * lambda)`` times per-bidder noise
   ``1 + amp * (2u - 1)``; ``lambda = max(0, 1 - conversions / learning_conversions)`` is the
   learning phase, ``amp`` shrinks from ``noise0`` to ``noise_floor`` with it. A plan is eligible
   when it exists, targets the segment, is delivered (its delivery draw, the low ``DELIVERY_BITS``
   bits of its noise hash, is below ``DYN_DELIVERY``: 1, or a failed plan's throttle) and has at
   least its bid left of its step budget, so spend never exceeds the budget it was given. The bid
   vector is computed and masked without branching, then scanned for the top two.
4. The top bid wins if it beats the market; it pays the runner-up (plan or market) on second-price
   channels, its own bid on first-price ones.
5. Clicks ~ Binomial(lot, CTR * fatigue * ctr_mult), conversions ~ Binomial(clicks,
   min(1, CVR * cvr_mult * q)); each conversion walks the deep funnel: stage ``s`` happens with its
   rate, after a discretised log-normal delay (at least one step) from the previous stage, and is
   scheduled for that step; events beyond the plan's attribution horizon (``PL_HORIZON``: the
   episode plus its vertical's window) are dropped. Events that mature after the episode are only
   ever settled as a total, so they are counted per (plan, stage) in ``late``.

Deep events still to mature are a sparse list, not a dense (plan, stage, step) tensor: each is one
record (``ev_code = plan * n_stages + stage``, ``ev_step`` its maturity step, 8 bytes) in a
per-episode pool of ``ev_code.shape[-1]`` records, ``ev_count`` of them in use. An episode has a few
deep events in flight per plan at a time, so the pool is a small fraction of the dense tensor it
replaced (a whole episode of ``large``: the pool grew to 4,096 records, 32 KiB, against 1 MiB for
500 plans x 3 stages x 169 steps of int32). A step appends its events after the records in
use and commits them only at its end, in one pass over the pool: events after the episode are folded
into ``late``, those maturing at ``t`` counted into ``out[:, DEEP0 + s]`` and dropped, the rest kept.
So a step that runs out of room returns ``False`` having changed nothing in use (only ``out`` and
records past ``ev_count``): :func:`step_episodes` then doubles the pool (:func:`grow_events`) and
runs the step again, with the same draws. A step costs one pass over the events in flight (a few
hundred on ``default``). :func:`pending_after` sums what settlement counts and
:func:`pending_counts` rebuilds the dense view for tests and tools.

Fatigue and the learning state are read at the start of the step and updated at its end.

Performance, without changing a single draw or comparison: at the start of a step each channel's
bidders are grouped by audience segment (:func:`segment_bidders`: only plans that exist and target
the segment, in channel order, with their bid terms copied contiguously), so an opportunity's
:func:`auction` loops over the eligible bidders only (an excluded bidder's masked bid is 0, which
never changes the top two), first computing every bid without branching and then scanning for the
top two. Only bidders that could beat the market enter it (:func:`candidates`): a bid is at most
``|base| (1 + |amp|) (|lambda| + |1 - lambda| q)`` (:func:`bid_ceilings`) and at most the bidder's
remaining budget, and a bidder whose smaller bound is below the market can neither win nor set the
price (a price is at least the market), so the market bid is drawn first and such bidders are not
hashed at all. Plans bid above the market on most lots but run out of step budget, so most lots
have no candidate and no auction: on ``default`` 78% of lots, on ``large`` 45%, and the auctions left
hash a few bidders instead of every bidder of the segment (``default``'s kernel 109 -> 91 us a step,
``large``'s 13 -> 5-6 ms). The opportunity's normals come from a quantile table rather than Box-Muller
(``log``, ``sqrt``, ``cos``, ``sin`` over two hashes): that cut the kernel's time on ``default`` by a
quarter; reading the quality and the market bid off log-normal knot tables (the same knots through
``exp`` once per scenario) instead of ``exp`` of a table normal cut it by another ~12% (``default``'s
single env 127 -> 112 us a step). The remaining per-opportunity cost is the auction itself and three
hashes (the bidder noise hash vectorises and costs little). The funnel's draws (binomials,
deep delays, still Box-Muller) run only for won lots, a few percent of opportunities: tables there did
not measurably help. :func:`step_batch_kernel` runs many environments in one call (``prange`` over environments).

Inputs: the scenario's numbers and each episode's hidden truth and state travel as one
:class:`KernelInputs`, packed here beside the column constants (:func:`pack_inputs`,
:func:`load_portfolio`) and unpacked into the kernels' positional arguments in one place,
:func:`step_episodes`, which also steps the NumPy reference (it has the kernel's signature).
"""

from __future__ import annotations

import ctypes
import math
import os
from collections.abc import Callable
from statistics import NormalDist
from typing import NamedTuple

import numba as nb
import numpy as np

from envs.scenario import MAX_STAGES, N_SEGMENTS, Portfolio, Scenario
from envs.shares import diurnal_traffic

# The parallel kernels prefer Numba's OpenMP threading layer (unless the user chose one with
# NUMBA_THREADING_LAYER): on the project's 2-core machines it ran 64 batched copies of `default` at 15-17k
# env steps/s against 9-12k on the "workqueue" layer (README, Speed). Numba's OpenMP layer sets the process's OpenMP
# thread count when it starts its threads, and torch runs on the same OpenMP runtime: a training run
# with torch_threads=1 then ran its updates on 2 threads from its first evaluation on (a batched env),
# slower and no longer reproducible on a loaded machine. start_threads() starts the layer and puts the
# count back; Numba's parallel regions name their thread count themselves, so they still use all of theirs.
# Set before the first parallel launch, which picks the layer for the process.
if "NUMBA_THREADING_LAYER" not in os.environ:
    nb.config.THREADING_LAYER_PRIORITY = ["omp", "tbb", "workqueue"]
_threads_started = False


def _loaded_openmp() -> ctypes.CDLL | None:
    """The GNU OpenMP runtime already loaded in this process (torch's or Numba's), or None."""
    try:
        return ctypes.CDLL("libgomp.so.1", mode=os.RTLD_NOLOAD)
    except (OSError, AttributeError):  # not loaded (or no RTLD_NOLOAD on this platform)
        return None


def start_threads() -> None:
    """Start Numba's threading layer once per process, leaving the OpenMP thread count as it was.

    Numba's OpenMP layer calls ``omp_set_num_threads(NUMBA_NUM_THREADS)`` when it starts, which would
    change torch's intra-op threads (torch.get_num_threads()) when both share libgomp; later launches do
    not touch it. Called before every parallel kernel launch (a flag check after the first)."""
    global _threads_started
    if _threads_started:
        return
    runtime = _loaded_openmp()
    before = runtime.omp_get_max_threads() if runtime is not None else None
    nb.get_num_threads()  # starts the layer's threads
    if before is not None and nb.threading_layer() == "omp":
        runtime.omp_set_num_threads(before)
    _threads_started = True


# Columns of a step's per-plan output (n_plans, N_STEP_FIELDS); deep stage counts follow.
# OWN_PRICED counts won lots whose price another plan of the same advertiser set (0 under dedup).
SPEND, IMPRESSIONS, CLICKS, CONVERSIONS, DEEP_VALUE, BUDGET, OWN_PRICED = 0, 1, 2, 3, 4, 5, 6
DEEP0 = 7  # DEEP0 + s: deep events of stage s that matured this step


def n_step_fields(n_stages: int) -> int:
    return DEEP0 + n_stages


# Columns of the channel matrix (n_channels, N_CHANNEL_FIELDS).
# CH_PRED_CVR_MULT: the CVR multiplier the platform's prediction (and so the bid) applies.
CH_VOLUME, CH_MARKET, CH_MARKET_SIGMA, CH_CTR_MULT, CH_CVR_MULT, CH_FIRST_PRICE, CH_PRED_CVR_MULT = range(7)
N_CHANNEL_FIELDS = 7
# Columns of the plan matrix (n_plans, N_PLAN_FIELDS): hidden truth, fixed for the episode.
# PL_HORIZON: the step from which the plan's deep events are no longer attributed (horizon + window).
(PL_CTR, PL_CVR, PL_HORIZON, PL_BIAS0, PL_NOISE0, PL_FATIGUE_SCALE, PL_FATIGUE_FLOOR, PL_CHANNEL, PL_LAUNCH) = range(9)
N_PLAN_FIELDS = 9
# Columns of the platform's per-plan bidding state (n_plans, N_DYN_FIELDS), written before each step by
# envs/platform.py: the value the platform bids per predicted conversion (the goal's target), the
# learning level lambda (1 at launch, 0 once learned), the bid multiplier (cost controller,
# exploration premium) and the delivery rate: the chance that the plan enters an auction at all (1;
# a failed plan's throttled delivery: it enters fewer auctions at its full bid, never at a discount).
DYN_BID_VALUE, DYN_LEARNING, DYN_BID_MULT, DYN_DELIVERY = 0, 1, 2, 3
N_DYN_FIELDS = 4
# The delivery draw reads the low bits of the bidder's noise hash (the noise uniform reads the high 53).
DELIVERY_BITS = 11
# Last axis of the stage tensor (n_plans, n_stages, N_STAGE_FIELDS).
ST_RATE, ST_VALUE, ST_DELAY_MEDIAN, ST_DELAY_SIGMA = 0, 1, 2, 3
N_STAGE_FIELDS = 4
# Columns of the dynamic plan state (n_plans, N_STATE_FIELDS).
STATE_CONVERSIONS, STATE_IMPRESSIONS = 0, 1
N_STATE_FIELDS = 2
# Records of an episode's deep-event pool at the start; the pool doubles when a step needs more.
EVENT_CAPACITY = 1024

# Hash slots of one opportunity's draws. Bidder noise uses SLOT_BIDDER + plan index; deep-funnel
# draws use SLOT_DEEP + 4 * (conversion * n_stages + stage) + {0: happens?, 1, 2: delay normal}.
SLOT_SEGMENT, SLOT_Z1, SLOT_Z2, SLOT_CLICKS, SLOT_CONVERSIONS = 0, 1, 2, 3, 4
SLOT_DEEP = 16
SLOT_BIDDER = 1 << 40
# Stream of the per-(step, channel) opportunity count.
STREAM_COUNT = 1 << 41


class KernelInputs(NamedTuple):
    """What the step kernel reads besides the step, the step budgets and its output, by name.

    The fields are the kernel's positional parameters in order (``step_kernel(t, *inputs,
    step_budget, out)`` for one episode). The first ones are the scenario's, shared by every
    episode; from ``key`` on every array has a leading env axis ``E`` (drop it for one episode).
    """

    hours_per_step: int
    steps_per_day: int
    horizon: int  # the episode's steps; deep events maturing later are counted in ``late``
    lot: int  # impressions per opportunity
    quality_sigma: float  # log-sd of an opportunity's user quality
    # The knot tables hold exp(sigma z + shift) for the sigmas beside them (quality_sigma; chan's
    # CH_MARKET_SIGMA column): pack_inputs builds both; whoever changes a sigma rebuilds its table.
    quality_knots: np.ndarray  # (N_KNOTS,) float64 its quantile function's body (lognormal_knots)
    noise_floor: float  # bid noise amplitude of a mature plan
    dedup: bool  # one ad per advertiser per request: its own plans never set each other's prices
    chan: np.ndarray  # (C, N_CHANNEL_FIELDS) float64
    market_knots: np.ndarray  # (C, N_KNOTS) float64 the market bid's quantile body per channel (sigma_m)
    chan_diurnal: np.ndarray  # (C, 24) float64 traffic multiplier by hour, mean 1
    chan_market_hour: np.ndarray  # (C, 24) float64 competitor-pressure multiplier by hour
    key: np.ndarray  # (E,) uint64 root of the episode's counter-based draws
    market_day: np.ndarray  # (E, days, C) float64 competitor-pressure multiplier by day
    demand_day: np.ndarray  # (E, days, C) float64 traffic multiplier by day (demand events)
    plan: np.ndarray  # (E, P, N_PLAN_FIELDS) float64
    dyn: np.ndarray  # (E, P, N_DYN_FIELDS) float64 the platform's bidding state, written before each step
    audience: np.ndarray  # (E, P) uint64 segment bit masks
    stage: np.ndarray  # (E, P, S, N_STAGE_FIELDS) float64
    chan_plans: np.ndarray  # (E, P) int64 plan indices sorted by channel
    chan_start: np.ndarray  # (E, C + 1) int64 offsets of each channel's plans in chan_plans
    state: np.ndarray  # (E, P, N_STATE_FIELDS) float64, updated in place by each step
    ev_code: np.ndarray  # (E, R) int32 scheduled deep events: plan * S + stage (R: the pool's capacity)
    ev_step: np.ndarray  # (E, R) int32 the step each record matures at (< horizon)
    ev_count: np.ndarray  # (E, 1) int64 records in use
    late: np.ndarray  # (E, P, S) int64 deep events maturing after the episode, within attribution


N_SHARED_INPUTS = KernelInputs._fields.index("key")  # fields before the per-episode ones


def pack_inputs(scenario: Scenario, n_envs: int) -> KernelInputs:
    """The kernel inputs of ``n_envs`` episodes of ``scenario``: its channels packed, every episode
    empty until :func:`load_portfolio`."""
    sc, e, n, c = scenario, n_envs, scenario.n_plans, len(scenario.channels)
    if n * MAX_STAGES >= 2**31:  # ev_code (plan x stages + stage) is int32
        raise ValueError(f"{n} plans x {MAX_STAGES} stages do not fit the event pool's int32 codes")
    chan = np.zeros((c, N_CHANNEL_FIELDS))
    for row, spec in zip(chan, sc.channels, strict=True):
        row[CH_VOLUME] = spec.volume
        row[CH_MARKET] = spec.market_bid
        row[CH_MARKET_SIGMA] = spec.market_sigma
        row[CH_CTR_MULT] = spec.ctr_mult
        row[CH_CVR_MULT] = spec.cvr_mult
        row[CH_FIRST_PRICE] = 1.0 if spec.auction == "first" else 0.0
        row[CH_PRED_CVR_MULT] = spec.cvr_mult if spec.predicted_cvr_mult is None else spec.predicted_cvr_mult
    return KernelInputs(
        hours_per_step=sc.hours_per_step,
        steps_per_day=sc.steps_per_day,
        horizon=sc.horizon,
        lot=sc.impressions_per_opportunity,
        quality_sigma=sc.user_quality_sigma,
        quality_knots=lognormal_knots(sc.user_quality_sigma, -0.5 * sc.user_quality_sigma * sc.user_quality_sigma),
        noise_floor=sc.noise_floor,
        dedup=sc.platform.dedup,
        chan=chan,
        market_knots=np.array([lognormal_knots(sigma, 0.0) for sigma in chan[:, CH_MARKET_SIGMA]]).reshape(c, N_KNOTS),
        chan_diurnal=diurnal_traffic(sc.channels),
        chan_market_hour=np.array([spec.market_diurnal for spec in sc.channels], dtype=np.float64),
        key=np.zeros(e, dtype=np.uint64),
        market_day=np.ones((e, sc.days, c)),
        demand_day=np.ones((e, sc.days, c)),
        plan=np.zeros((e, n, N_PLAN_FIELDS)),
        dyn=np.zeros((e, n, N_DYN_FIELDS)),
        audience=np.zeros((e, n), dtype=np.uint64),
        stage=np.zeros((e, n, MAX_STAGES, N_STAGE_FIELDS)),
        chan_plans=np.zeros((e, n), dtype=np.int64),
        chan_start=np.zeros((e, c + 1), dtype=np.int64),
        state=np.zeros((e, n, N_STATE_FIELDS)),
        **empty_events(e, n, EVENT_CAPACITY),
    )


def empty_events(n_envs: int, n_plans: int, capacity: int) -> dict[str, np.ndarray]:
    """The deep-event fields of :class:`KernelInputs` for ``n_envs`` empty episodes, by name."""
    return {
        "ev_code": np.zeros((n_envs, capacity), dtype=np.int32),
        "ev_step": np.zeros((n_envs, capacity), dtype=np.int32),
        "ev_count": np.zeros((n_envs, 1), dtype=np.int64),
        "late": np.zeros((n_envs, n_plans, MAX_STAGES), dtype=np.int64),
    }


def grow_events(inputs: KernelInputs) -> KernelInputs:
    """``inputs`` with every episode's event pool doubled (records in use kept)."""
    e, capacity = inputs.ev_code.shape
    code = np.zeros((e, max(1, 2 * capacity)), dtype=np.int32)
    step = np.zeros((e, max(1, 2 * capacity)), dtype=np.int32)
    code[:, :capacity] = inputs.ev_code
    step[:, :capacity] = inputs.ev_step
    return inputs._replace(ev_code=code, ev_step=step)


def pending_after(inputs: KernelInputs, env_index: int, t: int) -> np.ndarray:
    """(P, S) int64 episode ``env_index``'s deep events maturing at step ``t`` or later (those after
    the episode included): what settlement counts."""
    i = env_index
    n_plans, n_stages = inputs.late.shape[1:]
    count = int(inputs.ev_count[i, 0])
    code = inputs.ev_code[i, :count][inputs.ev_step[i, :count] >= t]
    after = np.bincount(code, minlength=n_plans * n_stages).reshape(n_plans, n_stages)
    return after + inputs.late[i]


def pending_counts(inputs: KernelInputs, env_index: int) -> np.ndarray:
    """(P, S, horizon + 1) int64 episode ``env_index``'s deep events still to mature, by maturity step
    (every step up to the last one simulated is 0: matured events leave the pool); the last slot
    counts those maturing after the episode. The dense view of the pool, allocated on each call."""
    i = env_index
    n_plans, n_stages = inputs.late.shape[1:]
    dense = np.zeros((n_plans, n_stages, inputs.horizon + 1), dtype=np.int64)
    count = int(inputs.ev_count[i, 0])
    code, step = inputs.ev_code[i, :count], inputs.ev_step[i, :count]
    np.add.at(dense, (code // n_stages, code % n_stages, step), 1)
    dense[:, :, inputs.horizon] = inputs.late[i]
    return dense


def load_portfolio(inputs: KernelInputs, env_index: int, pf: Portfolio) -> None:
    """Start episode ``env_index`` of ``inputs`` (in place) with the hidden truth of ``pf``."""
    i = env_index
    inputs.key[i] = np.uint64(pf.key)
    inputs.market_day[i] = pf.market_day
    inputs.demand_day[i] = pf.demand_day
    plan = inputs.plan[i]
    plan[:, PL_CTR] = pf.ctr
    plan[:, PL_CVR] = pf.cvr
    plan[:, PL_HORIZON] = inputs.market_day.shape[1] * _steps_per_day(inputs) + pf.attribution_steps
    plan[:, PL_BIAS0] = pf.bias0
    plan[:, PL_NOISE0] = pf.noise0
    plan[:, PL_FATIGUE_SCALE] = pf.fatigue_scale
    plan[:, PL_FATIGUE_FLOOR] = pf.fatigue_floor
    plan[:, PL_CHANNEL] = pf.channel
    plan[:, PL_LAUNCH] = pf.launch_step
    inputs.audience[i] = pf.audience
    stage = inputs.stage[i]
    stage[..., ST_RATE] = pf.stage_rate
    stage[..., ST_VALUE] = pf.stage_value
    stage[..., ST_DELAY_MEDIAN] = pf.delay_median
    stage[..., ST_DELAY_SIGMA] = pf.delay_sigma
    inputs.chan_plans[i] = np.argsort(pf.channel, kind="stable")
    n_channels = inputs.chan_start.shape[-1] - 1
    inputs.chan_start[i] = np.concatenate([[0], np.cumsum(np.bincount(pf.channel, minlength=n_channels))])
    inputs.state[i, :, STATE_CONVERSIONS] = pf.prior_conversions
    inputs.state[i, :, STATE_IMPRESSIONS] = pf.prior_impressions
    inputs.ev_count[i] = 0
    inputs.late[i] = 0


def _steps_per_day(inputs: KernelInputs) -> int:
    return int(inputs.steps_per_day)


def step_episodes(
    inputs: KernelInputs, t: np.ndarray, step_budget: np.ndarray, out: np.ndarray, step_fn: Callable | None = None
) -> KernelInputs:
    """Simulate step ``t[e]`` of every episode ``e`` of ``inputs``: one :func:`step_batch_kernel` call
    when ``step_fn`` is None, else ``step_fn`` (:func:`step_kernel`, or ``envs.reference.step_reference``)
    episode by episode. Episodes whose event pool ran out of room are run again, one by one, after
    :func:`grow_events`; the inputs to keep using are returned (``inputs`` itself unless the pool grew).

    :param t: (E,) int64 the step each episode simulates.
    :param step_budget: (E, P) float64 budget given to each plan for this step.
    :param out: (E, P, DEEP0 + S) float64, overwritten with the step's per-plan results.
    """
    n_envs = t.shape[0]
    done = np.ones(n_envs, dtype=np.bool_)
    shared = inputs[:N_SHARED_INPUTS]
    if step_fn is None:
        start_threads()
        step_batch_kernel(t, *shared, *inputs[N_SHARED_INPUTS:], step_budget, out, done)
        step_fn = step_kernel
    else:
        for e in range(n_envs):
            done[e] = _run_step(step_fn, inputs, e, t, step_budget, out)
    while not done.all():
        inputs = grow_events(inputs)
        for e in np.flatnonzero(~done):
            done[e] = _run_step(step_fn, inputs, e, t, step_budget, out)
    return inputs


def episode_views(inputs: KernelInputs, e: int) -> tuple:
    """Views of episode ``e``'s rows of the per-episode fields after ``key`` (valid while ``inputs``
    is in use; ``key[e]`` is a scalar, read afresh each step): :func:`step_kernel`'s arguments
    ``t, *inputs[:N_SHARED_INPUTS], key[e], *episode_views(inputs, e), step_budget[e], out[e]``."""
    return tuple(a[e] for a in inputs[N_SHARED_INPUTS + 1 :])


def _run_step(step_fn: Callable, inputs: KernelInputs, e: int, t: np.ndarray, step_budget, out) -> bool:
    shared, views = inputs[:N_SHARED_INPUTS], episode_views(inputs, e)
    done = step_fn(int(t[e]), *shared, inputs.key[e], *views, step_budget[e], out[e])
    if not isinstance(done, bool | np.bool_):  # a wrapper that drops the result would grow the pool forever
        name = getattr(step_fn, "__name__", step_fn)
        raise TypeError(f"{name!r} must return True, or False when the event pool is full; got {done!r}")
    return bool(done)


GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_S30, _S27, _S31, _S11 = np.uint64(30), np.uint64(27), np.uint64(31), np.uint64(11)
_ONE = np.uint64(1)
_INV53 = 1.0 / 9007199254740992.0  # 2**-53
# Relative slack on a lot's bid ceiling before it is given to the market unauctioned: far above the few
# ulps by which the ceiling's rounding can differ from a bid's, so skipping never changes a result.
CEILING_SLACK = 1e-9
_LOW_MASK = np.uint64((1 << DELIVERY_BITS) - 1)
_INV_LOW = 1.0 / (1 << DELIVERY_BITS)


@nb.njit(inline="always", cache=True)
def mix64(x):
    """splitmix64's finaliser: a bijective, well-mixing map of 64-bit words."""
    x = (x ^ (x >> _S30)) * _M1
    x = (x ^ (x >> _S27)) * _M2
    return x ^ (x >> _S31)


@nb.njit(inline="always", cache=True)
def hash_at(h, index):
    """The child hash of ``h`` at a non-negative integer ``index``."""
    return mix64(h + (np.uint64(index) + _ONE) * GOLDEN)


@nb.njit(inline="always", cache=True)
def uniform_at(h, slot):
    """A uniform draw in the open interval (0, 1) from ``h`` and a slot."""
    return ((hash_at(h, slot) >> _S11) + 0.5) * _INV53


@nb.njit(inline="always", cache=True)
def normal_pair_at(h, slot):
    """Two independent standard normals (Box-Muller) from slots ``slot`` and ``slot + 1``."""
    r = np.sqrt(-2.0 * np.log(uniform_at(h, slot)))
    angle = 2.0 * np.pi * uniform_at(h, slot + 1)
    return r * np.cos(angle), r * np.sin(angle)


# The normal quantile function z = Phi^-1(u) that turns one uniform into one normal (its knots are those
# of the opportunity's log-normal tables, its tails theirs: :func:`lognormal_quantile`): linear
# interpolation in a table of knots at u = i / QUANTILE_INTERVALS in the body (absolute error below 5e-5,
# tests/test_draws.py), the exact tail function in the outer QUANTILE_TAIL intervals of each side
# (u < 1/64 or u > 63/64: there the table's curvature would cost more). The knots are Python's
# statistics.NormalDist().inv_cdf (Wichura's AS241, double precision), built at import: deterministic, no
# data file. The primitives live here, beside the hash, rather than in a module of their own: Numba's
# on-disk cache of a kernel only notices edits to the kernel's own file.
QUANTILE_INTERVALS, QUANTILE_TAIL = 2048, 32
NORMAL_KNOTS = np.array(
    [NormalDist().inv_cdf(i / QUANTILE_INTERVALS) for i in range(QUANTILE_TAIL, QUANTILE_INTERVALS - QUANTILE_TAIL + 1)]
)  # (QUANTILE_INTERVALS - 2 * QUANTILE_TAIL + 1,) float64: Phi^-1(i / QUANTILE_INTERVALS) from i = QUANTILE_TAIL
_S32 = np.uint64(32)
_LOW32 = np.uint64(0xFFFFFFFF)
_INV32 = 1.0 / 4294967296.0  # 2**-32
# Acklam's rational approximation of the lower tail (relative error 1.2e-9), refined by one Halley step.
_TAIL_C = (-7.784894002430293e-03, -3.223964580411365e-01, -2.400758277161838e00, -2.549732539343734e00)
_TAIL_C2 = (4.374664141464968e00, 2.938163982698783e00)
_TAIL_D = (7.784695709041462e-03, 3.224671290700398e-01, 2.445134137142996e00, 3.754408661907416e00)


@nb.njit(inline="always", cache=True)
def uniform_pair32(x):
    """Two uniforms in the open interval (0, 1) from the high and low 32 bits of one hash word ``x``."""
    return ((x >> _S32) + 0.5) * _INV32, ((x & _LOW32) + 0.5) * _INV32


@nb.njit(cache=True)
def normal_lower_tail(p):
    """``Phi^-1(p)`` for ``0 < p < 0.02425`` (Acklam's tail approximation and one Halley step: double
    precision, tests/test_draws.py)."""
    q = np.sqrt(-2.0 * np.log(p))
    c0, c1, c2, c3 = _TAIL_C
    c4, c5 = _TAIL_C2
    d0, d1, d2, d3 = _TAIL_D
    x = (((((c0 * q + c1) * q + c2) * q + c3) * q + c4) * q + c5) / ((((d0 * q + d1) * q + d2) * q + d3) * q + 1.0)
    e = 0.5 * math.erfc(-x / np.sqrt(2.0)) - p
    u = e * np.sqrt(2.0 * np.pi) * np.exp(0.5 * x * x)
    return x - u / (1.0 + 0.5 * x * u)


@nb.njit(inline="always", cache=True)
def normal_quantile(u):
    """A standard normal from a uniform ``u`` in (0, 1): ``Phi^-1(u)``, from the knot table in the body
    and :func:`normal_lower_tail` in the tails (a 32-bit uniform truncates the normal at |z| = 6.34)."""
    x = u * QUANTILE_INTERVALS
    i = int(x)
    if i < QUANTILE_TAIL:
        return normal_lower_tail(u)
    if i >= QUANTILE_INTERVALS - QUANTILE_TAIL:
        return -normal_lower_tail(1.0 - u)
    lo = NORMAL_KNOTS[i - QUANTILE_TAIL]
    return lo + (x - i) * (NORMAL_KNOTS[i - QUANTILE_TAIL + 1] - lo)


N_KNOTS = NORMAL_KNOTS.shape[0]


def lognormal_knots(sigma: float, shift: float) -> np.ndarray:
    """(N_KNOTS,) float64 ``exp(sigma z + shift)`` at the normal knots: the body of
    :func:`lognormal_quantile`'s table for one ``(sigma, shift)``, built once per scenario."""
    return np.exp(sigma * NORMAL_KNOTS + shift)


@nb.njit(inline="always", cache=True)
def lognormal_quantile(u, sigma, shift, knots):
    """``exp(sigma Phi^-1(u) + shift)`` for a uniform ``u`` in (0, 1): linear interpolation in ``knots``
    (:func:`lognormal_knots` of the same ``sigma`` and ``shift``) in the body, where
    :func:`normal_quantile` interpolates the normal's knots, and ``exp`` of its exact tail function in
    the outer ``QUANTILE_TAIL`` intervals. Interpolating the log-normal rather than the normal spares
    an ``exp`` per draw; the relative error against the exact quantile is below 3e-5 at ``sigma = 0.4``
    (the user quality's default; the channels' market sigmas are 0.4-0.5) and 3.5e-4 at ``sigma = 3``
    (the largest a config may set) (tests/test_draws.py)."""
    x = u * QUANTILE_INTERVALS
    i = int(x)
    if i < QUANTILE_TAIL or i >= QUANTILE_INTERVALS - QUANTILE_TAIL:
        return np.exp(sigma * normal_quantile(u) + shift)
    lo = knots[i - QUANTILE_TAIL]
    return lo + (x - i) * (knots[i - QUANTILE_TAIL + 1] - lo)


@nb.njit(cache=True)
def poisson_at(h, lam):
    """Poisson(lam): exact inversion for lam < 30, rounded normal approximation above."""
    if lam <= 0.0:
        return 0
    if lam < 30.0:
        u = uniform_at(h, 0)
        k = 0
        p = np.exp(-lam)
        c = p
        while u > c and k < 1000:
            k += 1
            p *= lam / k
            c += p
        return k
    z, _ = normal_pair_at(h, 1)
    return max(0, int(np.floor(lam + np.sqrt(lam) * z + 0.5)))


@nb.njit(cache=True)
def binomial_at(h, slot, n, p):
    """Binomial(n, p) by inversion (normal approximation when n * p > 50)."""
    if n <= 0 or p <= 0.0:
        return 0
    if p >= 1.0:
        return n
    if n * p > 50.0:
        z, _ = normal_pair_at(h, slot + 1)
        k = int(np.floor(n * p + np.sqrt(n * p * (1.0 - p)) * z + 0.5))
        return min(n, max(0, k))
    u = uniform_at(h, slot)
    q = 1.0 - p
    ratio = p / q
    pmf = q**n
    c = pmf
    k = 0
    while u > c and k < n:
        pmf *= ratio * (n - k) / (k + 1)
        k += 1
        c += pmf
    return k


@nb.njit(cache=True)
def segment_bidders(t, plan, audience, chan_plans, chan_start, base_bid, noise_amp, learning, delivery):
    """Each channel's bidders grouped by audience segment, in channel order.

    Returns ``(seg_start, bidder_base, bidder_amp, bidder_learning, bidder_delivery, bidder_offset,
    bidder_plan)``:
    the bidders of channel ``c`` in segment ``s`` are entries ``seg_start[c, s]:seg_start[c, s + 1]``
    of the ``bidder_*`` arrays (length ``N_SEGMENTS * P``); ``bidder_offset`` is the hash offset of
    the plan's noise slot (``(SLOT_BIDDER + p + 1) * GOLDEN``, see :func:`hash_at`).
    """
    n_chan = chan_start.shape[0] - 1
    cap = N_SEGMENTS * plan.shape[0]
    seg_start = np.empty((n_chan, N_SEGMENTS + 1), dtype=np.int64)
    bidder_base = np.empty(cap)
    bidder_amp = np.empty(cap)
    bidder_learning = np.empty(cap)
    bidder_delivery = np.empty(cap)
    bidder_offset = np.empty(cap, dtype=np.uint64)
    bidder_plan = np.empty(cap, dtype=np.int64)
    k = 0
    for c in range(n_chan):
        for s in range(N_SEGMENTS):
            seg_start[c, s] = k
            for i in range(chan_start[c], chan_start[c + 1]):
                p = chan_plans[i]
                if t >= plan[p, PL_LAUNCH] and (audience[p] >> np.uint64(s)) & _ONE:
                    bidder_base[k] = base_bid[p]
                    bidder_amp[k] = noise_amp[p]
                    bidder_learning[k] = learning[p]
                    bidder_delivery[k] = delivery[p]
                    bidder_offset[k] = (np.uint64(SLOT_BIDDER + p) + _ONE) * GOLDEN
                    bidder_plan[k] = p
                    k += 1
        seg_start[c, N_SEGMENTS] = k
    return seg_start, bidder_base, bidder_amp, bidder_learning, bidder_delivery, bidder_offset, bidder_plan


@nb.njit(inline="always", cache=True)
def auction(
    h,
    quality,
    cand,
    n,
    bidder_base,
    bidder_amp,
    bidder_learning,
    bidder_delivery,
    bidder_offset,
    bidder_rem,
    bids,
):
    """One opportunity's auction among bidders ``cand[:n]`` (ascending entries):
    ``(winner entry or -1, best bid, runner-up)``.

    A bidder enters with its delivery rate (1, or a failed plan's throttle): the low
    ``DELIVERY_BITS`` bits of its noise hash give the delivery draw, the high 53 its noise uniform.
    The first loop computes every bid into ``bids``; the second masks unaffordable bids (above the
    bidder's remaining budget ``bidder_rem``) to 0 and keeps the top two without branching. It is
    the scan ``if bid > best: second, best, winner = best, bid, k; elif bid > second: second = bid``
    written with ``max``/``min``: the same values, ties to the earlier bidder.
    """
    for i in range(n):
        k = cand[i]
        x = mix64(h + bidder_offset[k])  # hash_at(h, SLOT_BIDDER + p)
        u = ((x >> _S11) + 0.5) * _INV53
        delivered = ((x & _LOW_MASK) + 0.5) * _INV_LOW < bidder_delivery[k]
        # A plan in its learning phase cannot yet tell good users from poor ones: its bid
        # follows user quality only as far as it has learned (1 - lambda).
        targeting = bidder_learning[k] + (1.0 - bidder_learning[k]) * quality
        bid = bidder_base[k] * targeting * (1.0 + bidder_amp[k] * (2.0 * u - 1.0))
        bids[i] = bid if delivered else 0.0
    best = 0.0
    second = 0.0
    winner = -1
    for i in range(n):
        k = cand[i]
        bid = bids[i]
        bid = bid if bidder_rem[k] >= bid else 0.0  # spend never exceeds the step budget
        second = max(second, min(bid, best))
        winner = k if bid > best else winner
        best = max(best, bid)
    return winner, best, second


@nb.njit(cache=True)
def bid_ceilings(bidder_base, bidder_amp, bidder_learning, n_bidders):
    """Each bidder's ceiling on its bid at user quality ``q > 0``: ``A + B q``, returned as ``(A, B)``.

    A bid ``base (lambda + (1 - lambda) q) (1 + amp (2u - 1))`` with ``0 < u < 1`` is at most
    ``|base| (1 + |amp|) (|lambda| + |1 - lambda| q)``, whatever the signs.
    """
    ceil_a = np.empty(n_bidders)
    ceil_b = np.empty(n_bidders)
    for k in range(n_bidders):
        top = abs(bidder_base[k]) * (1.0 + abs(bidder_amp[k]))
        ceil_a[k] = top * abs(bidder_learning[k])
        ceil_b[k] = top * abs(1.0 - bidder_learning[k])
    return ceil_a, ceil_b


@nb.njit(cache=True, fastmath={"nnan", "nsz"})
def candidates(lo, hi, quality, market, ceil_a, ceil_b, bidder_rem, cand):
    """The bidders ``lo:hi`` that could win a lot at user quality ``quality`` against ``market``: those
    whose ``min(remaining budget, A + B quality)`` reaches the market, written to ``cand`` in order;
    returns how many. The others' bids, masked by their budget, are below the market (with
    ``CEILING_SLACK`` to spare), so they can neither win nor set a price (which is at least the market).

    Compiled with ``fastmath`` no-NaN/no-signed-zero flags (it vectorises better): they can only change
    the fate of a bidder whose ceiling or budget is NaN, and such a bidder never wins an auction (its
    bid is NaN or masked to 0), so keeping or dropping it changes nothing."""
    cut = market - CEILING_SLACK * abs(market)
    n = 0
    for k in range(lo, hi):
        cand[n] = k
        n += min(bidder_rem[k], ceil_a[k] + ceil_b[k] * quality) >= cut  # branch-free compaction
    return n


@nb.njit(cache=True)
def step_kernel(
    t,  # int: the step being simulated, 0-based
    hours_per_step,  # the fields of KernelInputs, one episode's rows ...
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
    late,  # ... up to here
    step_budget,  # (P,) float64 budget given to each plan for this step
    out,  # (P, DEEP0 + S) float64, overwritten with this step's per-plan results
):
    """One step of one episode; ``False`` when its deep events do not fit the pool (nothing in use
    changed, only ``out`` and records past ``ev_count``: grow the pool and run the step again)."""
    n_plans = plan.shape[0]
    n_stages = stage.shape[1]
    committed = ev_count[0]  # records before this step's
    n_records = committed
    capacity = ev_code.shape[0]
    hour = (t % steps_per_day) * hours_per_step
    day = t // steps_per_day
    out[:, :] = 0.0

    base_bid = np.empty(n_plans)  # per lot, before user quality and noise
    noise_amp = np.empty(n_plans)
    learning = np.empty(n_plans)  # lambda: 1 at launch, 0 once out of the learning phase
    click_p = np.empty(n_plans)
    remaining = np.empty(n_plans)
    delivery = np.empty(n_plans)  # the chance the plan enters an auction (a failed plan's throttle)
    for p in range(n_plans):
        lam = dyn[p, DYN_LEARNING]
        fatigue = plan[p, PL_FATIGUE_FLOOR] + (1.0 - plan[p, PL_FATIGUE_FLOOR]) * np.exp(
            -state[p, STATE_IMPRESSIONS] / plan[p, PL_FATIGUE_SCALE]
        )
        c = int(plan[p, PL_CHANNEL])
        click_p[p] = min(1.0, plan[p, PL_CTR] * fatigue * chan[c, CH_CTR_MULT])
        base_bid[p] = (
            dyn[p, DYN_BID_VALUE]
            * dyn[p, DYN_BID_MULT]
            * click_p[p]
            * plan[p, PL_CVR]
            * chan[c, CH_PRED_CVR_MULT]
            * np.exp(plan[p, PL_BIAS0] * lam)
            * lot
        )
        noise_amp[p] = noise_floor + (plan[p, PL_NOISE0] - noise_floor) * lam
        learning[p] = lam
        delivery[p] = dyn[p, DYN_DELIVERY]
        remaining[p] = step_budget[p]
        out[p, BUDGET] = step_budget[p]
    seg_start, bidder_base, bidder_amp, bidder_learning, bidder_delivery, bidder_offset, bidder_plan = segment_bidders(
        t, plan, audience, chan_plans, chan_start, base_bid, noise_amp, learning, delivery
    )
    bids = np.empty(bidder_base.shape[0])
    # Only bidders that could beat the market enter a lot's auction (:func:`candidates`, from each
    # bidder's ceiling A + B q and its remaining budget); ``bidder_rem`` mirrors each bidder's remaining
    # budget (a plan is one bidder per segment it targets: ``entries[p, :n_entries[p]]``).
    n_bidders = seg_start[-1, -1]
    cand = np.empty(n_bidders, dtype=np.int64)
    ceil_a, ceil_b = bid_ceilings(bidder_base, bidder_amp, bidder_learning, n_bidders)
    bidder_rem = np.empty(n_bidders)
    entries = np.empty((n_plans, N_SEGMENTS), dtype=np.int64)
    n_entries = np.zeros(n_plans, dtype=np.int64)
    for k in range(n_bidders):
        p = bidder_plan[k]
        bidder_rem[k] = remaining[p]
        entries[p, n_entries[p]] = k
        n_entries[p] += 1

    quality_shift = -0.5 * quality_sigma * quality_sigma
    h_step = hash_at(key, t)
    for c in range(chan.shape[0]):
        h_chan = hash_at(h_step, c)
        lam_opp = chan[c, CH_VOLUME] * chan_diurnal[c, hour] * hours_per_step * demand_day[day, c]
        n_opp = poisson_at(hash_at(h_chan, STREAM_COUNT), lam_opp)
        if chan_start[c + 1] == chan_start[c]:
            continue
        market_base = chan[c, CH_MARKET] * chan_market_hour[c, hour] * market_day[day, c] * lot
        market_sigma = chan[c, CH_MARKET_SIGMA]
        channel_knots = market_knots[c]
        first_price = chan[c, CH_FIRST_PRICE] > 0.5
        for o in range(n_opp):
            h = hash_at(h_chan, o)
            segment = int(uniform_at(h, SLOT_SEGMENT) * N_SEGMENTS)
            lo = seg_start[c, segment]
            hi = seg_start[c, segment + 1]
            if hi == lo:  # nobody targets the segment: the market takes it
                continue
            # One hash, two 32-bit uniforms: the user quality's normal and the market bid's.
            u_quality, u_market = uniform_pair32(hash_at(h, SLOT_Z1))
            quality = lognormal_quantile(u_quality, quality_sigma, quality_shift, quality_knots)
            market = market_base * lognormal_quantile(u_market, market_sigma, 0.0, channel_knots)
            n_cand = candidates(lo, hi, quality, market, ceil_a, ceil_b, bidder_rem, cand)
            if n_cand == 0:
                continue  # no bidder can bid above the market and afford it: the market takes the lot
            k, best, second = auction(
                h,
                quality,
                cand,
                n_cand,
                bidder_base,
                bidder_amp,
                bidder_learning,
                bidder_delivery,
                bidder_offset,
                bidder_rem,
                bids,
            )
            if k < 0:
                continue
            if best <= market:
                continue
            winner = bidder_plan[k]
            # Under dedup only the advertiser's best plan enters: a second-price lot pays the market.
            price = best if first_price else (market if dedup else max(second, market))
            if not first_price and not dedup and second > market:
                out[winner, OWN_PRICED] += 1.0
            remaining[winner] -= price
            for i in range(n_entries[winner]):
                bidder_rem[entries[winner, i]] = remaining[winner]
            out[winner, SPEND] += price
            out[winner, IMPRESSIONS] += lot
            clicks = binomial_at(h, SLOT_CLICKS, lot, click_p[winner])
            cvr = min(1.0, plan[winner, PL_CVR] * chan[c, CH_CVR_MULT] * quality)
            conversions = binomial_at(h, SLOT_CONVERSIONS, clicks, cvr)
            out[winner, CLICKS] += clicks
            out[winner, CONVERSIONS] += conversions
            attributed = int(plan[winner, PL_HORIZON])
            for j in range(conversions):
                t_event = t
                for s in range(n_stages):
                    slot = SLOT_DEEP + 4 * (j * n_stages + s)
                    if uniform_at(h, slot) >= stage[winner, s, ST_RATE]:
                        break
                    z_delay, _ = normal_pair_at(h, slot + 1)
                    delay = np.floor(
                        stage[winner, s, ST_DELAY_MEDIAN] * np.exp(stage[winner, s, ST_DELAY_SIGMA] * z_delay) + 0.5
                    )
                    t_event += max(1, int(delay))
                    if t_event >= attributed:
                        break
                    if n_records == capacity:
                        return False  # out of room: nothing committed, the step is run again
                    ev_code[n_records] = winner * n_stages + s
                    ev_step[n_records] = t_event
                    n_records += 1

    # Commit, in one pass over the pool: events after the episode go to their (plan, stage) total,
    # those maturing now are counted (and dropped: the pool holds only events still to mature), the
    # others are kept in order.
    kept = 0
    for k in range(n_records):
        code = ev_code[k]
        at = ev_step[k]
        if at >= horizon:
            late[code // n_stages, code % n_stages] += 1
        elif at == t:
            out[code // n_stages, DEEP0 + code % n_stages] += 1.0
        else:
            ev_code[kept] = code
            ev_step[kept] = at
            kept += 1
    ev_count[0] = kept
    for p in range(n_plans):
        state[p, STATE_CONVERSIONS] += out[p, CONVERSIONS]
        state[p, STATE_IMPRESSIONS] += out[p, IMPRESSIONS]
    if t < horizon:
        for p in range(n_plans):
            for s in range(n_stages):
                out[p, DEEP_VALUE] += out[p, DEEP0 + s] * stage[p, s, ST_VALUE]
    return True


@nb.njit(cache=True, parallel=True)
def step_batch_kernel(
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
    done,
):
    """:func:`step_kernel` over a batch of environments (leading axis ``E`` on every per-episode
    array: ``t``, ``key`` ... ``late``, ``step_budget``, ``out``), one ``prange`` iteration each;
    ``done[e]`` (E,) bool is what the step of episode ``e`` returned."""
    for e in nb.prange(key.shape[0]):
        done[e] = step_kernel(
            t[e],
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
            key[e],
            market_day[e],
            demand_day[e],
            plan[e],
            dyn[e],
            audience[e],
            stage[e],
            chan_plans[e],
            chan_start[e],
            state[e],
            ev_code[e],
            ev_step[e],
            ev_count[e],
            late[e],
            step_budget[e],
            out[e],
        )


@nb.njit(cache=True)
def auction_bench_kernel(n_auctions, n_bidders, key):
    """Micro-benchmark of :func:`auction`, the env kernel's bidder loop: ``n_auctions`` auctions among
    ``n_bidders`` eligible bidders with per-bidder noise and a cheap user-quality draw (no funnel).

    Returns the winners' total bid so the work cannot be optimised away.
    """
    bidder_base = np.empty(n_bidders)
    bidder_amp = np.empty(n_bidders)
    bidder_learning = np.empty(n_bidders)
    bidder_delivery = np.ones(n_bidders)
    bidder_offset = np.empty(n_bidders, dtype=np.uint64)
    h_setup = hash_at(key, STREAM_COUNT)
    for k in range(n_bidders):
        bidder_base[k] = 0.5 + uniform_at(h_setup, 3 * k)
        bidder_amp[k] = 0.1 + 0.8 * uniform_at(h_setup, 3 * k + 1)
        bidder_learning[k] = uniform_at(h_setup, 3 * k + 2)
        bidder_offset[k] = (np.uint64(SLOT_BIDDER + k) + _ONE) * GOLDEN
    remaining = np.full(n_bidders, 1.0e300)
    bids = np.empty(n_bidders)
    every = np.arange(n_bidders)
    total = 0.0
    for o in range(n_auctions):
        h = hash_at(key, o)
        quality = 0.5 + uniform_at(h, SLOT_Z1)
        k, best, second = auction(
            h,
            quality,
            every,
            n_bidders,
            bidder_base,
            bidder_amp,
            bidder_learning,
            bidder_delivery,
            bidder_offset,
            remaining,
            bids,
        )
        total += best - second + k
    return total


@nb.njit(cache=True, parallel=True)
def auction_bench_batch_kernel(n_auctions, n_bidders, keys):
    """:func:`auction_bench_kernel` on ``len(keys)`` independent streams, one ``prange`` iteration each."""
    totals = np.zeros(keys.shape[0])
    for c in nb.prange(keys.shape[0]):
        totals[c] = auction_bench_kernel(n_auctions, n_bidders, keys[c])
    return totals.sum()
