"""Statistics over seeds: interquartile mean with stratified-bootstrap intervals, normalised scores.

A run's score is its mean over episodes; seeds are the runs. rliable would be the natural library,
but its ``arch`` dependency does not work with the pandas/numpy here (arch 7.2 fails to import with
pandas 3, arch 8 dropped the ``random_state`` keyword rliable passes), so the IQM
(``scipy.stats.trim_mean(x, 0.25)``, rliable's definition) is bootstrapped with
``scipy.stats.bootstrap`` (percentile method, fixed generator): with several envs each env's runs are
resampled within the env, which is rliable's stratified bootstrap.

Normalised score: ``(s - s_uniform) / (s_oracle - s_uniform)`` (0 = uniform, 1 = oracle), with the
env's mean uniform and oracle scores over seeds as references.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from scipy import stats

from experiments.sweep import ordered_agents

REFERENCE_LOW, REFERENCE_HIGH = "uniform", "oracle"


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
    order = {a: i for i, a in enumerate(ordered_agents(summary["agent"].unique()))}
    summary["_o"] = summary["agent"].map(order)
    summary["_e"] = summary["env"].eq("all")
    return summary.sort_values(["_e", "env", "_o"]).drop(columns=["_o", "_e"]).reset_index(drop=True)
