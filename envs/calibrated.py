"""A calibrated portfolio: the plans of one advertiser's log, as a scenario and a generator.

``python -m experiments.calibrate log.csv --out my_portfolio.yaml`` writes a YAML file with three parts:

- ``base``: a preset (``conf/env/<base>.yaml``) that supplies what a log cannot show (the platform's
  rules, the verticals' funnels and priors, the channels' market spread and competitor curves);
- ``scenario``: overrides on it that the log did fit (the channels' traffic volume and diurnal curve,
  the market level, the daily budget, the portfolio's deep CPA target), validated by
  :func:`envs.scenario.scenario_from_mapping` like any preset;
- ``plans`` and ``delays``: each logged plan's fitted hidden parameters with their posteriors (Beta
  ``a``/``b`` for CTR, CVR and every funnel stage; a log-normal delay per vertical stage with the
  standard errors of its log-median and log-sigma), and the plan's state at the start and the end of
  the log (age, the platform's conversion count, learning status, target CPA, budget share).

:func:`load_calibration` turns the file into a :class:`envs.scenario.Scenario` and a
:class:`CalibratedGenerator`, a ``(scenario, rng) -> Portfolio`` callable for
``BudgetShiftEnv(scenario, generator=...)``: every episode holds the *same plans*, with their parameters
at the posterior mean (``draw="mean"``) or drawn from the posterior per episode (``draw="posterior"``,
for intervals over the calibration's uncertainty), starting from the state at the end of the log
(``start="end"``: the what-if's "from now on") or at its start (``start="start"``: replaying the logged
period, for the fit report and the parameter-recovery test). The day-level market pressure and the
dynamics' random key are drawn per episode as in :class:`envs.scenario.PortfolioGenerator`.

What the generator fixes because reporting cannot show it (see the fit report's limits): every plan is a
``regular`` kind (kinds are hidden labels), the platform's prediction bias at launch is 0, creative
fatigue is off (the CTR is the period's average), audiences are drawn once from the base preset's
coverage with a fixed seed (the same every episode).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from envs.features import CHANNELS, GOALS, VERTICALS
from envs.scenario import (
    KIND_REGULAR,
    MAX_STAGES,
    Portfolio,
    Scenario,
    ScenarioError,
    _draw_audience,
    draw_market_day,
    load_yaml,
    market_conditions,
    preset_path,
    scenario_from_mapping,
)

#: Version of the calibration file layout.
CALIBRATION_FORMAT = 1
DRAWS = ("mean", "posterior")
STARTS = ("end", "start")


@dataclass(frozen=True)
class BetaFit:
    """A Beta(a, b) posterior of a rate."""

    a: float
    b: float

    @property
    def mean(self) -> float:
        return self.a / (self.a + self.b)

    def interval(self, level: float = 0.9) -> tuple[float, float]:
        from scipy.stats import beta  # scipy is a dependency of the package; imported here to keep envs light

        lo, hi = beta.ppf([(1 - level) / 2, (1 + level) / 2], self.a, self.b)
        return float(lo), float(hi)


@dataclass(frozen=True)
class PlanState:
    """A plan's state at one end of the log."""

    launch_hour: int  # hour of the period in which the plan's first row falls (0: before the period)
    age_hours: float  # age at that moment
    conversions: float  # the platform's conversion count (learning state)
    target_cpa: float
    static_share: float  # the plan's share of the day's budgets (the first or the last day of the log)


@dataclass(frozen=True)
class PlanFit:
    plan_id: str
    account: str
    channel: str
    vertical: str
    goal: str
    ctr: BetaFit  # clicks per impression on the plan's channel
    cvr: BetaFit  # conversions per click as observed (selected users)
    cvr_selection: float  # observed CVR / the CVR of an average user (the auction's selection of users)
    stages: tuple[BetaFit, ...]  # each funnel stage's rate given the previous event
    start: PlanState
    end: PlanState


@dataclass(frozen=True)
class DelayFit:
    """A vertical stage's delay: discretised log-normal, ``median_hours x exp(sigma z)``."""

    median_hours: float
    sigma: float
    log_median_se: float  # standard error of log(median_hours): the posterior draws' spread
    log_sigma_se: float


@dataclass(frozen=True)
class Calibration:
    """A calibration file, loaded: the scenario and what the generator draws plans from."""

    scenario: Scenario
    base: str
    plans: tuple[PlanFit, ...]
    delays: dict[str, tuple[DelayFit, ...]]  # by vertical name, one per stage
    stage_values: dict[str, tuple[float, ...]]  # by vertical name, currency per event
    audience_seed: int
    source: str | None

    def generator(self, draw: str = "mean", start: str = "end") -> CalibratedGenerator:
        return CalibratedGenerator(self, draw=draw, start=start)

    def plan_index(self, plan_id: str) -> int:
        ids = [p.plan_id for p in self.plans]
        if plan_id not in ids:
            raise ValueError(f"unknown plan {plan_id!r}; the calibration's plans: {ids}")
        return ids.index(plan_id)


class CalibratedGenerator:
    """``(scenario, rng) -> Portfolio``: the calibrated plans, the same every episode (see the module doc).

    :param draw: ``"mean"`` (posterior means) or ``"posterior"`` (one draw per episode from ``rng``).
    :param start: ``"end"`` (plans as they stand at the end of the log) or ``"start"`` (as at its start,
        plans launched during the log launching at the same hour).
    """

    def __init__(self, calibration: Calibration, draw: str = "mean", start: str = "end") -> None:
        if draw not in DRAWS:
            raise ValueError(f"draw must be one of {DRAWS}, got {draw!r}")
        if start not in STARTS:
            raise ValueError(f"start must be one of {STARTS}, got {start!r}")
        self.calibration = calibration
        self.draw = draw
        self.start = start

    def __call__(self, scenario: Scenario, rng: np.random.Generator) -> Portfolio:
        cal, sc = self.calibration, scenario
        plans = cal.plans
        n = len(plans)
        if sc.n_plans != n:
            raise ValueError(f"the scenario has {sc.n_plans} plans, the calibration {n}: use calibration.scenario")
        channel_names = [c.name for c in sc.channels]
        vertical_names = [v.name for v in sc.verticals]
        channel = np.array([channel_names.index(p.channel) for p in plans], dtype=np.int64)
        vertical = np.array([vertical_names.index(p.vertical) for p in plans], dtype=np.int64)
        accounts = sorted({p.account for p in plans}, key=[p.account for p in plans].index)
        account = np.array([accounts.index(p.account) for p in plans], dtype=np.int64)
        ctr_mult = np.array([c.ctr_mult for c in sc.channels])[channel]
        cvr_mult = np.array([c.cvr_mult for c in sc.channels])[channel]

        posterior = self.draw == "posterior"

        def rate(fit: BetaFit) -> float:
            return float(rng.beta(fit.a, fit.b)) if posterior else fit.mean

        ctr = np.array([rate(p.ctr) for p in plans]) / ctr_mult
        cvr = np.array([rate(p.cvr) / p.cvr_selection for p in plans]) / cvr_mult
        stage_rate = np.zeros((n, MAX_STAGES))
        for i, p in enumerate(plans):
            for s, fit in enumerate(p.stages):
                stage_rate[i, s] = rate(fit)
        stage_value = np.zeros((n, MAX_STAGES))
        delay_median = np.ones((n, MAX_STAGES))
        delay_sigma = np.zeros((n, MAX_STAGES))
        for v_name in vertical_names:
            rows = vertical == vertical_names.index(v_name)
            for s, d in enumerate(cal.delays[v_name]):
                median, sigma = d.median_hours, d.sigma
                if posterior:
                    median *= math.exp(d.log_median_se * rng.standard_normal())
                    sigma *= math.exp(d.log_sigma_se * rng.standard_normal())
                delay_median[rows, s] = max(1.0, median) / sc.hours_per_step
                delay_sigma[rows, s] = min(sigma, 3.0)
                stage_value[rows, s] = cal.stage_values[v_name][s]

        state = [p.end if self.start == "end" else p.start for p in plans]
        launch_step = np.array([s.launch_hour // sc.hours_per_step for s in state], dtype=np.int64)
        prior_age_steps = np.where(
            launch_step > 0, 0, np.array([int(s.age_hours // sc.hours_per_step) for s in state])
        ).astype(np.int64)
        prior_conversions = np.array([s.conversions for s in state])
        learning = prior_conversions < sc.learning_conversions
        static_share = np.array([s.static_share for s in state])
        static_share = static_share / static_share.sum() if static_share.sum() > 0 else np.full(n, 1.0 / n)
        audience = _draw_audience(n, sc.plans.audience_coverage, np.random.default_rng(cal.audience_seed))
        market_day = draw_market_day(sc, rng)
        key = int(rng.integers(0, 2**63 - 1, dtype=np.int64))
        market_day, demand_day = market_conditions(sc, market_day)
        return Portfolio(
            channel=channel,
            vertical=vertical,
            account=account,
            kind=np.full(n, KIND_REGULAR, dtype=np.int64),
            launch_step=launch_step,
            prior_age_steps=prior_age_steps,
            audience=audience,
            ctr=np.minimum(ctr, 1.0),
            cvr=np.minimum(cvr, 1.0),
            target_cpa=np.array([s.target_cpa for s in state]),
            bias0=np.zeros(n),
            noise0=np.where(learning, sc.plans.learning_noise, sc.noise_floor),
            prior_conversions=prior_conversions,
            prior_impressions=np.zeros(n),
            fatigue_scale=np.ones(n),
            fatigue_floor=np.ones(n),  # no creative fatigue: the CTR is the logged period's average
            stage_rate=np.minimum(stage_rate, 1.0),
            stage_value=stage_value,
            delay_median=delay_median,
            delay_sigma=delay_sigma,
            static_share=static_share,
            market_day=market_day,
            key=key,
            goal=np.array([GOALS.index(p.goal) for p in plans], dtype=np.int64),
            attribution_steps=np.asarray(sc.vertical_attribution_steps(), dtype=np.int64)[vertical],
            demand_day=demand_day,
        )


# -------------------------------------------------------------------------------------------------
# Reading a calibration file


def scenario_mapping(base: str, overrides: Mapping[str, Any], plans: list[Mapping[str, Any]]) -> dict[str, Any]:
    """The preset mapping of a calibrated scenario: ``base``'s fields, the calibration's overrides, one account
    of all the plans (the plans' own accounts live in the generator), no scheduled market events."""
    path = preset_path(base)
    if not path.exists():
        raise ScenarioError(f"base must name a preset in conf/env/, got {base!r}")
    cfg = dict(load_yaml(path))
    cfg.pop("market_events", None)
    cfg["market_drift"] = 0.0
    base_channels, base_verticals = dict(cfg.get("channels") or {}), dict(cfg.get("verticals") or {})
    n = len(plans)
    cfg.update({k: v for k, v in overrides.items() if k not in ("channels", "verticals")})
    cfg["accounts"], cfg["plans_per_account"] = 1, n
    cfg["max_plans"] = max(n, int(cfg.get("max_plans", n)))
    for group, vocabulary, base_group in (
        ("channels", CHANNELS, base_channels),
        ("verticals", VERTICALS, base_verticals),
    ):
        used = [name for name in vocabulary if any(p.get(group[:-1]) == name for p in plans)]
        node = {}
        for name in used:
            body = {k: v for k, v in dict(base_group.get(name) or {}).items() if k != "share"}
            body.update(dict((overrides.get(group) or {}).get(name) or {}))
            body["share"] = sum(p.get(group[:-1]) == name for p in plans)
            node[name] = body
        cfg[group] = node
    return cfg


def _num(node: Mapping[str, Any], key: str, path: str, source: str | None, lo: float = 0.0, lo_open: bool = False):
    if not isinstance(node, Mapping) or key not in node:
        raise ScenarioError(f"{path}.{key} is missing{f' ({source})' if source else ''}")
    value = node[key]
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ScenarioError(f"{path}.{key} must be a finite number, got {value!r}{f' ({source})' if source else ''}")
    if value < lo or (lo_open and value == lo):
        raise ScenarioError(
            f"{path}.{key} must be {'>' if lo_open else '>='} {lo}, got {value!r}{f' ({source})' if source else ''}"
        )
    return float(value)


def _beta(node: Any, path: str, source: str | None) -> BetaFit:
    return BetaFit(a=_num(node, "a", path, source, lo_open=True), b=_num(node, "b", path, source, lo_open=True))


def _state(node: Any, path: str, source: str | None) -> PlanState:
    return PlanState(
        launch_hour=int(_num(node, "launch_hour", path, source)),
        age_hours=_num(node, "age_hours", path, source),
        conversions=_num(node, "conversions", path, source),
        target_cpa=_num(node, "target_cpa", path, source, lo_open=True),
        static_share=_num(node, "static_share", path, source),
    )


def calibration_from_mapping(cfg: Mapping[str, Any], source: str | None = None) -> Calibration:
    """Validate a calibration mapping (the YAML file's content) and build the scenario and plan fits."""
    where = f" ({source})" if source else ""
    if not isinstance(cfg, Mapping):
        raise ScenarioError(f"a calibration must be a mapping, got {type(cfg).__name__}{where}")
    for key in ("base", "scenario", "plans", "delays"):
        if key not in cfg:
            raise ScenarioError(f"{key} is missing{where}: not a calibration file (python -m experiments.calibrate)")
    fmt = (cfg.get("calibration") or {}).get("format", CALIBRATION_FORMAT)
    if fmt != CALIBRATION_FORMAT:
        raise ScenarioError(f"calibration.format must be {CALIBRATION_FORMAT}, got {fmt!r}{where}")
    plans_cfg = cfg["plans"]
    if not isinstance(plans_cfg, list) or not plans_cfg:
        raise ScenarioError(f"plans must be a non-empty list{where}")
    scenario = scenario_from_mapping(
        scenario_mapping(str(cfg["base"]), dict(cfg["scenario"] or {}), plans_cfg), source=source
    )
    vertical_stages = {v.name: len(v.stages) for v in scenario.verticals}
    plans = []
    for i, node in enumerate(plans_cfg):
        path = f"plans[{i}]"
        if not isinstance(node, Mapping):
            raise ScenarioError(f"{path} must be a mapping{where}")
        for key, vocabulary in (("channel", CHANNELS), ("vertical", VERTICALS), ("goal", GOALS)):
            if node.get(key) not in vocabulary:
                raise ScenarioError(f"{path}.{key} must be one of {list(vocabulary)}, got {node.get(key)!r}{where}")
        stages_cfg = node.get("stages")
        n_stages = vertical_stages[node["vertical"]]
        if not isinstance(stages_cfg, list) or len(stages_cfg) != n_stages:
            raise ScenarioError(f"{path}.stages must list the {n_stages} stages of {node['vertical']}{where}")
        cvr = node.get("cvr")
        plans.append(
            PlanFit(
                plan_id=str(node.get("plan_id")),
                account=str(node.get("account")),
                channel=node["channel"],
                vertical=node["vertical"],
                goal=node["goal"],
                ctr=_beta(node.get("ctr"), f"{path}.ctr", source),
                cvr=_beta(cvr, f"{path}.cvr", source),
                cvr_selection=_num(cvr, "selection", f"{path}.cvr", source, lo_open=True),
                stages=tuple(_beta(st, f"{path}.stages[{s}]", source) for s, st in enumerate(stages_cfg)),
                start=_state(node.get("start"), f"{path}.start", source),
                end=_state(node.get("end"), f"{path}.end", source),
            )
        )
    ids = [p.plan_id for p in plans]
    if len(set(ids)) != len(ids):
        raise ScenarioError(f"plans: plan_id values must be unique{where}")
    delays, values = {}, {}
    for v in scenario.verticals:
        node = (cfg["delays"] or {}).get(v.name)
        if not isinstance(node, list) or len(node) != len(v.stages):
            raise ScenarioError(f"delays.{v.name} must list the {len(v.stages)} stages of {v.name}{where}")
        fits, vals = [], []
        for s, d in enumerate(node):
            path = f"delays.{v.name}[{s}]"
            fits.append(
                DelayFit(
                    median_hours=_num(d, "median_hours", path, source, lo=1.0),
                    sigma=_num(d, "sigma", path, source),
                    log_median_se=_num(d, "log_median_se", path, source),
                    log_sigma_se=_num(d, "log_sigma_se", path, source),
                )
            )
            vals.append(_num(d, "value", path, source))
        delays[v.name], values[v.name] = tuple(fits), tuple(vals)
    return Calibration(
        scenario=scenario,
        base=str(cfg["base"]),
        plans=tuple(plans),
        delays=delays,
        stage_values=values,
        audience_seed=int((cfg.get("calibration") or {}).get("audience_seed", 0)),
        source=source,
    )


def load_calibration(path: str | Path) -> Calibration:
    """A calibration file (``python -m experiments.calibrate``) as a :class:`Calibration`."""
    path = Path(path)
    return calibration_from_mapping(load_yaml(path), source=str(path))


__all__ = [
    "BetaFit",
    "CalibratedGenerator",
    "Calibration",
    "DelayFit",
    "PlanFit",
    "PlanState",
    "calibration_from_mapping",
    "load_calibration",
    "scenario_mapping",
]
