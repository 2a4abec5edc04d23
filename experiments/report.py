"""Gather an evaluation sweep into one comparison: ``python -m experiments.report <multirun folder>``.

Reads every run folder under the sweep (``experiments.evaluate``'s ``metrics.json``,
``config.yaml`` and per-step table), tolerating failed runs (a folder without ``metrics.json``; its
``error.txt`` gives the reason) and missing ones (an env x agent x seed combination of the sweep
with no folder), and writes into the sweep folder (or ``--out``):

- ``summary.csv``: one row per env and allocator: interquartile mean (IQM) of the per-seed scores
  with a 95% stratified-bootstrap interval, the normalised score
  ``(s - s_uniform) / (s_oracle - s_uniform)`` (0 = uniform, 1 = oracle; the references are the
  env's mean uniform and oracle scores over seeds), deep CPA / target, billing ratio, budget
  utilisation, compliance-cap violations and where the money went (potential plans, traps);
  rows with ``env = all`` aggregate normalised scores over envs (bootstrap stratified by env);
- ``report.md``: the same table, the failed and missing runs, the figures and how to read them;
- PNG figures per env: ``score_<env>.png`` (IQM and normalised score with intervals, seeds as
  dots), ``shares_<env>.png`` (budget share by plan and hour of day for each allocator, on the first
  seed's first episode, which every allocator played on the same portfolio), ``value_<env>.png``
  (cumulative matured deep value over the episode, and cumulative spend over the day).

Statistics: a run's score is its mean over episodes; seeds are the runs. rliable would be the
natural library, but its ``arch`` dependency does not work with the pandas/numpy here (arch 7.2
fails to import with pandas 3, arch 8 dropped the ``random_state`` keyword rliable passes), so the
IQM (``scipy.stats.trim_mean(x, 0.25)``, rliable's definition) is bootstrapped with
``scipy.stats.bootstrap`` (percentile method, fixed generator): with several envs each env's runs are
resampled within the env, which is rliable's stratified bootstrap.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import yaml  # noqa: E402
from matplotlib.colors import PowerNorm  # noqa: E402
from scipy import stats  # noqa: E402

#: Allocator order in tables and plots (others follow alphabetically).
AGENT_ORDER = ("static", "uniform", "cpa_guard", "proportional", "boost", "thompson", "oracle")
KIND_ORDER = ("potential", "regular", "trap")
REFERENCE_LOW, REFERENCE_HIGH = "uniform", "oracle"


@dataclass
class Run:
    path: Path
    env: str | None
    agent: str | None
    seed: int | None
    metrics: dict[str, Any] | None = None
    error: str | None = None
    steps_path: Path | None = None
    overrides: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.metrics is not None


# --------------------------------------------------------------------------------------------
# Gathering
# --------------------------------------------------------------------------------------------


def _load_yaml(path: Path) -> Any:
    try:
        return yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError):
        return None


def _error_summary(run_dir: Path) -> str:
    error_file = run_dir / "error.txt"
    if error_file.exists():
        lines = [ln for ln in error_file.read_text().strip().splitlines() if ln.strip()]
        return lines[-1].strip() if lines else "failed (empty error.txt)"
    return "no metrics.json (the run did not finish)"


def load_run(run_dir: Path) -> Run:
    """One run folder: its identity (env, agent, seed), metrics or failure reason."""
    cfg = _load_yaml(run_dir / "config.yaml") or _load_yaml(run_dir / ".hydra" / "config.yaml") or {}
    hydra_cfg = _load_yaml(run_dir / ".hydra" / "hydra.yaml") or {}
    choices = (hydra_cfg.get("hydra") or {}).get("runtime", {}).get("choices", {}) or {}
    env = choices.get("env") or (cfg.get("env") or {}).get("name")
    agent = choices.get("agent") or (cfg.get("agent") or {}).get("name")
    seed = cfg.get("seed")
    run = Run(
        path=run_dir,
        env=env,
        agent=agent,
        seed=int(seed) if isinstance(seed, int) else None,
        overrides=_load_yaml(run_dir / ".hydra" / "overrides.yaml") or [],
    )
    metrics_file = run_dir / "metrics.json"
    if metrics_file.exists():
        try:
            run.metrics = json.loads(metrics_file.read_text())
        except json.JSONDecodeError as exc:
            run.error = f"unreadable metrics.json: {exc}"
    else:
        run.error = _error_summary(run_dir)
    for name in ("steps.parquet", "steps.csv"):
        if (run_dir / name).exists():
            run.steps_path = run_dir / name
    return run


def find_runs(sweep_dir: Path) -> list[Run]:
    """Every run folder (one with ``.hydra/config.yaml``) under ``sweep_dir``."""
    dirs = sorted({p.parent.parent for p in sweep_dir.rglob(".hydra/config.yaml") if ".submitit" not in p.parts})
    return [load_run(d) for d in dirs]


def _swept_values(sweep_dir: Path) -> dict[str, list[str]]:
    """Values of env, agent and seed the sweep asked for (from ``multirun.yaml``), if readable."""
    mr = _load_yaml(sweep_dir / "multirun.yaml")
    if not isinstance(mr, dict):
        return {}
    hydra_node = mr.get("hydra") or {}
    params = ((hydra_node.get("sweeper") or {}).get("params")) or {}
    overrides = [f"{k}={v}" for k, v in params.items()]
    overrides += list(((hydra_node.get("overrides") or {}).get("task")) or [])
    try:
        from hydra.core.override_parser.overrides_parser import OverridesParser

        parsed = OverridesParser.create().parse_overrides(overrides)
    except Exception:  # an unparseable record only costs the missing-run check its precision
        return {}
    values: dict[str, list[str]] = {}
    for ov in parsed:
        key = ov.get_key_element()
        if key not in ("env", "agent", "seed"):
            continue
        values[key] = list(ov.sweep_string_iterator()) if ov.is_sweep_override() else [ov.get_value_element_as_str()]
    return values


def missing_runs(runs: list[Run], sweep_dir: Path) -> list[tuple[str, str, int]]:
    """(env, agent, seed) combinations of the sweep with no run folder."""
    swept = _swept_values(sweep_dir)
    levels = {
        "env": {r.env for r in runs if r.env} | set(swept.get("env", [])),
        "agent": {r.agent for r in runs if r.agent} | set(swept.get("agent", [])),
        "seed": {r.seed for r in runs if r.seed is not None} | {int(s) for s in swept.get("seed", [])},
    }
    present = {(r.env, r.agent, r.seed) for r in runs}
    return [
        c
        for c in itertools.product(sorted(levels["env"]), _ordered(levels["agent"]), sorted(levels["seed"]))
        if c not in present
    ]


def _ordered(agents: set[str] | list[str]) -> list[str]:
    known = [a for a in AGENT_ORDER if a in agents]
    return known + sorted(set(agents) - set(known))


# --------------------------------------------------------------------------------------------
# Statistics
# --------------------------------------------------------------------------------------------


def iqm(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """Interquartile mean: the mean of the middle 50% (rliable's definition)."""
    return stats.trim_mean(x, 0.25, axis=axis)


def iqm_interval(samples: list[np.ndarray], reps: int = 5000, seed: int = 0) -> tuple[float, float, float]:
    """IQM of the pooled samples and its 95% percentile bootstrap interval, resampling within each sample."""
    samples = [np.asarray(s, dtype=float) for s in samples if len(s)]
    pooled = np.concatenate(samples) if samples else np.array([])
    if len(pooled) == 0:
        return math.nan, math.nan, math.nan
    point = float(iqm(pooled))
    if all(len(s) < 2 or np.ptp(s) == 0 for s in samples):
        return point, point, point

    def statistic(*xs: np.ndarray, axis: int = -1) -> np.ndarray:
        return iqm(np.concatenate(xs, axis=axis), axis=axis)

    res = stats.bootstrap(
        tuple(samples),
        statistic,
        n_resamples=reps,
        confidence_level=0.95,
        method="percentile",
        vectorized=True,
        rng=np.random.default_rng(seed),
    )
    return point, float(res.confidence_interval.low), float(res.confidence_interval.high)


def run_table(runs: list[Run]) -> pd.DataFrame:
    """One row per successful run: identity and its mean metrics over episodes."""
    rows = []
    for r in runs:
        if not r.ok:
            continue
        mean = r.metrics.get("mean", {})
        rows.append(
            {
                "env": r.env,
                "agent": r.agent,
                "seed": r.seed,
                "episodes": r.metrics.get("episodes"),
                **{k: (np.nan if v is None else v) for k, v in mean.items()},
            }
        )
    return pd.DataFrame(rows)


def summarise(table: pd.DataFrame, reps: int = 5000) -> pd.DataFrame:
    """Per env and allocator: IQM score and normalised score with 95% intervals, and the means of the rest."""
    if table.empty:
        return pd.DataFrame()
    table = table.copy()
    table["normalised"] = np.nan
    for _env, group in table.groupby("env"):
        low = group.loc[group.agent == REFERENCE_LOW, "score"].mean()
        high = group.loc[group.agent == REFERENCE_HIGH, "score"].mean()
        if np.isfinite(low) and np.isfinite(high) and high != low:
            table.loc[group.index, "normalised"] = (group["score"] - low) / (high - low)
    rows = []
    for (env, agent), g in table.groupby(["env", "agent"], sort=False):
        score, lo, hi = iqm_interval([g["score"].to_numpy()], reps)
        norm = g["normalised"].to_numpy()
        n_score, n_lo, n_hi = iqm_interval([norm], reps) if np.isfinite(norm).all() else (np.nan,) * 3
        rows.append(
            {
                "env": env,
                "agent": agent,
                "seeds": len(g),
                "episodes": int(g["episodes"].sum()),
                "score_iqm": score,
                "score_ci_low": lo,
                "score_ci_high": hi,
                "score_mean": g["score"].mean(),
                "score_std": g["score"].std(ddof=1) if len(g) > 1 else np.nan,
                "normalised_iqm": n_score,
                "normalised_ci_low": n_lo,
                "normalised_ci_high": n_hi,
                "cpa_ratio": g["cpa_ratio"].mean(),
                "billing_ratio": g["billing_ratio"].mean(),
                "budget_utilisation": g["budget_utilisation"].mean(),
                "cap_violation_steps": g["cap_violation_steps"].mean(),
                "spend_share_potential": g["spend_share_potential"].mean(),
                "spend_share_trap": g["spend_share_trap"].mean(),
            }
        )
    summary = pd.DataFrame(rows)
    envs = table["env"].unique()
    if len(envs) > 1:  # normalised scores across envs, stratified by env
        for agent, g in table.groupby("agent", sort=False):
            per_env = [ge["normalised"].to_numpy() for _, ge in g.groupby("env")]
            if len(per_env) != len(envs) or not all(np.isfinite(x).all() for x in per_env):
                continue
            n_score, n_lo, n_hi = iqm_interval(per_env, reps)
            summary.loc[len(summary)] = {
                "env": "all",
                "agent": agent,
                "seeds": len(g),
                "episodes": int(g["episodes"].sum()),
                "normalised_iqm": n_score,
                "normalised_ci_low": n_lo,
                "normalised_ci_high": n_hi,
            }
    order = {a: i for i, a in enumerate(_ordered(summary["agent"].unique()))}
    summary["_o"] = summary["agent"].map(order)
    summary["_e"] = summary["env"].eq("all")
    return summary.sort_values(["_e", "env", "_o"]).drop(columns=["_o", "_e"]).reset_index(drop=True)


# --------------------------------------------------------------------------------------------
# Per-step tables
# --------------------------------------------------------------------------------------------

_STEP_COLUMNS = ["episode", "step", "day", "hour", "plan", "channel", "kind", "active", "share", "spend", "deep_value"]


def read_steps(path: Path, episode: int | None = None) -> pd.DataFrame:
    if path.suffix == ".parquet":
        filters = [("episode", "==", episode)] if episode is not None else None
        frame = pd.read_parquet(path, columns=_STEP_COLUMNS, filters=filters)
    else:
        frame = pd.read_csv(path, usecols=_STEP_COLUMNS)
        if episode is not None:
            frame = frame[frame["episode"] == episode]
    for col in ("channel", "kind"):
        frame[col] = frame[col].astype(str)
    return frame


def step_curves(runs: list[Run]) -> dict[str, dict[str, pd.DataFrame]]:
    """Per env and allocator: mean over episodes and seeds of value and spend by step (summed over plans)."""
    curves: dict[str, dict[str, list[pd.DataFrame]]] = {}
    for r in runs:
        if not (r.ok and r.steps_path):
            continue
        steps = read_steps(r.steps_path)
        per_step = steps.groupby(["episode", "step"], as_index=False)[["deep_value", "spend"]].sum()
        per_step["hour"] = steps.groupby(["episode", "step"])["hour"].first().to_numpy()
        curves.setdefault(r.env, {}).setdefault(r.agent, []).append(per_step)
    return {env: {agent: pd.concat(frames) for agent, frames in by_agent.items()} for env, by_agent in curves.items()}


# --------------------------------------------------------------------------------------------
# Figures
# --------------------------------------------------------------------------------------------


def _agent_colours(agents: list[str]) -> dict[str, Any]:
    cmap = plt.get_cmap("tab10")
    return {a: cmap(i % 10) for i, a in enumerate(_ordered(agents))}


def plot_scores(env: str, summary: pd.DataFrame, table: pd.DataFrame, out: Path) -> Path:
    s = summary[summary.env == env].set_index("agent")
    agents = [a for a in _ordered(list(s.index))]
    colours = _agent_colours(agents)
    fig, axes = plt.subplots(1, 2, figsize=(12, 0.55 * len(agents) + 2.2), sharey=True)
    y = np.arange(len(agents))
    for ax, (col, label, scale) in zip(
        axes,
        (
            ("score", "score (deep value after the CPA penalty)", 1e3),
            ("normalised", "normalised score: 0 = uniform, 1 = oracle", 1.0),
        ),
        strict=True,
    ):
        for i, a in enumerate(agents):
            mid, lo, hi = s.loc[a, f"{col}_iqm"], s.loc[a, f"{col}_ci_low"], s.loc[a, f"{col}_ci_high"]
            if not np.isfinite(mid):
                continue
            ax.barh(i, mid / scale, color=colours[a], alpha=0.35, height=0.6)
            ax.errorbar(
                mid / scale,
                i,
                xerr=[[max(mid - lo, 0) / scale], [max(hi - mid, 0) / scale]],
                fmt="o",
                color=colours[a],
                capsize=4,
                lw=2,
            )
            if col == "score":
                seeds = table[(table.env == env) & (table.agent == a)]["score"] / scale
                ax.scatter(seeds, np.full(len(seeds), i) + 0.22, s=12, color="k", alpha=0.6, zorder=3)
        ax.set_xlabel(label + (" (thousands)" if scale == 1e3 else ""))
        ax.grid(axis="x", alpha=0.3)
    axes[1].axvline(0, color="grey", lw=1)
    axes[1].axvline(1, color="grey", lw=1, ls="--")
    axes[0].set_yticks(y, agents)
    axes[0].invert_yaxis()
    n_seeds = int(s["seeds"].max())
    fig.suptitle(
        f"{env}: interquartile mean over {n_seeds} seeds (a seed: its mean over episodes) with 95% "
        "bootstrap intervals; dots: seeds"
    )
    fig.tight_layout()
    path = out / f"score_{env}.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_shares(env: str, runs: list[Run], out: Path) -> Path | None:
    """Heatmaps of budget share by plan and hour of day, one panel per allocator, same portfolio."""
    env_runs = [r for r in runs if r.ok and r.env == env and r.steps_path]
    if not env_runs:
        return None
    ref_seed = min(r.seed for r in env_runs)
    by_agent = {r.agent: r for r in env_runs if r.seed == ref_seed}
    agents = _ordered(list(by_agent))
    frames = {a: read_steps(by_agent[a].steps_path, episode=0) for a in agents}
    first = frames[agents[0]]
    plans = first.drop_duplicates("plan").set_index("plan")[["kind", "channel"]]
    kind_rank = {k: i for i, k in enumerate(KIND_ORDER)}
    order = sorted(plans.index, key=lambda p: (kind_rank.get(plans.loc[p, "kind"], 9), plans.loc[p, "channel"], p))
    labels = [f"{plans.loc[p, 'kind']} · {plans.loc[p, 'channel']} · p{p}" for p in order]
    hours = np.sort(first["hour"].unique())
    ncols = min(4, len(agents))
    nrows = math.ceil(len(agents) / ncols)
    fig, axes = plt.subplots(
        nrows, ncols, figsize=(3.6 * ncols + 1.5, 0.2 * len(order) * nrows + 1.6 * nrows), squeeze=False, sharey=True
    )
    vmax = max(float(f.groupby(["plan", "hour"])["share"].mean().max()) for f in frames.values())
    image = None
    for ax, a in zip(axes.flat, agents, strict=False):
        grid = frames[a].groupby(["plan", "hour"])["share"].mean().unstack("hour").reindex(index=order, columns=hours)
        # A square-root colour scale keeps small shares visible next to the oracle's concentrated ones.
        image = ax.imshow(
            grid.to_numpy(),
            aspect="auto",
            cmap="viridis",
            norm=PowerNorm(0.5, vmin=0, vmax=vmax),
            interpolation="nearest",
        )
        ax.set_title(a)
        ax.set_xticks(
            np.arange(0, len(hours), max(1, len(hours) // 6)), [str(h) for h in hours[:: max(1, len(hours) // 6)]]
        )
        ax.set_xlabel("hour of day")
        for b in np.flatnonzero(np.diff([kind_rank.get(plans.loc[p, "kind"], 9) for p in order])):
            ax.axhline(b + 0.5, color="white", lw=1)
    for ax in axes.flat[len(agents) :]:
        ax.axis("off")
    for ax in axes[:, 0]:
        ax.set_yticks(np.arange(len(order)), labels, fontsize=7)
    fig.colorbar(image, ax=axes, shrink=0.8, label="share of the budget (mean over the days; square-root scale)")
    fig.suptitle(f"{env}: budget share by plan and hour (seed {ref_seed}, episode 0: the same portfolio for all)")
    path = out / f"shares_{env}.png"
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return path


def plot_value(
    env: str,
    curves: dict[str, pd.DataFrame],
    table: pd.DataFrame,
    steps_per_day: int,
    daily_budget: float | None,
    out: Path,
) -> Path | None:
    if not curves:
        return None
    agents = _ordered(list(curves))
    colours = _agent_colours(agents)
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.8))
    for a in agents:
        c = curves[a]
        per_step = c.groupby("step")["deep_value"].mean()
        days = (per_step.index.to_numpy() + 1) / steps_per_day
        axes[0].plot(days, per_step.cumsum() / 1e3, color=colours[a], label=a, lw=2)
        final = table[(table.env == env) & (table.agent == a)]["score"].mean()
        if np.isfinite(final):
            axes[0].scatter([days[-1]], [final / 1e3], color=colours[a], marker="D", s=30, zorder=3)
        spend_by_hour = c.assign(day_step=c["step"] % steps_per_day).groupby("day_step")["spend"].mean()
        cum_spend = spend_by_hour.cumsum()
        if daily_budget:
            cum_spend = cum_spend / daily_budget
        hours = (spend_by_hour.index.to_numpy() + 1) * (24 // steps_per_day)
        axes[1].plot(hours, cum_spend, color=colours[a], label=a, lw=2)
    axes[0].set_xlabel("day of the episode")
    axes[0].set_ylabel("cumulative matured deep value (thousands)")
    axes[0].set_title("value over the episode (diamonds: final score incl. settled value)")
    axes[1].set_xlabel("hour of day")
    axes[1].set_ylabel("cumulative spend / daily budget" if daily_budget else "cumulative spend")
    axes[1].set_title("spend over the day (mean over days)")
    axes[1].set_xticks(range(0, 25, 4))
    for ax in axes:
        ax.grid(alpha=0.3)
    axes[0].legend(loc="upper left", fontsize=8)
    fig.suptitle(f"{env}: mean over all episodes and seeds")
    fig.tight_layout()
    path = out / f"value_{env}.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# --------------------------------------------------------------------------------------------
# The report
# --------------------------------------------------------------------------------------------


def _fmt(x: Any, spec: str) -> str:
    return format(x, spec) if isinstance(x, int | float) and np.isfinite(x) else "–"


def markdown_table(summary: pd.DataFrame) -> str:
    head = (
        "| env | allocator | seeds | IQM score [95% CI] | normalised [95% CI] | deep CPA / target | billing ratio "
        "| budget used | cap violations | potential / trap spend |"
    )
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for _, r in summary.iterrows():
        score = (
            f"{_fmt(r.score_iqm, ',.0f')} [{_fmt(r.score_ci_low, ',.0f')}, {_fmt(r.score_ci_high, ',.0f')}]"
            if np.isfinite(r.get("score_iqm", np.nan))
            else "–"
        )
        norm = (
            f"{_fmt(r.normalised_iqm, '.2f')} [{_fmt(r.normalised_ci_low, '.2f')}, {_fmt(r.normalised_ci_high, '.2f')}]"
            if np.isfinite(r.get("normalised_iqm", np.nan))
            else "–"
        )
        lines.append(
            f"| {r.env} | {r.agent} | {r.seeds} | {score} | {norm} | {_fmt(r.get('cpa_ratio'), '.2f')} | "
            f"{_fmt(r.get('billing_ratio'), '.2f')} | {_fmt(r.get('budget_utilisation'), '.1%')} | "
            f"{_fmt(r.get('cap_violation_steps'), '.1f')} | {_fmt(r.get('spend_share_potential'), '.0%')} / "
            f"{_fmt(r.get('spend_share_trap'), '.0%')} |"
        )
    return "\n".join(lines)


def _env_info(runs: list[Run], env: str) -> tuple[int, float | None]:
    for r in runs:
        if r.ok and r.env == env:
            cfg = _load_yaml(r.path / "config.yaml") or {}
            env_cfg = cfg.get("env") or {}
            return int(env_cfg.get("steps_per_day", 24)), env_cfg.get("daily_budget")
    return 24, None


def build_report(sweep_dir: Path, out: Path | None = None, reps: int = 5000) -> dict[str, Any]:
    """Write ``summary.csv``, ``report.md`` and the figures for the sweep in ``sweep_dir``."""
    sweep_dir = Path(sweep_dir)
    out = Path(out) if out is not None else sweep_dir
    out.mkdir(parents=True, exist_ok=True)
    runs = find_runs(sweep_dir)
    failed = [r for r in runs if not r.ok]
    missing = missing_runs(runs, sweep_dir)
    table = run_table(runs)
    summary = summarise(table, reps)
    summary.to_csv(out / "summary.csv", index=False)

    figures: list[Path] = []
    curves = step_curves(runs)
    for env in sorted(table["env"].unique()) if not table.empty else []:
        steps_per_day, daily_budget = _env_info(runs, env)
        figures.append(plot_scores(env, summary, table, out))
        for path in (
            plot_shares(env, runs, out),
            plot_value(env, curves.get(env, {}), table, steps_per_day, daily_budget, out),
        ):
            if path is not None:
                figures.append(path)

    n_ok = len(runs) - len(failed)
    md = [
        f"# Allocator comparison: `{sweep_dir}`",
        "",
        f"{len(runs)} run folders: {n_ok} finished, {len(failed)} failed; {len(missing)} missing from the sweep grid.",
        "",
        markdown_table(summary) if not summary.empty else "_No finished run._",
        "",
        "A run's score is its mean over episodes; the table gives the interquartile mean (IQM) over seeds with a "
        "95% percentile bootstrap interval (scipy.stats.bootstrap; stratified by env for `all`). Normalised score: "
        f"(s - s_{REFERENCE_LOW}) / (s_{REFERENCE_HIGH} - s_{REFERENCE_LOW}) with the env's mean {REFERENCE_LOW} and "
        f"{REFERENCE_HIGH} scores. Deep CPA / target > 1 is penalised as (target / CPA)^beta. Billing ratio: spend "
        "over conversions x each plan's target CPA. Budget used: spend / (days x daily budget). Cap violations: "
        "steps where a compliance cap withheld budget. Potential / trap spend: share of spend on plans that are "
        "truly good but new, and on cheap-lead plans with poor deep rates (hidden truth, for analysis).",
        "",
    ]
    if failed:
        md += (
            ["## Failed runs", ""]
            + [f"- `{r.path.name}` ({r.env}, {r.agent}, seed {r.seed}): {r.error}" for r in failed]
            + [""]
        )
    if missing:
        md += ["## Missing runs", ""] + [f"- {e}, {a}, seed {s}" for e, a, s in missing] + [""]
    if figures:
        md += ["## Figures", ""] + [f"![{p.stem}]({p.name})" for p in figures] + [""]
    (out / "report.md").write_text("\n".join(md))
    return {
        "runs": runs,
        "failed": failed,
        "missing": missing,
        "summary": summary,
        "figures": figures,
        "report": out / "report.md",
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sweep_dir", type=Path, help="a multirun folder of experiments.evaluate")
    parser.add_argument("--out", type=Path, default=None, help="where to write (default: the sweep folder)")
    parser.add_argument("--reps", type=int, default=5000, help="bootstrap resamples")
    args = parser.parse_args(argv)
    if not args.sweep_dir.is_dir():
        print(f"sweep_dir {args.sweep_dir} is not a folder", file=sys.stderr)
        return 2
    result = build_report(args.sweep_dir, args.out, args.reps)
    print(markdown_table(result["summary"]) if not result["summary"].empty else "no finished run")
    for r in result["failed"]:
        print(f"FAILED {r.path}: {r.error}")
    for e, a, s in result["missing"]:
        print(f"MISSING {e} {a} seed {s}")
    print(f"report: {result['report']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
