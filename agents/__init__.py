"""Allocators: heuristics, the oracle, SB3 builders and policies, export and the production loader."""

import envs  # noqa: F401  first: envs sets OMP_WAIT_POLICY before torch loads (see envs/__init__.py)
