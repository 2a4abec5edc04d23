"""The fidelity report (experiments/fidelity.py): every fact measured, verdicts from the bands, outputs.

Today's simulator fails several bands; those assertions belong to the platform work. Here: the tool
measures every fact of its table, its verdicts follow the bands, its numbers are deterministic for a
seed, its JSON round-trips and the Hydra entry point runs.
"""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from envs.features import Clock
from envs.scenario import load_scenario
from experiments import fidelity
from experiments.fidelity import FACTS, FAIL, NA, PASS, Estimate, Measurement, verdict

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def small_rows() -> list[Measurement]:
    return fidelity.measure(load_scenario("small"), episodes=2, seed=0)


def test_verdict_from_hand_values():
    assert verdict(1.0, 0.9, 1.1) == PASS
    assert verdict(0.9, 0.9, 1.1) == PASS and verdict(1.1, 0.9, 1.1) == PASS  # bounds inclusive
    assert verdict(0.899, 0.9, 1.1) == FAIL and verdict(1.101, 0.9, 1.1) == FAIL
    assert verdict(-5.0, None, 0.0) == PASS and verdict(0.01, None, 0.0) == FAIL  # beating the oracle fails
    assert verdict(0.8, 0.8, None) == PASS and verdict(0.79, 0.8, None) == FAIL
    assert verdict(None, 0.9, 1.1) == NA and verdict(math.nan, 0.9, 1.1) == NA


def test_rows_apply_bands_presets_and_low_from():
    estimates = {f.key: Estimate(None, note="not measured here") for f in FACTS}
    estimates["billing_learned.uniform"] = Estimate(0.8, 0.7, 0.9)
    estimates["billing_learning.uniform"] = Estimate(0.75, 0.7, 0.8)  # below the learned ratio
    estimates["billing_learning.thompson"] = Estimate(1.2, 1.1, 1.3)  # no learned value to compare with
    estimates["feed_share.uniform"] = Estimate(0.5, 0.4, 0.6)
    estimates["oracle_gap.boost"] = Estimate(0.02, -0.01, 0.05)

    rows = {r.key: r for r in fidelity.rows_from_estimates(estimates, "credit")}
    assert rows["billing_learned.uniform"].verdict == FAIL
    assert rows["billing_learning.uniform"].low == 0.8 and rows["billing_learning.uniform"].verdict == FAIL
    assert rows["billing_learning.thompson"].verdict == NA
    assert rows["feed_share.uniform"].verdict == NA and "default only" in rows["feed_share.uniform"].note
    assert rows["oracle_gap.boost"].verdict == FAIL  # the mean gap decides, not the interval
    assert rows["self_priced_share"].verdict == NA and rows["self_priced_share"].note == "not measured here"

    default = {r.key: r for r in fidelity.rows_from_estimates(estimates, "default")}
    assert default["feed_share.uniform"].verdict == FAIL


def test_small_measures_every_fact(small_rows):
    assert [r.key for r in small_rows] == [f.key for f in FACTS]
    facts = {f.key: f for f in FACTS}
    for row in small_rows:
        fact = facts[row.key]
        assert row.verdict in (PASS, FAIL, NA)
        if row.value is None:
            assert row.verdict == NA and row.note, row.key  # n/a says why
            continue
        if row.ci_low is not None or row.ci_high is not None:
            assert row.ci_low is not None and row.ci_high is not None and row.ci_low <= row.ci_high, row.key
        if row.verdict != NA:
            assert row.verdict == verdict(row.value, row.low, fact.high), row.key
            if fact.low_from is None:
                assert row.low == fact.low
    by_key = {r.key: r for r in small_rows}
    # small: one credit vertical, two days (no plan has 3 days to learn), no insurance, no price setters.
    assert by_key["self_priced_share"].verdict == NA and "price-setter" in by_key["self_priced_share"].note
    assert by_key["insurance_renewal_counted"].value is None
    assert by_key["new_plan_exit.funded"].value is None
    assert by_key["credit_approval_rate"].value is not None
    assert by_key["best_heuristic_lift"].verdict == NA  # its band is set for default
    assert all(by_key[f"oracle_gap.{h}"].value is not None for h in fidelity.HEURISTIC_NAMES)


def test_measurement_is_deterministic(small_rows):
    again = fidelity.measure(load_scenario("small"), episodes=2, seed=0)
    assert [r.to_dict() for r in again] == [r.to_dict() for r in small_rows]


def test_json_round_trips(small_rows, tmp_path):
    run = {"preset": "small", "seed": 0, "episodes": 2, "command": "test"}
    path = tmp_path / "fidelity.json"
    fidelity.write_json(path, small_rows, run)
    rows, record = fidelity.read_json(path)
    assert rows == small_rows and record == run


def test_markdown_report_keeps_other_presets(small_rows):
    run = {
        "command": "python -m experiments.fidelity",
        "episodes": 2,
        "seed": 0,
        "runtime_s": 1.0,
        "machine": "test",
        "time_utc": "now",
        "commit": "x",
    }
    first = fidelity.markdown_report("", "small", fidelity.markdown_section("small", small_rows, run))
    both = fidelity.markdown_report(first, "credit", fidelity.markdown_section("credit", small_rows[:1], run))
    again = fidelity.markdown_report(both, "small", fidelity.markdown_section("small", small_rows[:2], run))
    assert "## `small`" in again and "## `credit`" in again
    small_section = again.split("<!-- fidelity:small -->")[1].split("<!-- /fidelity:small -->")[0]
    assert small_section.count("| `") == 2
    assert all(f"`{f.key}`" in again for f in FACTS)  # the definitions


def test_starved_instrument_gives_young_plans_five_percent_of_uniform():
    stats = {"age_hours": np.array([0.0, 10.0, 500.0, 800.0, 0.0])}
    active = np.array([True, True, True, True, False])
    clock = Clock(hour=0, day=0, days=7, daily_budget=1.0, budget_left_today=1.0)
    shares = fidelity.StarvedNewPlans().allocate(stats, clock, active)
    assert shares[4] == 0.0 and math.isclose(shares.sum(), 1.0)
    assert np.allclose(shares[:2], fidelity.STARVED_FRACTION / 4) and np.isclose(shares[2], shares[3])


def test_entry_point_runs(tmp_path):
    out, docs = tmp_path / "f.json", tmp_path / "fidelity.md"
    cmd = [
        sys.executable,
        "-m",
        "experiments.fidelity",
        "env=small",
        "episodes=2",
        f"out={out}",
        f"docs={docs}",
        f"hydra.run.dir={tmp_path / 'run'}",
    ]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    rows, record = fidelity.read_json(out)
    assert [r.key for r in rows] == [f.key for f in FACTS] and record["preset"] == "small"
    assert "<!-- fidelity:small -->" in docs.read_text() and (tmp_path / "run" / "provenance.json").exists()
    assert "billing_learned.uniform" in done.stdout


def test_unknown_key_fails_at_compose_time(tmp_path):
    cmd = [sys.executable, "-m", "experiments.fidelity", "env=small", "episodez=2", f"hydra.run.dir={tmp_path}"]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode != 0 and "episodez" in done.stderr
