"""Scenarios: what a simulated advertiser portfolio is made of, and how its hidden truth is drawn.

A :class:`Scenario` fixes the structure (accounts, plans per account, channels, verticals, the
episode length, the daily budget, the objective's target) and the distributions that each plan's
hidden parameters are drawn from at ``reset``. :class:`PortfolioGenerator` turns a scenario and a
seeded ``numpy.random.Generator`` into a :class:`Portfolio`: flat arrays over plans, the only form
the Numba kernels see.

Presets live in ``conf/env/<name>.yaml``; the same files are Hydra's ``env`` group. A preset lists
the channels and verticals it uses; every field it does not give comes from the calibrated
catalogues :data:`CHANNEL_CATALOGUE` and :data:`VERTICAL_CATALOGUE` below. Every field is validated
and a bad value raises :class:`ScenarioError` naming the field, the value, what was expected and the
file it came from.
"""

from __future__ import annotations

import copy
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from conf import CONF_DIR

# The channel and vertical vocabularies are the observation's one-hot order; a scenario may use any
# subset, in any order.
from envs.features import CHANNELS, GOALS, VERTICALS

#: Deep-funnel stages per plan are padded to this many.
MAX_STAGES = 3
#: Audience segments; a plan's audience is a bit mask over them.
N_SEGMENTS = 32
#: Plan kinds (hidden; only the oracle and analysis code read them).
KIND_REGULAR, KIND_POTENTIAL, KIND_TRAP = 0, 1, 2
KIND_NAMES = ("regular", "potential", "trap")

PRESET_DIR = CONF_DIR / "env"  # package data of ``conf``: ships in the wheel

# Bounds on what a scenario may ask for. Each keeps the simulation finite and its work and memory
# bounded; values beyond them are refused at load time, naming the field, before anything allocates.
MAX_PLANS = 10_000  # plans in a portfolio (and max_plans)
MAX_DAYS = 366  # episode length
MAX_ATTRIBUTION_DAYS = 366  # pending deep events are kept this long after the episode
MAX_DELAY_HOURS = 24.0 * 366  # median delay of a deep stage
MAX_VOLUME = 1e6  # opportunity lots per hour on one channel (the feed's default is 700)
MAX_LOTS_PER_EPISODE = 1e9  # expected auction lots of one episode, all channels (~100 s of kernel time)
MAX_MONEY = 1e12  # budgets, targets, values and bids, currency units
MIN_DAILY_BUDGET = 1.0  # currency units; below it the observation's money features (x 100 / budget) overflow
MAX_MULT = 1e3  # multipliers of rates, CPAs and budget weights
MAX_BETA = 20.0  # exponent of the CPA penalty
MAX_YAML_NODES = 100_000  # a preset file, aliases expanded (an alias bomb is refused, not expanded)


class ScenarioError(ValueError):
    """A scenario field has a value the simulator cannot use."""


def _curve(values: list[float]) -> tuple[float, ...]:
    return tuple(float(v) for v in values)


# Hour-of-day traffic shapes (relative, normalised to mean 1 when a scenario is built).
_FEED_CURVE = _curve(
    [
        0.5,
        0.3,
        0.2,
        0.15,
        0.15,
        0.2,
        0.4,
        0.7,
        0.9,
        1.0,
        1.0,
        1.1,
        1.3,
        1.2,
        1.0,
        1.0,
        1.0,
        1.1,
        1.3,
        1.6,
        1.9,
        2.0,
        1.7,
        1.0,
    ]
)
_NETWORK_CURVE = _curve(
    [
        0.7,
        0.5,
        0.4,
        0.35,
        0.35,
        0.4,
        0.6,
        0.8,
        1.0,
        1.1,
        1.1,
        1.2,
        1.2,
        1.2,
        1.1,
        1.1,
        1.1,
        1.2,
        1.3,
        1.4,
        1.5,
        1.5,
        1.3,
        1.0,
    ]
)
_SEARCH_CURVE = _curve(
    [
        0.3,
        0.2,
        0.15,
        0.1,
        0.1,
        0.2,
        0.4,
        0.8,
        1.3,
        1.6,
        1.7,
        1.6,
        1.4,
        1.5,
        1.6,
        1.6,
        1.5,
        1.3,
        1.1,
        1.1,
        1.1,
        1.0,
        0.8,
        0.5,
    ]
)
_EVENING_PRESSURE = _curve(
    [
        0.9,
        0.85,
        0.8,
        0.8,
        0.8,
        0.85,
        0.9,
        0.95,
        1.0,
        1.0,
        1.0,
        1.05,
        1.1,
        1.05,
        1.0,
        1.0,
        1.0,
        1.05,
        1.1,
        1.2,
        1.25,
        1.25,
        1.15,
        1.0,
    ]
)


@dataclass(frozen=True)
class ChannelSpec:
    """One traffic source: the feed, the ad network, search.

    An opportunity is a lot of ``Scenario.impressions_per_opportunity`` impressions from one
    audience segment and one user-quality draw, auctioned together (coarse-graining keeps a week of
    a portfolio's auctions cheap enough to train on).
    """

    name: str
    volume: float  # mean opportunities per hour, averaged over the day
    diurnal: tuple[float, ...]  # (24,) relative traffic by hour of day
    market_bid: float  # median highest competing bid per impression, currency units
    market_sigma: float  # log-sd of the highest competing bid within an hour
    market_diurnal: tuple[float, ...]  # (24,) multiplier on market_bid by hour (competitor pressure)
    market_day_sigma: float  # log-sd of day-to-day competitor pressure, drawn at reset
    ctr_mult: float  # multiplies every plan's true CTR on this channel
    cvr_mult: float  # multiplies every plan's true CVR on this channel
    auction: str = "second"  # "second" (pays max(runner-up, market)) or "first" (pays own bid)
    # The CVR multiplier the platform's prediction model applies (None: it knows cvr_mult). Search
    # intent that the model does not see makes conversions there cheaper than their bids assume.
    predicted_cvr_mult: float | None = None
    cost_control: bool = True  # the platform's oCPM cost controller runs on this channel's plans


@dataclass(frozen=True)
class StageSpec:
    """One deep-funnel stage (credit approval, first premium paid, account opened, ...)."""

    name: str
    rate: float  # probability given the previous stage (the first stage: given a conversion)
    delay_median_hours: float  # median delay after the previous stage, in hours
    delay_sigma: float  # log-sd of the delay (a discretised log-normal, at least one step)
    value: float  # what one event is worth to the advertiser, currency units


@dataclass(frozen=True)
class VerticalSpec:
    """A financial vertical: its plans' typical economics and its deep funnel.

    The first stage is the deep conversion the portfolio's deep CPA counts.
    """

    name: str
    target_cpa: float  # median shallow target CPA of its plans (the oCPM target), currency
    ctr: float  # median true CTR of its plans
    cvr: float  # median true click-to-conversion rate of its plans
    stages: tuple[StageSpec, ...]
    max_spend_share: float = 1.0  # compliance cap: at most this share of each step's budget
    # Days after the episode in which its pending deep events still count; None: the scenario's
    # attribution_window_days. Set where the vertical's valued event comes late (insurance renewals).
    attribution_window_days: float | None = None


@dataclass(frozen=True)
class PlanMix:
    """How plans' hidden parameters are drawn (see :class:`PortfolioGenerator`)."""

    potential_fraction: float = 0.2  # new, in learning phase, truly good
    trap_fraction: float = 0.15  # cheap shallow conversions, poor deep rates
    new_fraction: float = 0.15  # ordinary plans that are also new (launched during the episode)
    late_launch_days: int = 2  # new plans launch on a day in [0, late_launch_days]
    ctr_sigma: float = 0.25  # log-sd of a plan's CTR around its vertical's median
    cvr_sigma: float = 0.25
    cpa_sigma: float = 0.15  # log-sd of a plan's target CPA around its vertical's median
    deep_sigma: float = 0.3  # log-sd of an ordinary plan's deep-rate multiplier
    # log-sd of a plan's own multiplier on each later funnel stage (a funding rate, a renewal rate):
    # late events carry information the first stage does not.
    stage_sigma: float = 0.25
    # Potential plans are worth 1.6x an ordinary plan's deep rate and traps 0.3x: with these the best
    # heuristic gains +15-60% over uniform on `default`, the range platform tools report (DESIGN 7).
    potential_deep_mult: float = 1.6  # deep-rate multiplier of potential plans
    potential_cvr_mult: float = 1.2
    potential_bias: float = -0.5  # log-bias of the platform's pCTR*pCVR for a new potential plan
    new_bias: float = -0.15  # the same for other new plans
    learning_noise: float = 0.9  # bid noise amplitude at launch (uniform, +-)
    trap_cvr_mult: float = 2.5
    trap_cpa_mult: float = 0.6  # traps are set up as cheap-lead plans
    trap_deep_mult: float = 0.3
    audience_coverage: tuple[float, float] = (0.5, 0.95)  # share of segments a plan targets
    fatigue_impressions: tuple[float, float] = (2e5, 1e6)  # impressions for CTR to fall by ~63%
    fatigue_floor: float = 0.6  # CTR never falls below this share of its fresh value
    static_weight_new: float = 0.3  # the morning's budget weight of a new plan (ordinary: 1)
    static_weight_trap: float = 1.5  # traps look cheap, so people fund them


# Indices into the reporting vocabularies envs.features.GOALS and STATUSES.
GOAL_SHALLOW, GOAL_DEEP, GOAL_VALUE = 0, 1, 2
STATUS_LEARNING, STATUS_LEARNED, STATUS_FAILED = 0, 1, 2


@dataclass(frozen=True)
class PlatformSpec:
    """The ad platform's own controllers between the advertiser and the auction (DESIGN 2b).

    Each behaviour can be switched off to reproduce the plain auction. Defaults follow the large
    oCPM platforms' public documentation (sources in ``conf/env/default.yaml``).
    """

    dedup: bool = True  # one ad per advertiser per request: only its best eligible plan bids
    cost_control: bool = True  # a per-plan bid multiplier steers cost per optimisation event to target
    controller_gain: float = 1.0  # log-change of the multiplier per unit of relative overshoot
    controller_half_life_hours: float = 12.0  # memory of the controller's smoothed cost and target spend
    bid_mult_min: float = 0.3  # bounds of the cost controller's multiplier (must contain 1)
    bid_mult_max: float = 4.0
    # Learning plans bid x (1 + premium x learning level): exploration. 1.5 puts learning plans'
    # billing ratio at or above learned plans' (DESIGN 7: learning costs more, not less).
    explore_premium: float = 1.5
    learning_days: float = 3.0  # a plan that has not learned this long after (re)entering learning fails
    failed_throttle: float = 0.3  # a failed plan's delivery: the share of auctions it enters (at its full bid)
    edit_threshold: float = 0.5  # a daily budget moved by more than this share vs the previous day resets learning
    relearn_level: float = 0.5  # learning level a learned plan restarts from after a significant edit
    compensation: bool = True  # learned plans overshooting target by more than the threshold are credited
    compensation_threshold: float = 0.2
    goal_mix: tuple[float, float, float] = (1.0, 0.0, 0.0)  # share of plans optimising shallow, deep, value
    deep_switch_events: float = 10.0  # two-stage bidding: deep bids once the platform saw this many deep events
    prior_strength: float = 20.0  # conversions' worth of the vertical prior in the platform's deep predictions


@dataclass(frozen=True)
class MarketEvent:
    """A shock on some days: competitors bidding harder (``competition``) or more traffic (``demand``)."""

    kind: str  # "competition" (multiplies the competing bid) or "demand" (multiplies the opportunities)
    first_day: int  # 0-based, inclusive
    last_day: int  # inclusive
    multiplier: float
    channels: tuple[str, ...] = ()  # the channels it hits; empty: all of the scenario's


@dataclass(frozen=True)
class Scenario:
    """Everything that defines one simulated portfolio (the fields of ``conf/env/<preset>.yaml``)."""

    name: str
    accounts: int
    plans_per_account: int
    max_plans: int
    days: int
    steps_per_day: int
    daily_budget: float  # currency units per day; unspent budget does not carry over
    cpa_target: float  # portfolio target cost per deep conversion (first deep stage)
    channels: tuple[ChannelSpec, ...]
    channel_mix: tuple[float, ...]  # (n_channels,) share of plans on each channel
    verticals: tuple[VerticalSpec, ...]
    vertical_mix: tuple[float, ...]  # (n_verticals,) share of plans in each vertical
    plans: PlanMix = field(default_factory=PlanMix)
    beta: float = 2.0  # exponent of the CPA penalty
    attribution_window_days: float = 7.0  # pending deep events settle if they mature within this
    # Lots of 60 impressions: a week of the default portfolio's auctions (~1,300 lots an hour) costs
    # about what it did before the platform layer, while a plan's hourly budget still buys a few lots.
    impressions_per_opportunity: int = 60
    user_quality_sigma: float = 0.4  # log-sd of an opportunity's user quality (multiplies CVR)
    learning_conversions: float = 20.0  # conversions that end a plan's learning phase
    noise_floor: float = 0.1  # bid noise amplitude of a mature plan
    temperature: float = 5.0  # action in [-1, 1] times this = logit
    min_share: float = 0.0  # per-plan share limits (applied after the softmax)
    max_share: float = 1.0
    max_change: float | None = None  # max change of a plan's share from one step to the next
    platform: PlatformSpec = field(default_factory=PlatformSpec)
    market_events: tuple[MarketEvent, ...] = ()
    market_drift: float = 0.0  # competitors' bids drift by exp(market_drift) per day (log drift)
    source: str | None = None  # the file the scenario came from (for error messages)

    @property
    def n_plans(self) -> int:
        return self.accounts * self.plans_per_account

    @property
    def horizon(self) -> int:
        """Episode length in steps."""
        return self.days * self.steps_per_day

    def vertical_attribution_steps(self) -> tuple[int, ...]:
        """Steps after the episode in which each vertical's pending deep events still count."""
        return tuple(
            int(round(window * self.steps_per_day))
            for window in (
                self.attribution_window_days if v.attribution_window_days is None else v.attribution_window_days
                for v in self.verticals
            )
        )

    @property
    def attribution_steps(self) -> int:
        """The longest attribution window in steps: how far the pending deep events reach."""
        return max((int(round(self.attribution_window_days * self.steps_per_day)), *self.vertical_attribution_steps()))

    @property
    def hours_per_step(self) -> int:
        return 24 // self.steps_per_day


# --------------------------------------------------------------------------------------------
# Catalogues: calibrated defaults that presets select and override.
# --------------------------------------------------------------------------------------------

CHANNEL_CATALOGUE: dict[str, dict[str, Any]] = {
    # The platform's own short-video feed: most of the volume, strongest evening peak.
    "feed": dict(
        # Lots per hour and the competing bid are calibrated together (experiments.fidelity): other
        # advertisers bid about what our plans bid at target (median competing bid ~ 1.3x a typical
        # plan's target x pCTR x pCVR per impression), so the cost controller, not a cheap market,
        # sets the price, and a uniform allocation can spend ~3/4 of the budget at target.
        volume=833.0,
        diurnal=_FEED_CURVE,
        market_bid=0.30,
        market_sigma=0.45,
        market_diurnal=_EVENING_PRESSURE,
        market_day_sigma=0.1,
        ctr_mult=1.0,
        cvr_mult=1.0,
        auction="second",
        predicted_cvr_mult=None,
        cost_control=True,
    ),
    # Third-party apps: cheap and abundant, slightly lower click quality.
    "network": dict(
        volume=333.0,
        diurnal=_NETWORK_CURVE,
        market_bid=0.18,
        market_sigma=0.5,
        market_diurnal=_EVENING_PRESSURE,
        market_day_sigma=0.1,
        ctr_mult=0.8,
        cvr_mult=0.95,
        auction="second",
        predicted_cvr_mult=None,
        cost_control=True,
    ),
    # Search: intent-rich, working-hours traffic, cheaper acquisition (first price).
    "search": dict(
        volume=117.0,
        diurnal=_SEARCH_CURVE,
        # Finance keywords ("loan", "insurance", "brokerage account") are among search's most contested:
        # other advertisers bid about what our plans bid (~1.1-1.4x a typical plan's target x pCTR x pCVR
        # per impression, as on the feed), so a first-price search lot is won only by a bid near the
        # plan's value, as on the feed. A cheaper market (0.14, ~0.4x our bids) let any bid win.
        market_bid=0.40,
        market_sigma=0.4,
        market_diurnal=_curve([1.0] * 24),
        market_day_sigma=0.08,
        ctr_mult=1.6,
        cvr_mult=1.1,
        auction="first",
        # Keyword auctions: the advertiser's bid ceilings (target x pCTR x pCVR) are not steered by
        # an oCPM controller, and the prediction catches little of the ~10% intent lift (1.02 of 1.1):
        # acquisition ~10% cheaper than the feed at the same back-end quality (a credit advertiser's
        # report, DESIGN 1; experiments.fidelity: search_cost_per_deep 0.86-0.94 on the presets).
        predicted_cvr_mult=1.02,
        cost_control=False,
    ),
}

VERTICAL_CATALOGUE: dict[str, dict[str, Any]] = {
    # Loan application -> approval (about 29%) -> first drawdown.
    "credit": dict(
        target_cpa=150.0,
        ctr=0.025,
        cvr=0.06,
        max_spend_share=1.0,
        attribution_window_days=None,
        stages=(
            # An ordinary plan's approval rate; traps' cheap leads pull the portfolio's approvals per
            # application to ~27% under a uniform allocation (a digital bank reports ~29%, DESIGN 1).
            dict(name="approval", rate=0.33, delay_median_hours=18.0, delay_sigma=0.6, value=450.0),
            dict(name="drawdown", rate=0.6, delay_median_hours=48.0, delay_sigma=0.7, value=1200.0),
        ),
    ),
    # Quote request -> first premium paid -> second-month renewal (mostly after the episode).
    "insurance": dict(
        target_cpa=120.0,
        ctr=0.02,
        cvr=0.08,
        max_spend_share=1.0,
        stages=(
            dict(name="first_premium", rate=0.35, delay_median_hours=24.0, delay_sigma=0.5, value=300.0),
            dict(name="renewal", rate=0.7, delay_median_hours=720.0, delay_sigma=0.15, value=900.0),
        ),
        # The renewal matures ~31 days after the click (first premium ~1 day, renewal ~30 days
        # later, log-sd 0.15): a 45-day window counts >= 95% of it, whatever the episode length.
        attribution_window_days=45.0,
    ),
    # Phone number left -> account opened -> account funded. Wealth ads are frequency-capped.
    "securities": dict(
        target_cpa=100.0,
        ctr=0.018,
        cvr=0.1,
        max_spend_share=0.6,
        attribution_window_days=None,
        stages=(
            dict(name="account_opened", rate=0.25, delay_median_hours=36.0, delay_sigma=0.6, value=350.0),
            dict(name="funded", rate=0.45, delay_median_hours=96.0, delay_sigma=0.6, value=1500.0),
        ),
    ),
}


# The observation's vocabularies and the catalogues must name the same channels and verticals.
assert tuple(CHANNEL_CATALOGUE) == CHANNELS and tuple(VERTICAL_CATALOGUE) == VERTICALS

# --------------------------------------------------------------------------------------------
# Building and validating a scenario from a mapping (a preset file or a Hydra node).
# --------------------------------------------------------------------------------------------

_SCALAR_FIELDS = {f.name for f in fields(Scenario)} - {
    "channels",
    "channel_mix",
    "verticals",
    "vertical_mix",
    "plans",
    "platform",
    "market_events",
    "source",
}


def _where(source: str | None) -> str:
    return f" ({source})" if source else ""


def _fail(field_name: str, value: Any, expected: str, source: str | None) -> ScenarioError:
    return ScenarioError(f"{field_name} must be {expected}, got {value!r}{_where(source)}")


def _number(
    cfg: Mapping[str, Any],
    key: str,
    path: str,
    source: str | None,
    *,
    lo: float | None = None,
    hi: float | None = None,
    lo_open: bool = False,
    integer: bool = False,
) -> Any:
    value = cfg[key]
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _fail(path, value, "a number", source)
    if not np.isfinite(value):  # before the integer test: int(nan) raises an unhelpful ValueError
        raise _fail(path, value, "finite", source)
    if integer and float(value) != int(value):
        raise _fail(path, value, "an integer", source)
    if lo is not None and (value <= lo if lo_open else value < lo):
        raise _fail(path, value, f"{'>' if lo_open else '>='} {lo}", source)
    if hi is not None and value > hi:
        raise _fail(path, value, f"<= {hi}", source)
    return int(value) if integer else float(value)


def _check_size(channels: list[ChannelSpec], days: int, source: str | None) -> None:
    """Refuse a scenario whose episode would take unbounded time, before allocating. Memory: the plans,
    days and windows are bounded field by field; deep events in flight are a sparse pool that grows
    with them (a few per plan at a time in the presets), and ``env.pending``'s dense view, built on
    demand, is plans x stages x (steps + 1) int64."""
    lots = sum(c.volume for c in channels) * 24 * days
    if lots > MAX_LOTS_PER_EPISODE:
        raise _fail(
            "sum of channels.*.volume x 24 x days",
            f"{lots:.3g} auction lots per episode",
            f"<= {MAX_LOTS_PER_EPISODE:.0e} (lower a channel's volume or days)",
            source,
        )


def _yaml_nodes(node: yaml.Node, memo: dict[int, int]) -> int:
    """Nodes of a composed YAML document with every alias expanded (shared nodes counted each time)."""
    if id(node) in memo:
        return memo[id(node)]
    memo[id(node)] = 1  # a recursive alias counts once instead of looping
    if isinstance(node, yaml.SequenceNode):
        size = 1 + sum(_yaml_nodes(child, memo) for child in node.value)
    elif isinstance(node, yaml.MappingNode):
        size = 1 + sum(_yaml_nodes(k, memo) + _yaml_nodes(v, memo) for k, v in node.value)
    else:
        size = 1
    memo[id(node)] = size
    return size


def load_yaml(path: Path) -> Any:
    """A YAML file's content, refusing one that cannot be parsed or expands past :data:`MAX_YAML_NODES`."""
    try:
        text = path.read_text(encoding="utf-8")
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        size = 0 if node is None else _yaml_nodes(node, {})
        if size > MAX_YAML_NODES:
            raise ScenarioError(
                f"{path} expands to {size:,} YAML nodes with its aliases, more than {MAX_YAML_NODES:,}: refused"
            )
        return yaml.safe_load(text)
    except UnicodeDecodeError as exc:
        raise ScenarioError(f"cannot parse {path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from exc
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ScenarioError(f"cannot parse {path}{where}: {problem}") from exc


def _check_keys(cfg: Mapping[str, Any], allowed: set[str], path: str, source: str | None) -> None:
    unknown = sorted(set(cfg) - allowed)
    if unknown:
        where = f"{path}." if path else ""
        raise ScenarioError(f"unknown field {where}{unknown[0]}{_where(source)}; expected one of {sorted(allowed)}")


def _curve24(value: Any, path: str, source: str | None) -> tuple[float, ...]:
    expected = "a list of 24 finite non-negative numbers with a positive sum"
    # Length and entry types first: never hand numpy a nested (possibly alias-expanded) structure.
    if not isinstance(value, list | tuple) or len(value) != 24:
        raise _fail(path, value if not isinstance(value, list | tuple) else f"<{len(value)} entries>", expected, source)
    for hour, v in enumerate(value):
        if isinstance(v, bool) or not isinstance(v, int | float) or not np.isfinite(v) or v < 0:
            raise _fail(f"{path}[{hour}]", v, "a finite non-negative number", source)
    if sum(value) <= 0:
        raise _fail(path, list(value), expected, source)
    return tuple(float(v) for v in value)


def _group(
    cfg: Mapping[str, Any], group: str, catalogue: Mapping[str, Any], source: str | None
) -> tuple[list[tuple[str, dict[str, Any]]], tuple[float, ...]]:
    """Split ``channels``/``verticals`` into (name, overrides) pairs and their normalised ``share`` mix."""
    entries = cfg[group]
    if not isinstance(entries, Mapping) or not entries:
        raise _fail(group, entries, f"a non-empty mapping from {group[:-1]} name to {{share, ...}}", source)
    bodies, weights = [], []
    for name, body in entries.items():
        if name not in catalogue:
            raise ScenarioError(f"unknown {group[:-1]} {name!r} in {group}{_where(source)}; known: {list(catalogue)}")
        if body is None:
            body = {}
        if not isinstance(body, Mapping):
            raise _fail(f"{group}.{name}", body, f"a mapping of {group[:-1]} fields such as {{share: 0.5}}", source)
        body = dict(body)
        weights.append(_number(body, "share", f"{group}.{name}.share", source, lo=0.0) if "share" in body else 1.0)
        body.pop("share", None)
        bodies.append((name, body))
    if sum(weights) <= 0:
        raise _fail(f"{group}.*.share", weights, "weights with a positive sum", source)
    return bodies, tuple(w / sum(weights) for w in weights)


def _channel(name: str, overrides: Mapping[str, Any], source: str | None) -> ChannelSpec:
    path = f"channels.{name}"
    _check_keys(overrides, set(CHANNEL_CATALOGUE[name]), path, source)
    cfg = {**CHANNEL_CATALOGUE[name], **overrides}
    auction = cfg["auction"]
    if auction not in ("second", "first"):
        raise _fail(f"{path}.auction", auction, "'second' or 'first'", source)
    return ChannelSpec(
        name=name,
        volume=_number(cfg, "volume", f"{path}.volume", source, lo=0.0, lo_open=True, hi=MAX_VOLUME),
        diurnal=_curve24(cfg["diurnal"], f"{path}.diurnal", source),
        market_bid=_number(cfg, "market_bid", f"{path}.market_bid", source, lo=0.0, lo_open=True, hi=MAX_MONEY),
        market_sigma=_number(cfg, "market_sigma", f"{path}.market_sigma", source, lo=0.0, hi=3.0),
        market_diurnal=_curve24(cfg["market_diurnal"], f"{path}.market_diurnal", source),
        market_day_sigma=_number(cfg, "market_day_sigma", f"{path}.market_day_sigma", source, lo=0.0, hi=2.0),
        ctr_mult=_number(cfg, "ctr_mult", f"{path}.ctr_mult", source, lo=0.0, lo_open=True, hi=MAX_MULT),
        cvr_mult=_number(cfg, "cvr_mult", f"{path}.cvr_mult", source, lo=0.0, lo_open=True, hi=MAX_MULT),
        auction=auction,
        predicted_cvr_mult=None
        if cfg.get("predicted_cvr_mult") is None
        else _number(
            cfg, "predicted_cvr_mult", f"{path}.predicted_cvr_mult", source, lo=0.0, lo_open=True, hi=MAX_MULT
        ),
        cost_control=_flag(cfg, "cost_control", f"{path}.cost_control", source),
    )


def _vertical(name: str, overrides: Mapping[str, Any], source: str | None) -> VerticalSpec:
    path = f"verticals.{name}"
    _check_keys(overrides, set(VERTICAL_CATALOGUE[name]), path, source)
    cfg = {**VERTICAL_CATALOGUE[name], **overrides}
    stages_cfg = cfg["stages"]
    if not isinstance(stages_cfg, list | tuple) or not 1 <= len(stages_cfg) <= MAX_STAGES:
        raise _fail(f"{path}.stages", stages_cfg, f"a list of 1 to {MAX_STAGES} stages", source)
    stages = []
    stage_keys = {"name", "rate", "delay_median_hours", "delay_sigma", "value"}
    for i, st in enumerate(stages_cfg):
        sp = f"{path}.stages[{i}]"
        if not isinstance(st, Mapping):
            raise _fail(sp, st, "a mapping", source)
        _check_keys(st, stage_keys, sp, source)
        missing = sorted(stage_keys - set(st))
        if missing:
            raise ScenarioError(f"{sp}.{missing[0]} is missing{_where(source)}")
        if not isinstance(st["name"], str) or not st["name"]:
            raise _fail(f"{sp}.name", st["name"], "a non-empty string", source)
        stages.append(
            StageSpec(
                name=st["name"],
                rate=_number(st, "rate", f"{sp}.rate", source, lo=0.0, hi=1.0),
                delay_median_hours=_number(
                    st, "delay_median_hours", f"{sp}.delay_median_hours", source, lo=1.0, hi=MAX_DELAY_HOURS
                ),
                delay_sigma=_number(st, "delay_sigma", f"{sp}.delay_sigma", source, lo=0.0, hi=3.0),
                value=_number(st, "value", f"{sp}.value", source, lo=0.0, hi=MAX_MONEY),
            )
        )
    return VerticalSpec(
        name=name,
        target_cpa=_number(cfg, "target_cpa", f"{path}.target_cpa", source, lo=0.0, lo_open=True, hi=MAX_MONEY),
        ctr=_number(cfg, "ctr", f"{path}.ctr", source, lo=0.0, hi=1.0, lo_open=True),
        cvr=_number(cfg, "cvr", f"{path}.cvr", source, lo=0.0, hi=1.0, lo_open=True),
        stages=tuple(stages),
        max_spend_share=_number(
            cfg, "max_spend_share", f"{path}.max_spend_share", source, lo=0.0, hi=1.0, lo_open=True
        ),
        attribution_window_days=None
        if cfg.get("attribution_window_days") is None
        else _number(
            cfg, "attribution_window_days", f"{path}.attribution_window_days", source, lo=0.0, hi=MAX_ATTRIBUTION_DAYS
        ),
    )


def _flag(cfg: Mapping[str, Any], key: str, path: str, source: str | None) -> bool:
    value = cfg[key]
    if not isinstance(value, bool):
        raise _fail(path, value, "true or false", source)
    return value


def _platform(cfg: Any, source: str | None) -> PlatformSpec:
    """The ``platform`` mapping: every field of :class:`PlatformSpec` optional, each range-checked."""
    if cfg is None:
        return PlatformSpec()
    if not isinstance(cfg, Mapping):
        raise _fail("platform", cfg, "a mapping of platform fields", source)
    defaults = {f.name: f.default for f in fields(PlatformSpec)}
    _check_keys(cfg, set(defaults), "platform", source)
    merged = {**defaults, **cfg}
    out: dict[str, Any] = {}
    for key in ("dedup", "cost_control", "compensation"):
        out[key] = _flag(merged, key, f"platform.{key}", source)

    def num(key: str, **bounds: Any) -> float:
        return _number(merged, key, f"platform.{key}", source, **bounds)

    out["controller_gain"] = num("controller_gain", lo=0.0, lo_open=True, hi=20.0)
    out["controller_half_life_hours"] = num("controller_half_life_hours", lo=0.0, lo_open=True, hi=24.0 * 30)
    out["bid_mult_min"] = num("bid_mult_min", lo=0.0, lo_open=True, hi=MAX_MULT)
    out["bid_mult_max"] = num("bid_mult_max", lo=0.0, lo_open=True, hi=MAX_MULT)
    if not out["bid_mult_min"] <= 1.0 <= out["bid_mult_max"]:
        raise _fail(
            "platform.bid_mult_min / platform.bid_mult_max",
            [out["bid_mult_min"], out["bid_mult_max"]],
            "bounds around 1 (bid_mult_min <= 1 <= bid_mult_max): a controller that cannot return to the "
            "plain bid cannot reach the target",
            source,
        )
    out["explore_premium"] = num("explore_premium", lo=0.0, hi=10.0)
    out["learning_days"] = num("learning_days", lo=0.0, lo_open=True, hi=float(MAX_DAYS))
    # A failed plan's delivery draw has DELIVERY_BITS of resolution: a throttle is at least one step of it.
    out["failed_throttle"] = num("failed_throttle", lo=2.0**-11, hi=1.0)
    for key in ("edit_threshold", "relearn_level", "compensation_threshold"):
        out[key] = num(key, lo=0.0, lo_open=True, hi=1.0)
    out["deep_switch_events"] = num("deep_switch_events", lo=0.0, hi=1e6)
    out["prior_strength"] = num("prior_strength", lo=0.0, lo_open=True, hi=1e6)
    goals = merged["goal_mix"]
    if isinstance(goals, Mapping):
        unknown = sorted(set(goals) - set(GOALS))
        if unknown:
            raise ScenarioError(
                f"unknown goal {unknown[0]!r} in platform.goal_mix{_where(source)}; known: {list(GOALS)}"
            )
        weights = [_number(goals, g, f"platform.goal_mix.{g}", source, lo=0.0) if g in goals else 0.0 for g in GOALS]
    elif isinstance(goals, list | tuple) and len(goals) == len(GOALS):
        weights = [_number({"w": w}, "w", f"platform.goal_mix[{i}]", source, lo=0.0) for i, w in enumerate(goals)]
    else:
        raise _fail("platform.goal_mix", goals, f"a mapping from {list(GOALS)} to weights", source)
    if sum(weights) <= 0:
        raise _fail("platform.goal_mix", goals, "weights with a positive sum", source)
    out["goal_mix"] = tuple(w / sum(weights) for w in weights)
    return PlatformSpec(**out)


def _market_events(cfg: Any, days: int, channels: list[ChannelSpec], source: str | None) -> tuple[MarketEvent, ...]:
    if cfg is None:
        return ()
    if not isinstance(cfg, list | tuple):
        raise _fail("market_events", cfg, "a list of events {kind, first_day, last_day, multiplier, channels}", source)
    names = [c.name for c in channels]
    keys = {"kind", "first_day", "last_day", "multiplier", "channels"}
    events = []
    for i, ev in enumerate(cfg):
        path = f"market_events[{i}]"
        if not isinstance(ev, Mapping):
            raise _fail(path, ev, "a mapping {kind, first_day, last_day, multiplier, channels}", source)
        _check_keys(ev, keys, path, source)
        missing = sorted({"kind", "first_day", "last_day", "multiplier"} - set(ev))
        if missing:
            raise ScenarioError(f"{path}.{missing[0]} is missing{_where(source)}")
        if ev["kind"] not in ("competition", "demand"):
            raise _fail(f"{path}.kind", ev["kind"], "'competition' or 'demand'", source)
        first = _number(ev, "first_day", f"{path}.first_day", source, lo=0, integer=True)
        last = _number(ev, "last_day", f"{path}.last_day", source, lo=first, integer=True)
        if last >= days:
            raise _fail(f"{path}.last_day", last, f"a day of the episode (< days = {days})", source)
        hit = ev.get("channels") or []
        if not isinstance(hit, list | tuple) or any(c not in names for c in hit):
            raise _fail(f"{path}.channels", hit, f"a list of the scenario's channels {names}", source)
        events.append(
            MarketEvent(
                kind=ev["kind"],
                first_day=first,
                last_day=last,
                multiplier=_number(ev, "multiplier", f"{path}.multiplier", source, lo=0.0, lo_open=True, hi=MAX_MULT),
                channels=tuple(hit),
            )
        )
    return tuple(events)


def _plan_mix(cfg: Any, source: str | None) -> PlanMix:
    if cfg is None:
        return PlanMix()
    if not isinstance(cfg, Mapping):
        raise _fail("plans", cfg, "a mapping of plan-mix fields", source)
    defaults = {f.name: f.default for f in fields(PlanMix)}
    _check_keys(cfg, set(defaults), "plans", source)
    merged = {**defaults, **cfg}
    out: dict[str, Any] = {}
    fractions = ("potential_fraction", "trap_fraction", "new_fraction")
    for key, default in defaults.items():
        path = f"plans.{key}"
        if isinstance(default, tuple):
            pair = merged[key]
            if (
                not isinstance(pair, list | tuple)
                or len(pair) != 2
                or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in pair)
                or not 0 < pair[0] <= pair[1]
            ):
                raise _fail(path, pair, "a pair [low, high] with 0 < low <= high", source)
            out[key] = (float(pair[0]), float(pair[1]))
        elif key == "late_launch_days":
            out[key] = _number(merged, key, path, source, lo=0, integer=True)
        elif key in fractions or key == "fatigue_floor":
            out[key] = _number(merged, key, path, source, lo=0.0, hi=1.0)
        elif key == "learning_noise":
            out[key] = _number(merged, key, path, source, lo=0.0, hi=0.95)
        elif key.endswith("_bias"):
            out[key] = _number(merged, key, path, source, lo=-5.0, hi=5.0)
        elif key.endswith("_sigma"):  # log-sds: exp(sigma * z) must stay finite
            out[key] = _number(merged, key, path, source, lo=0.0, hi=3.0)
        elif key.endswith("_mult"):  # multipliers of rates and target CPAs: a zero CPA has no log
            out[key] = _number(merged, key, path, source, lo=0.0, lo_open=True, hi=MAX_MULT)
        else:
            out[key] = _number(merged, key, path, source, lo=0.0, hi=MAX_MULT)
    if out["potential_fraction"] + out["trap_fraction"] + out["new_fraction"] > 1.0:
        raise _fail(
            "plans.potential_fraction + plans.trap_fraction + plans.new_fraction",
            out["potential_fraction"] + out["trap_fraction"] + out["new_fraction"],
            "<= 1",
            source,
        )
    if out["audience_coverage"][1] > 1.0:
        raise _fail("plans.audience_coverage", list(out["audience_coverage"]), "within (0, 1]", source)
    return PlanMix(**out)


def scenario_from_mapping(cfg: Mapping[str, Any], source: str | None = None) -> Scenario:
    """Build a validated :class:`Scenario` from a mapping with the fields of a preset file."""
    cfg, source = _top_level(cfg, source)
    channel_bodies, channel_mix = _group(cfg, "channels", CHANNEL_CATALOGUE, source)
    channels = [_channel(name, body, source) for name, body in channel_bodies]
    vertical_bodies, vertical_mix = _group(cfg, "verticals", VERTICAL_CATALOGUE, source)
    verticals = [_vertical(name, body, source) for name, body in vertical_bodies]

    def num(key: str, default: Any = None, **kw: Any) -> Any:
        return _top_number(cfg, key, source, default, **kw)

    name = cfg["name"]
    if not isinstance(name, str) or not name:
        raise _fail("name", name, "a non-empty string", source)
    steps_per_day = num("steps_per_day", integer=True, lo=1)
    if 24 % steps_per_day:
        raise _fail("steps_per_day", steps_per_day, "a divisor of 24 (1, 2, 3, 4, 6, 8, 12 or 24)", source)
    accounts, plans_per_account, max_plans = _plan_counts(cfg, source)
    min_share, max_share, max_change = _share_limits(cfg, accounts * plans_per_account, source)
    days = num("days", integer=True, lo=1, hi=MAX_DAYS)
    attribution_window_days = num("attribution_window_days", 7.0, lo=0.0, hi=MAX_ATTRIBUTION_DAYS)
    _check_size(channels, days, source)
    return Scenario(
        name=name,
        accounts=accounts,
        plans_per_account=plans_per_account,
        max_plans=max_plans,
        days=days,
        steps_per_day=steps_per_day,
        daily_budget=num("daily_budget", lo=MIN_DAILY_BUDGET, hi=MAX_MONEY),
        cpa_target=num("cpa_target", lo=0.0, lo_open=True, hi=MAX_MONEY),
        channels=tuple(channels),
        channel_mix=channel_mix,
        verticals=tuple(verticals),
        vertical_mix=vertical_mix,
        plans=_plan_mix(cfg.get("plans"), source),
        beta=num("beta", 2.0, lo=0.0, hi=MAX_BETA),
        attribution_window_days=attribution_window_days,
        impressions_per_opportunity=num("impressions_per_opportunity", 60, integer=True, lo=1, hi=10_000),
        user_quality_sigma=num("user_quality_sigma", 0.4, lo=0.0, hi=2.0),
        learning_conversions=num("learning_conversions", 20.0, lo=0.0, lo_open=True, hi=1e6),
        noise_floor=num("noise_floor", 0.1, lo=0.0, hi=0.95),
        temperature=num("temperature", 5.0, lo=0.0, lo_open=True, hi=50.0),
        min_share=min_share,
        max_share=max_share,
        max_change=max_change,
        platform=_platform(cfg.get("platform"), source),
        market_events=_market_events(cfg.get("market_events"), days, channels, source),
        market_drift=num("market_drift", 0.0, lo=-0.5, hi=0.5),
        source=source,
    )


def _top_level(cfg: Any, source: str | None) -> tuple[dict[str, Any], str | None]:
    """A copy of the preset mapping without its ``source`` (which wins over the caller's), after
    refusing unknown fields and missing required ones."""
    if not isinstance(cfg, Mapping):
        raise ScenarioError(f"a scenario must be a mapping of fields, got {type(cfg).__name__}{_where(source)}")
    cfg = dict(cfg)
    source = cfg.pop("source", None) or source
    allowed = _SCALAR_FIELDS | {"channels", "verticals", "plans", "platform", "market_events"}
    _check_keys(cfg, allowed, "", source)
    required = [
        "name",
        "accounts",
        "plans_per_account",
        "days",
        "steps_per_day",
        "daily_budget",
        "cpa_target",
        "channels",
        "verticals",
    ]
    for key in required:
        if key not in cfg:
            raise ScenarioError(f"{key} is missing{_where(source)}")
    return cfg, source


def _top_number(cfg: Mapping[str, Any], key: str, source: str | None, default: Any = None, **bounds: Any) -> Any:
    """The top-level number ``key`` of a preset, range-checked (:func:`_number`), or ``default`` if absent."""
    if key not in cfg:
        return default
    return _number(cfg, key, key, source, **bounds)


def _plan_counts(cfg: Mapping[str, Any], source: str | None) -> tuple[int, int, int]:
    """``(accounts, plans_per_account, max_plans)``: within MAX_PLANS, and ``max_plans`` >= the plans."""
    accounts = _top_number(cfg, "accounts", source, integer=True, lo=1, hi=MAX_PLANS)
    plans_per_account = _top_number(cfg, "plans_per_account", source, integer=True, lo=1, hi=MAX_PLANS)
    n_plans = accounts * plans_per_account
    if n_plans > MAX_PLANS:
        raise _fail("accounts * plans_per_account", n_plans, f"<= {MAX_PLANS}", source)
    max_plans = _top_number(cfg, "max_plans", source, n_plans, integer=True, lo=1, hi=MAX_PLANS)
    if max_plans < n_plans:
        raise _fail("max_plans", max_plans, f">= accounts * plans_per_account = {n_plans}", source)
    return accounts, plans_per_account, max_plans


def _share_limits(cfg: Mapping[str, Any], n_plans: int, source: str | None) -> tuple[float, float, float | None]:
    """``(min_share, max_share, max_change)``: per-plan share bounds that ``n_plans`` shares summing
    to 1 can meet, and the optional step-to-step change limit."""
    min_share = _top_number(cfg, "min_share", source, 0.0, lo=0.0, hi=1.0)
    max_share = _top_number(cfg, "max_share", source, 1.0, lo=0.0, hi=1.0, lo_open=True)
    if min_share > max_share:
        raise _fail("min_share", min_share, f"<= max_share = {max_share}", source)
    if min_share * n_plans > 1.0 + 1e-12:
        raise _fail("min_share", min_share, f"<= 1 / n_plans = {1.0 / n_plans:.4g} (shares sum to 1)", source)
    max_change = cfg.get("max_change")
    if max_change is not None:
        max_change = _number(cfg, "max_change", "max_change", source, lo=0.0, hi=1.0, lo_open=True)
    return min_share, max_share, max_change


def preset_path(name: str) -> Path:
    return PRESET_DIR / f"{name}.yaml"


def list_presets() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def load_scenario(spec: str | Mapping[str, Any] | Scenario) -> Scenario:
    """A scenario from a preset name (``conf/env/<name>.yaml``), a YAML path, a mapping, or itself."""
    if isinstance(spec, Scenario):
        return spec
    if isinstance(spec, Mapping):
        return scenario_from_mapping(_plain(spec))
    if isinstance(spec, str | Path):
        path = Path(spec)
        if path.suffix not in (".yaml", ".yml"):
            path = preset_path(str(spec))
            if not path.exists():
                raise ScenarioError(f"unknown scenario preset {str(spec)!r}; known: {list_presets()}")
        return scenario_from_mapping(load_yaml(path), source=str(path))
    raise ScenarioError(f"scenario must be a preset name, a YAML path or a mapping, got {type(spec).__name__}")


def _plain(obj: Any) -> Any:
    """Turn OmegaConf containers (or any nested mappings) into plain dicts/lists.

    An OmegaConf container exists only once its caller imported omegaconf, so the simulator never
    imports it itself (nor does the production loader, which has no omegaconf).
    """
    omegaconf = sys.modules.get("omegaconf")
    if omegaconf is not None and isinstance(obj, omegaconf.DictConfig | omegaconf.ListConfig):
        return omegaconf.OmegaConf.to_container(obj, resolve=True)
    return copy.deepcopy(dict(obj)) if isinstance(obj, Mapping) else obj


# --------------------------------------------------------------------------------------------
# The hidden truth of one episode.
# --------------------------------------------------------------------------------------------


@dataclass
class Portfolio:
    """One episode's hidden plan parameters and market conditions, as flat arrays.

    Plans beyond ``n_plans`` (up to ``max_plans``) do not exist; their arrays are not padded here:
    padding happens in the observation. All money is in currency units.
    """

    channel: np.ndarray  # (P,) int64 index into scenario.channels
    vertical: np.ndarray  # (P,) int64 index into scenario.verticals
    account: np.ndarray  # (P,) int64
    kind: np.ndarray  # (P,) int64 KIND_* (hidden)
    launch_step: np.ndarray  # (P,) int64 first step the plan exists
    prior_age_steps: np.ndarray  # (P,) int64 age at episode start of plans launched before it
    audience: np.ndarray  # (P,) uint64 bit mask over N_SEGMENTS audience segments
    ctr: np.ndarray  # (P,) float64 true CTR of a fresh creative
    cvr: np.ndarray  # (P,) float64 true click-to-conversion rate for an average user
    target_cpa: np.ndarray  # (P,) float64 the plan's oCPM target, currency
    bias0: np.ndarray  # (P,) float64 log-bias of the platform's estimate at launch
    noise0: np.ndarray  # (P,) float64 bid noise amplitude at launch
    prior_conversions: np.ndarray  # (P,) float64 platform's conversion count at episode start
    prior_impressions: np.ndarray  # (P,) float64 impressions before the episode (fatigue)
    fatigue_scale: np.ndarray  # (P,) float64 impressions
    fatigue_floor: np.ndarray  # (P,) float64
    stage_rate: np.ndarray  # (P, MAX_STAGES) float64 conditional rates; 0 beyond the funnel
    stage_value: np.ndarray  # (P, MAX_STAGES) float64 currency per event
    delay_median: np.ndarray  # (P, MAX_STAGES) float64 median delay in steps
    delay_sigma: np.ndarray  # (P, MAX_STAGES) float64
    static_share: np.ndarray  # (P,) float64 the morning's plan budgets as shares (sum 1)
    market_day: np.ndarray  # (days, C) float64 day-level competitor pressure multiplier (events, drift)
    key: int  # uint64 root of the counter-based random draws of the dynamics
    goal: np.ndarray  # (P,) int64 GOAL_* the plan optimises
    attribution_steps: np.ndarray  # (P,) int64 steps after the episode its deep events still count
    demand_day: np.ndarray  # (days, C) float64 day-level traffic multiplier (demand events)


class PortfolioGenerator:
    """Draws a :class:`Portfolio` from a scenario with a seeded generator (jumanji-style).

    Plans are assigned to channels and verticals by the scenario's mixes (largest remainder, so a
    preset's mix is honoured exactly, then shuffled). Then each plan is one of:

    - **potential** (``potential_fraction``): new, launched on a day in ``[0, late_launch_days]``,
      deep rates ``potential_deep_mult`` x the vertical's and a higher CVR, but the platform's
      estimate starts ``potential_bias`` (log) too low with ``learning_noise`` bid noise, so it looks
      mediocre and wins erratically until it has ``learning_conversions`` conversions;
    - **trap** (``trap_fraction``): an established cheap-lead plan: high CVR and low target CPA
      (cheap shallow conversions), deep rates ``trap_deep_mult`` x the vertical's;
    - **new** ordinary plan (``new_fraction``): launched like potential plans, ordinary quality;
    - **established** ordinary plan: out of its learning phase, deep-rate multiplier log-normal.
    """

    def __call__(self, scenario: Scenario, rng: np.random.Generator) -> Portfolio:
        # The draws below happen in this order and no other: the same seed gives the same portfolio
        # (tests/test_golden.py pins it), so a new draw goes after the last one.
        sc = scenario
        channel, vertical, kind_code = _assign_plans(sc, rng)
        kind = np.select([kind_code == 0, kind_code == 1], [KIND_POTENTIAL, KIND_TRAP], KIND_REGULAR)
        is_new = (kind_code == 0) | (kind_code == 2)
        ctr, cvr, target_cpa, deep_mult = _draw_plan_quality(sc, vertical, kind, rng)
        history = _draw_plan_history(sc, kind, is_new, rng)
        audience = _draw_audience(sc.n_plans, sc.plans.audience_coverage, rng)
        funnel = _draw_funnel(sc, vertical, deep_mult, rng)
        static_share = _draw_static_share(sc.plans, kind, is_new, rng)
        market_day = draw_market_day(sc, rng)
        key = int(rng.integers(0, 2**63 - 1, dtype=np.int64))
        goal = rng.choice(len(GOALS), size=sc.n_plans, p=np.asarray(sc.platform.goal_mix))
        market_day, demand_day = market_conditions(sc, market_day)
        return Portfolio(
            channel=channel.astype(np.int64),
            vertical=vertical.astype(np.int64),
            account=np.repeat(np.arange(sc.accounts), sc.plans_per_account).astype(np.int64),
            kind=kind.astype(np.int64),
            audience=audience,
            ctr=ctr,
            cvr=cvr,
            target_cpa=target_cpa,
            **history,
            **funnel,
            static_share=static_share,
            market_day=market_day,
            key=key,
            goal=goal.astype(np.int64),
            attribution_steps=np.asarray(sc.vertical_attribution_steps(), dtype=np.int64)[vertical],
            demand_day=demand_day,
        )


def _assign_plans(sc: Scenario, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each plan's channel and vertical index, and its kind code (0 potential, 1 trap, 2 new ordinary,
    3 established): the scenario's mixes apportioned exactly, then shuffled. Three permutations."""
    mix, n = sc.plans, sc.n_plans
    channel = rng.permutation(_apportion(n, sc.channel_mix))
    vertical = rng.permutation(_apportion(n, sc.vertical_mix))
    counts = _apportion(
        n,
        (
            mix.potential_fraction,
            mix.trap_fraction,
            mix.new_fraction,
            1.0 - mix.potential_fraction - mix.trap_fraction - mix.new_fraction,
        ),
    )
    # Every preset with >= 4 plans holds at least one potential plan and one trap.
    kind_code = rng.permutation(counts)
    return channel, vertical, kind_code


def _draw_plan_quality(
    sc: Scenario, vertical: np.ndarray, kind: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(ctr, cvr, target_cpa, deep_mult)``, each (P,): log-normal around the vertical's, then set or
    scaled by the plan's kind. Four standard normals of n: CTR, CVR, CPA, deep multiplier."""
    mix, n = sc.plans, sc.n_plans
    v_ctr = np.array([v.ctr for v in sc.verticals])[vertical]
    v_cvr = np.array([v.cvr for v in sc.verticals])[vertical]
    v_cpa = np.array([v.target_cpa for v in sc.verticals])[vertical]
    ctr = v_ctr * np.exp(mix.ctr_sigma * rng.standard_normal(n))
    cvr = v_cvr * np.exp(mix.cvr_sigma * rng.standard_normal(n))
    target_cpa = v_cpa * np.exp(mix.cpa_sigma * rng.standard_normal(n))
    deep_mult = np.exp(mix.deep_sigma * rng.standard_normal(n) - 0.5 * mix.deep_sigma**2)
    potential, trap = kind == KIND_POTENTIAL, kind == KIND_TRAP
    deep_mult = np.where(potential, mix.potential_deep_mult, deep_mult)
    deep_mult = np.where(trap, mix.trap_deep_mult, deep_mult)
    cvr = np.where(potential, cvr * mix.potential_cvr_mult, cvr)
    cvr = np.where(trap, cvr * mix.trap_cvr_mult, cvr)
    target_cpa = np.where(trap, target_cpa * mix.trap_cpa_mult, target_cpa)
    return np.minimum(ctr, 0.5), np.minimum(cvr, 0.9), target_cpa, deep_mult


def _draw_plan_history(
    sc: Scenario, kind: np.ndarray, is_new: np.ndarray, rng: np.random.Generator
) -> dict[str, np.ndarray]:
    """The :class:`Portfolio` fields of each plan's past: launch step and prior age, the platform's
    starting estimate (bias, bid noise, conversions) and creative fatigue. Draws, in order: launch day,
    prior age, bias jitter, prior conversions, prior impressions, fatigue scale."""
    mix, n = sc.plans, sc.n_plans
    launch_day = rng.integers(0, mix.late_launch_days + 1, size=n)
    launch_step = np.where(is_new, np.minimum(launch_day, sc.days - 1) * sc.steps_per_day, 0)
    prior_age_steps = np.where(is_new, 0, rng.integers(5, 60, size=n) * sc.steps_per_day)
    bias0 = np.where(kind == KIND_POTENTIAL, mix.potential_bias, np.where(is_new, mix.new_bias, 0.0))
    bias0 = bias0 + np.where(is_new, 0.15 * rng.standard_normal(n), 0.0)
    return {
        "launch_step": launch_step.astype(np.int64),
        "prior_age_steps": prior_age_steps.astype(np.int64),
        "bias0": bias0,
        "noise0": np.where(is_new, mix.learning_noise, sc.noise_floor),
        "prior_conversions": np.where(is_new, 0.0, sc.learning_conversions * rng.uniform(2.0, 15.0, size=n)),
        "prior_impressions": np.where(is_new, 0.0, rng.uniform(0.0, 2e5, size=n)),
        "fatigue_scale": rng.uniform(*mix.fatigue_impressions, size=n),
        "fatigue_floor": np.full(n, mix.fatigue_floor),
    }


def _draw_audience(n: int, coverage_range: tuple[float, float], rng: np.random.Generator) -> np.ndarray:
    """(n,) uint64 bit masks over N_SEGMENTS segments, each plan covering a drawn fraction of them and
    never none. Draws: coverage, the bits, one guaranteed segment."""
    coverage = rng.uniform(*coverage_range, size=n)
    bits = rng.random((n, N_SEGMENTS)) < coverage[:, None]
    bits[np.arange(n), rng.integers(0, N_SEGMENTS, size=n)] = True  # never an empty audience
    return (bits.astype(np.uint64) << np.arange(N_SEGMENTS, dtype=np.uint64)).sum(axis=1, dtype=np.uint64)


def _draw_funnel(
    sc: Scenario, vertical: np.ndarray, deep_mult: np.ndarray, rng: np.random.Generator
) -> dict[str, np.ndarray]:
    """The :class:`Portfolio` fields of each plan's deep funnel, (P, MAX_STAGES): rates, values and
    delays from its vertical's stages, padded beyond them. One standard normal draw of (P, MAX_STAGES)."""
    mix, n = sc.plans, sc.n_plans
    stage_rate = np.zeros((n, MAX_STAGES))
    stage_value = np.zeros((n, MAX_STAGES))
    delay_median = np.ones((n, MAX_STAGES))
    delay_sigma = np.zeros((n, MAX_STAGES))
    # Plan quality acts on the first (gating) stage; every later stage has the plan's own rate
    # around the vertical's (a funding rate, a renewal rate), so late events carry information.
    stage_mult = np.exp(mix.stage_sigma * rng.standard_normal((n, MAX_STAGES)) - 0.5 * mix.stage_sigma**2)
    stage_mult[:, 0] = deep_mult
    for v_idx, v in enumerate(sc.verticals):
        rows = vertical == v_idx
        for s_idx, st in enumerate(v.stages):
            rate = st.rate * stage_mult[rows, s_idx]
            stage_rate[rows, s_idx] = np.minimum(rate, 1.0)
            stage_value[rows, s_idx] = st.value
            delay_median[rows, s_idx] = st.delay_median_hours / sc.hours_per_step
            delay_sigma[rows, s_idx] = st.delay_sigma
    return {
        "stage_rate": stage_rate,
        "stage_value": stage_value,
        "delay_median": delay_median,
        "delay_sigma": delay_sigma,
    }


def _draw_static_share(mix: PlanMix, kind: np.ndarray, is_new: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """(P,) the morning's plan budgets as shares (sum 1): weights by kind, jittered log-normally."""
    weight = np.where(is_new, mix.static_weight_new, np.where(kind == KIND_TRAP, mix.static_weight_trap, 1.0))
    weight = weight * np.exp(0.3 * rng.standard_normal(len(weight)))
    return weight / weight.sum()


def draw_market_day(scenario: Scenario, rng: np.random.Generator) -> np.ndarray:
    """(days, C) the episode's day-level competitor pressure: log-normal with each channel's
    ``market_day_sigma`` (before :func:`market_conditions` adds drift and events)."""
    sigma = np.array([c.market_day_sigma for c in scenario.channels])
    return np.exp(sigma[None, :] * rng.standard_normal((scenario.days, len(scenario.channels))))


def market_conditions(scenario: Scenario, market_day: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(market_day, demand_day)``, both (days, C): the drawn day-level competitor pressure times the
    scenario's drift and competition events, and the traffic multiplier of its demand events."""
    names = [c.name for c in scenario.channels]
    days = np.arange(scenario.days)
    competition = market_day * np.exp(scenario.market_drift * days)[:, None]
    demand = np.ones_like(market_day)
    for ev in scenario.market_events:
        hit = [names.index(c) for c in ev.channels] if ev.channels else list(range(len(names)))
        target = competition if ev.kind == "competition" else demand
        target[ev.first_day : ev.last_day + 1, hit] *= ev.multiplier
    return competition, demand


def _apportion(n: int, weights: tuple[float, ...]) -> np.ndarray:
    """``n`` items split by ``weights`` with the largest-remainder method, as category codes."""
    w = np.asarray(weights, dtype=float)
    exact = n * w / w.sum()
    counts = np.floor(exact).astype(int)
    order = np.argsort(-(exact - counts), kind="stable")
    counts[order[: n - counts.sum()]] += 1
    # Guarantee presence of every non-zero category when there is room (potential plans and traps).
    for idx in np.flatnonzero((counts == 0) & (w > 0)):
        donor = int(np.argmax(counts))
        if counts[donor] > 1:
            counts[donor] -= 1
            counts[idx] += 1
    return np.repeat(np.arange(len(w)), counts).astype(np.int64)
