"""Sweeps on Hydra's launchers: every job of a multirun runs (a crashed one does not stop the others
and leaves its error.txt), the report gathers the sweep and names the crashed job, re-running the
sweep's command runs only its killed and failed jobs, and a sweep folder moved elsewhere still
reports, repeats and serves its trained agents (nothing in it depends on where it was written)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from envs.jit import warm_up
from experiments.evaluate import replace_atomically
from experiments.report import build_report
from hydra_plugins.budgetshift_sweeper.covering_sweeper import covering_jobs

ROOT = Path(__file__).resolve().parent.parent
LAUNCHERS = ["joblib", "submitit_local"]
QUICK = ["env=small", "episodes=1", "max_steps=24", "steps_table=csv"]

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module", autouse=True)
def compiled_kernels():
    warm_up()  # jobs load the kernels from the cache instead of queueing on one compilation


def cli(module: str, *args: str, cwd: Path = ROOT, ok: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, capture_output=True, text=True, timeout=300)
    assert (done.returncode == 0) == ok, done.stderr[-3000:]
    return done


def per_episode(run_dir: Path) -> list[dict]:
    return json.loads((run_dir / "metrics.json").read_text())["per_episode"]


@pytest.mark.parametrize("launcher", LAUNCHERS)
def test_a_multirun_completes_and_reports_from_wherever_its_folder_is_moved(launcher, tmp_path):
    sweep = tmp_path / "written" / "sweep"
    cli(
        "experiments.evaluate",
        "-m",
        "agent=uniform,oracle",
        "seed=0,1",
        *QUICK,
        f"hydra/launcher={launcher}",
        f"hydra.sweep.dir={sweep}",
    )
    result = build_report(sweep, reps=200)
    assert len(result["runs"]) == 4 and not result["failed"] and not result["missing"]
    summary = result["summary"].set_index("agent")
    assert set(summary.index) == {"uniform", "oracle"} and (summary["seeds"] == 2).all()
    assert summary.loc["oracle", "normalised_iqm"] == pytest.approx(1.0)

    moved = tmp_path / "elsewhere" / "sweep"
    shutil.move(sweep, moved)
    done = cli("experiments.report", str(moved), "--reps", "200", cwd=tmp_path)
    assert "FAILED" not in done.stdout and "MISSING" not in done.stdout
    pd.testing.assert_frame_equal(pd.read_csv(moved / "summary.csv"), result["summary"], check_dtype=False)
    report = (moved / "report.md").read_text()
    assert str(sweep) not in report and "](score_small.png)" in report and (moved / "score_small.png").exists()

    # Any job repeats from its own folder's resolved config, with the same numbers.
    job = next(moved.glob("*_small_oracle_s1"))
    rerun = tmp_path / "rerun"
    cli("experiments.evaluate", "--config-path", str(job), "--config-name", "config", f"hydra.run.dir={rerun}")
    assert per_episode(rerun) == per_episode(job)


@pytest.mark.parametrize("launcher", LAUNCHERS)
def test_a_crashed_job_leaves_the_others_running_and_the_report_names_it(launcher, tmp_path):
    sweep = tmp_path / "sweep"
    # seed -1 is invalid (episode seeds derive from seeds >= 0): that one job raises.
    done = cli(
        "experiments.evaluate",
        "-m",
        "agent=uniform",
        "seed=0,1,2,-1",
        *QUICK,
        f"hydra/launcher={launcher}",
        f"hydra.sweep.dir={sweep}",
        ok=False,
    )
    assert "seed must be >= 0" in done.stderr
    finished = sorted(p.parent.name for p in sweep.glob("*/metrics.json"))
    assert finished == ["0_small_uniform_s0", "1_small_uniform_s1", "2_small_uniform_s2"]
    assert "seed must be >= 0, got -1" in (sweep / "3_small_uniform_s-1" / "error.txt").read_text()

    done = cli("experiments.report", str(sweep), "--reps", "200")
    assert "FAILED" in done.stdout and "seed must be >= 0, got -1" in done.stdout and "MISSING" not in done.stdout
    summary = pd.read_csv(sweep / "summary.csv")
    assert summary["seeds"].tolist() == [3]
    report = (sweep / "report.md").read_text()
    assert "## Failed runs" in report and "`3_small_uniform_s-1`" in report


def test_rerunning_a_sweep_runs_only_its_killed_and_failed_jobs_and_refuses_a_changed_config(tmp_path):
    sweep = tmp_path / "sweep"
    command = ["-m", "agent=uniform,oracle", "seed=0,1", *QUICK, "hydra/launcher=joblib", f"hydra.sweep.dir={sweep}"]
    cli("experiments.evaluate", *command)
    jobs = {p.name: p for p in sweep.glob("*_small_*")}
    killed, cut_short = jobs.pop("1_small_uniform_s1"), jobs.pop("2_small_oracle_s0")
    numbers = per_episode(killed)
    (killed / "metrics.json").unlink()  # a SIGKILLed worker's job (and the one joblib dropped with it)
    (cut_short / "metrics.json").write_text((cut_short / "metrics.json").read_text()[:200])  # a full disk
    finished = {name: (job / "metrics.json").stat().st_mtime_ns for name, job in jobs.items()}

    cli("experiments.evaluate", *command)
    assert {name: (job / "metrics.json").stat().st_mtime_ns for name, job in jobs.items()} == finished
    for job in jobs.values():
        assert "kept the finished run" in (job / "evaluate.log").read_text()
    for job in (killed, cut_short):
        assert "kept the finished run" not in (job / "evaluate.log").read_text()
    assert per_episode(killed) == numbers
    result = build_report(sweep, reps=200)
    assert len(result["runs"]) == 4 and not (result["failed"] or result["duplicates"] or result["missing"])
    assert (result["summary"]["seeds"] == 2).all()

    changed = [arg.replace("episodes=1", "episodes=2") for arg in command]
    done = cli("experiments.evaluate", *changed, ok=False)
    assert "holds a finished run of another config (episodes: recorded 1, now 2)" in done.stderr
    assert {name: (job / "metrics.json").stat().st_mtime_ns for name, job in jobs.items()} == finished


def test_a_write_cut_short_leaves_the_previous_file(tmp_path):
    path = tmp_path / "metrics.json"
    path.write_text('{"finished": true}')

    def dies_midway(partial: Path) -> None:
        partial.write_text('{"fini')
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space left"):
        replace_atomically(path, dies_midway)
    assert path.read_text() == '{"finished": true}'


def test_evaluate_serves_a_trained_agent_from_a_moved_training_run(tmp_path):
    run = tmp_path / "cluster" / "train" / "small_ppo_s0"
    cli(
        "experiments.train",
        "agent=ppo",
        "env=small",
        "total_timesteps=96",
        "agent.n_envs=2",
        "agent.hyperparams.n_steps=24",
        "agent.hyperparams.batch_size=48",
        "eval.freq=48",
        "eval.n_episodes=1",
        "progress_bar=false",
        "tensorboard=false",
        f"hydra.run.dir={run}",
    )
    moved = tmp_path / "laptop" / "small_ppo_s0"
    shutil.move(run, moved)
    out = tmp_path / "evaluation"
    cli("experiments.evaluate", "agent=trained", f"agent.run={moved}", *QUICK, f"hydra.run.dir={out}", cwd=tmp_path)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["agent"] == "trained" and metrics["episodes"] == 1 and metrics["mean"]["score"] > 0


def test_a_trained_run_is_reported_under_its_agent_name(tmp_path):
    """`agent=trained agent.name=generalist`: the report's agent is the name, not the config group, so
    several trained runs (training seeds, algorithms) in one sweep stay apart."""
    import yaml

    from experiments.sweep import load_run

    for name in ("generalist_s1", "trained"):
        run_dir = tmp_path / name
        (run_dir / ".hydra").mkdir(parents=True)
        config = {"env": {"name": "default"}, "agent": {"name": name, "kind": "trained"}, "seed": 0}
        (run_dir / "config.yaml").write_text(yaml.safe_dump(config))
        choices = {"hydra": {"runtime": {"choices": {"agent": "trained", "env": "default"}}}}
        (run_dir / ".hydra" / "hydra.yaml").write_text(yaml.safe_dump(choices))
        assert load_run(run_dir).agent == name


def test_the_covering_sweeper_composes_one_job_per_override_value():
    grid = [[f"env={e}", f"agent={a}", f"seed={s}"] for e in ("x", "y") for a in ("p", "q", "r") for s in (0, 1)]
    chosen = covering_jobs(grid)
    assert chosen == [grid[0], grid[1], grid[2], grid[4], grid[6]]  # x,p,0; x,p,1; x,q,0; x,r,0; y,p,0
    assert {o for job in chosen for o in job} == {o for job in grid for o in job}
    assert covering_jobs([[]]) == [[]]  # a sweep without overrides still composes its one job


def test_a_typo_in_any_sweep_value_fails_before_a_job_runs(tmp_path):
    sweep = tmp_path / "sweep"
    done = cli(
        "experiments.evaluate",
        "-m",
        "agent=static,uniform,unifrom",
        "seed=0,1,2",
        *QUICK,
        f"hydra.sweep.dir={sweep}",
        ok=False,
    )
    assert "Could not find 'agent/unifrom'" in done.stderr
    assert [p.name for p in sweep.iterdir()] == ["multirun.yaml"]  # nothing ran
    done = cli("experiments.evaluate", "-m", "seed=0", "hydra.sweeper.validate=some", *QUICK, ok=False)
    assert "hydra.sweeper.validate must be one of ['covering', 'all'], got 'some'" in done.stderr
