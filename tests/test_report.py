"""The sweep report: built from a real multirun with a failed run, statistics it rests on."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from experiments.report import build_report, main
from experiments.stats import iqm, iqm_interval

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

    report = (sweep / "report.md").read_text()
    assert "## Failed runs" in report and "thompson_s0" in report and "plans_per_account must be >= 1" in report
    assert "## Missing runs" in report and "small, thompson, seed 1" in report
    for name in ("score_small.png", "shares_small.png", "value_small.png"):
        png = sweep / name
        assert png.exists() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"]({name})" in report


def test_report_aggregates_normalised_scores_over_envs(tmp_path):
    common = ["episodes=1", "max_steps=30", "steps_table=none", f"hydra.sweep.dir={tmp_path}"]
    evaluate_cli("-m", "agent=uniform,oracle,proportional", "seed=0,1", "env=small,default", *common)
    result = build_report(tmp_path, reps=300)
    summary = result["summary"]
    overall = summary[summary.env == "all"].set_index("agent")
    assert set(overall.index) == {"uniform", "oracle", "proportional"}
    assert overall.loc["oracle", "normalised_iqm"] == pytest.approx(1.0, abs=0.25)
    assert not result["failed"] and not result["missing"]
    assert len(result["figures"]) == 2  # the score plots; no per-step tables, no share or value plots


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
