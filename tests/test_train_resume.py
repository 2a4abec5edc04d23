"""A training run killed after its first checkpoint resumes, with the same command, to the same total."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from agents.trained import TrainedAllocator

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
        while not list(checkpoints.glob("rl_model_vecnormalize_*_steps.pkl")):
            assert proc.poll() is None, f"training ended before its first checkpoint: {proc.stderr.read().decode()}"
            assert time.monotonic() < deadline, "no checkpoint within 180 s"
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    assert not (run_dir / "model.zip").exists(), "the run finished before it was killed; the test proves nothing"
    killed_at = max(int(p.stem.split("_")[-2]) for p in checkpoints.glob("rl_model_*_steps.zip"))
    assert killed_at < TOTAL

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
