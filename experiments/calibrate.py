"""Fit a scenario whose portfolio is the plans of an hourly reporting log, with posteriors, and report the fit.

``python -m experiments.calibrate log.csv --out my_portfolio.yaml [--base credit] [--report-dir DIR]``

The log (:mod:`experiments.logs`) is validated first; a log calibration cannot use is refused with the row
and the field named (exit status 2, one ``error:`` line). Then, per plan and per vertical stage:

- **Rates: conjugate Beta-Binomial posteriors.** CTR (clicks of impressions), CVR (conversions of clicks)
  and every deep stage's rate (events of the previous stage's events) are Binomial thinnings with one
  unknown probability each, so a Beta prior gives a Beta posterior in closed form: its mean is the
  estimate, its quantiles the interval, and a draw per episode propagates the uncertainty into what-if
  runs at no cost. The prior is weak (2 pseudo-events at the base preset's rate for the plan's vertical
  and channel), so a plan with few deep events gets a wide posterior, a stage with none the prior itself.
- **Right-censoring of deep events.** A deep event is reported hours to days after its parent event, so
  at the end of the log part of the recent conversions have not matured yet. A stage's exposure is
  ``sum_t parent_t x F(T - 1 - t)`` (``F`` the fitted delay's CDF): the expected number of parents whose
  outcome is already visible. Counting raw parents would bias every deep rate down.
- **Delays: maximum likelihood** (``scipy.optimize``). Each vertical stage's delay is a discretised
  log-normal (the simulator's: ``max(1, round(median x exp(sigma z)))`` steps), shared by the vertical's
  plans. Hourly matured counts are Poisson with mean ``rate_p x (parent_p * pmf)(t)`` (a convolution,
  which handles censoring: events due after the log simply are not expected in it), the plan rates
  profiled out; the standard errors of log-median and log-sigma come from the observed information
  (numerical Hessian). A stage with fewer than 20 events, or a median beyond half the log, is not
  identified: the base preset's delay is kept, flagged, with a wide spread.
- **Market and traffic: simulated moments.** Reporting shows prices and win volumes, never competitors'
  bids or the traffic the plans lost. Each channel's market level (``market_bid``) and volume are moved
  until replaying the log's budgets in the calibrated scenario reproduces the channel's observed price
  per impression and spend (a few damped multiplicative iterations, averaged over replays). In the same
  loop the auction's selection of users is measured: a plan that bids by predicted user quality wins the
  better users, so its observed CVR exceeds its average user's; the generator divides the observed CVR by
  that ratio. Diurnal traffic curves are the observed hour-of-day shares of impressions, shrunk towards
  the base preset's curve.

Why closed forms and not a probabilistic-programming library: every likelihood here is a Binomial thinning
or a convolution of counts with a two-parameter delay; conjugacy gives exact posteriors in microseconds,
with nothing to tune or diagnose (no sampler), and scipy is already a dependency. A hierarchical model
(partial pooling of rates across plans) would tighten thin plans, at the price of a sampler; the fit
report says where the data is thin instead.

Outputs: the calibration YAML (:mod:`envs.calibrated`: ``base``, ``scenario`` overrides, ``plans`` with
posteriors, ``delays``), and in the report folder (default: beside it, ``<out stem>_report/``)
``report.md`` (observed against simulated per plan and per hour, posterior table, limits),
``plans.csv`` and PNG plots.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from scipy import optimize, signal, stats

from envs.budget_env import BudgetShiftEnv
from envs.calibrated import CALIBRATION_FORMAT, Calibration, calibration_from_mapping
from envs.features import CHANNELS, GOALS, STATUSES, VERTICALS
from envs.scenario import MAX_STAGES, Scenario, ScenarioError, _channel, _vertical, list_presets, load_scenario
from envs.shares import pacing
from experiments.logs import LogError, PlanLog, read_log

#: Pseudo-events of the weak Beta prior at the base preset's rate.
PRIOR_EVENTS = 2.0
#: A delay needs this many matured events, and a median within this share of the log, to be fitted.
MIN_DELAY_EVENTS = 20
MAX_DELAY_SHARE = 0.5
#: Log-sd given to an unidentified delay's median and sigma (the base preset's value kept).
UNIDENTIFIED_DELAY_SE = 0.3
#: Iterations and replays of the simulated-moments loop (market level, volume, user selection).
MOMENT_ITERATIONS = 6
MOMENT_REPLAYS = 3
#: Weight of the observed diurnal shape against the base preset's, per day of log: w = days / (days + 3).
DIURNAL_PRIOR_DAYS = 3.0
LEVEL = 0.9  # the intervals reported
#: Conversions behind a plan that is learned when the log starts (its history is not in the log), in units
#: of the learning threshold.
ESTABLISHED = 5.0


# -------------------------------------------------------------------------------------------------
# Delays and stage rates


def delay_pmf(median_steps: float, sigma: float, length: int) -> np.ndarray:
    """P(delay = k steps), k = 0..length-1, of ``max(1, floor(median x exp(sigma z) + 0.5))`` (P(0) = 0)."""
    k = np.arange(length, dtype=float)
    sigma = max(sigma, 1e-3)
    upper = stats.norm.cdf((np.log(k + 0.5) - math.log(median_steps)) / sigma)
    pmf = np.diff(np.concatenate([[0.0], upper]))
    pmf[0] = 0.0
    if length > 1:
        pmf[1] = upper[1]  # every draw below 1.5 steps (rounded to 0 or 1) lands on step 1
    return pmf


def _expected_shape(parent: np.ndarray, pmf: np.ndarray) -> np.ndarray:
    """(T, P) ``sum_t' parent[t'] pmf[t - t']``: where a rate-1 stage's events would be reported."""
    return np.maximum(signal.fftconvolve(parent, pmf[:, None], axes=0)[: parent.shape[0]], 0.0)


def fit_delay(parent: np.ndarray, events: np.ndarray, median0: float, sigma0: float) -> dict[str, Any]:
    """Maximum-likelihood delay (median steps, sigma) of one stage from hourly counts (T, P), plan rates profiled.

    Returns ``median``, ``sigma``, ``log_median_se``, ``log_sigma_se``, ``events``, ``identified``.
    """
    horizon = parent.shape[0]
    n_events = float(events.sum())
    if n_events < MIN_DELAY_EVENTS:
        return _unidentified(median0, sigma0, n_events, f"{n_events:.0f} events (< {MIN_DELAY_EVENTS})")
    y = events

    def nll(theta: np.ndarray) -> float:
        median, sigma = math.exp(theta[0]), math.exp(theta[1])
        if not 0.5 <= median <= 10 * horizon or not 0.01 <= sigma <= 3.0:
            return 1e30
        shape = _expected_shape(parent, delay_pmf(median, sigma, horizon))
        exposure = shape.sum(axis=0)
        rate = np.divide(y.sum(axis=0), exposure, out=np.zeros_like(exposure), where=exposure > 0)
        mu = shape * rate[None, :]
        if np.any((y > 0) & (mu <= 1e-300)):
            return 1e30
        return float(mu.sum() - (y[y > 0] * np.log(mu[y > 0])).sum())

    best = None
    for m0 in (median0, median0 * 0.5, median0 * 2.0):
        res = optimize.minimize(nll, np.log([m0, max(sigma0, 0.05)]), method="Nelder-Mead", options={"xatol": 1e-4})
        if best is None or res.fun < best.fun:
            best = res
    theta = best.x
    median, sigma = math.exp(theta[0]), math.exp(theta[1])
    if median > MAX_DELAY_SHARE * horizon:
        return _unidentified(median0, sigma0, n_events, f"fitted median {median:.0f} h beyond half the log")
    hess = _hessian(nll, theta)
    try:
        cov = np.linalg.inv(hess)
        se = np.sqrt(np.diag(cov)) if np.all(np.diag(cov) > 0) else np.array([UNIDENTIFIED_DELAY_SE] * 2)
    except np.linalg.LinAlgError:
        se = np.array([UNIDENTIFIED_DELAY_SE] * 2)
    return {
        "median": median,
        "sigma": sigma,
        "log_median_se": float(min(se[0], 1.0)),
        "log_sigma_se": float(min(se[1], 1.0)),
        "events": n_events,
        "identified": True,
        "note": "maximum likelihood",
    }


def _unidentified(median0: float, sigma0: float, n_events: float, why: str) -> dict[str, Any]:
    return {
        "median": median0,
        "sigma": sigma0,
        "log_median_se": UNIDENTIFIED_DELAY_SE,
        "log_sigma_se": UNIDENTIFIED_DELAY_SE,
        "events": n_events,
        "identified": False,
        "note": f"not identified ({why}): the base preset's delay",
    }


def _hessian(f: Any, x: np.ndarray, h: float = 0.01) -> np.ndarray:
    n = len(x)
    hess = np.zeros((n, n))
    for i in range(n):
        for j in range(i, n):
            e_i, e_j = np.eye(n)[i] * h, np.eye(n)[j] * h
            value = (f(x + e_i + e_j) - f(x + e_i - e_j) - f(x - e_i + e_j) + f(x - e_i - e_j)) / (4 * h * h)
            hess[i, j] = hess[j, i] = value
    return hess


def beta_posterior(successes: float, trials: float, prior_mean: float) -> dict[str, float]:
    """Beta(a, b) posterior of a Binomial rate from a weak prior (:data:`PRIOR_EVENTS` at ``prior_mean``)."""
    prior_mean = min(max(prior_mean, 1e-4), 1 - 1e-4)
    a = PRIOR_EVENTS * prior_mean + successes
    b = PRIOR_EVENTS * (1 - prior_mean) + max(trials - successes, 0.0)
    lo, hi = stats.beta.ppf([(1 - LEVEL) / 2, (1 + LEVEL) / 2], a, b)
    return {"a": float(a), "b": float(b), "mean": float(a / (a + b)), "ci90": [float(lo), float(hi)]}


# -------------------------------------------------------------------------------------------------
# The fit


def infer_base(log: PlanLog) -> str:
    """The preset whose funnels fit the log: the vertical's own preset when it has one, else ``default``."""
    verticals = sorted({VERTICALS[v] for v in log.vertical})
    return verticals[0] if len(verticals) == 1 and verticals[0] in list_presets() else "default"


def _plan_states(log: PlanLog, learning_conversions: float) -> tuple[list[dict], list[dict]]:
    """Each plan's state at the start and at the end of the log (see :class:`envs.calibrated.PlanState`)."""
    t_last = log.hours - 1
    day_budget = log.budget.reshape(-1, 24, log.n_plans).sum(axis=1) if log.hours % 24 == 0 else None
    if day_budget is None:
        whole = (log.hours // 24) * 24
        day_budget = log.budget[:whole].reshape(-1, 24, log.n_plans).sum(axis=1)
    first_day = day_budget[0] / max(day_budget[0].sum(), 1e-12)
    last_day = day_budget[-1] / max(day_budget[-1].sum(), 1e-12)
    starts, ends = [], []
    established = ESTABLISHED * learning_conversions
    for p in range(log.n_plans):
        t0 = int(np.argmax(log.present[:, p]))
        learned_at_start = log.status[t0, p] == STATUSES.index("learned")
        start_conv = established if learned_at_start and t0 == 0 else 0.0
        status_end = log.status[t_last, p]
        total_conv = float(log.conversions[:, p].sum())
        if status_end == STATUSES.index("learned"):
            end_conv = max(start_conv + total_conv, learning_conversions)
        else:  # conversions since the plan last (re)entered learning, below the threshold
            entered = np.flatnonzero(log.status[t0 + 1 :, p] != log.status[t0:-1, p])
            since = t0 + int(entered[-1]) + 1 if entered.size else t0
            end_conv = min(float(log.conversions[since:, p].sum()), learning_conversions - 1.0)
        starts.append(
            {
                "launch_hour": t0,
                "age_hours": float(max(log.age_hours[t0, p] - 1.0, 0.0)) if t0 == 0 else 0.0,
                "conversions": float(start_conv),
                "target_cpa": float(log.target_cpa[t0, p]),
                "static_share": float(first_day[p]),
            }
        )
        ends.append(
            {
                "launch_hour": 0,
                "age_hours": float(log.age_hours[t_last, p]),
                "conversions": float(end_conv),
                "target_cpa": float(log.target_cpa[t_last, p]),
                "static_share": float(last_day[p]),
                "status": STATUSES[status_end],
            }
        )
    return starts, ends


def fit_log(log: PlanLog, base: str | None = None, *, cpa_target: float | None = None, seed: int = 0) -> dict:
    """The calibration mapping (what the YAML file holds) fitted to ``log``; see the module doc."""
    base = base or infer_base(log)
    base_sc = load_scenario(base)
    hours = log.hours
    channels_used = [CHANNELS[c] for c in sorted(set(log.channel.tolist()))]
    verticals_used = [VERTICALS[v] for v in sorted(set(log.vertical.tolist()))]
    base_channel = {c.name: c for c in base_sc.channels}
    base_vertical = {v.name: v for v in base_sc.verticals}
    for name in channels_used:  # a channel or vertical the base preset lacks comes from the catalogue
        base_channel.setdefault(name, _channel(name, {}, None))
    for name in verticals_used:
        base_vertical.setdefault(name, _vertical(name, {}, None))

    # Delays, pooled per vertical stage; then every plan's stage rates against censored exposure.
    delays: dict[str, list[dict]] = {}
    exposure = np.zeros((log.n_plans, MAX_STAGES))
    for v_name in verticals_used:
        rows = log.vertical == VERTICALS.index(v_name)
        spec = base_vertical[v_name]
        delays[v_name] = []
        for s, st in enumerate(spec.stages):
            parent = log.conversions[:, rows] if s == 0 else log.deep_events[:, rows, s - 1]
            fit = fit_delay(parent, log.deep_events[:, rows, s], st.delay_median_hours, st.delay_sigma)
            shape = _expected_shape(parent, delay_pmf(fit["median"], fit["sigma"], hours))
            exposure[rows, s] = shape.sum(axis=0)
            events = log.deep_events[:, rows, s].sum()
            value = float(log.deep_value[:, rows, s].sum() / events) if events > 0 else st.value
            delays[v_name].append(
                {
                    "name": st.name,
                    "median_hours": float(fit["median"]),
                    "sigma": float(fit["sigma"]),
                    "log_median_se": fit["log_median_se"],
                    "log_sigma_se": fit["log_sigma_se"],
                    "value": value,
                    "events": float(fit["events"]),
                    "identified": bool(fit["identified"]),
                    "note": fit["note"],
                    "median_ci90_hours": [
                        float(fit["median"] * math.exp(-1.645 * fit["log_median_se"])),
                        float(fit["median"] * math.exp(1.645 * fit["log_median_se"])),
                    ],
                }
            )

    starts, ends = _plan_states(log, base_sc.learning_conversions)
    totals = {k: getattr(log, k).sum(axis=0) for k in ("impressions", "clicks", "conversions", "spend")}
    deep_totals = log.deep_events.sum(axis=0)  # (P, S)
    plans = []
    for p in range(log.n_plans):
        ch, vt = base_channel[CHANNELS[log.channel[p]]], base_vertical[VERTICALS[log.vertical[p]]]
        stages = []
        for s, st in enumerate(vt.stages):
            post = beta_posterior(deep_totals[p, s], max(exposure[p, s], deep_totals[p, s]), st.rate)
            post.update(events=float(deep_totals[p, s]), exposure=float(exposure[p, s]))
            stages.append(post)
        cvr = beta_posterior(totals["conversions"][p], totals["clicks"][p], vt.cvr * ch.cvr_mult)
        cvr["selection"] = 1.0
        plans.append(
            {
                "plan_id": log.plan_ids[p],
                "account": log.account[p],
                "channel": ch.name,
                "vertical": vt.name,
                "goal": GOALS[log.goal[p]],
                "ctr": beta_posterior(totals["clicks"][p], totals["impressions"][p], vt.ctr * ch.ctr_mult),
                "cvr": cvr,
                "stages": stages,
                "start": starts[p],
                "end": ends[p],
            }
        )

    # Portfolio-level: the daily budget the log spent from, the deep CPA target (the log's own deep CPA,
    # with immature events projected by the fitted rates, unless given).
    whole = max(hours // 24, 1) * 24
    daily_budget = float(log.budget[:whole].sum() / (whole / 24))
    expected_first = sum(p["stages"][0]["mean"] * totals["conversions"][i] for i, p in enumerate(plans))
    logged_cpa = float(totals["spend"].sum() / max(expected_first, 1e-9))
    diurnal = _diurnal(log, channels_used, base_channel)
    overrides: dict[str, Any] = {
        "name": f"calibrated_{Path(log.source).stem}",
        "days": 7,
        "daily_budget": round(daily_budget, 2),
        "cpa_target": round(float(cpa_target if cpa_target is not None else logged_cpa), 2),
        "channels": {
            name: {
                "volume": float(base_channel[name].volume),
                "market_bid": float(base_channel[name].market_bid),
                "diurnal": diurnal[name],
            }
            for name in channels_used
        },
    }
    mapping = {
        "calibration": {
            "format": CALIBRATION_FORMAT,
            "log": str(log.source),
            "log_sha256": hashlib.sha256(Path(log.source).read_bytes()).hexdigest(),
            "period": {
                "start": f"{log.start:%Y-%m-%dT%H:%M}",
                "hours": hours,
                "plans": log.n_plans,
            },
            "logged_deep_cpa": round(logged_cpa, 2),
            "audience_seed": int(seed),
            "prior_events": PRIOR_EVENTS,
            "interval_level": LEVEL,
        },
        "base": base,
        "scenario": overrides,
        "plans": plans,
        "delays": delays,
    }
    _simulated_moments(mapping, log, seed)
    return mapping


def _diurnal(log: PlanLog, channels: list[str], base_channel: dict) -> dict[str, list[float]]:
    """Each channel's hour-of-day traffic curve: observed impression shares, shrunk towards the base curve."""
    weight = log.days / (log.days + DIURNAL_PRIOR_DAYS)
    hour = np.arange(log.hours) % 24
    out = {}
    for name in channels:
        rows = log.channel == CHANNELS.index(name)
        by_hour = np.bincount(hour, weights=log.impressions[:, rows].sum(axis=1), minlength=24)
        base = np.asarray(base_channel[name].diurnal, dtype=float)
        base = base / base.sum()
        observed = by_hour / by_hour.sum() if by_hour.sum() > 0 else base
        curve = weight * observed + (1 - weight) * base
        out[name] = [round(float(v), 5) for v in curve * 24 / curve.sum()]
    return out


# -------------------------------------------------------------------------------------------------
# Replaying the log in the calibrated scenario


def replay_scenario(cal: Calibration, log: PlanLog) -> Scenario:
    """The calibrated scenario stretched over the logged period (whole days)."""
    return dataclasses.replace(cal.scenario, days=math.ceil(log.hours / 24))


def replay(cal: Calibration, log: PlanLog, seeds: list[int], draw: str = "mean") -> dict[str, np.ndarray]:
    """Simulate the logged period in the calibrated scenario, plans starting as at the log's start and given the
    logged hourly budgets (up to a common factor per hour: the env paces shares of the day), once per seed.

    Returns arrays (R, T, P): ``spend``, ``impressions``, ``clicks``, ``conversions``; ``deep`` (R, T, P, S).
    """
    sc = replay_scenario(cal, log)
    env = BudgetShiftEnv(sc, generator=cal.generator(draw=draw, start="start"))
    day_share, _ = pacing(env.sim.inputs.chan_diurnal, sc.steps_per_day)
    r, t_n, n = len(seeds), log.hours, log.n_plans
    out = {k: np.zeros((r, t_n, n)) for k in ("spend", "impressions", "clicks", "conversions")}
    out["deep"] = np.zeros((r, t_n, n, MAX_STAGES))
    for i, seed in enumerate(seeds):
        env.reset(seed=int(seed))
        plan_channel = env.sim.plan_channel[0]
        for t in range(t_n):
            ds = day_share[plan_channel, t % sc.steps_per_day]
            shares = np.where(ds > 0, log.budget[t] / np.maximum(ds, 1e-12), 0.0) * env.active_mask()
            _, _, terminated, _, info = env.step_shares(shares)
            out["spend"][i, t] = info["spend"]
            out["impressions"][i, t] = info["impressions"]
            out["clicks"][i, t] = info["clicks"]
            out["conversions"][i, t] = info["conversions"]
            out["deep"][i, t] = info["deep_events"]
            if terminated:
                break
    return out


def _simulated_moments(mapping: dict, log: PlanLog, seed: int) -> None:
    """Move each channel's market level and volume, and each plan's user-selection ratio, until replays of the
    log in the calibrated scenario reproduce the observed price per impression, spend and CVR (in place)."""
    channels = mapping["scenario"]["channels"]
    obs_spend = {c: log.spend[:, log.channel == CHANNELS.index(c)].sum() for c in channels}
    obs_imps = {c: log.impressions[:, log.channel == CHANNELS.index(c)].sum() for c in channels}
    rng = np.random.default_rng(seed)
    history = []
    for _ in range(MOMENT_ITERATIONS):
        cal = calibration_from_mapping(mapping)
        sim = replay(cal, log, rng.integers(0, 2**31, size=MOMENT_REPLAYS).tolist())
        spend, imps = sim["spend"].mean(axis=0).sum(axis=0), sim["impressions"].mean(axis=0).sum(axis=0)
        clicks, conv = sim["clicks"].sum(axis=(0, 1)), sim["conversions"].sum(axis=(0, 1))
        gaps = {}
        for c, node in channels.items():
            rows = log.channel == CHANNELS.index(c)
            s_spend, s_imps = spend[rows].sum(), imps[rows].sum()
            if s_imps <= 0 or obs_imps[c] <= 0:
                continue
            # Win volume pins the market level (traffic volume stays the base preset's: with the platform's
            # cost control steering bids to target, price per impression barely moves with the market).
            spend_ratio = s_spend / max(obs_spend[c], 1e-9)
            node["market_bid"] = float(node["market_bid"] * np.clip(spend_ratio, 0.7, 1.4) ** 1.5)
            price_ratio = (obs_spend[c] / obs_imps[c]) / (s_spend / s_imps)
            gaps[c] = (price_ratio, 1.0 / spend_ratio)
        for p, plan in enumerate(mapping["plans"]):
            if clicks[p] >= 50 and plan["cvr"]["mean"] > 0:
                observed_sim = conv[p] / clicks[p]
                # selection = observed CVR / average user's CVR; the replay used average CVR mean/selection.
                ratio = observed_sim / (plan["cvr"]["mean"] / plan["cvr"]["selection"])
                plan["cvr"]["selection"] = float(np.clip(0.5 * plan["cvr"]["selection"] + 0.5 * ratio, 0.5, 2.0))
        history.append({c: [round(float(g[0]), 4), round(float(g[1]), 4)] for c, g in gaps.items()})
    mapping["calibration"]["moments"] = {
        "iterations": MOMENT_ITERATIONS,
        "replays_per_iteration": MOMENT_REPLAYS,
        # observed / simulated price per impression and spend, per channel, at the last iteration
        "last_gaps_price_spend": history[-1] if history else {},
    }


# -------------------------------------------------------------------------------------------------
# Writing


def _rounded(obj: Any) -> Any:
    if isinstance(obj, float):
        return float(f"{obj:.6g}")
    if isinstance(obj, dict):
        return {k: _rounded(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_rounded(v) for v in obj]
    return obj


def write_calibration(mapping: dict, out: Path) -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    header = (
        "# A calibrated budgetshift portfolio (python -m experiments.calibrate). Load it with\n"
        "# envs.calibrated.load_calibration(path): .scenario and .generator(draw='mean'|'posterior').\n"
        "# Rates are Beta(a, b) posteriors (mean and ci90 are for reading); delays are per vertical stage.\n"
    )
    out.write_text(header + yaml.safe_dump(_rounded(mapping), sort_keys=False, width=120))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("log", help="hourly reporting log (CSV, experiments/logs.py)")
    parser.add_argument("--out", required=True, help="calibration YAML to write")
    parser.add_argument("--base", default=None, help=f"base preset, one of {list_presets()} (default: inferred)")
    parser.add_argument("--cpa-target", type=float, default=None, help="portfolio deep CPA target (default: logged)")
    parser.add_argument("--report-dir", default=None, help="fit report folder (default: <out stem>_report/)")
    parser.add_argument("--min-days", type=float, default=7.0, help="refuse logs shorter than this (default 7)")
    parser.add_argument("--replays", type=int, default=8, help="replays behind the fit report (default 8)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        log = read_log(args.log, min_days=args.min_days)
        if args.base is not None and args.base not in list_presets():
            raise ScenarioError(f"--base must be one of {list_presets()}, got {args.base!r}")
        mapping = fit_log(log, args.base, cpa_target=args.cpa_target, seed=args.seed)
        out = write_calibration(mapping, Path(args.out))
        cal = calibration_from_mapping(yaml.safe_load(out.read_text()), source=str(out))
    except (LogError, ScenarioError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    from experiments.calibrate_report import write_report  # matplotlib only when reporting

    report_dir = Path(args.report_dir) if args.report_dir else out.with_name(f"{out.stem}_report")
    report = write_report(cal, mapping, log, report_dir, replays=args.replays, seed=args.seed)
    print(f"wrote {out} ({log.n_plans} plans, base {mapping['base']}) and {report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
