"""Bundles edited, swapped or crafted after export: every one ends in a clear error, never in budgets.

An attacker (or a broken copy) can change ``policy.onnx``, ``manifest.json`` or both, and the inputs
a service passes in (stats CSV, ``--previous``). The manifest's hash of the graph only detects
corruption: whoever can write the graph can rewrite the hash too, so the swapped-graph cases below
also fix it up, and only the pinned bundle digest refuses them. On the CLI each case exits with
status 2, one ``error:`` line on stderr and nothing on stdout (no invalid JSON).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest
from bundle_runs import make_run
from onnx import TensorProto, helper

from agents import allocator
from agents.allocator import (
    DIGEST_FILE,
    AllocationInputError,
    Bundle,
    BundleError,
    bundle_digest,
    read_stats_csv,
)
from agents.export import export_bundle
from envs.features import N_PLAN_FEATURES, Clock, observation_size

ROOT = Path(__file__).resolve().parent.parent
WIDTH = observation_size(8)  # the exported bundle's (preset small: max_plans 8)


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> Path:
    run = make_run(tmp_path_factory.mktemp("runs"), "ppo", "mlp", "small")
    return export_bundle(run, run / "bundle")


@pytest.fixture
def bundle_dir(exported, tmp_path) -> Path:
    """A fresh copy of the exported bundle, free to edit."""
    return Path(shutil.copytree(exported, tmp_path / "bundle"))


@pytest.fixture
def table(exported) -> dict[str, list[str]]:
    return read_stats_csv(exported / "example_stats.csv")


@pytest.fixture
def clock(exported) -> Clock:
    return Clock(**json.loads((exported / "manifest.json").read_text())["example"]["clock"])


def _manifest(path: Path) -> dict:
    return json.loads((path / "manifest.json").read_text())


def _edit_manifest(path: Path, edit: Callable[[dict], object]) -> None:
    manifest = _manifest(path)
    edit(manifest)
    (path / "manifest.json").write_text(json.dumps(manifest))


def _rehash(path: Path) -> None:
    """What an attacker who swaps the graph does next: write its hash into the manifest."""
    digest = hashlib.sha256((path / "policy.onnx").read_bytes()).hexdigest()
    _edit_manifest(path, lambda m: m["policy"].update(sha256=digest))


def _write_graph(path: Path, kind: str) -> None:
    """A tiny graph with the bundle's inputs and output: ``shares = f(mask)``, the observation unused.

    ``uniform``: a valid policy (equal shares over the active plans); ``nan``, ``negative``, ``double``
    (each active plan gets 1, so shares sum to the number of plans) and ``leak`` (shares to masked-out
    slots too) are not.
    """
    manifest = _manifest(path)
    width, max_plans = manifest["observation_size"], manifest["max_plans"]
    const = {"nan": np.nan, "negative": -1.0, "double": 1.0}

    def scalar(name: str, value: float) -> onnx.TensorProto:
        return helper.make_tensor(name, TensorProto.FLOAT, [], [value])

    if kind == "uniform":
        nodes = [
            helper.make_node("ReduceSum", ["mask", "axis"], ["total"], keepdims=1),
            helper.make_node("Div", ["mask", "total"], ["raw"]),
        ]
        init = [helper.make_tensor("axis", TensorProto.INT64, [1], [1])]
    elif kind == "leak":
        nodes = [helper.make_node("Add", ["mask", "c"], ["sum"]), helper.make_node("Mul", ["sum", "half"], ["raw"])]
        init = [scalar("c", 1.0), scalar("half", 1.0 / (2 * max_plans))]
    else:
        nodes = [helper.make_node("Mul", ["mask", "c"], ["raw"])]
        init = [scalar("c", const[kind])]
    nodes.append(helper.make_node("Cast", ["raw"], ["shares"], to=TensorProto.DOUBLE))
    graph = helper.make_graph(
        nodes,
        kind,
        [
            helper.make_tensor_value_info("obs", TensorProto.FLOAT, ["batch", width]),
            helper.make_tensor_value_info("mask", TensorProto.FLOAT, ["batch", max_plans]),
        ],
        [helper.make_tensor_value_info("shares", TensorProto.DOUBLE, ["batch", max_plans])],
        init,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path / "policy.onnx"))


def _cli(*args: str | Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "agents.allocator", *map(str, args)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


def _allocate_cli(bundle: Path, stats: Path, *extra: str | Path) -> subprocess.CompletedProcess:
    return _cli(bundle, stats, "--budget", "50000", "--hour", "14", *extra)


def _assert_refused(done: subprocess.CompletedProcess, message: str) -> None:
    """Exit 2, nothing on stdout, one ``error:`` line on stderr that contains ``message``."""
    assert done.returncode == 2, done.stderr
    assert done.stdout == ""
    assert done.stderr.startswith("error: ") and done.stderr.count("\n") == 1, done.stderr
    assert message in done.stderr, done.stderr


# -------------------------------------------------------------------------------------------------
# The graph


def test_edited_graph_bytes_are_refused_as_corruption(bundle_dir):
    policy = bundle_dir / "policy.onnx"
    data = bytearray(policy.read_bytes())
    data[len(data) // 2] ^= 0x01
    policy.write_bytes(bytes(data))
    _assert_refused(
        _allocate_cli(bundle_dir, bundle_dir / "example_stats.csv"), "the file was modified or corrupted after export"
    )


def test_swapped_valid_graph_passes_the_manifest_hash_but_not_the_pinned_digest(bundle_dir, exported, table, clock):
    pinned = (exported / DIGEST_FILE).read_text().strip()
    _write_graph(bundle_dir, "uniform")
    _rehash(bundle_dir)
    # Unpinned, the swap is a well-formed bundle: the manifest's hash was rewritten with the graph.
    shares = Bundle.load(bundle_dir).allocate(table, clock).shares
    np.testing.assert_allclose(shares, 1.0 / len(table["plan_id"]))
    with pytest.raises(BundleError, match=f"expected the pinned {pinned}"):
        Bundle.load(bundle_dir, expected_digest=pinned)
    _assert_refused(
        _allocate_cli(bundle_dir, bundle_dir / "example_stats.csv", "--expect-digest", pinned),
        "is not the bundle this deployment pinned",
    )


def test_pinned_digest_accepts_the_exported_bundle(exported, table, clock):
    pinned = (exported / DIGEST_FILE).read_text().strip()
    assert pinned == bundle_digest(exported)
    assert Bundle.load(exported, expected_digest=pinned.upper()).allocate(table, clock).shares.sum() == pytest.approx(1)
    done = _cli("digest", exported)
    assert done.returncode == 0 and done.stdout.strip() == pinned, done.stderr
    done = _allocate_cli(exported, exported / "example_stats.csv", "--expect-digest", pinned)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["bundle_digest"] == pinned


def test_digest_covers_the_manifest(bundle_dir, exported):
    pinned = bundle_digest(exported)
    _edit_manifest(bundle_dir, lambda m: m["training"].update(scenario="renamed"))
    assert bundle_digest(bundle_dir) != pinned
    with pytest.raises(BundleError, match="not the bundle this deployment pinned"):
        Bundle.load(bundle_dir, expected_digest=pinned)


@pytest.mark.parametrize("digest", ["0" * 64, "abc", "g" * 64, ""])
def test_wrong_or_malformed_pinned_digest_is_refused(exported, digest):
    with pytest.raises(BundleError, match="digest"):
        Bundle.load(exported, expected_digest=digest)


def test_cli_refuses_a_pinned_digest_for_a_fallback(exported):
    _assert_refused(
        _allocate_cli("proportional", exported / "example_stats.csv", "--expect-digest", "0" * 64),
        "an expected digest pins a bundle",
    )


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("nan", r"NaN or infinite share\(s\) for plan\(s\) \['plan000', 'plan001'"),
        ("negative", r"negative share\(s\) for plan\(s\) \['plan000', 'plan001'"),
        ("double", r"returned shares that sum to 6 over the active plans; expected 1"),
        ("leak", r"non-zero share\(s\) outside the plan mask for padding slot\(s\) \[6, 7\]"),
    ],
)
def test_graph_with_invalid_output_is_refused(bundle_dir, table, clock, kind, message):
    _write_graph(bundle_dir, kind)
    _rehash(bundle_dir)
    bundle = Bundle.load(bundle_dir)
    with pytest.raises(BundleError, match=message):
        bundle.allocate(table, clock)


@pytest.mark.parametrize("kind", ["nan", "negative"])
def test_cli_never_prints_budgets_of_an_invalid_graph(bundle_dir, kind):
    _write_graph(bundle_dir, kind)
    _rehash(bundle_dir)
    _assert_refused(_allocate_cli(bundle_dir, bundle_dir / "example_stats.csv"), "share(s) for plan(s) ['plan000'")


# -------------------------------------------------------------------------------------------------
# The manifest: every schema violation is named


def _drop(key: str) -> Callable[[dict], object]:
    return lambda m: m.pop(key)


def _put(key: str, value: object) -> Callable[[dict], object]:
    return lambda m: m.update({key: value})


def _put_in(key: str, field: str, value: object) -> Callable[[dict], object]:
    return lambda m: m.__setitem__(key, {**(m[key] or {}), field: value})


MANIFEST_VIOLATIONS: dict[str, tuple[Callable[[dict], object], str]] = {
    "schema_version true": (_put("schema_version", True), r"field 'schema_version' is True; expected an integer"),
    "schema_version string": (_put("schema_version", "1"), r"field 'schema_version' is '1'; expected an integer"),
    "schema_version 0": (_put("schema_version", 0), r"field 'schema_version' is 0; expected an integer in 1\.\.3"),
    "schema_version missing": (_drop("schema_version"), r"field 'schema_version' is missing"),
    "max_plans float": (
        _put("max_plans", 1e8),
        r"field 'max_plans' is 100000000\.0; expected an integer in 1\.\.10,000",
    ),
    "max_plans huge": (_put("max_plans", 10**8), r"field 'max_plans' is 100000000; expected an integer in 1\.\.10,000"),
    "max_plans zero": (_put("max_plans", 0), r"field 'max_plans' is 0; expected an integer in 1\.\.10,000"),
    "max_plans bool": (_put("max_plans", True), r"field 'max_plans' is True"),
    "max_plans other": (
        _put("max_plans", 9),
        rf"field 'observation_size' is {WIDTH}; expected {observation_size(9)} \(max_plans=9\)",
    ),
    "observation_size": (_put("observation_size", WIDTH + 1), rf"'observation_size' is {WIDTH + 1}; expected {WIDTH}"),
    "features not a list": (_put("features", "plan0.active"), r"field 'features' is 'plan0.active'; expected a list"),
    "feature without name": (lambda m: m["features"][5].pop("name"), r"field 'features\[5\]\.name' is missing"),
    "feature renamed": (
        lambda m: m["features"][3].update(name="plan0.cost_total"),
        r"differs from envs.features today .* position 3: 'plan0.cost_total'",
    ),
    "policy hash not hex": (_put_in("policy", "sha256", "abc"), r"field 'policy.sha256' is 'abc'; expected 64 hex"),
    "policy file renamed": (_put_in("policy", "file", "other.onnx"), r"field 'policy.file' is 'other.onnx'"),
    "plans_served above max_plans": (
        _put("plans_served", 9),
        r"field 'plans_served' is 9; expected an integer in 1\.\.8",
    ),
    "plans_served zero": (_put("plans_served", 0), r"field 'plans_served' is 0"),
    "policy_kind": (_put("policy_kind", "rnn"), r"field 'policy_kind' is 'rnn'; expected one of \['mlp', 'set'\]"),
    "temperature": (_put("temperature", -5), r"field 'temperature' is -5; expected a positive number"),
    "n_plan_features": (
        _put("n_plan_features", N_PLAN_FEATURES - 1),
        rf"field 'n_plan_features' is {N_PLAN_FEATURES - 1}; expected {N_PLAN_FEATURES}",
    ),
    "min_share negative": (
        _put("action_limits", {"min_share": -0.1, "max_share": 1.0, "max_change": None}),
        r"field 'action_limits.min_share' is -0.1; expected a number in \[0, 1\]",
    ),
    "max_share above 1": (
        _put("action_limits", {"min_share": 0.0, "max_share": 1.5, "max_change": None}),
        r"field 'action_limits.max_share' is 1.5; expected a number in \[0, 1\]",
    ),
    "min_share above max_share": (
        _put("action_limits", {"min_share": 0.5, "max_share": 0.2, "max_change": None}),
        r"'action_limits.min_share' is 0.5; expected at most action_limits.max_share = 0.2",
    ),
    "max_change string": (
        _put("action_limits", {"min_share": 0.0, "max_share": 1.0, "max_change": "10%"}),
        r"field 'action_limits.max_change' is '10%'; expected null or a number in \[0, 1\]",
    ),
    "action_limits list": (_put("action_limits", [0.0, 1.0]), r"field 'action_limits' is \[0.0, 1.0\]; expected null"),
    "cap negative": (
        _put("compliance_caps", {"credit": -1}),
        r"field 'compliance_caps.credit' is -1; expected a numbe",
    ),
    "cap zero": (
        _put("compliance_caps", {"credit": 0}),
        r"'compliance_caps.credit' is 0; expected a number in \(0, 1\]",
    ),
    "cap above 1": (_put("compliance_caps", {"credit": 2}), r"'compliance_caps.credit' is 2; expected a number in"),
    "cap string": (_put("compliance_caps", {"credit": "0.3"}), r"'compliance_caps.credit' is '0.3'; expected a numb"),
    "cap unknown vertical": (_put("compliance_caps", {"crypto": 0.5}), r"'compliance_caps' names vertical 'crypto'"),
    "training days": (_put_in("training", "days", 0), r"field 'training.days' is 0; expected an integer in 1\.\.366"),
    "training not an object": (_put("training", "PPO"), r"field 'training' is 'PPO'; expected an object"),
    "unknown field": (_put("backdoor", 1), r"unknown field\(s\) \['backdoor'\]"),
    "algorithm": (_put("algorithm", 3), r"field 'algorithm' is 3; expected a string"),
}


@pytest.mark.parametrize("case", list(MANIFEST_VIOLATIONS))
def test_manifest_schema_violation_is_refused(bundle_dir, case):
    edit, message = MANIFEST_VIOLATIONS[case]
    _edit_manifest(bundle_dir, edit)
    with pytest.raises(BundleError, match=message):
        Bundle.load(bundle_dir)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (b'{"schema_version": 1, "max_plans": NaN}', r"NaN is not allowed"),
        (b'{"schema_version": 1, "schema_version": 2}', r"key 'schema_version' appears twice"),
        (b"[1, 2]", r"the document is \[1, 2\]; expected a JSON object"),
        (b'{"schema_version": 1,', r"is not valid JSON"),
        ('{"algorithm": "PPO"}'.encode("utf-16"), r"is not UTF-8"),
    ],
)
def test_malformed_manifest_file_is_refused(bundle_dir, text, message):
    (bundle_dir / "manifest.json").write_bytes(text)
    with pytest.raises(BundleError, match=message):
        Bundle.load(bundle_dir)


def test_oversized_bundle_files_are_refused_before_reading(bundle_dir, monkeypatch):
    size = (bundle_dir / "manifest.json").stat().st_size
    monkeypatch.setattr(allocator, "MAX_MANIFEST_BYTES", size - 1)
    with pytest.raises(BundleError, match=f"manifest.json is {size:,} bytes; a bundle's manifest is at most"):
        Bundle.load(bundle_dir)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (_put("schema_version", True), "field 'schema_version' is True"),
        (_put("compliance_caps", {"credit": -1}), "field 'compliance_caps.credit' is -1"),
        (_put("max_plans", 1e8), "field 'max_plans' is 100000000.0"),
    ],
)
def test_cli_refuses_a_malformed_manifest(bundle_dir, edit, message):
    _edit_manifest(bundle_dir, edit)
    _assert_refused(_allocate_cli(bundle_dir, bundle_dir / "example_stats.csv"), message)


# -------------------------------------------------------------------------------------------------
# Inputs: stats CSV and --previous


def _csv_rows(exported: Path) -> tuple[str, str]:
    lines = (exported / "example_stats.csv").read_text().splitlines()
    return lines[0], lines[1]


def test_huge_csv_is_refused_after_reading_max_plans_rows(exported, tmp_path):
    """A million rows: refused at row 7 (the bundle serves 6 plans); the rest is never read, let alone parsed."""
    header, row = _csv_rows(exported)
    rest = row.split(",", 1)[1]
    huge = tmp_path / "huge.csv"
    with open(huge, "wb") as f:
        f.write(f"{header}\n".encode())
        f.writelines(f"p{i},{rest}\n".encode() for i in range(7))
        f.write(b"p,\n" * 1_000_000)  # rows that would fail to parse
        f.write(b"\xff not UTF-8\n")
    with pytest.raises(AllocationInputError, match=r"huge.csv has more than 6 plan rows"):
        read_stats_csv(huge, max_plans=6)
    _assert_refused(_allocate_cli(exported, huge), "huge.csv has more than 6 plan rows")


def test_overlong_csv_line_is_refused(exported, tmp_path):
    header, row = _csv_rows(exported)
    long = tmp_path / "long.csv"
    long.write_text(f"{header}\n{'x' * 100_000}{row}\n")
    with pytest.raises(AllocationInputError, match=r"long.csv, line 2 is longer than 65,536 bytes"):
        read_stats_csv(long)


def test_non_utf8_csv_is_refused(exported, tmp_path):
    header, row = _csv_rows(exported)
    latin = tmp_path / "latin.csv"
    latin.write_bytes(f"{header}\n{row.replace('plan000', 'plän000')}\n".encode("latin-1"))
    with pytest.raises(AllocationInputError, match=r"latin.csv, line 2 is not UTF-8 text"):
        read_stats_csv(latin)
    _assert_refused(_allocate_cli(exported, latin), "latin.csv, line 2 is not UTF-8 text")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("budget_left_today: 5", "is not valid JSON"),
        ('{"plans": []}', "field 'budget_left_today' is missing"),
        ('{"budget_left_today": NaN, "plans": []}', "NaN is not allowed"),
        ('{"budget_left_today": 100, "plans": [{"plan_id": "plan000"}]}', "field 'plans[0].budget' is missing"),
        ('{"budget_left_today": 100, "plans": [{"plan_id": "plan000", "budget": -5}]}', "'plans[0].budget' is -5"),
        ('{"budget_left_today": 100, "plans": [{"plan_id": "plan000", "budget": 500}]}', "share 5.0 of plan 'plan000'"),
        ('{"budget_left_today": 100, "plans": {"plan000": 5}}', "field 'plans' is {'plan000': 5}; expected a list"),
    ],
)
def test_bad_previous_file_is_refused(exported, tmp_path, text, message):
    previous = tmp_path / "previous.json"
    previous.write_text(text)
    _assert_refused(_allocate_cli(exported, exported / "example_stats.csv", "--previous", previous), message)


def test_previous_allocation_round_trips(exported, tmp_path):
    """The CLI's own output is a valid ``--previous`` for the next hour."""
    first = _allocate_cli(exported, exported / "example_stats.csv")
    assert first.returncode == 0, first.stderr
    previous = tmp_path / "previous.json"
    previous.write_text(first.stdout)
    done = _allocate_cli(exported, exported / "example_stats.csv", "--previous", previous)
    assert done.returncode == 0, done.stderr
