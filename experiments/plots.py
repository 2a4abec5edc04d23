"""The report's figures per env: scores with intervals, performance profiles, budget shares by plan and hour,
value and spend over time.

Each function writes one PNG into ``out`` and returns its path (None when the sweep has nothing to
draw, e.g. no per-step tables).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.colors import PowerNorm  # noqa: E402
from rliable import plot_utils  # noqa: E402

from experiments.sweep import Run, ordered_agents, read_steps  # noqa: E402

KIND_ORDER = ("potential", "regular", "trap")


def _agent_colours(agents: list[str]) -> dict[str, Any]:
    cmap = plt.get_cmap("tab10")
    return {a: cmap(i % 10) for i, a in enumerate(ordered_agents(agents))}


def plot_scores(env: str, summary: pd.DataFrame, table: pd.DataFrame, out: Path) -> Path:
    s = summary[summary.env == env].set_index("agent")
    agents = [a for a in ordered_agents(list(s.index))]
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


def plot_profile(
    env: str, taus: np.ndarray, profiles: dict[str, np.ndarray], bands: dict[str, np.ndarray], out: Path
) -> Path | None:
    """Performance profiles (:func:`experiments.stats.performance_profiles`) drawn with rliable's plot_utils."""
    if not profiles:
        return None
    fig, ax = plt.subplots(figsize=(8, 4.8))
    plot_utils.plot_performance_profiles(
        profiles,
        taus,
        performance_profile_cis=bands,
        colors=_agent_colours(list(profiles)),
        xlabel=r"normalised score $\tau$ (0 = uniform, 1 = oracle)",
        ylabel=r"fraction of episodes with score $> \tau$",
        ax=ax,
        labelsize="medium",
        ticklabelsize="small",
        legend=True,
        legendsize="small",
    )
    for x in (0.0, 1.0):
        ax.axvline(x, color="grey", lw=1, ls="--" if x else "-")
    ax.set_title(
        f"{env}: performance profile over episodes{' (every env)' if env == 'all' else ''}, 95% bootstrap bands"
    )
    fig.tight_layout()
    path = out / f"profile_{env}.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_shares(env: str, runs: list[Run], out: Path) -> Path | None:
    """Heatmaps of budget share by plan and hour of day, one panel per allocator, same portfolio."""
    env_runs = [r for r in runs if r.counted and r.env == env and r.steps_path]
    if not env_runs:
        return None
    ref_seed = min(r.seed for r in env_runs)
    by_agent = {r.agent: r for r in env_runs if r.seed == ref_seed}
    agents = ordered_agents(list(by_agent))
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
    agents = ordered_agents(list(curves))
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
