"""The batched env's parallel kernel leaves torch's thread count alone.

Numba's OpenMP threading layer sets the process's OpenMP thread count when it starts its threads, and
torch shares that runtime: training with ``torch_threads=1`` silently ran its updates on two threads
after the first evaluation (a batched env), and two runs of one config then differed on a loaded
machine. ``envs.kernels.start_threads`` starts the layer and puts the count back, whichever layer runs.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

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
print(torch.get_num_threads(), numba.threading_layer(), numba.get_num_threads())
"""


@pytest.mark.parametrize("layer", [None, "omp", "workqueue"])
def test_a_batched_step_keeps_torch_on_its_threads(layer):
    env = {k: v for k, v in os.environ.items() if k not in ("NUMBA_THREADING_LAYER", "NUMBA_NUM_THREADS")}
    env["NUMBA_NUM_THREADS"] = "2"  # more than torch's one, so a changed count shows
    if layer is not None:
        env["NUMBA_THREADING_LAYER"] = layer
    command = [sys.executable, "-c", SCRIPT]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    threads, chosen, numba_threads = done.stdout.split()
    assert threads == "1", f"torch runs on {threads} threads after a batched step (Numba layer {chosen})"
    assert numba_threads == "2"  # the kernel keeps its own threads
    if layer is not None:
        assert chosen == layer
    else:  # the default prefers OpenMP (faster batched steps) where Numba has it
        assert chosen in ("omp", "tbb", "workqueue")
