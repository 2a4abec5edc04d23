"""Thin entry points: simulate, evaluate, report, train, tune, export, bench.

Importing the package defaults ``OMP_WAIT_POLICY`` to ``PASSIVE`` before any entry point imports
torch or Numba: spinning OpenMP pools of the two starve each other on 2-core machines (see
``envs/__init__.py``), and OpenMP reads the variable only when its runtime loads.
"""

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
