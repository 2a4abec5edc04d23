"""Exported bundles give the trained model's shares: parity over rollouts, closed loop, manifest, CLI.

Models are untrained SB3 learners with spread-out actions and fitted VecNormalize statistics
(:mod:`bundle_runs`), for the flat MLP and the set policy, PPO and SAC. One run per observation
width: ``small`` (8 plan slots) and ``default`` (32; its bundle also serves ``credit``,
``insurance`` and ``securities``, which share the width and the temperature).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from bundle_runs import load_model, make_run, observations, sb3_shares

from agents.allocator import (
    DIGEST_FILE,
    INPUT_COLUMNS,
    PLAIN_SCHEMA_VERSION,
    SCHEMA_VERSION,
    Bundle,
    bundle_digest,
    read_stats_csv,
)
from agents.export import ExportError, export_bundle, read_run
from agents.sb3 import write_run_manifest
from envs.budget_env import BudgetShiftEnv
from envs.features import NUMERIC_STATS, VOCABULARIES, Clock, feature_names
from envs.scenario import load_scenario

ROOT = Path(__file__).resolve().parent.parent
N_PARITY = 10_000
TOLERANCE = 1e-5
#: The run whose bundle a preset's observations go through (same width and temperature).
RUN_PRESET = {
    "small": "small",
    "default": "default",
    "credit": "default",
    "insurance": "default",
    "securities": "default",
}
MODELS = [("ppo", "mlp"), ("ppo", "set"), ("sac", "mlp"), ("sac", "set")]


def _needs(policy: str) -> None:
    if policy == "set":
        pytest.importorskip("agents.sb3", reason="the set policy's normalisation lives in agents/sb3.py")


@pytest.fixture(scope="module")
def bundles(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    cache: dict[tuple[str, str, str], Path] = {}

    def get(algo: str, policy: str, preset: str) -> Path:
        _needs(policy)
        key = (algo, policy, preset)
        if key not in cache:
            run = make_run(root, algo, policy, preset, n_fit=1 if preset == "large" else 2000)  # large: 1 episode
            cache[key] = export_bundle(run, run / "bundle")
        return cache[key]

    return get


#: Set policies are ~3x slower to evaluate: on the presets that share default's width they run with -m slow.
PARITY_CASES = [
    pytest.param(
        algo, policy, preset, marks=[pytest.mark.slow] if policy == "set" and preset != RUN_PRESET[preset] else []
    )
    for algo, policy in MODELS
    for preset in RUN_PRESET
]


@pytest.mark.parametrize(("algo", "policy", "preset"), PARITY_CASES)
def test_parity_over_rollouts(bundles, algo, policy, preset):
    bundle_dir = bundles(algo, policy, RUN_PRESET[preset])
    bundle = Bundle.load(bundle_dir)
    model, vecnormalize = load_model(bundle_dir.parent)
    obs, masks = observations(preset, N_PARITY)
    expected = sb3_shares(model, vecnormalize, obs, masks, load_scenario(preset).temperature)
    got = bundle.policy_shares(obs, masks)
    diff = np.abs(got - expected)
    assert len(obs) >= N_PARITY
    assert diff.max() <= TOLERANCE, f"max abs diff {diff.max():.3g} at observation {diff.max(axis=1).argmax()}"
    # The check has teeth: shares are far from uniform and padded plans get exactly nothing.
    assert expected.max(axis=1).mean() > 2.0 / masks.sum(axis=1).mean()
    assert np.all(got[~masks] == 0.0)
    np.testing.assert_allclose(got.sum(axis=1), masks.any(axis=1).astype(float), atol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize(("algo", "policy"), [("ppo", "mlp"), ("ppo", "set")])
def test_parity_large(bundles, algo, policy):
    """``large`` (512 plan slots) is ~30 ms a step: one episode of observations."""
    bundle_dir = bundles(algo, policy, "large")
    model, vecnormalize = load_model(bundle_dir.parent)
    obs, masks = observations("large", 1)
    expected = sb3_shares(model, vecnormalize, obs, masks, load_scenario("large").temperature)
    assert np.abs(Bundle.load(bundle_dir).policy_shares(obs, masks) - expected).max() <= TOLERANCE


def plan_table(env: BudgetShiftEnv) -> list[dict]:
    """The env's reporting stats as a reporting API returns them: one row per plan, names not indices."""
    stats = env.reporting_stats()
    active = env.active_mask()
    rows = []
    for i in range(env.n_plans):
        row = {"plan_id": f"plan{i:03d}"}
        row.update({name: VOCABULARIES[name][stats[name][i]] for name in VOCABULARIES})
        row.update({name: float(stats[name][i]) for name in NUMERIC_STATS})
        row["active"] = int(active[i])
        rows.append(row)
    return rows


@pytest.mark.parametrize("preset", ["small", "default"])
@pytest.mark.parametrize(("algo", "policy"), MODELS)
def test_closed_loop_through_the_loader(bundles, algo, policy, preset):
    """An episode driven by the loader from reporting stats, with the SB3 model shadowing every step.

    At every step the loader's observation (rebuilt from the table) is the env's bit for bit, the
    loader's shares are the SB3 model's within the tolerance, and its budgets are what the env spends
    from (share x budget left today, after the compliance caps).
    The episode's score is its return. (Comparing with a *separate* SB3-driven episode's score is not a
    test: the simulator is chaotic in the budgets, so float32 rounding differences of ~1e-6 between torch
    and ONNX Runtime flip single auctions and the two trajectories part; see :mod:`agents.export`.)
    """
    bundle_dir = bundles(algo, policy, preset)
    bundle = Bundle.load(bundle_dir)
    model, vecnormalize = load_model(bundle_dir.parent)
    env = BudgetShiftEnv(preset)
    obs, _ = env.reset(seed=7)
    done, total, worst = False, 0.0, 0.0
    while not done:
        table = plan_table(env)
        clock = env.clock()
        allocation = bundle.allocate(table, clock)
        mask = np.zeros(env.max_plans, dtype=bool)
        mask[: env.n_plans] = env.active_mask()
        rebuilt, _ = bundle.observe(bundle.parse(table), clock)
        np.testing.assert_array_equal(rebuilt, obs)
        expected = sb3_shares(model, vecnormalize, obs[None], mask[None], env.scenario.temperature)[0, : env.n_plans]
        worst = max(worst, float(np.abs(allocation.shares - expected).max()))
        obs, reward, done, _, info = env.step_shares(allocation.shares)
        total += reward
        # The budgets are what the env spent from: its shares after limits and compliance caps.
        np.testing.assert_allclose(allocation.budgets / clock.budget_left_today, info["shares"], atol=1e-9)
    assert worst <= TOLERANCE
    assert total == pytest.approx(info["score"]["score"], rel=1e-9)


@pytest.mark.parametrize(("algo", "policy"), [("ppo", "mlp")])
def test_closed_loop_with_saturated_actions_gives_the_same_score(tmp_path, algo, policy):
    """Where rounding cannot matter, the loader's episode *is* the SB3 model's: the same score to the cent.

    With every action clipped at +-1 (a huge last layer), torch and ONNX Runtime give identical actions,
    so the loader-driven episode and the SB3-driven episode are the same trajectory.
    """
    import torch

    run = make_run(tmp_path, algo, policy, "small")
    model, _ = load_model(run)
    with torch.no_grad():
        model.policy.action_net.weight.mul_(1e4)
        model.policy.action_net.bias.mul_(1e4)
    model.save(run / "model.zip")
    write_run_manifest(run)  # the edit is ours: re-record the run's hashes
    bundle = Bundle.load(export_bundle(run, tmp_path / "bundle"))
    model, vecnormalize = load_model(run)
    scores = []
    for driver in ("sb3", "loader"):
        env = BudgetShiftEnv("small")
        obs, _ = env.reset(seed=3)
        done = False
        while not done:
            if driver == "sb3":
                action, _ = model.predict(vecnormalize.normalize_obs(obs[None]), deterministic=True)
                obs, _, done, _, info = env.step(action[0])
            else:
                obs, _, done, _, info = env.step_shares(bundle.allocate(plan_table(env), env.clock()).shares)
        scores.append(info["score"]["score"])
    assert scores[0] == scores[1]


def test_bundle_contents(bundles):
    bundle_dir = bundles("ppo", "mlp", "small")
    assert sorted(p.name for p in bundle_dir.iterdir()) == [
        "bundle.sha256",
        "example_stats.csv",
        "manifest.json",
        "policy.onnx",
    ]
    # The digest to pin covers the manifest and the graph as written; the loader accepts it pinned.
    digest = (bundle_dir / DIGEST_FILE).read_text().strip()
    assert digest == bundle_digest(bundle_dir)
    assert Bundle.load(bundle_dir, expected_digest=digest).digest == digest
    for path in bundle_dir.iterdir():
        assert not path.read_bytes().startswith(b"\x80"), f"{path.name} looks like a pickle"
    onnx.checker.check_model(onnx.load(str(bundle_dir / "policy.onnx")), full_check=True)
    manifest = json.loads((bundle_dir / "manifest.json").read_text())
    scenario = load_scenario("small")
    assert manifest["schema_version"] == PLAIN_SCHEMA_VERSION == SCHEMA_VERSION - 1 == 2  # 3 adds only the head
    assert [f["name"] for f in manifest["features"]] == feature_names(scenario.max_plans)
    assert all(f["meaning"] and f["unit"] for f in manifest["features"])
    assert manifest["max_plans"] == scenario.max_plans
    assert manifest["temperature"] == scenario.temperature
    assert manifest["algorithm"] == "PPO"
    assert manifest["training"]["config"]["agent"]["policy"] == "mlp"
    assert manifest["versions"]["torch"] and manifest["versions"]["onnxruntime"]
    assert manifest["parity"]["max_abs_diff"] <= TOLERANCE
    assert manifest["action_limits"] is None


def test_example_request_reproduces_the_trained_model(bundles):
    """example_stats.csv is a valid request, and the loader's answer is the one the manifest recorded."""
    bundle_dir = bundles("ppo", "mlp", "default")
    bundle = Bundle.load(bundle_dir)
    example = bundle.manifest["example"]
    stats = read_stats_csv(bundle_dir / "example_stats.csv")
    assert list(stats) == [*INPUT_COLUMNS, "active"]
    allocation = bundle.allocate(stats, Clock(**example["clock"]))
    expected = np.array([example["expected_policy_shares"][p] for p in allocation.plan_ids])
    assert np.abs(allocation.shares - expected).max() <= TOLERANCE
    # Compliance caps of the training scenario: recorded, and the budgets honour them (the shares are the policy's).
    caps = {v.name: v.max_spend_share for v in load_scenario("default").verticals if v.max_spend_share < 1.0}
    assert bundle.manifest["compliance_caps"] == caps
    left = example["clock"]["budget_left_today"]
    for vertical, cap in caps.items():
        in_vertical = np.array([v == vertical for v in stats["vertical"]])
        assert allocation.budgets[in_vertical].sum() <= cap * left + 1e-6


def test_action_limits_follow_the_training_env(tmp_path):
    """A scenario with min/max share and max change: the loader's shares are what the env would spend."""
    run = make_run(tmp_path, "ppo", "mlp", "small")
    config_path = run / "config.yaml"
    import yaml

    config = yaml.safe_load(config_path.read_text())
    config["env"].update(min_share=0.05, max_share=0.4, max_change=0.1)
    config_path.write_text(yaml.safe_dump(config))
    write_run_manifest(run)
    bundle = Bundle.load(export_bundle(run, tmp_path / "bundle"))
    assert bundle.manifest["action_limits"] == {"min_share": 0.05, "max_share": 0.4, "max_change": 0.1}
    env = BudgetShiftEnv(read_run(run).scenario)
    env.reset(seed=1)
    previous, done = None, False
    while not done:
        allocation = bundle.allocate(plan_table(env), env.clock(), previous)
        _, _, done, _, info = env.step_shares(allocation.shares)
        np.testing.assert_allclose(info["shares"], allocation.shares, atol=1e-9)  # the env had nothing to change
        assert allocation.shares.max() <= 0.4 + 1e-9 and allocation.shares.min() >= 0.05 - 1e-9
        left = allocation.budget_left_today
        previous = {p: b / left for p, b in zip(allocation.plan_ids, allocation.budgets, strict=True)}


def test_export_refuses_incomplete_runs(tmp_path):
    with pytest.raises(ExportError, match="model.zip is missing"):
        export_bundle(tmp_path, tmp_path / "bundle")
    run = make_run(tmp_path, "ppo", "mlp", "small")
    import yaml

    config = yaml.safe_load((run / "config.yaml").read_text())
    config["agent"]["algo"] = "RecurrentPPO"
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    write_run_manifest(run)
    with pytest.raises(ExportError, match="RecurrentPPO"):
        export_bundle(run, tmp_path / "bundle")


def test_export_cli(tmp_path):
    run = make_run(tmp_path, "sac", "mlp", "small")
    out = tmp_path / "out"
    done = subprocess.run(
        [sys.executable, "-m", "experiments.export", f"run={run}", f"out={out}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["parity"]["max_abs_diff"] <= TOLERANCE
    assert (out / "policy.onnx").is_file()
    bad = subprocess.run(
        [sys.executable, "-m", "experiments.export", f"run={run}", "outt=x"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode == 2 and "unknown key 'outt'" in bad.stderr


def test_set_policy_bundle_serves_any_order_and_size(bundles):
    """A set-policy bundle trained on 24 plans: reordered rows get the same shares, permuted; fewer plans work."""
    bundle_dir = bundles("ppo", "set", "default")
    bundle = Bundle.load(bundle_dir)
    table = read_stats_csv(bundle_dir / "example_stats.csv")
    clock = Clock(**bundle.manifest["example"]["clock"])
    allocation = bundle.allocate(table, clock)
    order = np.random.default_rng(0).permutation(len(table["plan_id"]))
    permuted = bundle.allocate({k: [v[i] for i in order] for k, v in table.items()}, clock)
    assert permuted.plan_ids == tuple(allocation.plan_ids[i] for i in order)
    np.testing.assert_allclose(permuted.shares, allocation.shares[order], atol=1e-6)
    few = bundle.allocate({k: v[:5] for k, v in table.items()}, clock)
    assert len(few.shares) == 5 and few.shares.sum() == pytest.approx(1.0)
    # More plans than in training, up to max_plans (32): the shared per-plan network scores them all.
    more = {k: v + v[:8] for k, v in table.items()}
    more["plan_id"] = [f"p{i}" for i in range(32)]
    assert bundle.manifest["plans_served"] == 32
    assert bundle.allocate(more, clock).shares.sum() == pytest.approx(1.0)
