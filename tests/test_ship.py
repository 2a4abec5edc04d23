"""Shipping a bundle with the package (experiments/ship.py) and loading it by name (agents.allocator)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from bundle_runs import make_run

from agents.allocator import (
    DIGEST_FILE,
    MANIFEST_FILE,
    SHIPPED_BUNDLES,
    SHIPPED_DIR,
    Bundle,
    BundleError,
    load_allocator,
    read_stats_csv,
)
from agents.export import export_bundle
from envs.features import Clock
from experiments.ship import ShipError, ship


def _evaluated(results: Path, agent: str, run: Path | None, folder: str = "0_default") -> None:
    """An evaluation run folder of ``agent`` under ``results/eval`` whose config names training run ``run``."""
    where = results / "eval" / agent / folder
    where.mkdir(parents=True)
    (where / "config.yaml").write_text(yaml.safe_dump({"agent": {"name": agent, "kind": "trained", "run": str(run)}}))


def _results(root: Path) -> Path:
    """A main-job results folder: a trained run's bundle, its evaluation runs and a report naming the agent
    ``generalist``."""
    results = root / "results"
    run = make_run(root / "runs", "ppo", "set", "small")
    export_bundle(run, results / "train" / "bundle")
    _evaluated(results, "generalist", results / "train")
    summary = pd.DataFrame(
        [{"env": e, "agent": "generalist", "seeds": 5, "episodes": 20, "score_iqm": s, "score_ci_low": s - 1,
          "score_ci_high": s + 1, "normalised_iqm": 0.1} for e, s in (("default", 700.0), ("credit", 600.0))]
    )  # fmt: skip
    paired = pd.DataFrame(
        [{"env": "default", "agent": "generalist", "baseline": "boost", "role": "best heuristic", "episodes": 20,
          "diff": -8.0, "diff_ci_low": -80.0, "diff_ci_high": 70.0, "diff_pct": -0.01, "poi": 0.5,
          "verdict": "not resolved"}]
    )  # fmt: skip
    summary.to_csv(results / "summary.csv", index=False)
    paired.to_csv(results / "paired.csv", index=False)
    return results


def test_ship_records_the_scores_and_pins_a_new_digest(tmp_path):
    results = _results(tmp_path)
    out = tmp_path / "shipped"
    digest = ship(results, "generalist", out)
    assert (out / DIGEST_FILE).read_text().strip() == digest
    Bundle.load(out, expected_digest=digest)
    manifest = json.loads((out / MANIFEST_FILE).read_text())
    evaluation = manifest["training"]["evaluation"]
    assert evaluation["agent"] == "generalist" and set(evaluation["per_env"]) == {"default", "credit"}
    default = evaluation["per_env"]["default"]
    assert default["score_iqm"] == 700.0 and default["vs_best_heuristic"]["baseline"] == "boost"
    assert "run_dir" not in manifest["training"]  # no path of the training machine
    (out / MANIFEST_FILE).write_text(json.dumps({**manifest, "algorithm": "edited"}))
    with pytest.raises(BundleError, match="expected the pinned"):
        Bundle.load(out, expected_digest=digest)


def test_ship_takes_the_bundle_of_the_run_the_report_scored(tmp_path):
    # The agent's evaluation runs name its training run; ship copies that run's bundle, not whatever
    # <results>/train holds (a longer run evaluated into a main job's results folder is another model).
    results = _results(tmp_path)
    other = tmp_path / "longer" / "train"
    export_bundle(make_run(tmp_path / "runs_longer", "ppo", "set", "small"), other / "bundle")
    (other / "bundle" / "manifest.json").write_text(
        json.dumps({**json.loads((other / "bundle" / "manifest.json").read_text()), "algorithm": "PPO-longer"})
    )
    _evaluated(results, "generalist_long", other)
    summary = pd.read_csv(results / "summary.csv")
    both = [summary, summary.assign(agent="generalist_long"), summary.assign(agent="ghost")]  # ghost: no eval runs
    pd.concat(both).to_csv(results / "summary.csv", index=False)
    ship(results, "generalist_long", tmp_path / "long")
    assert json.loads((tmp_path / "long" / MANIFEST_FILE).read_text())["algorithm"] == "PPO-longer"
    ship(results, "generalist", tmp_path / "main")
    assert json.loads((tmp_path / "main" / MANIFEST_FILE).read_text())["algorithm"] != "PPO-longer"
    # Runs of one agent naming two training runs, or none, are refused.
    _evaluated(results, "generalist", other, folder="1_credit")
    with pytest.raises(ShipError, match=r"do not all name one training run"):
        ship(results, "generalist", tmp_path / "mixed")
    with pytest.raises(ShipError, match=r"no evaluation run of agent 'ghost'"):
        ship(results, "ghost", tmp_path / "ghost")


def test_ship_refuses_an_agent_the_report_does_not_hold(tmp_path):
    results = _results(tmp_path)
    with pytest.raises(ShipError, match=r"agent 'nobody' is not in .*summary.csv; agents there: \['generalist'\]"):
        ship(results, "nobody", tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("name", sorted(SHIPPED_BUNDLES))
def test_a_shipped_bundle_loads_by_name_and_reproduces_its_example(name):
    """What `python -m agents.allocator generalist stats.csv ...` relies on after a fresh install."""
    allocator = load_allocator(name)
    manifest = json.loads((SHIPPED_DIR / name / MANIFEST_FILE).read_text())
    example = manifest["example"]
    stats = read_stats_csv(SHIPPED_DIR / name / example["file"])
    clock = Clock(**example["clock"])
    allocation = allocator.allocate(stats, clock)
    if "expected_policy_tilt" in example:  # a rank_residual bundle: the graph's tilt, then the stateful fill
        obs, mask = allocator.observe(allocator.parse(stats), clock)
        tilt = allocator.policy_tilt(obs[None], mask[None])[0, : len(allocation.plan_ids)]
        expected = np.array([example["expected_policy_tilt"][p] for p in allocation.plan_ids])
        on = expected > 0  # 0: a plan inactive in the example
        assert np.all(tilt[~on] == 0) and np.abs(tilt[on] / expected[on] - 1.0).max() <= 1e-5
        assert set(allocation.state["capacity"]) == set(allocation.plan_ids)
        assert allocation.shares.sum() == pytest.approx(1.0)
    else:
        expected = np.array([example["expected_policy_shares"][p] for p in allocation.plan_ids])
        assert np.abs(allocation.shares - expected).max() <= 1e-5
    assert manifest["training"]["evaluation"]["per_env"], "a shipped bundle records how it scored"
    assert manifest["training"]["config"]["family"]["name"] == "finance"


@pytest.mark.parametrize("name", sorted(SHIPPED_BUNDLES))
def test_a_changed_shipped_bundle_is_refused(name, tmp_path):
    copy = tmp_path / name
    shutil.copytree(SHIPPED_DIR / name, copy)
    manifest = json.loads((copy / MANIFEST_FILE).read_text())
    manifest["temperature"] = manifest["temperature"] * 2
    (copy / MANIFEST_FILE).write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="expected the pinned"):
        Bundle.load(copy, expected_digest=SHIPPED_BUNDLES[name])


def test_ship_never_replaces_a_folder_that_is_not_a_bundle_nor_the_source(tmp_path):
    results = _results(tmp_path)
    keep = tmp_path / "keep"
    keep.mkdir()
    (keep / "notes.txt").write_text("mine")
    with pytest.raises(ShipError, match="exists and is not a bundle"):
        ship(results, "generalist", keep)
    assert (keep / "notes.txt").read_text() == "mine"
    with pytest.raises(ShipError, match="is the bundle being shipped"):
        ship(results, "generalist", results / "train" / "bundle")
    (results / "paired.csv").write_text("env,agent\ndefault,generalist\n")
    with pytest.raises(ShipError, match=r"paired.csv lacks the column\(s\) \['role'\]"):
        ship(results, "generalist", tmp_path / "out")


def test_a_folder_named_like_a_shipped_bundle_is_not_silently_shadowed(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "generalist").mkdir()
    with pytest.raises(BundleError, match="names both the shipped bundle and a folder here"):
        load_allocator("generalist")
