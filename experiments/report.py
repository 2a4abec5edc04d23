"""Gather an evaluation sweep into one comparison: ``python -m experiments.report <multirun folder>``.

Reads every run folder under the sweep (``experiments.evaluate``'s ``metrics.json``,
``config.yaml`` and per-step table) and carries on past bad ones, listing each: failed runs (no
``metrics.json``, with ``error.txt``'s reason; or outputs that are not what the evaluator writes:
a ``metrics.json`` that is not JSON, has a wrong structure, a string or NaN where a number belongs,
a null mean; a missing or truncated steps table), duplicates (a folder holding the same env, agent,
seed and resolved config as an earlier one, e.g. a copy: counted once) and missing runs (an
env x agent x seed combination of the sweep with no folder). It writes into the sweep folder (or
``--out``):

- ``summary.csv``: one row per env and allocator: interquartile mean (IQM) of the per-seed scores
  with a 95% stratified-bootstrap interval, the normalised score
  ``(s - s_uniform) / (s_oracle - s_uniform)`` (0 = uniform, 1 = oracle; the references are the
  env's mean uniform and oracle scores over seeds), deep CPA / target, billing ratio, budget
  utilisation, compliance-cap violations and where the money went (potential plans, traps);
  rows with ``env = all`` aggregate normalised scores over envs (bootstrap stratified by env); and
  each allocator's paired comparison with the best heuristic (``vs_best_*``) and with uniform
  (``vs_uniform_*``);
- ``paired.csv``: the paired comparisons (:func:`experiments.stats.paired_comparisons`): every
  allocator against the best heuristic and against uniform on the episodes both played (matched by
  env, env seed and setup; refused, naming the runs, when they do not match), the mean paired
  difference with a 95% bootstrap interval (stratified by env on ``all``), the probability of
  improvement and the verdict: "A beats B" only where the interval excludes 0. A learned allocator
  evaluated from several training runs (``agent=trained agent.run=<run0>,<run1>,...`` in one sweep,
  or their sweeps gathered under one folder) is compared with each episode's score averaged over
  its training runs (``training_runs`` says how many; :func:`experiments.stats.pool_training_runs`;
  the interval is over episodes, for those trained models, not over training seeds); in
  ``summary.csv`` and the profiles its runs are its training runs x evaluation seeds, which replay the
  same episodes, so their intervals are too narrow;
- ``profiles.csv``: performance profiles (fraction of episodes with normalised score above tau, with bands);
- ``report.md``: the tables, the paired verdicts, the failed, duplicate and missing runs, the
  episodes left out of or refusing a pairing, the figures and how to read them;
- PNG figures per env: ``score_<env>.png`` (IQM and normalised score with intervals, seeds as
  dots), ``profile_<env>.png`` (performance profiles, rliable's plot; also ``profile_all.png``
  with several envs), ``shares_<env>.png`` (budget share by plan and hour of day for each allocator, on the first
  seed's first episode, which every allocator played on the same portfolio), ``value_<env>.png``
  (cumulative matured deep value over the episode, and cumulative spend over the day).

Statistics: :mod:`experiments.stats`; loading the run folders: :mod:`experiments.sweep`; figures:
:mod:`experiments.plots`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from experiments.plots import plot_profile, plot_scores, plot_shares, plot_value
from experiments.stats import (
    BEST_HEURISTIC,
    REFERENCE_HIGH,
    REFERENCE_LOW,
    UNIFORM,
    paired_comparisons,
    performance_profiles,
    summarise,
    with_paired,
)
from experiments.sweep import Run, env_info, episode_table, find_runs, missing_runs, run_table, step_curves

#: Bootstrap resamples for the performance profiles' bands at most (rliable's default; each resample
#: evaluates every tau).
PROFILE_REPS = 2000


def _rel(path: Path, sweep_dir: Path) -> str:
    return path.relative_to(sweep_dir).as_posix()


def _fmt(x: Any, spec: str) -> str:
    return format(x, spec) if isinstance(x, int | float) and np.isfinite(x) else "–"


def markdown_table(summary: pd.DataFrame) -> str:
    head = (
        "| env | allocator | seeds | IQM score [95% CI] | normalised [95% CI] | deep CPA / target | billing ratio "
        "| budget used | cap violations | potential / trap spend | budget change / day | learning resets |"
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
            f"{_fmt(r.get('spend_share_trap'), '.0%')} | {_fmt(r.get('budget_change'), '.0%')} | "
            f"{_fmt(r.get('learning_resets'), '.1f')} |"
        )
    return "\n".join(lines)


def build_report(sweep_dir: Path, out: Path | None = None, reps: int = 5000) -> dict[str, Any]:
    """Write ``summary.csv``, ``paired.csv``, ``profiles.csv``, ``report.md`` and the figures for ``sweep_dir``."""
    sweep_dir = Path(sweep_dir)
    out = Path(out) if out is not None else sweep_dir
    out.mkdir(parents=True, exist_ok=True)
    runs = find_runs(sweep_dir)
    missing = missing_runs(runs, sweep_dir)
    counted = [r for r in runs if r.counted]
    table = run_table(counted)
    episodes = episode_table(counted)
    paired = paired_comparisons(episodes, table, reps)
    summary = with_paired(summarise(table, reps), paired) if not table.empty else summarise(table, reps)
    summary.to_csv(out / "summary.csv", index=False)
    notes = paired["note"].fillna("").astype(str).str.replace("`", "", regex=False)
    paired.assign(note=notes).to_csv(out / "paired.csv", index=False)
    profiles = profile_table(episodes, table, min(reps, PROFILE_REPS))
    profiles.to_csv(out / "profiles.csv", index=False)
    figures = draw_figures(counted, table, summary, profiles, out)
    (out / "report.md").write_text(report_markdown(sweep_dir, runs, missing, summary, paired, figures))
    return {
        "runs": runs,
        "failed": [r for r in runs if not r.ok],
        "duplicates": [r for r in runs if r.duplicate_of is not None],
        "missing": missing,
        "summary": summary,
        "paired": paired,
        "profiles": profiles,
        "figures": figures,
        "report": out / "report.md",
    }


def profile_table(episodes: pd.DataFrame, table: pd.DataFrame, reps: int) -> pd.DataFrame:
    """Performance profiles of every env (and ``all`` with several): env, agent, tau, fraction and its band."""
    frames = []
    envs = sorted(episodes["env"].unique()) if not episodes.empty else []
    for env in [*envs, "all"] if len(envs) > 1 else envs:
        taus, profiles, bands = performance_profiles(episodes, table, env, reps=reps)
        for agent, profile in profiles.items():
            frames.append(
                pd.DataFrame(
                    {
                        "env": env,
                        "agent": agent,
                        "tau": taus,
                        "fraction": profile,
                        "ci_low": bands[agent][0],
                        "ci_high": bands[agent][1],
                    }
                )
            )
    columns = ["env", "agent", "tau", "fraction", "ci_low", "ci_high"]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=columns)


def draw_figures(
    runs: list[Run], table: pd.DataFrame, summary: pd.DataFrame, profiles: pd.DataFrame, out: Path
) -> list[Path]:
    """Every env's figures (:mod:`experiments.plots`) from the counted ``runs``, in ``out``."""
    figures: list[Path] = []
    curves = step_curves(runs)

    def profile_figure(env: str) -> Path | None:
        mine = profiles[profiles.env == env]
        if mine.empty:
            return None
        by_agent = {a: g for a, g in mine.groupby("agent", sort=False)}
        taus = next(iter(by_agent.values()))["tau"].to_numpy()
        return plot_profile(
            env,
            taus,
            {a: g["fraction"].to_numpy() for a, g in by_agent.items()},
            {a: g[["ci_low", "ci_high"]].to_numpy().T for a, g in by_agent.items()},
            out,
        )

    envs = sorted(table["env"].unique()) if not table.empty else []
    for env in envs:
        steps_per_day, daily_budget = env_info(runs, env)
        figures.append(plot_scores(env, summary, table, out))
        for path in (
            profile_figure(env),
            plot_shares(env, runs, out),
            plot_value(env, curves.get(env, {}), table, steps_per_day, daily_budget, out),
        ):
            if path is not None:
                figures.append(path)
    if len(envs) > 1 and (path := profile_figure("all")) is not None:
        figures.append(path)
    return figures


def _signed(x: float, unit: str) -> str:
    return _fmt(x, "+,.0f") if unit == "score" else _fmt(x, "+.3f")


def paired_sentence(r: pd.Series) -> str:
    """One comparison in words: who beats whom where the paired interval excludes 0, else "not resolved"."""
    a, b = r.agent, r.baseline
    if r.verdict == "not compared":
        return f"{a} vs {b} ({r.env}): not compared: {r.note}"
    unit = "score" if r.env != "all" else "normalised"
    col = "diff" if unit == "score" else "normalised_diff"  # r["diff"]: a Series has a .diff method
    mid, lo, hi = r[col], r[f"{col}_ci_low"], r[f"{col}_ci_high"]
    interval = f"{_signed(mid, unit)} [{_signed(lo, unit)}, {_signed(hi, unit)}]"
    what = "per episode" + (f", {_fmt(r.diff_pct, '+.1%')} of {b}'s score" if unit == "score" else " (normalised)")
    odds = f"P({a} > {b}) = {_fmt(r.poi, '.2f')} [{_fmt(r.poi_ci_low, '.2f')}, {_fmt(r.poi_ci_high, '.2f')}]"
    n = f"{int(r.episodes)} paired episodes"
    runs = r.get("training_runs")
    if isinstance(runs, int | float) and np.isfinite(runs) and runs > 1:
        n += f", {a}'s score the mean over its {int(runs)} training runs"
    if r.verdict == "better":
        claim = f"**{a} beats {b}** ({r.env}): {a} - {b} = {interval} {what}; {odds}; {n}"
    elif r.verdict == "worse":
        claim = f"**{b} beats {a}** ({r.env}): {a} - {b} = {interval} {what}; {odds}; {n}"
    else:
        claim = f"{a} vs {b} ({r.env}): not resolved (interval includes 0): {a} - {b} = {interval} {what}; {odds}; {n}"
    return claim + (f" ({r.note})" if r.note else "")


def paired_table(paired: pd.DataFrame) -> str:
    """Per env and allocator: its paired difference and P(better) against the best heuristic and uniform."""
    head = (
        "| env | allocator (A) | best heuristic | A - best [95% CI] | P(A > best) "
        "| A - uniform [95% CI] | P(A > uniform) |"
    )
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for (env, agent), g in paired.groupby(["env", "agent"], sort=False):
        unit = "score" if env != "all" else "normalised"
        col = "diff" if unit == "score" else "normalised_diff"
        cells, best = [], "–"
        for role in (BEST_HEURISTIC, UNIFORM):
            mine = g[g.role == role]
            if mine.empty:
                cells += ["(itself)", "–"]
                continue
            r = mine.iloc[0]
            best = r.baseline if role == BEST_HEURISTIC else best
            if r.verdict == "not compared":
                cells += ["not compared", "–"]
                continue
            mark = {"better": " ▲", "worse": " ▼"}.get(r.verdict, "")
            cells += [
                f"{_signed(r[col], unit)} [{_signed(r[col + '_ci_low'], unit)}, {_signed(r[col + '_ci_high'], unit)}]"
                f"{mark}",
                _fmt(r.poi, ".2f"),
            ]
        if best == "–":
            baseline = paired[(paired.env == env) & (paired.role == BEST_HEURISTIC)].baseline
            best = baseline.iloc[0] if len(baseline) else "–"
        lines.append(f"| {env} | {agent} | {best} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def report_markdown(
    sweep_dir: Path,
    runs: list[Run],
    missing: list[tuple[str, str, int]],
    summary: pd.DataFrame,
    paired: pd.DataFrame,
    figures: list[Path],
) -> str:
    """``report.md``: the tables and how to read them, the paired verdicts, the failed, duplicate and missing runs,
    the episodes that a pairing left out or refused, the figures."""
    failed = [r for r in runs if not r.ok]
    duplicates = [r for r in runs if r.duplicate_of is not None]
    n_counted = sum(r.counted for r in runs)
    md = [
        f"# Allocator comparison: `{sweep_dir}`",
        "",
        f"{len(runs)} run folders: {n_counted} counted, {len(failed)} failed, {len(duplicates)} duplicates; "
        f"{len(missing)} missing from the sweep grid.",
        "",
        markdown_table(summary) if not summary.empty else "_No finished run._",
        "",
        "A run's score is its mean over episodes; the table gives the interquartile mean (IQM) over seeds with a "
        "95% percentile bootstrap interval (scipy.stats.bootstrap; stratified by env for `all`). Normalised score: "
        f"(s - s_{REFERENCE_LOW}) / (s_{REFERENCE_HIGH} - s_{REFERENCE_LOW}) with the env's mean {REFERENCE_LOW} and "
        f"{REFERENCE_HIGH} scores. Deep CPA / target > 1 is penalised as (target / CPA)^beta. Billing ratio: spend "
        "over conversions x each plan's target CPA. Budget used: spend / (days x daily budget). Cap violations: "
        "steps where a compliance cap withheld budget. Potential / trap spend: share of spend on plans that are "
        "truly good but new, and on cheap-lead plans with poor deep rates (hidden truth, for analysis). "
        "Budget change / day: a plan's day budget against its previous day's, |change| / the larger of the two, "
        "mean over plans and days both funded; learning resets: significant edits per episode (the platform "
        "sends the plan back into learning); a dash: runs written before these were recorded. "
        "A dash in deep CPA or billing ratio: undefined in every run (no deep conversion, or no conversion); "
        "in the normalised score: the env lacks the uniform or oracle runs.",
        "",
    ]
    if not paired.empty:
        md += [
            "## Paired comparisons",
            "",
            "Every allocator played the same episodes (env seeds), so each is compared with the best heuristic (the "
            "heuristic other than uniform with the highest mean score; oracles are references, not heuristics) "
            "and with uniform on the "
            "per-episode difference over the episodes both played: the mean difference with a 95% stratified-"
            "bootstrap interval (rliable; on `all`: normalised scores, each env's mean difference averaged over "
            "envs, episodes resampled within env) and the probability of improvement P(A > B): the share of paired "
            "episodes A scores higher, ties counting half. ▲ / ▼: the interval excludes 0 (A beats B / B beats A); "
            "otherwise the difference is not resolved by these episodes. Each interval is 95% on its own, not "
            "corrected for the number of comparisons.",
            "",
            paired_table(paired),
            "",
        ]
        md += [f"- {paired_sentence(r)}" for _, r in paired.iterrows()] + [""]
        flagged = paired[paired.note.fillna("") != ""]
        if len(flagged):
            md += (
                [
                    "## Episode matching",
                    "",
                    "Comparisons refused (episodes that do not match) or made on part of the episodes; episodes are "
                    "paired only by env, env seed and setup, never by position.",
                    "",
                ]
                + [f"- {r.agent} vs {r.baseline} ({r.env}): {r.note}" for _, r in flagged.iterrows()]
                + [""]
            )
    if failed:
        md += (
            ["## Failed runs", "", "Not counted; the sweep's command with the same hydra.sweep.dir reruns them.", ""]
            + [f"- `{_rel(r.path, sweep_dir)}` ({r.env}, {r.agent}, seed {r.seed}): {r.error}" for r in failed]
            + [""]
        )
    if duplicates:
        md += (
            ["## Duplicate runs", "", "Same env, agent, seed and config as an earlier folder: counted once.", ""]
            + [f"- `{_rel(r.path, sweep_dir)}` repeats `{_rel(r.duplicate_of, sweep_dir)}`" for r in duplicates]
            + [""]
        )
    if missing:
        md += ["## Missing runs", ""] + [f"- {e}, {a}, seed {s}" for e, a, s in missing] + [""]
    if figures:
        md += ["## Figures", ""] + [f"![{p.stem}]({p.name})" for p in figures] + [""]
    return "\n".join(md)


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
    for _, r in result["paired"].iterrows():
        print(paired_sentence(r).replace("**", "").replace("`", ""))
    for r in result["failed"]:
        print(f"FAILED {r.path}: {r.error}")
    for r in result["duplicates"]:
        print(f"DUPLICATE {r.path} repeats {r.duplicate_of}")
    for e, a, s in result["missing"]:
        print(f"MISSING {e} {a} seed {s}")
    print(f"report: {result['report']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
