"""The sweep report: built from a real multirun with a failed run, damaged and copied run folders,
statistics it rests on."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from experiments.report import build_report, main
from experiments.stats import iqm, iqm_interval
from experiments.sweep import metrics_problem

ROOT = Path(__file__).resolve().parent.parent


def evaluate_cli(*args: str, ok: bool = True) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "experiments.evaluate", *args], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert (done.returncode == 0) == ok, done.stderr[-3000:]


@pytest.fixture(scope="module")
def sweep_with_a_failure(tmp_path_factory) -> Path:
    """uniform, oracle and thompson over seeds 0 and 1 on the small preset; thompson's seed-0 job crashed
    (an invalid override) and its seed-1 job never ran."""
    sweep = tmp_path_factory.mktemp("sweep")
    common = ["env=small", "episodes=2", "max_steps=36", f"hydra.sweep.dir={sweep}"]
    evaluate_cli("-m", "agent=uniform,oracle", "seed=0,1", *common)
    evaluate_cli(
        "-m",
        "agent=thompson",
        "seed=0",
        "env.plans_per_account=-1",
        *common,
        "hydra.sweep.subdir=thompson_s0",
        ok=False,
    )
    return sweep


def test_report_builds_from_a_multirun_with_a_failed_run(sweep_with_a_failure, capsys):
    sweep = sweep_with_a_failure
    assert main([str(sweep), "--reps", "500"]) == 0
    printed = capsys.readouterr().out
    assert "FAILED" in printed and "plans_per_account" in printed
    assert "MISSING small thompson seed 1" in printed

    summary = pd.read_csv(sweep / "summary.csv")
    rows = summary.set_index("agent")
    assert set(rows.index) == {"uniform", "oracle"}
    assert (rows["seeds"] == 2).all()
    assert rows.loc["uniform", "normalised_iqm"] == pytest.approx(0.0, abs=1e-9)
    assert rows.loc["oracle", "normalised_iqm"] == pytest.approx(1.0, abs=1e-9)
    for agent in ("uniform", "oracle"):
        r = rows.loc[agent]
        assert r.score_ci_low <= r.score_iqm <= r.score_ci_high
        assert 0 < r.budget_utilisation <= 1.0 + 1e-9
        # Churn: 36 steps hold one whole day, so no day-to-day change yet; no edit can have happened.
        assert np.isnan(r.budget_change) and r.learning_resets == 0

    report = (sweep / "report.md").read_text()
    assert "## Failed runs" in report and "thompson_s0" in report and "plans_per_account must be >= 1" in report
    assert "## Missing runs" in report and "small, thompson, seed 1" in report
    for name in ("score_small.png", "shares_small.png", "value_small.png"):
        png = sweep / name
        assert png.exists() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"]({name})" in report


def _edit_metrics(edit: Callable[[dict], object]) -> Callable[[Path], None]:
    def damage(run_dir: Path) -> None:
        path = run_dir / "metrics.json"
        metrics = json.loads(path.read_text())
        edit(metrics)
        path.write_text(json.dumps(metrics))  # json.dumps writes NaN as the bare literal NaN, as a buggy writer would

    return damage


def _write(name: str, content: bytes) -> Callable[[Path], None]:
    return lambda run_dir: (run_dir / name).write_bytes(content)


def _truncated(name: str) -> Callable[[Path], None]:
    def damage(run_dir: Path) -> None:
        data = (run_dir / name).read_bytes()
        (run_dir / name).write_bytes(data[: len(data) // 2])  # what a full disk or a kill mid-write leaves

    return damage


# What a damaged run folder holds, and the reason the report must give for it.
DAMAGES = {
    "an empty list": (_write("metrics.json", b"[]"), "metrics.json: expected a JSON object, got an array"),
    "a string score": (
        _edit_metrics(lambda m: m["mean"].update(score="53400")),
        "metrics.json: mean.score is a string ('53400'), expected a number",
    ),
    "binary garbage": (_write("metrics.json", b"\x00\xff\xfe\x9c" * 64), "metrics.json is not JSON"),
    "a half-written metrics.json": (_truncated("metrics.json"), "metrics.json is not JSON"),
    "a NaN mean": (_edit_metrics(lambda m: m["mean"].update(score=float("nan"))), "metrics.json: mean.score is nan"),
    "a null mean": (
        _edit_metrics(lambda m: m["mean"].update(score=None)),
        "metrics.json: mean.score is null but 2 of 2 episodes have a value",
    ),
    "a truncated steps table": (_truncated("steps.parquet"), "steps.parquet is unreadable"),
    "a deleted steps table": (lambda run_dir: (run_dir / "steps.parquet").unlink(), "steps.parquet is missing"),
}


@pytest.mark.parametrize("damage", DAMAGES)
def test_a_damaged_run_is_listed_as_failed_with_its_reason_and_the_rest_reported(
    damage, sweep_with_a_failure, tmp_path
):
    sweep = tmp_path / "sweep"
    shutil.copytree(sweep_with_a_failure, sweep)
    spoil, reason = DAMAGES[damage]
    spoil(next(sweep.glob("*_small_oracle_s0")))

    result = build_report(sweep, reps=200)
    failed = {r.path.name: r.error for r in result["failed"]}
    assert set(failed) == {"thompson_s0", "2_small_oracle_s0"}
    assert failed["2_small_oracle_s0"].startswith(reason), failed["2_small_oracle_s0"]
    rows = result["summary"].set_index("agent")
    assert rows.loc["uniform", "seeds"] == 2 and rows.loc["oracle", "seeds"] == 1
    assert np.isfinite(rows[["score_iqm", "normalised_iqm"]].to_numpy()).all()  # no row blanked
    report = (sweep / "report.md").read_text()
    assert f"- `2_small_oracle_s0` (small, oracle, seed 0): {reason}" in report
    assert "](shares_small.png)" in report and "](value_small.png)" in report


def test_a_copied_run_folder_counts_once_and_is_listed_as_a_duplicate(sweep_with_a_failure, tmp_path, capsys):
    sweep = tmp_path / "sweep"
    shutil.copytree(sweep_with_a_failure, sweep)
    original = next(sweep.glob("*_small_oracle_s0"))
    shutil.copytree(original, sweep / "copies" / original.name)

    assert main([str(sweep), "--reps", "200"]) == 0
    assert f"DUPLICATE {sweep / 'copies' / original.name} repeats {original}" in capsys.readouterr().out
    summary = pd.read_csv(sweep / "summary.csv").set_index("agent")
    assert summary.loc["oracle", "seeds"] == 2 and summary.loc["uniform", "seeds"] == 2
    report = (sweep / "report.md").read_text()
    assert "6 run folders: 4 counted, 1 failed, 1 duplicates" in report  # thompson_s0 failed
    assert "## Duplicate runs" in report and f"- `copies/{original.name}` repeats `{original.name}`" in report


def test_metrics_are_checked_against_what_the_evaluator_writes(sweep_with_a_failure):
    metrics = json.loads(next(sweep_with_a_failure.glob("*_small_uniform_s1")).joinpath("metrics.json").read_text())
    assert metrics_problem(metrics) is None

    def spoilt(edit: Callable[[dict], object]) -> str | None:
        copy = json.loads(json.dumps(metrics))
        edit(copy)
        return metrics_problem(copy)

    assert spoilt(lambda m: m.pop("per_episode")) == "no 'per_episode'"
    assert spoilt(lambda m: m.update(seed="1")) == "'seed' is a string ('1'), expected a number"
    assert spoilt(lambda m: m["per_episode"].pop()) == "'episodes' is 2 but 'per_episode' has 1 entries"
    assert spoilt(lambda m: m["per_episode"][1].pop("spend")) == "per_episode[1] has no 'spend'"
    assert spoilt(lambda m: m["per_episode"][0].update(value=None)) == "per_episode[0].value is null, expected a number"
    # Undefined ratios (no deep conversion) are null in every episode and in the mean: that is a finished run.
    for episode in metrics["per_episode"]:
        episode["cpa_ratio"] = None
    metrics["mean"]["cpa_ratio"] = None
    assert metrics_problem(metrics) is None
    assert spoilt(lambda m: m["per_episode"][0].update(cpa_ratio=0.9)) == (
        "mean.cpa_ratio is null but 1 of 2 episodes have a value"
    )


def test_report_aggregates_normalised_scores_over_envs(tmp_path):
    common = ["episodes=1", "max_steps=30", "steps_table=none", f"hydra.sweep.dir={tmp_path}"]
    evaluate_cli("-m", "agent=uniform,oracle,proportional", "seed=0,1", "env=small,default", *common)
    result = build_report(tmp_path, reps=300)
    summary = result["summary"]
    overall = summary[summary.env == "all"].set_index("agent")
    assert set(overall.index) == {"uniform", "oracle", "proportional"}
    assert overall.loc["oracle", "normalised_iqm"] == pytest.approx(1.0, abs=0.25)
    assert not result["failed"] and not result["missing"]
    # The score plots and performance profiles (per env and over envs); no per-step tables, no share or value plots.
    assert sorted(p.name for p in result["figures"]) == [
        "profile_all.png",
        "profile_default.png",
        "profile_small.png",
        "score_default.png",
        "score_small.png",
    ]
    paired = result["paired"].set_index(["env", "agent", "baseline"])
    assert paired.loc[("all", "oracle", "uniform"), "episodes"] == 4  # 2 envs x 2 seeds x 1 episode, stratified


def test_iqm_is_the_interquartile_mean_and_its_interval_covers_it():
    x = np.array([0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 100.0])
    assert iqm(x) == pytest.approx(stats.trim_mean(x, 0.25)) == pytest.approx(3.5)
    point, low, high = iqm_interval([x], reps=2000)
    assert low <= point <= high and high - low > 0
    assert iqm_interval([np.array([7.0])]) == (7.0, 7.0, 7.0)  # one run: no spread to resample


def test_stratified_interval_resamples_within_each_stratum():
    rng = np.random.default_rng(0)
    low_env, high_env = rng.normal(0.0, 0.1, 10), rng.normal(10.0, 0.1, 10)
    _, lo, hi = iqm_interval([low_env, high_env], reps=2000)
    # Pooled resampling would swing the IQM with the mix of the two envs; stratified keeps it ~5.
    assert 4.0 < lo < hi < 6.0


def test_budget_churn_compares_whole_funded_days():
    from experiments.evaluate import budget_churn

    # Two steps a day, three plans: day budgets [10, 10, 0] then [15, 10, 5]; plan 2 was not funded on
    # day 0, so only plans 0 (5 of the larger 15: 1/3) and 1 (0) count. The trailing half day is left out.
    budget = np.array([[5.0, 5.0, 0.0], [5.0, 5.0, 0.0], [7.5, 5.0, 2.5], [7.5, 5.0, 2.5], [99.0, 99.0, 99.0]])
    churn = budget_churn(budget, 2, 3)
    assert churn["budget_change"] == pytest.approx(1 / 6) and churn["learning_resets"] == 3
    assert budget_churn(budget[:3], 2, 0)["budget_change"] is None  # one whole day: nothing to compare
    assert budget_churn(budget[:1], 2, 0)["budget_change"] is None  # not even one (a few-steps run)
