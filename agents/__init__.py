"""Allocators: heuristics, the oracle, SB3 builders and policies, export and the production loader.

Importing the package defaults ``OMP_WAIT_POLICY`` to ``PASSIVE`` before torch loads (see
``envs/__init__.py`` for why).
"""

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
