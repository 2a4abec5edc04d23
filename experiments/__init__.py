"""Thin entry points: simulate, evaluate, report, train, tune, export, bench."""

import envs  # noqa: F401  first: envs sets OMP_WAIT_POLICY before torch or Numba load (see envs/__init__.py)
