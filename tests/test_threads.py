"""The batched env's parallel kernel leaves torch's thread count alone.

Numba's OpenMP threading layer sets the process's OpenMP thread count when it launches a parallel
kernel, and torch shares that runtime: training with ``torch_threads=1`` silently ran its updates on
two threads after the first evaluation (a batched env), and two runs of one config then differed on a
loaded machine. envs.kernels picks Numba's workqueue layer instead (unless NUMBA_THREADING_LAYER is set).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

SCRIPT = """
import numpy as np
import torch
torch.set_num_threads(1)
assert torch.get_num_threads() == 1  # torch in use before the env steps, as in training
import numba
from agents.sb3 import make_envs
from envs.scenario import load_scenario
venv = make_envs(load_scenario("small"), 4, 0, "native")
venv.reset()
for _ in range(2):
    venv.step(np.zeros((4, venv.action_space.shape[0]), dtype=np.float32))
print(torch.get_num_threads(), numba.threading_layer())
"""


def test_a_batched_step_keeps_torch_on_its_threads():
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_THREADING_LAYER"}
    command = [sys.executable, "-c", SCRIPT]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    threads, layer = done.stdout.split()
    assert threads == "1", f"torch runs on {threads} threads after a batched step (Numba layer {layer})"
    assert layer == "workqueue"
