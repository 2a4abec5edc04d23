"""The fit report of a calibration: observed against simulated per plan and per hour, posteriors, limits.

:func:`write_report` replays the logged period in the calibrated scenario (plans as at the log's start, the
logged hourly budgets, parameters drawn from the posterior in each replay) and writes ``report.md``,
``plans.csv`` (per plan: observed totals, the replays' median and 90% band, the fitted rates with their
intervals) and three plots: per-plan totals observed vs simulated, hour-of-day curves per channel, and the
cumulative matured deep events over the period (where delays and censoring show).
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from envs.calibrated import Calibration  # noqa: E402
from envs.features import CHANNELS  # noqa: E402
from experiments.calibrate import replay  # noqa: E402
from experiments.logs import PlanLog, format_table  # noqa: E402

LIMITS = """\
- **Not identifiable from reporting, fixed or borrowed from the base preset:** the dispersion of user
  quality (`user_quality_sigma`), the competitors' bid spread and its hour-of-day curve (`market_sigma`,
  `market_diurnal`), day-to-day competitor pressure (`market_day_sigma`), audiences and their overlap, the
  platform's prediction bias for a new plan, creative fatigue (the CTR is the period's average; a plan
  whose CTR decays will do worse than its fit says), the hidden plan kinds.
- **Market level vs traffic volume:** reporting shows prices and wins, not the auctions a plan lost. With the
  platform's cost control steering bids to target, the price per impression barely moves with the market,
  so one moment (a channel's spend at the logged budgets) fits one parameter: the market level, with the
  traffic volume kept at the base preset's. A calibrated channel reproduces how much the plans could spend,
  not why; a budget far outside the logged range extrapolates on the base preset's volume.
- **CVR is the CVR on the traffic a plan wins.** Plans that bid by predicted user quality win the better
  users (and lose them to their own sibling plans under one-ad-per-advertiser), so the observed CVR differs
  from an average user's by a selection ratio that the calibration measures by simulation (`cvr.selection`)
  but that depends on the unobservable auction structure above: the average-user CVR is not identified;
  the observed CVR (the posterior given) is what the simulator reproduces.
- **Deep stages:** a stage whose delay is longer than about half the log (an insurance renewal) has no
  matured events: its rate's posterior is the weak prior (wide) and its delay the base preset's, flagged
  `identified: false`. Deep events of conversions made before the log started are not in the log; a real
  log whose early hours hold such events overstates the first weeks' rates slightly.
- **Independence:** posteriors are per plan (no pooling across plans), from Binomial likelihoods; CVR's
  hour-to-hour overdispersion (user quality) makes its interval a little too narrow.
- **State:** failed plans restart as learning plans (the simulator cannot load a failed plan), and a plan
  learned before the log is assumed to have 5x the learning threshold of conversions behind it.
"""


def _band(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return np.percentile(x, 50, axis=0), np.percentile(x, 5, axis=0), np.percentile(x, 95, axis=0)


def write_report(
    cal: Calibration, mapping: dict, log: PlanLog, out_dir: Path, *, replays: int = 8, seed: int = 0
) -> Path:
    """Write the fit report into ``out_dir``; returns the path of ``report.md``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    seeds = np.random.default_rng(seed + 1).integers(0, 2**31, size=replays).tolist()
    sim = replay(cal, log, seeds, draw="posterior")
    n_stages = log.deep_events.shape[2]
    observed = {
        "spend": log.spend,
        "impressions": log.impressions,
        "clicks": log.clicks,
        "conversions": log.conversions,
        **{f"deep_{s + 1}": log.deep_events[:, :, s] for s in range(n_stages)},
    }
    simulated = {
        **{k: sim[k] for k in ("spend", "impressions", "clicks", "conversions")},
        **{f"deep_{s + 1}": sim["deep"][:, :, :, s] for s in range(n_stages)},
    }
    rows, outside = [], []
    for p, plan in enumerate(mapping["plans"]):
        row = {"plan_id": plan["plan_id"], "channel": plan["channel"], "vertical": plan["vertical"]}
        for key in observed:
            if key.startswith("deep_") and int(key[5:]) > len(plan["stages"]):
                continue
            obs = float(observed[key][:, p].sum())
            med, lo, hi = _band(simulated[key][:, :, p].sum(axis=1))
            row.update(
                {f"{key}_obs": obs, f"{key}_sim": float(med), f"{key}_sim_lo": float(lo), f"{key}_sim_hi": float(hi)}
            )
            if key in ("spend", "conversions", "deep_1") and not lo * 0.95 <= obs <= hi * 1.05:
                outside.append(
                    f"{plan['plan_id']} {key}: observed {obs:,.0f}, simulated 90% band [{lo:,.0f}, {hi:,.0f}]"
                )
        for name in ("ctr", "cvr"):
            row[f"{name}_mean"], (row[f"{name}_lo"], row[f"{name}_hi"]) = plan[name]["mean"], plan[name]["ci90"]
        for s, st in enumerate(plan["stages"]):
            row[f"stage{s + 1}_mean"], (row[f"stage{s + 1}_lo"], row[f"stage{s + 1}_hi"]) = st["mean"], st["ci90"]
            row[f"stage{s + 1}_events"], row[f"stage{s + 1}_exposure"] = st["events"], st["exposure"]
        rows.append(row)
    table = pd.DataFrame(rows)
    table.to_csv(out_dir / "plans.csv", index=False)
    _plot_plans(table, out_dir / "plans_observed_vs_simulated.png")
    _plot_hours(log, sim, out_dir / "hour_of_day.png")
    _plot_cumulative(log, sim, out_dir / "deep_events_cumulative.png")
    report = out_dir / "report.md"
    report.write_text(_markdown(mapping, log, table, outside, replays))
    return report


def _plot_plans(table: pd.DataFrame, path: Path) -> None:
    keys = [k for k in ("spend", "conversions", "deep_1", "deep_2") if f"{k}_obs" in table]
    fig, axes = plt.subplots(1, len(keys), figsize=(4.2 * len(keys), 4))
    for ax, key in zip(np.atleast_1d(axes), keys, strict=True):
        obs, sim = table[f"{key}_obs"], table[f"{key}_sim"]
        err = [sim - table[f"{key}_sim_lo"], table[f"{key}_sim_hi"] - sim]
        ax.errorbar(obs, sim, yerr=err, fmt="o", ms=4, alpha=0.8)
        top = float(np.nanmax([obs.max(), table[f"{key}_sim_hi"].max()])) * 1.05
        ax.plot([0, top], [0, top], "k--", lw=0.8)
        ax.set(xlabel=f"observed {key}", ylabel="simulated (median, 90%)", title=key)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plot_hours(log: PlanLog, sim: dict, path: Path) -> None:
    channels = sorted(set(log.channel.tolist()))
    hour = np.arange(log.hours) % 24
    fig, axes = plt.subplots(1, len(channels), figsize=(4.5 * len(channels), 3.6), squeeze=False)
    for ax, c in zip(axes[0], channels, strict=True):
        rows = log.channel == c
        for key, style in (("impressions", "-"), ("conversions", ":")):
            obs = np.bincount(hour, weights=getattr(log, key)[:, rows].sum(axis=1), minlength=24)
            sim_h = np.array([np.bincount(hour, weights=r[:, rows].sum(axis=1), minlength=24) for r in sim[key]])
            scale = obs.sum() or 1.0
            ax.plot(obs / scale, "k" + style, label=f"{key} observed")
            ax.fill_between(
                range(24), *np.percentile(sim_h / scale, [5, 95], axis=0), alpha=0.3, label=f"{key} sim 90%"
            )
        ax.set(title=f"{CHANNELS[c]}: share by hour", xlabel="hour of day")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plot_cumulative(log: PlanLog, sim: dict, path: Path) -> None:
    n_stages = int((log.deep_events.sum(axis=(0, 1)) > 0).sum()) or 1
    fig, ax = plt.subplots(figsize=(7, 4))
    for s in range(n_stages):
        obs = np.cumsum(log.deep_events[:, :, s].sum(axis=1))
        sims = np.cumsum(sim["deep"][:, :, :, s].sum(axis=2), axis=1)
        ax.plot(np.arange(log.hours) / 24, obs, label=f"stage {s + 1} observed")
        ax.fill_between(
            np.arange(log.hours) / 24,
            *np.percentile(sims, [5, 95], axis=0),
            alpha=0.3,
            label=f"stage {s + 1} simulated 90%",
        )
    ax.set(xlabel="day of the log", ylabel="matured deep events (cumulative)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _fmt_ci(mean: float, ci: list[float], digits: int = 4) -> str:
    return f"{mean:.{digits}f} [{ci[0]:.{digits}f}, {ci[1]:.{digits}f}]"


def _markdown(mapping: dict, log: PlanLog, table: pd.DataFrame, outside: list[str], replays: int) -> str:
    cal = mapping["calibration"]
    sc = mapping["scenario"]
    lines = [
        f"# Fit report: {log.source}",
        "",
        f"{log.n_plans} plans, {log.hours} hours ({log.days:.1f} days) from {cal['period']['start']}; base preset "
        f"`{mapping['base']}`; daily budget {sc['daily_budget']:,.0f}; deep CPA target {sc['cpa_target']:,.2f} "
        f"(the logged deep CPA with immature events projected: {cal['logged_deep_cpa']:,.2f}).",
        "",
        "Method: Beta-Binomial posteriors (weak prior: "
        f"{cal['prior_events']:g} pseudo-events at the base preset's rate) for CTR, CVR and each deep stage, the "
        "deep stages' exposure discounted for events not yet matured at the end of the log (right-censoring); "
        "log-normal delays by maximum likelihood on hourly counts; market level by simulated moments. "
        f"Intervals are central {int(cal['interval_level'] * 100)}%. Simulated = {replays} replays of the logged "
        "period in the calibrated scenario (logged hourly budgets, plans as at the log's start, parameters drawn "
        "from the posterior in each replay).",
        "",
        "## Channels",
        "",
        "| channel | market_bid (fitted) | volume (base) | observed / simulated price per impression | "
        "observed / simulated spend |",
        "|---|---|---|---|---|",
    ]
    gaps = cal.get("moments", {}).get("last_gaps_price_spend", {})
    for name, node in sc["channels"].items():
        g = gaps.get(name, [float("nan")] * 2)
        lines.append(f"| {name} | {node['market_bid']:.4f} | {node['volume']:.0f} | {g[0]:.3f} | {g[1]:.3f} |")
    lines += [
        "",
        "## Delays (per vertical stage)",
        "",
        "| vertical | stage | median hours [90%] | sigma | events | fitted |",
        "|---|---|---|---|---|---|",
    ]
    for v_name, stages in mapping["delays"].items():
        for st in stages:
            ci = st["median_ci90_hours"]
            lines.append(
                f"| {v_name} | {st['name']} | {st['median_hours']:.1f} [{ci[0]:.1f}, {ci[1]:.1f}] | "
                f"{st['sigma']:.2f} | "
                f"{st['events']:.0f} | {'yes' if st['identified'] else 'no: ' + st['note']} |"
            )
    lines += ["", "## Plans: fitted rates", ""]
    n_stages = max(len(p["stages"]) for p in mapping["plans"])
    head = "| plan | channel | CTR [90%] | CVR on won traffic [90%] | " + " | ".join(
        f"stage {s + 1} rate [90%] (events)" for s in range(n_stages)
    )
    lines += [head + " |", "|---" * (4 + n_stages) + "|"]
    for p in mapping["plans"]:
        cells = [
            p["plan_id"],
            p["channel"],
            _fmt_ci(p["ctr"]["mean"], p["ctr"]["ci90"]),
            _fmt_ci(p["cvr"]["mean"], p["cvr"]["ci90"]),
        ]
        for st in p["stages"]:
            wide = " **thin**" if st["ci90"][1] - st["ci90"][0] > 0.3 else ""
            cells.append(f"{_fmt_ci(st['mean'], st['ci90'], 3)} ({st['events']:.0f}){wide}")
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        "## Observed against simulated, per plan (totals over the log)",
        "",
        "![per plan](plans_observed_vs_simulated.png)",
        "",
        "| plan | spend obs / sim [90%] | conversions obs / sim [90%] | stage-1 events obs / sim [90%] |",
        "|---|---|---|---|",
    ]
    for _, r in table.iterrows():
        cells = [r["plan_id"]]
        for key in ("spend", "conversions", "deep_1"):
            cells.append(
                f"{r[f'{key}_obs']:,.0f} / {r[f'{key}_sim']:,.0f} [{r[f'{key}_sim_lo']:,.0f}, "
                f"{r[f'{key}_sim_hi']:,.0f}]"
            )
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", f"Plans outside the simulated band (±5%): {len(outside)}" + (":" if outside else ".")]
    lines += [f"- {o}" for o in outside]
    lines += [
        "",
        "## Observed against simulated, per hour of day",
        "",
        "![hours](hour_of_day.png)",
        "",
        "## Deep events over the period",
        "",
        "![deep](deep_events_cumulative.png)",
        "",
        "## Limits of the model (read before trusting a what-if)",
        "",
        LIMITS,
        "## The log format",
        "",
        format_table(),
        "",
    ]
    return "\n".join(lines)
