"""A training run killed after its first checkpoint resumes, with the same command, to the same total.

Resume never mixes two runs in one folder: a config that differs from the run's recorded one in
anything but ``RESUME_MAY_CHANGE`` is refused (naming the key) before a file is touched, and a fresh
run never overwrites a folder that holds one unless ``overwrite=true``.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from agents.sb3 import RunFolderError
from agents.trained import TrainedAllocator
from experiments.train import train

ROOT = Path(__file__).resolve().parent.parent
TOTAL = 2048  # a whole number of PPO rollouts (2 envs x 64 steps) so the run ends exactly there


def command(run_dir: Path, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "experiments.train", "agent=ppo", "env=small", "seed=1", f"total_timesteps={TOTAL}",
        "agent.n_envs=2", "agent.hyperparams.n_steps=64", "agent.hyperparams.batch_size=64",
        "agent.hyperparams.n_epochs=2", "checkpoint.freq=256", "eval.freq=512", "eval.n_episodes=2",
        "progress_bar=false", f"hydra.run.dir={run_dir}", *extra,
    ]  # fmt: skip


def test_killed_run_resumes_to_the_requested_total(tmp_path):
    run_dir = tmp_path / "run"
    checkpoints = run_dir / "checkpoints"
    proc = subprocess.Popen(command(run_dir), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 180
    try:
        # VecNormalize statistics are written right after the model: wait for the pair, then kill -9.
        while not list(checkpoints.glob("rl_model_vecnormalize_*_steps.npz")):
            assert proc.poll() is None, f"training ended before its first checkpoint: {proc.stderr.read().decode()}"
            assert time.monotonic() < deadline, "no checkpoint within 180 s"
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    assert not (run_dir / "model.zip").exists(), "the run finished before it was killed; the test proves nothing"
    killed_at = max(int(p.stem.split("_")[-2]) for p in checkpoints.glob("rl_model_*_steps.zip"))
    assert killed_at < TOTAL

    before = snapshot(run_dir)
    lr = "agent.hyperparams.learning_rate=0.001"
    refused = subprocess.run(command(run_dir, "resume=true", lr), cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert refused.returncode != 0, "a resume with another learning rate must fail"
    assert "agent.hyperparams.learning_rate is 0.001 but the run" in refused.stderr
    assert snapshot(run_dir) == before, "a refused resume left the run as it was"

    done = subprocess.run(command(run_dir, "resume=true"), cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]

    summary = json.loads((run_dir / "train_summary.json").read_text())
    assert summary["num_timesteps"] == TOTAL
    assert summary["resumed_from"] is not None and 0 < summary["resumed_from"] <= killed_at
    assert TrainedAllocator(run_dir).model.num_timesteps == TOTAL
    evaluations = np.load(run_dir / "evaluations.npz")
    assert evaluations["timesteps"][-1] == TOTAL
    assert np.all(np.diff(evaluations["timesteps"]) > 0), "the evaluation history continues, without repeats"
    lines = (run_dir / "cmd.txt").read_text().splitlines()
    assert len(lines) == 2 and "resume=true" in lines[1] and f"resumed from step {summary['resumed_from']}" in lines[1]
    sessions = json.loads((run_dir / "provenance.json").read_text())
    assert [s["session"] for s in sessions] == ["start", "resume"]
    assert sessions[1]["resumed_from"] == summary["resumed_from"]


def snapshot(run_dir: Path) -> dict[str, bytes]:
    """Every file of the run folder and its content, except what Hydra writes on every call (logs, ``.hydra/``)."""
    return {
        str(p.relative_to(run_dir)): p.read_bytes()
        for p in sorted(run_dir.rglob("*"))
        if p.is_file() and not {"tensorboard", ".hydra"} & set(p.parts) and p.name != "train.log"
    }


def small_run(*extra: str, agent: str = "ppo") -> DictConfig:
    """A run on ``small`` of 128 steps with one checkpoint at its end, in-process."""
    shrink = {
        "ppo": ["agent.hyperparams.n_steps=32", "agent.hyperparams.batch_size=64", "agent.hyperparams.n_epochs=1"],
        "a2c": ["agent.hyperparams.n_steps=16"],
    }[agent]
    overrides = [
        f"agent={agent}", "env=small", "agent.n_envs=2", *shrink, "total_timesteps=128", "checkpoint.freq=128",
        "eval.freq=64", "eval.n_episodes=1", "progress_bar=false", "tensorboard=false", "export=false", *extra,
    ]  # fmt: skip
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose("train", overrides=overrides)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("env=default", r"env\.\w+ is .* but the run"),
        ("agent.hyperparams.learning_rate=0.01", "agent.hyperparams.learning_rate is 0.01 but the run"),
        ("env.daily_budget=12345", "env.daily_budget is 12345 but the run"),
        ("seed=7", "seed is 7 but the run .* was trained with 0"),
    ],
)
def test_resume_refuses_another_config_and_leaves_the_run_alone(tmp_path, override, message):
    train(small_run(), tmp_path)
    before = snapshot(tmp_path)
    with pytest.raises(ValueError, match=message):
        train(small_run("resume=true", override), tmp_path)
    assert snapshot(tmp_path) == before


def test_resume_refuses_another_algorithm(tmp_path):
    """agent=a2c resume=true over a PPO run used to continue the PPO weights and label them A2C."""
    train(small_run(), tmp_path)
    before = snapshot(tmp_path)
    with pytest.raises(ValueError, match="agent.name is 'a2c' but the run .* was trained with 'ppo'"):
        train(small_run("resume=true", agent="a2c"), tmp_path)
    assert snapshot(tmp_path) == before


def test_resume_may_extend_total_timesteps(tmp_path):
    train(small_run(), tmp_path)
    summary = train(small_run("resume=true", "total_timesteps=256"), tmp_path)
    assert summary["num_timesteps"] == 256 and summary["resumed_from"] == 128
    sessions = json.loads((tmp_path / "provenance.json").read_text())
    assert [(s["session"], s.get("resumed_from")) for s in sessions] == [("start", None), ("resume", 128)]
    assert TrainedAllocator(tmp_path).model.num_timesteps == 256


def test_a_fresh_run_refuses_a_folder_left_by_a_kill_before_any_checkpoint(tmp_path):
    train(small_run(), tmp_path)
    for path in tmp_path.iterdir():  # what a kill before the first checkpoint leaves
        if path.name not in ("config.yaml", "cmd.txt", "provenance.json"):
            shutil.rmtree(path) if path.is_dir() else path.unlink()
    before = snapshot(tmp_path)
    with pytest.raises(FileExistsError, match="config.yaml"):
        train(small_run("seed=5"), tmp_path)
    assert snapshot(tmp_path) == before


def test_resume_refuses_checkpoints_with_pickled_statistics(tmp_path):
    """Checkpoints from before the ``.npz`` format are refused, not unpickled nor silently trained over."""
    train(small_run(), tmp_path)
    for stats in (tmp_path / "checkpoints").glob("rl_model_vecnormalize_*_steps.npz"):
        stats.rename(stats.with_suffix(".pkl"))
    before = snapshot(tmp_path)
    with pytest.raises(RunFolderError, match=r"pickled VecNormalize statistics \(rl_model_vecnormalize_128_steps"):
        train(small_run("resume=true"), tmp_path)
    assert snapshot(tmp_path) == before
    TrainedAllocator(tmp_path)  # the finished run still loads
