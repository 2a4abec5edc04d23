"""Compile the Numba kernels once per machine (or shared cache folder), safely under concurrency.

The kernels are ``@njit(cache=True)``: the first process to call them compiles and writes the
on-disk cache (``NUMBA_CACHE_DIR`` if set, else ``__pycache__`` beside ``envs/kernels.py``); later
processes load it. When several workers of a sweep start at once on a cold cache, each would
compile on its own (a recompilation storm: ~10-20 s of CPU each) and write the same files. Calling
:func:`warm_up` first makes them queue on a file lock in the cache folder: the first compiles and
writes, the others then load from the cache. Numba writes cache files atomically, so readers never
see a partial file.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from filelock import FileLock


def cache_dir() -> Path:
    """Where Numba keeps the kernels' cache for this process."""
    configured = os.environ.get("NUMBA_CACHE_DIR")
    return Path(configured) if configured else Path(__file__).resolve().parent / "__pycache__"


def warm_up(timeout_s: float = 600.0) -> dict[str, int]:
    """Compile (or load) every kernel the env uses, one process at a time per cache folder.

    Returns Numba's cache hit/miss counts of the step kernel in this process (a miss = compiled here).
    """
    folder = cache_dir()
    folder.mkdir(parents=True, exist_ok=True)
    with FileLock(str(folder / "budgetshift-jit.lock"), timeout=timeout_s):
        from envs.budget_env import BudgetShiftEnv
        from envs.kernels import step_kernel
        from envs.vector_env import BudgetShiftVectorEnv

        env = BudgetShiftEnv("small")
        env.reset(seed=0)
        env.step_shares(env.active_mask().astype(float))
        env.step(np.zeros(env.max_plans))  # float64 actions (the vector env's below are float32)
        vec = BudgetShiftVectorEnv(num_envs=2, scenario="small")  # compiles the batched kernel too
        vec.reset(seed=0)
        vec.step(np.zeros(vec.action_space.shape, dtype=np.float32))
        stats = step_kernel.stats
        return {"cache_hits": sum(stats.cache_hits.values()), "cache_misses": sum(stats.cache_misses.values())}
