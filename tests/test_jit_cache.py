"""Numba's on-disk cache under concurrent workers: no corruption, no recompilation storm."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

WORKER = """
import json
from envs.jit import warm_up
counts = warm_up()
from envs.budget_env import BudgetShiftEnv
env = BudgetShiftEnv("small")
env.reset(seed=7)
done = False
while not done:
    _, _, done, _, info = env.step_shares(env.active_mask().astype(float))
print(json.dumps({**counts, "score": info["score"]["score"]}))
"""


@pytest.mark.slow
def test_four_workers_on_a_cold_cache_compile_once(tmp_path):
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path / "numba-cache")}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for _ in range(4)
    ]
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err
        results.append(json.loads(out.strip().splitlines()[-1]))
    compiled = [r for r in results if r["cache_misses"] > 0]
    assert len(compiled) == 1, results  # one worker compiled ...
    loaded = [r for r in results if r not in compiled]  # ... the rest loaded its cache
    assert all(r["cache_hits"] > 0 and r["cache_misses"] == 0 for r in loaded)
    assert len({r["score"] for r in results}) == 1  # and every worker simulates the same episode
