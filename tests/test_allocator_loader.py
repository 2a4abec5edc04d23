"""The production loader: light imports, input checks, bundle checks, fallbacks, CLI.

Every bad input must raise a clear error that names the problem, and never return an allocation.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from bundle_runs import make_run

from agents.allocator import (
    FUNNEL,
    INPUT_COLUMNS,
    MAX_AMOUNT,
    MAX_DAYS,
    MAX_PLANS,
    SCHEMA_VERSION,
    AllocationInputError,
    Bundle,
    BundleError,
    Heuristic,
    load_allocator,
    project_shares,
    read_stats_csv,
)
from agents.export import export_bundle
from agents.heuristics import ProportionalAllocator
from envs import scenario
from envs.features import VOCABULARIES, Clock, observation_size

ROOT = Path(__file__).resolve().parent.parent
HEAVY_MODULES = ("torch", "stable_baselines3", "sb3_contrib", "numba", "hydra", "omegaconf", "pandas", "scipy", "onnx")


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory) -> Path:
    run = make_run(tmp_path_factory.mktemp("runs"), "ppo", "mlp", "small")
    return export_bundle(run, run / "bundle")


@pytest.fixture(scope="module")
def bundle(bundle_dir) -> Bundle:
    return Bundle.load(bundle_dir)


@pytest.fixture
def table(bundle_dir) -> dict[str, list[str]]:
    """The bundle's example request as a dict of columns (strings, as read from the CSV)."""
    return read_stats_csv(bundle_dir / "example_stats.csv")


@pytest.fixture
def clock(bundle) -> Clock:
    return Clock(**bundle.manifest["example"]["clock"])


def test_import_pulls_no_research_stack():
    code = "import json, sys, agents.allocator; print(json.dumps(sorted(sys.modules)))"
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    loaded = {name.split(".")[0] for name in json.loads(done.stdout)}
    assert "onnxruntime" in loaded
    assert not loaded & set(HEAVY_MODULES), sorted(loaded & set(HEAVY_MODULES))


def test_table_forms_give_the_same_allocation(bundle, table, clock):
    pandas = pytest.importorskip("pandas")
    records = [dict(zip(table, values, strict=True)) for values in zip(*table.values(), strict=True)]
    numeric = {k: (v if k == "plan_id" or k in VOCABULARIES else [float(x) for x in v]) for k, v in table.items()}
    results = [bundle.allocate(t, clock) for t in (table, records, numeric, pandas.DataFrame(numeric))]
    for other in results[1:]:
        assert other.plan_ids == results[0].plan_ids
        np.testing.assert_array_equal(other.shares, results[0].shares)
    first = results[0]
    assert first.shares.sum() == pytest.approx(1.0)
    assert first.budgets.sum() == pytest.approx(clock.budget_left_today - first.withheld)
    assert first.as_dict()["plans"][0]["plan_id"] == first.plan_ids[0]


def test_inactive_plans_get_nothing_and_keep_their_slot(bundle, table, clock):
    table["active"] = ["1"] * len(table["plan_id"])
    table["active"][1] = "0"
    allocation = bundle.allocate(table, clock)
    assert allocation.shares[1] == 0.0 and allocation.budgets[1] == 0.0
    assert allocation.shares.sum() == pytest.approx(1.0)


def _set(table: dict, column: str, value, row: int = 0) -> dict:
    table[column][row] = value
    return table


BAD_INPUTS = {
    "missing column": (lambda t: t.pop("clicks_24h") and t, r"missing column\(s\) \['clicks_24h'\]"),
    "extra column": (lambda t: t.update(cost=t["spend_total"]) or t, r"unexpected column\(s\) \['cost'\]"),
    "NaN spend": (lambda t: _set(t, "spend_total", "nan"), r"'spend_total' of plan 'plan000' is 'nan'"),
    "inf spend": (lambda t: _set(t, "spend_last", float("inf")), r"'spend_last' of plan 'plan000'.*finite"),
    "negative spend": (
        lambda t: _set(t, "spend_24h", "-1"),
        r"'spend_24h' of plan 'plan000' is -1.0; expected in \[0, 1e\+12\]",
    ),
    "absurd spend": (
        lambda t: _set(t, "spend_total", "3e13"),
        r"'spend_total' of plan 'plan000' is 30000000000000.0; expected in",
    ),
    "absurd count": (
        lambda t: _set(t, "impressions_total", "1e15", row=2),
        r"'impressions_total' of plan 'plan002' is 1000000000000000.0; expected in \[0, 1e\+12\]",
    ),
    "negative count": (lambda t: _set(t, "clicks_last", -3), r"'clicks_last' of plan 'plan000' is -3.0"),
    "not a number": (lambda t: _set(t, "impressions_total", "12k"), r"'impressions_total' of plan 'plan000' must be"),
    "unknown channel": (lambda t: _set(t, "channel", "tv"), r"'channel' of plan 'plan000' is 'tv'; expected one of"),
    "unknown vertical": (lambda t: _set(t, "vertical", "crypto"), r"'vertical' of plan 'plan000' is 'crypto'"),
    "unknown status": (
        lambda t: _set(t, "status", "paused", row=1),
        r"'status' of plan 'plan001' is 'paused'; expected one of \['learning', 'learned', 'failed'\]",
    ),
    "unknown goal": (
        lambda t: _set(t, "goal", "roas", row=2),
        r"'goal' of plan 'plan002' is 'roas'; expected one of \['shallow', 'deep', 'value'\]",
    ),
    "zero target CPA": (
        lambda t: _set(t, "target_cpa", "0"),
        r"'target_cpa' of plan 'plan000' is 0.0; expected in \(0, 1e\+12\]",
    ),
    "clicks above impressions": (
        lambda t: _set(t, "clicks_24h", str(float(t["impressions_24h"][1]) + 1), row=1),
        r"'clicks_24h' of plan 'plan001' is \d+\.0, above 'impressions_24h' = \d+\.0; expected at most impressions_24h",
    ),
    "conversions above clicks": (
        lambda t: _set(t, "conversions_last", str(float(t["clicks_last"][0]) + 1)),
        r"'conversions_last' of plan 'plan000' is \d+\.0, above 'clicks_last'",
    ),
    "deep events above conversions": (
        lambda t: _set(t, "deep_events_total", str(float(t["conversions_total"][3]) + 2), row=3),
        r"'deep_events_total' of plan 'plan003' is \d+\.0, above 'conversions_total'",
    ),
    "bad flag": (lambda t: _set(t, "active", "2"), r"'active' of plan 'plan000' is 2.0; expected 0 or 1"),
    "duplicate plan id": (lambda t: _set(t, "plan_id", t["plan_id"][1]), r"'plan_id' has duplicates: \['plan001'\]"),
    "no plans": (lambda t: {k: [] for k in t}, r"no plans"),
    "too many plans": (
        lambda t: {k: (v * 2 if k != "plan_id" else [f"p{i}" for i in range(2 * len(v))]) for k, v in t.items()},
        r"12 plans given, but this allocator takes at most 6: a mlp policy trained on 6 plans left slots 6..7",
    ),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_is_refused_with_a_clear_error(bundle, table, clock, case):
    mutate, message = BAD_INPUTS[case]
    with pytest.raises(AllocationInputError, match=message):
        bundle.allocate(mutate(table), clock)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"hour": 24}, "hour must be an integer in 0..23"),
        ({"day": 2}, r"day must be an integer in 0..days-1 = 1"),
        ({"daily_budget": -5.0}, "daily_budget must be a positive number"),
        ({"daily_budget": 1e13, "budget_left_today": 1e13}, r"daily_budget must be a positive number <= 1e\+12"),
        ({"days": 10**400}, r"days must be an integer in 1..366"),
        ({"budget_left_today": float("nan")}, "budget_left_today must be a number >= 0"),
        ({"budget_left_today": 1e9}, "exceeds daily_budget"),
    ],
)
def test_bad_clock_is_refused(bundle, table, clock, fields, message):
    bad = Clock(**{**clock.__dict__, **fields})
    with pytest.raises(AllocationInputError, match=message):
        bundle.allocate(table, bad)


def test_wrong_observation_width_is_refused(bundle):
    width = observation_size(8)
    with pytest.raises(AllocationInputError, match=rf"shape \(batch, {width}\)"):
        bundle.policy_shares(np.zeros((1, width + 1), np.float32), np.ones((1, 8), np.float32))
    with pytest.raises(AllocationInputError, match="NaN"):
        bundle.policy_shares(np.full((1, width), np.nan, np.float32), np.ones((1, 8), np.float32))


@pytest.fixture
def bundle_copy(bundle_dir, tmp_path) -> Path:
    return Path(shutil.copytree(bundle_dir, tmp_path / "bundle"))


def _edit_manifest(path: Path, edit) -> None:
    manifest = json.loads((path / "manifest.json").read_text())
    edit(manifest)
    (path / "manifest.json").write_text(json.dumps(manifest))


def test_a_bundle_of_the_retired_schema_1_is_refused_and_says_why(bundle_copy):
    _edit_manifest(bundle_copy, lambda m: m.update(schema_version=1))
    with pytest.raises(
        BundleError, match=r"schema_version 1 is no longer served: .*before the platform layer.*re-train"
    ):
        Bundle.load(bundle_copy)


def test_newer_schema_is_refused(bundle_copy):
    _edit_manifest(bundle_copy, lambda m: m.update(schema_version=SCHEMA_VERSION + 1))
    with pytest.raises(BundleError, match=f"schema_version {SCHEMA_VERSION + 1} is newer than this loader"):
        Bundle.load(bundle_copy)


def test_tampered_policy_is_refused(bundle_copy):
    policy = bundle_copy / "policy.onnx"
    data = bytearray(policy.read_bytes())
    data[-10] ^= 0xFF  # one flipped byte in a weight
    policy.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="sha256 .* the manifest says .*modified or corrupted"):
        Bundle.load(bundle_copy)


def test_foreign_feature_layout_is_refused(bundle_copy):
    _edit_manifest(bundle_copy, lambda m: m["features"][3].update(name="plan0.cost_total"))
    with pytest.raises(BundleError, match=r"differs from envs.features today .* position 3: 'plan0.cost_total'"):
        Bundle.load(bundle_copy)


def test_missing_files_are_named(bundle_copy):
    (bundle_copy / "manifest.json").unlink()
    with pytest.raises(BundleError, match="manifest.json is missing"):
        Bundle.load(bundle_copy)


def test_fallback_is_the_research_heuristic(table, clock):
    fallback = load_allocator(None)
    assert isinstance(fallback, Heuristic) and fallback.name == "proportional"
    allocation = fallback.allocate(table, clock)
    parsed = fallback.parse(table)
    expected = ProportionalAllocator().allocate(parsed.stats, clock, parsed.active)
    np.testing.assert_array_equal(allocation.shares, expected)
    # Value per cost decides: a plan with the best matured deep value per spend gets the largest share.
    table["deep_value_total"][2] = str(50 * float(table["spend_total"][2]) + 1e5)
    assert load_allocator("proportional").allocate(table, clock).shares.argmax() == 2
    uniform = load_allocator("uniform").allocate(table, clock)
    np.testing.assert_allclose(uniform.shares, 1.0 / len(table["plan_id"]))


def test_funnel_rules_name_real_columns_and_bounds_are_the_simulators():
    assert {name for pair in FUNNEL for name in pair} <= set(INPUT_COLUMNS)
    assert (MAX_PLANS, MAX_DAYS, MAX_AMOUNT) == (scenario.MAX_PLANS, scenario.MAX_DAYS, scenario.MAX_MONEY)


def test_fallback_takes_at_most_max_plans(table, clock):
    huge = {k: v * (MAX_PLANS // len(v) + 1) for k, v in table.items()}
    huge["plan_id"] = [f"p{i}" for i in range(len(huge["plan_id"]))]
    with pytest.raises(AllocationInputError, match=f"plans given, but this allocator takes at most {MAX_PLANS}"):
        load_allocator("uniform").allocate(huge, clock)


@pytest.mark.parametrize(
    ("caps", "message"),
    [
        ({"credit": -1}, r"'vertical_caps.credit' is -1; expected a number in \(0, 1\]"),
        ({"tv": 0.5}, "names vertical 'tv'"),
    ],
)
def test_fallback_refuses_bad_caps(caps, message):
    with pytest.raises(ValueError, match=message):
        Heuristic("proportional", vertical_caps=caps)


@pytest.mark.parametrize(
    ("previous", "message"),
    [
        ({"plan000": float("nan")}, r"previous share nan of plan 'plan000'; expected a number in \[0, 1\]"),
        ({"plan001": -0.2}, r"previous share -0.2 of plan 'plan001'"),
        ({"plan000": 0.7, "plan001": 0.6}, r"previous shares sum to 1.3; expected at most 1"),
    ],
)
def test_bad_previous_shares_are_refused(bundle, table, clock, previous, message):
    with pytest.raises(AllocationInputError, match=message):
        bundle.allocate(table, clock, previous)


def test_share_limits_hold_for_the_loader_as_in_the_env():
    """The loader applies the env's own share limits (envs.shares): bounds hold and shares sum to 1."""
    rng = np.random.default_rng(0)
    for _ in range(200):
        n = int(rng.integers(2, 12))
        active = rng.random(n) < 0.8
        active[0] = True
        shares = rng.dirichlet(np.ones(n)) * active
        shares /= shares.sum()
        previous = rng.dirichlet(np.ones(n)) * active if rng.random() < 0.7 else np.zeros(n)
        lo, hi = (rng.uniform(0, 1.0 / n), 1.0) if rng.random() < 0.5 else (0.0, rng.uniform(1.0 / active.sum(), 1.0))
        max_change = rng.uniform(0.01, 0.3) if rng.random() < 0.6 else None
        out = project_shares(shares, previous, active, lo, hi, max_change)
        assert out.sum() == pytest.approx(1.0) and np.all(out[~active] == 0)
        if max_change is None:
            assert np.all(out[active] >= lo - 1e-9) and np.all(out <= hi + 1e-9)


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "agents.allocator", *args], cwd=ROOT, capture_output=True, text=True, timeout=120
    )


def test_cli_prints_the_allocation(bundle_dir):
    done = _cli(str(bundle_dir), str(bundle_dir / "example_stats.csv"), "--budget", "50000", "--hour", "14")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["allocator"] == "bundle:PPO" and result["budget_left_today"] == 50000.0
    assert sum(p["budget"] for p in result["plans"]) == pytest.approx(50000.0 - result["withheld"])
    assert [p["plan_id"] for p in result["plans"]] == read_stats_csv(bundle_dir / "example_stats.csv")["plan_id"]
    fallback = _cli("proportional", str(bundle_dir / "example_stats.csv"), "--budget", "50000", "--hour", "14")
    assert fallback.returncode == 0 and json.loads(fallback.stdout)["allocator"] == "proportional"


def test_cli_refuses_bad_files(bundle_dir, tmp_path):
    lines = (bundle_dir / "example_stats.csv").read_text().splitlines()
    header = lines[0].split(",")
    row = lines[1].split(",")
    row[header.index("spend_total")] = "NaN"
    bad = tmp_path / "bad.csv"
    bad.write_text("\n".join([lines[0], ",".join(row), *lines[2:]]) + "\n")
    done = _cli(str(bundle_dir), str(bad), "--budget", "50000", "--hour", "14")
    assert done.returncode == 2 and done.stdout == ""
    assert "'spend_total' of plan 'plan000' is 'NaN'" in done.stderr
    done = _cli(str(tmp_path), str(bundle_dir / "example_stats.csv"), "--budget", "50000", "--hour", "14")
    assert done.returncode == 2 and "manifest.json is missing" in done.stderr
    assert header[: len(INPUT_COLUMNS)] == list(INPUT_COLUMNS)
