"""Paired comparisons in the report: allocators compared on the episodes they both played.

The run folders are written by hand (what ``experiments.evaluate`` writes, with chosen scores), so
each case's right answer is known: a small, consistent gap under large episode-to-episode
variation that only pairing resolves; a gap that pairing must not resolve; runs whose episodes do
not match; the probability of improvement and the performance profile on cases small enough to
work out by hand.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from rliable import library as rly
from rliable import metrics as rly_metrics

from experiments.report import build_report
from experiments.stats import (
    paired_improvement,
    paired_interval,
    paired_interval_rliable,
    performance_profiles,
    score_distribution,
)
from experiments.sweep import EPISODE_METRICS, UNDEFINED_WITHOUT_CONVERSIONS

ENV = {"name": "toy", "daily_budget": 10000.0, "plans_per_account": 4}


def write_run(
    sweep: Path,
    agent: str,
    seed: int,
    scores: list[float],
    *,
    env: dict | None = None,
    folder: str | None = None,
    training_run: str | None = None,
) -> Path:
    """A finished run folder as ``experiments.evaluate`` leaves it (no steps table), with these episode scores.

    Episode ``i`` of seed ``s`` has env seed ``1000 * s + i``, the same for every allocator (as
    ``experiments.common.episode_seeds`` makes them). ``training_run``: a ``trained`` allocator loaded
    from that run (``agent.run``).
    """
    env = env or ENV
    run_dir = sweep / (folder or f"{env['name']}_{agent}_s{seed}")
    (run_dir / ".hydra").mkdir(parents=True)
    agent_cfg = {"name": agent, "kind": "heuristic"}
    if training_run is not None:
        agent_cfg = {"name": agent, "kind": "trained", "run": training_run}
    config = {"env": env, "agent": agent_cfg, "seed": seed, "episodes": len(scores)}
    config |= {"max_steps": None, "backend": "numba", "steps_table": "none"}
    for path in (run_dir / "config.yaml", run_dir / ".hydra" / "config.yaml"):
        path.write_text(yaml.safe_dump(config))
    episodes = []
    for i, score in enumerate(scores):
        metrics = {k: (None if k in UNDEFINED_WITHOUT_CONVERSIONS else 0.0) for k in EPISODE_METRICS}
        episodes.append({"episode": i, "env_seed": 1000 * seed + i, "steps": 24, **metrics, "score": float(score)})
    mean = {k: (None if k in UNDEFINED_WITHOUT_CONVERSIONS else 0.0) for k in EPISODE_METRICS}
    mean["score"] = float(np.mean(scores))
    metrics_json = {
        "agent": agent,
        "kind": agent_cfg["kind"],
        "env": env["name"],
        "seed": seed,
        "episodes": len(scores),
    }
    metrics_json |= {"mean": mean, "per_episode": episodes}
    (run_dir / "metrics.json").write_text(json.dumps(metrics_json))
    return run_dir


SEEDS, EPISODES = range(4), 6


def write_sweep(sweep: Path, gap: dict[str, np.ndarray]) -> np.ndarray:
    """uniform, oracle, boost and the allocators in ``gap`` on the same episodes; returns boost's scores.

    Episode difficulty varies a lot (boost's score: 100,000 x lognormal with sigma 0.25); each other
    allocator scores boost's score plus its ``gap`` (one value per episode, seeds x episodes).
    """
    rng = np.random.default_rng(7)
    boost = 100_000 * np.exp(rng.normal(0.0, 0.25, (len(SEEDS), EPISODES)))
    offsets = {"uniform": -20_000.0, "oracle": 60_000.0, "boost": 0.0, **gap}
    for agent, offset in offsets.items():
        scores = boost + np.broadcast_to(offset, boost.shape)
        for seed in SEEDS:
            write_run(sweep, agent, seed, list(scores[seed]))
    return boost


def comparison(result: dict, agent: str, baseline: str, env: str = "toy") -> pd.Series:
    paired = result["paired"]
    rows = paired[(paired.env == env) & (paired.agent == agent) & (paired.baseline == baseline)]
    assert len(rows) == 1, paired[["env", "agent", "baseline"]]
    return rows.iloc[0]


def test_pairing_resolves_a_small_consistent_gap_that_marginal_intervals_do_not(tmp_path):
    # thompson scores 2% of a typical episode more than boost on every episode, give or take 0.5%.
    gap = 2000.0 + np.random.default_rng(3).normal(0.0, 500.0, (len(SEEDS), EPISODES))
    write_sweep(tmp_path, {"thompson": gap})
    result = build_report(tmp_path, reps=1000)

    summary = result["summary"].set_index("agent")
    thompson, boost = summary.loc["thompson"], summary.loc["boost"]
    # The premise: the marginal IQM intervals overlap, they cannot tell the two apart.
    assert thompson.score_ci_low < boost.score_ci_high

    row = comparison(result, "boost", "thompson")  # thompson is the best heuristic now
    assert row.role == "best heuristic" and row.episodes == len(SEEDS) * EPISODES
    assert row["diff"] == pytest.approx(-gap.mean())
    assert row.diff_ci_high < 0 and row.verdict == "worse"
    assert row.poi == 0.0 and not row.note
    # The summary carries the same comparison for boost.
    assert summary.loc["boost", "vs_best"] == "thompson" and summary.loc["boost", "vs_best_verdict"] == "worse"
    report = result["report"].read_text()
    assert "**thompson beats boost** (toy): boost - thompson = -" in report
    assert pd.read_csv(tmp_path / "paired.csv").shape[0] == len(result["paired"])


def test_a_gap_that_flips_sign_from_episode_to_episode_is_not_resolved(tmp_path):
    # thompson wins half the episodes by 10,100 and loses the other half by 9,900: a mean of +100.
    gap = np.where(np.arange(len(SEEDS) * EPISODES).reshape(len(SEEDS), EPISODES) % 2 == 0, 10_100.0, -9_900.0)
    write_sweep(tmp_path, {"thompson": gap})
    result = build_report(tmp_path, reps=1000)

    row = comparison(result, "boost", "thompson")
    assert row["diff"] == pytest.approx(-100.0)
    assert row.diff_ci_low < 0 < row.diff_ci_high and row.verdict == "not resolved"
    assert row.poi == pytest.approx(0.5)
    report = result["report"].read_text()
    assert "beats boost" not in report and "boost beats thompson" not in report
    assert "boost vs thompson (toy): not resolved (interval includes 0): boost - thompson = -100 [" in report


def test_runs_whose_episodes_do_not_match_are_refused_naming_the_runs(tmp_path):
    write_sweep(tmp_path, {})
    # thompson ran the same seeds on a portfolio with another daily budget: same env seeds, other episodes.
    for seed in SEEDS:
        write_run(tmp_path, "thompson", seed, [90_000.0] * EPISODES, env={**ENV, "daily_budget": 20000.0})
    # proportional ran seeds nobody else ran: no episode in common.
    write_run(tmp_path, "proportional", 9, [70_000.0] * EPISODES)
    # static missed seed 3: compared on the rest, seed 3's episodes of the others listed as left out.
    for seed in SEEDS[:-1]:
        write_run(tmp_path, "static", seed, [80_000.0] * EPISODES)
    result = build_report(tmp_path, reps=500)

    refused = comparison(result, "thompson", "uniform")
    assert refused.verdict == "not compared" and np.isnan(refused["diff"])
    assert "different setups in `toy_thompson_s0` (thompson) and `toy_uniform_s0` (uniform)" in refused.note
    assert "env.daily_budget: 20000.0 vs 10000.0" in refused.note
    none_shared = comparison(result, "proportional", "boost")
    assert none_shared.verdict == "not compared"
    assert none_shared.note == (
        "no episode in common: proportional ran `toy_proportional_s9`, "
        "boost ran `toy_boost_s0`, `toy_boost_s1`, `toy_boost_s2`, `toy_boost_s3`"
    )
    partial = comparison(result, "static", "uniform")
    assert partial.episodes == 3 * EPISODES and partial.verdict in ("better", "worse", "not resolved")
    assert partial.note == f"{EPISODES} episodes of uniform have no counterpart in static (`toy_uniform_s3`): left out"

    report = result["report"].read_text()
    assert "## Episode matching" in report
    assert "- thompson vs uniform (toy): episodes with the same env seed ran under different setups" in report
    assert "thompson vs uniform (toy): not compared:" in report and "thompson beats" not in report


def test_an_allocator_holding_one_episode_twice_is_not_paired(tmp_path):
    write_sweep(tmp_path, {})
    # A second thompson config (other params, same name) over the same seed: which episode is "thompson's"?
    write_run(tmp_path, "thompson", 0, [1.0] * EPISODES, folder="toy_thompson_s0_a")
    other = write_run(tmp_path, "thompson", 0, [2.0] * EPISODES, folder="toy_thompson_s0_b")
    cfg = yaml.safe_load((other / "config.yaml").read_text()) | {"agent": {"name": "thompson", "kind": "x"}}
    for path in (other / "config.yaml", other / ".hydra" / "config.yaml"):
        path.write_text(yaml.safe_dump(cfg))
    result = build_report(tmp_path, reps=200)
    row = comparison(result, "thompson", "uniform")
    assert row.verdict == "not compared"
    assert row.note.startswith("thompson played the episode with env seed 0 more than once")
    assert "`toy_thompson_s0_a`, `toy_thompson_s0_b`" in row.note


def test_a_learned_allocator_is_paired_on_the_mean_over_its_training_runs(tmp_path):
    boost = write_sweep(tmp_path, {})
    # Three training seeds of one learned allocator on the same episodes: +3,000, -1,000 and +4,000 a
    # episode over boost, each with its own episode-to-episode noise; pooled, +2,000 on average.
    rng = np.random.default_rng(11)
    offsets = {"runs/a": 3000.0, "runs/b": -1000.0, "runs/c": 4000.0}
    scores = {}
    for i, (training_run, offset) in enumerate(offsets.items()):
        scores[training_run] = boost + offset + rng.normal(0.0, 300.0, boost.shape)
        for seed in SEEDS:
            folder = f"toy_generalist_s{seed}_{i}"
            write_run(
                tmp_path, "generalist", seed, list(scores[training_run][seed]), folder=folder, training_run=training_run
            )
    result = build_report(tmp_path, reps=1000)

    row = comparison(result, "generalist", "boost")
    pooled = np.mean(list(scores.values()), axis=0)
    assert row.training_runs == 3 and row.episodes == len(SEEDS) * EPISODES  # each env seed once, averaged
    assert row["diff"] == pytest.approx((pooled - boost).mean())
    assert row.diff_ci_low > 0 and row.verdict == "better" and not row.note
    assert comparison(result, "uniform", "boost").training_runs == 0
    report = result["report"].read_text()
    assert "**generalist beats boost** (toy)" in report
    assert "generalist's score the mean over its 3 training runs" in report
    summary = result["summary"].set_index("agent")
    assert summary.loc["generalist", "seeds"] == 3 * len(SEEDS)  # its runs: training runs x env seeds


def test_training_runs_that_played_different_episodes_are_not_pooled(tmp_path):
    boost = write_sweep(tmp_path, {})
    for seed in SEEDS:
        write_run(tmp_path, "generalist", seed, list(boost[seed] + 1000), folder=f"a_s{seed}", training_run="runs/a")
    for seed in SEEDS[:-1]:  # the second training run missed env seed 3's episodes
        write_run(tmp_path, "generalist", seed, list(boost[seed] + 2000), folder=f"b_s{seed}", training_run="runs/b")
    result = build_report(tmp_path, reps=200)

    row = comparison(result, "generalist", "boost")
    assert row.verdict == "not compared" and np.isnan(row["diff"])
    assert row.note.startswith("generalist's training runs `runs/a` and `runs/b` played different episodes")
    assert "`a_s3`" in row.note


def test_training_runs_are_pooled_only_where_the_allocator_is_the_same_everywhere(tmp_path):
    boost = write_sweep(tmp_path, {})
    other = {**ENV, "name": "toy2"}
    for seed in SEEDS:
        for agent, offset in {"uniform": -20_000.0, "oracle": 60_000.0, "boost": 0.0}.items():
            write_run(tmp_path, agent, seed, list(boost[seed] + offset), env=other)
        for run in ("runs/a", "runs/b"):  # on toy, runs a and b; on toy2, runs a and c
            write_run(
                tmp_path,
                "generalist",
                seed,
                list(boost[seed] + 1000),
                folder=f"toy_{run[-1]}_s{seed}",
                training_run=run,
            )
        for run in ("runs/a", "runs/c"):
            folder = f"toy2_{run[-1]}_s{seed}"
            write_run(
                tmp_path, "generalist", seed, list(boost[seed] + 1000), env=other, folder=folder, training_run=run
            )
    # A trained run and an untrained one under one name: which are its episodes?
    write_run(tmp_path, "mixed", 0, list(boost[0]), folder="mixed_trained", training_run="runs/m")
    write_run(tmp_path, "mixed", 1, list(boost[1]), folder="mixed_rule")
    result = build_report(tmp_path, reps=200)

    assert comparison(result, "generalist", "boost", env="toy").training_runs == 2
    row = comparison(result, "generalist", "boost", env="all")
    assert row.verdict == "not compared"
    assert (
        row.note
        == "generalist was trained by different runs on different envs (toy: runs/a, runs/b; toy2: runs/a, runs/c)"
    )
    mixed = comparison(result, "mixed", "boost")
    assert mixed.verdict == "not compared"
    assert mixed.note.startswith("mixed names both trained runs (`mixed_trained`) and runs that are not (`mixed_rule`)")


def test_a_training_run_without_env_seeds_is_not_left_out_silently(tmp_path):
    boost = write_sweep(tmp_path, {})
    for seed in SEEDS:
        write_run(tmp_path, "generalist", seed, list(boost[seed] + 1000), folder=f"a_s{seed}", training_run="runs/a")
        b = write_run(
            tmp_path, "generalist", seed, list(boost[seed] + 9000), folder=f"b_s{seed}", training_run="runs/b"
        )
        metrics = json.loads((b / "metrics.json").read_text())
        for episode in metrics["per_episode"]:
            del episode["env_seed"]  # an evaluator that recorded none
        (b / "metrics.json").write_text(json.dumps(metrics))
    row = comparison(build_report(tmp_path, reps=200), "generalist", "boost")
    assert row.verdict == "not compared"
    assert row.note.startswith("generalist's training run `runs/b` recorded no env seed (")


def test_probability_of_improvement_on_a_hand_computed_case():
    x = np.array([3.0, 1.0, 2.0, 2.0])
    y = np.array([1.0, 2.0, 2.0, 0.0])
    # Episode by episode: x wins, loses, ties (counts 1/2), wins: (1 + 0 + 0.5 + 1) / 4.
    assert paired_improvement(x, y) == 0.625
    assert paired_improvement(y, x) == 0.375
    # rliable's definition with each paired episode a task played once by each side.
    assert rly_metrics.probability_of_improvement(x[None, :], y[None, :]) == pytest.approx(0.625)


@pytest.mark.parametrize("shape", [(20, 1), (20, 7), (5, 3), (1, 1), (37, 2)])
def test_the_vectorised_paired_interval_is_rliables(shape):
    """The report's paired intervals (vectorised) equal rliable's own, resample for resample, and leave
    NumPy's global generator alone; the (37, 2) case rounds the differences so that ties occur."""
    diff = np.random.default_rng(sum(shape)).normal(size=shape)
    if shape == (37, 2):
        diff = np.round(diff)
    np.random.seed(123)  # noqa: NPY002
    before = np.random.get_state()[1].copy()  # noqa: NPY002
    fast = paired_interval(diff, reps=2000, seed=7)
    assert np.array_equal(np.random.get_state()[1], before)  # noqa: NPY002
    reference = paired_interval_rliable(diff, reps=2000, seed=7)
    assert fast.keys() == reference.keys()
    for key in fast:
        assert fast[key] == pytest.approx(reference[key], abs=1e-12), key
    assert fast["diff_ci_low"] <= fast["diff"] <= fast["diff_ci_high"]
    if shape[0] > 1:  # one episode resamples to itself whatever the seed
        assert paired_interval(diff, reps=2000, seed=8) != fast


def test_paired_interval_refuses_an_empty_or_flat_matrix():
    with pytest.raises(ValueError, match="non-empty"):
        paired_interval(np.zeros((0, 2)))
    with pytest.raises(ValueError, match=r"\(episodes, envs\)"):
        paired_interval(np.zeros(5))


def test_probability_of_improvement_in_the_report_counts_paired_episodes(tmp_path):
    # thompson beats boost on 18 of 24 episodes by 1,000, loses 6 by 500: P = 0.75 on the pairs,
    # while across episodes (unpaired) the two score distributions nearly coincide.
    gap = np.where(np.arange(len(SEEDS) * EPISODES).reshape(len(SEEDS), EPISODES) % 4 == 0, -500.0, 1_000.0)
    write_sweep(tmp_path, {"thompson": gap})
    result = build_report(tmp_path, reps=500)
    row = comparison(result, "boost", "thompson")
    assert row.poi == pytest.approx(0.25)
    assert row.poi_ci_low <= row.poi <= row.poi_ci_high
    assert comparison(result, "thompson", "uniform").poi == 1.0


def test_performance_profile_on_a_tiny_case():
    # References: uniform's mean 0 and oracle's 100, so a score of s is s / 100 normalised.
    table = pd.DataFrame({"env": "toy", "agent": ["uniform", "oracle"], "score": [0.0, 100.0]})
    episodes = pd.DataFrame({"env": "toy", "agent": "boost", "score": [0.0, 50.0, 100.0]})
    taus = np.array([-0.1, 0.0, 0.25, 0.5, 1.0])
    _, profiles, bands = performance_profiles(episodes, table, "toy", taus, reps=300)
    # Fraction of episodes with normalised score strictly above tau: {0, 0.5, 1} against each tau.
    np.testing.assert_allclose(profiles["boost"], [1.0, 2 / 3, 2 / 3, 1 / 3, 0.0])
    # rliable's own (unvectorised) score distribution agrees, on one env and on a (runs x tasks) matrix.
    matrix = np.array([[0.0, 0.2], [0.5, 0.9], [1.0, -1.0]])
    np.testing.assert_allclose(score_distribution(matrix, taus), rly.score_distributions(matrix, taus))
    assert bands["boost"].shape == (2, len(taus))
    assert (bands["boost"][0] <= profiles["boost"] + 1e-12).all() and (profiles["boost"] <= bands["boost"][1]).all()


def test_the_report_draws_the_profile_and_is_reproducible(tmp_path):
    write_sweep(tmp_path / "a", {"thompson": 1000.0})
    first = build_report(tmp_path / "a", reps=300)
    assert "](profile_toy.png)" in first["report"].read_text()
    assert (tmp_path / "a" / "profile_toy.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    profiles = pd.read_csv(tmp_path / "a" / "profiles.csv")
    assert set(profiles.agent) == {"uniform", "oracle", "boost", "thompson"}
    again = build_report(tmp_path / "a", reps=300, out=tmp_path / "b")
    pd.testing.assert_frame_equal(first["paired"], again["paired"])  # the bootstrap is seeded


def test_comparisons_over_several_envs_are_stratified_and_need_matching_episode_counts(tmp_path):
    write_sweep(tmp_path, {"thompson": 2000.0})
    other = {**ENV, "name": "toy2"}
    rng = np.random.default_rng(11)
    for seed in SEEDS:
        base = 50_000 * np.exp(rng.normal(0.0, 0.25, EPISODES))
        for agent, offset in {"uniform": -10_000.0, "oracle": 30_000.0, "boost": 0.0, "thompson": 1_000.0}.items():
            write_run(tmp_path, agent, seed, list(base + offset), env=other)
    result = build_report(tmp_path, reps=500)
    row = comparison(result, "boost", "thompson", env="all")
    # Each env's normalised gap: 2,000 / 80,000 and 1,000 / 40,000 = 0.025; the mean over envs.
    assert row.normalised_diff == pytest.approx(-0.025) and row.verdict == "worse"
    assert row.episodes == 2 * len(SEEDS) * EPISODES
    assert (tmp_path / "profile_all.png").exists()

    (tmp_path / "toy2_thompson_s3" / "metrics.json").unlink()  # a failed run: toy2 has fewer paired episodes
    result = build_report(tmp_path, reps=200)
    row = comparison(result, "boost", "thompson", env="all")
    assert row.verdict == "not compared" and "different numbers of paired episodes" in row.note
    assert comparison(result, "boost", "thompson", env="toy").verdict == "worse"
