"""Calibration from reporting logs: the log validator names row and field; fitted parameters recover a known
portfolio within their intervals; allocator rankings survive calibration; the what-if runs paired."""

from __future__ import annotations

import dataclasses
import math
import re
from pathlib import Path

import numpy as np
import pytest

from envs.budget_env import BudgetShiftEnv
from envs.calibrated import calibration_from_mapping, load_calibration
from envs.scenario import load_scenario
from experiments.calibrate import fit_log, main, write_calibration
from experiments.logs import LogError, read_log
from experiments.simulate import simulate_days
from experiments.whatif import MoveBudget, allocator_from_spec, parse_change, play, summarise


@pytest.fixture(scope="module")
def small_log(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("logs") / "small.csv"
    simulate_days("small", 0, "uniform", days=2, export_log=path)
    return path


def _rewrite(src: Path, dst: Path, edit) -> Path:
    lines = src.read_text().splitlines()
    dst.write_text("\n".join(edit(lines)) + "\n")
    return dst


def _set(line: str, header: str, field: str, value: str) -> str:
    cells = line.split(",")
    cells[header.split(",").index(field)] = value
    return ",".join(cells)


def test_sample_log_reads_back(small_log: Path) -> None:
    log = read_log(small_log, min_days=1)
    assert log.hours == 48 and log.n_plans == 6
    assert log.clicks.sum() > 0 and (log.clicks <= log.impressions).all()


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("impressions", "-60", "non-negative count"),
        ("clicks", "999999", "<= impressions"),
        ("channel", "television", "one of ['feed', 'network', 'search']"),
        ("spend", "abc", "a number"),
        ("conversions", "2.5", "a whole count"),
    ],
)
def test_bad_values_name_row_and_field(small_log: Path, tmp_path: Path, field: str, value: str, message: str) -> None:
    row = 10  # CSV line 10: the 9th data row

    def edit(lines):
        lines[row - 1] = _set(lines[row - 1], lines[0], field, value)
        return lines

    with pytest.raises(LogError, match=rf"row {row}, field {field}: .*{re.escape(message)}"):
        read_log(_rewrite(small_log, tmp_path / "bad.csv", edit), min_days=1)


def test_timestamps_out_of_order(small_log: Path, tmp_path: Path) -> None:
    def edit(lines):
        lines[20], lines[2] = lines[2], lines[20]  # a later hour's row moved up
        return lines

    with pytest.raises(LogError, match=r"row 4, field timestamp: .*out of order"):
        read_log(_rewrite(small_log, tmp_path / "order.csv", edit), min_days=1)


def test_gap_is_refused_naming_plan_and_hour(small_log: Path, tmp_path: Path) -> None:
    lines = small_log.read_text().splitlines()
    dropped = lines[30]
    plan, stamp = dropped.split(",")[0], dropped.split(",")[5]
    with pytest.raises(LogError, match=rf"field timestamp: plan {plan} has no row for {stamp} \(a gap"):
        read_log(_rewrite(small_log, tmp_path / "gap.csv", lambda ls: ls[:30] + ls[31:]), min_days=1)


def test_too_few_days_and_missing_column(small_log: Path, tmp_path: Path) -> None:
    with pytest.raises(LogError, match=r"field timestamp: the log covers 48 hours .* at least 7 days"):
        read_log(small_log)
    drop = lambda ls: [",".join(c for i, c in enumerate(line.split(",")) if i != 12) for line in ls]  # noqa: E731
    with pytest.raises(LogError, match=r"row 1 \(header\): missing column 'clicks'"):
        read_log(_rewrite(small_log, tmp_path / "cols.csv", drop), min_days=1)


def test_deep_events_beyond_their_parents(small_log: Path, tmp_path: Path) -> None:
    def edit(lines):
        lines[5] = _set(lines[5], lines[0], "deep_events_1", "50000")
        lines[5] = _set(lines[5], lines[0], "deep_value_1", "1")
        return lines

    with pytest.raises(LogError, match=r"field deep_events_1: plan .* out of funnel order"):
        read_log(_rewrite(small_log, tmp_path / "funnel.csv", edit), min_days=1)


def test_cli_refuses_with_one_error_line(small_log: Path, tmp_path: Path, capsys) -> None:
    assert main([str(small_log), "--out", str(tmp_path / "x.yaml")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "too few days" in err[0]


# -------------------------------------------------------------------------------------------------
# Parameter recovery


def _truth(preset: str, seed: int, days: int, path: Path):
    """The log of a known portfolio, and that portfolio (the env that wrote it)."""
    env = simulate_days(preset, seed, "uniform", days=days, export_log=path)
    return env, read_log(path)


def _effective_ctr(env, log) -> np.ndarray:
    """The truth's click probability per impression over the logged hours (fatigue as the kernel applies it)."""
    pf, sc = env.portfolio, env.scenario
    ctr_mult = np.array([c.ctr_mult for c in sc.channels])[pf.channel]
    seen = pf.prior_impressions + np.vstack([np.zeros(log.n_plans), np.cumsum(log.impressions, axis=0)[:-1]])
    fatigue = pf.fatigue_floor + (1 - pf.fatigue_floor) * np.exp(-seen / pf.fatigue_scale)
    p = np.minimum(1.0, pf.ctr * fatigue * ctr_mult)
    return (p * log.impressions).sum(axis=0) / np.maximum(log.impressions.sum(axis=0), 1)


def _effective_cvr(env, log, replays: int = 6) -> np.ndarray:
    """The truth's expected conversions per click on the traffic its plans win: the same portfolio and budgets
    replayed under fresh dynamics (the auction's user selection is a property of the portfolio, not a draw)."""
    pf0, sc = env.portfolio, env.scenario
    conv, clicks = np.zeros(log.n_plans), np.zeros(log.n_plans)
    for r in range(replays):
        truth = BudgetShiftEnv(
            sc, generator=lambda _sc, _rng, r=r: dataclasses.replace(pf0, key=pf0.key + 7919 * (r + 1))
        )
        truth.reset(seed=r)
        for _ in range(log.hours):
            _, _, _, _, info = truth.step_shares(np.ones(truth.n_plans) * truth.active_mask())
            conv += info["conversions"]
            clicks += info["clicks"]
    cvr_mult = np.array([c.cvr_mult for c in sc.channels])[pf0.channel]
    selection = (conv / np.maximum(clicks, 1)) / (pf0.cvr * cvr_mult)
    return pf0.cvr * cvr_mult * selection


def _coverage(preset: str, seed: int, days: int, tmp_path: Path) -> dict[str, float]:
    env, log = _truth(preset, seed, days, tmp_path / f"{preset}.csv")
    mapping = fit_log(log, seed=seed)
    plan_index = [int(pid.split("-P")[1]) - 1 for pid in log.plan_ids]
    pf = env.portfolio
    truth = {"ctr": _effective_ctr(env, log)[np.arange(log.n_plans)], "cvr": _effective_cvr(env, log)}
    hits: dict[str, list[bool]] = {"ctr": [], "cvr": [], "stage": []}
    for i, plan in enumerate(mapping["plans"]):
        p = plan_index[i]
        assert plan["plan_id"] == log.plan_ids[i] and p == i  # ids sort in the simulator's plan order
        for key in ("ctr", "cvr"):
            lo, hi = plan[key]["ci90"]
            hits[key].append(lo <= truth[key][p] <= hi)
        for s, st in enumerate(plan["stages"]):
            lo, hi = st["ci90"]
            hits["stage"].append(lo <= pf.stage_rate[p, s] <= hi)
    for v_name, stages in mapping["delays"].items():
        v = [x.name for x in env.scenario.verticals].index(v_name)
        for s, st in enumerate(stages):
            if st["identified"]:
                true_median = env.scenario.verticals[v].stages[s].delay_median_hours
                lo, hi = st["median_ci90_hours"]
                assert lo * 0.9 <= true_median <= hi * 1.1, (v_name, s, st, true_median)
    rates = hits["ctr"] + hits["cvr"] + hits["stage"]
    return {"all": float(np.mean(rates)), **{k: float(np.mean(v)) for k, v in hits.items()}}, env, log, mapping


@pytest.mark.slow
@pytest.mark.parametrize(("preset", "seed", "days"), [("credit", 5, 21), ("securities", 2, 14), ("default", 3, 28)])
def test_fitted_rates_cover_the_truth(preset: str, seed: int, days: int, tmp_path: Path) -> None:
    cover, *_ = _coverage(preset, seed, days, tmp_path)
    print(preset, seed, days, cover)
    # 90% intervals: at least ~0.8 of all plan rates cover the truth, and no family collapses.
    assert cover["all"] >= 0.8, cover
    assert min(cover["ctr"], cover["cvr"], cover["stage"]) >= 0.65, cover


def _mean_score(sc, generator, allocator: str, episodes: int) -> np.ndarray:
    from experiments.evaluate import run_episode

    env = BudgetShiftEnv(sc, generator=generator)
    alloc = allocator_from_spec(allocator)
    return np.array([run_episode(env, alloc, 1000 + e)[0]["score"] for e in range(episodes)])


def _calibration_gaps(preset: str, seed: int, days: int, path: Path, episodes: int) -> dict[str, np.ndarray]:
    """Paired per-episode score gaps thompson - uniform over a week, on the logged portfolio (fresh dynamics
    and market days per episode, from the log's start) and on its calibrated plans from the same start."""
    env, log = _truth(preset, seed, days, path)
    cal = calibration_from_mapping(fit_log(log, seed=seed))
    pf0, week = env.portfolio, 7
    true_sc = dataclasses.replace(env.scenario, days=week)

    def truth(sc, rng):
        return dataclasses.replace(
            pf0, key=int(rng.integers(0, 2**62)), market_day=pf0.market_day[:week], demand_day=pf0.demand_day[:week]
        )

    cal_sc = dataclasses.replace(cal.scenario, days=week)
    gaps = {}
    for name, sc, gen in (("truth", true_sc, truth), ("calibrated", cal_sc, cal.generator("mean", start="start"))):
        gaps[name] = _mean_score(sc, gen, "thompson", episodes) - _mean_score(sc, gen, "uniform", episodes)
    return gaps


# Several logged portfolios per preset: one log's calibrated ranking can reverse (securities, log seed 2, 14
# days: thompson - uniform +34k +- 15k on the truth, -17k +- 8k calibrated over 32 paired episodes on
# 2026-11-30, about 2 standard errors below 0; +7k +- 9k the day before, after a change that moved money by
# 1e-7 relative: these fixed seeds are chaotic), so the claim tested is about calibration on average over
# the portfolios it sees, with a margin: each pooled mean (16 paired episodes a log) at least 2 standard
# errors above 0 (securities on 2026-11-30: truth +35k +- 10k, calibrated +42k +- 8k).
RANKING_LOGS = {"credit": ((5, 21), (6, 21), (7, 21)), "securities": ((2, 14), (3, 14), (4, 14), (5, 14))}


@pytest.mark.slow
@pytest.mark.parametrize("preset", sorted(RANKING_LOGS))
def test_allocator_ranking_survives_calibration(preset: str, tmp_path: Path) -> None:
    gaps = {"truth": [], "calibrated": []}
    for seed, days in RANKING_LOGS[preset]:
        for name, gap in _calibration_gaps(preset, seed, days, tmp_path / f"log{seed}.csv", 16).items():
            gaps[name].append(gap)
    pooled = {name: np.concatenate(g) for name, g in gaps.items()}
    se = {name: g.std(ddof=1) / np.sqrt(len(g)) for name, g in pooled.items()}
    print(preset, {name: [round(float(g.mean())) for g in per_log] for name, per_log in gaps.items()})
    print(preset, {name: (round(float(g.mean())), round(float(se[name]))) for name, g in pooled.items()})
    # The stronger heuristic is stronger on the truth (the test can fail), and on the calibrated plans too.
    assert pooled["truth"].mean() > 2 * se["truth"], (pooled["truth"].mean(), se["truth"])
    assert pooled["calibrated"].mean() > 2 * se["calibrated"], (pooled["calibrated"].mean(), se["calibrated"])


# -------------------------------------------------------------------------------------------------
# The calibrated scenario and the what-if


@pytest.fixture(scope="module")
def calibration_file(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("cal")
    simulate_days("small", 3, "static", days=7, export_log=folder / "log.csv")
    log = read_log(folder / "log.csv")
    return write_calibration(fit_log(log, seed=0), folder / "portfolio.yaml")


def test_calibrated_generator_builds_the_same_plans(calibration_file: Path) -> None:
    cal = load_calibration(calibration_file)
    env = BudgetShiftEnv(cal.scenario, generator=cal.generator(draw="mean"))
    env.reset(seed=0)
    first = env.portfolio
    env.reset(seed=1)
    second = env.portfolio
    np.testing.assert_array_equal(first.ctr, second.ctr)  # same plans, posterior means
    np.testing.assert_array_equal(first.audience, second.audience)
    assert first.key != second.key  # fresh dynamics
    targets = [p.end.target_cpa for p in cal.plans]
    np.testing.assert_allclose(env.reporting_stats()["target_cpa"], targets)
    env_post = BudgetShiftEnv(cal.scenario, generator=cal.generator(draw="posterior"))
    env_post.reset(seed=0)
    a = env_post.portfolio.stage_rate.copy()
    env_post.reset(seed=1)
    assert not np.array_equal(a, env_post.portfolio.stage_rate)  # a posterior draw per episode
    env_post.reset(seed=0)
    np.testing.assert_array_equal(a, env_post.portfolio.stage_rate)  # from the episode's seed


def test_thin_data_gives_wide_posteriors(calibration_file: Path) -> None:
    cal = load_calibration(calibration_file)
    widths = [(f.interval()[1] - f.interval()[0], f.a + f.b) for p in cal.plans for f in p.stages]
    widths.sort(key=lambda w: w[1])
    assert widths[0][0] > widths[-1][0]  # fewer events: a wider interval
    renewals = [p.stages[1] for p in cal.plans if p.vertical == "insurance"]
    assert all(f.a + f.b < 3 for f in renewals)  # a renewal never matures in a week: the prior alone


def test_calibration_file_errors_name_the_field(calibration_file: Path, tmp_path: Path) -> None:
    import yaml

    from envs.scenario import ScenarioError

    cfg = yaml.safe_load(calibration_file.read_text())
    cfg["plans"][2]["ctr"]["a"] = -1
    with pytest.raises(ScenarioError, match=r"plans\[2\]\.ctr\.a must be > 0"):
        calibration_from_mapping(cfg, source="x.yaml")


def test_whatif_change_is_paired_and_parsed(calibration_file: Path) -> None:
    assert parse_change("move 20% of A1-P003's budget to A1-P005") == (0.2, "A1-P003", "A1-P005")
    assert parse_change("Move 5% of plan X to plan Y") == (0.05, "X", "Y")
    with pytest.raises(ValueError, match="--change must read like"):
        parse_change("shift some money around")
    cal = load_calibration(calibration_file)
    i, j = 0, 1
    allocators = {
        "static": allocator_from_spec("static"),
        "moved": MoveBudget(allocator_from_spec("static"), 1.0, i, j),
    }
    results = play(cal, allocators, days=2, episodes=3, seed=0)
    base, moved = summarise(results["static"]), summarise(results["moved"])
    assert math.isfinite(base["score"]["mean"]) and base["score"]["lo"] <= base["score"]["hi"]
    assert results["static"][0]["env_seed"] == results["moved"][0]["env_seed"]
    assert moved["spend"]["mean"] != base["spend"]["mean"]  # all of plan 0's budget went to plan 1


def test_sample_scenario_is_a_valid_preset() -> None:
    # The calibrated scenario goes through the preset validator: a fitted curve must be 24 non-negative numbers.
    assert load_scenario("credit").days == 7
