"""The one interface every allocator implements, learned or not.

An allocator turns what an advertiser's reporting shows (per-plan stats, see
:data:`envs.features.STAT_NAMES`) and the clock into budget shares over the plans. Experiments,
the report and the production loader treat every allocator alike through this interface.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping

import numpy as np

from envs.features import Clock


class Allocator(ABC):
    """Budget shares from reporting stats.

    ``reset`` is called at the start of every episode; ``allocate`` before every step. Only the
    ``oracle`` may use ``portfolio`` (the hidden truth); every other allocator must ignore it.
    """

    name: str = "allocator"

    def reset(self, scenario, portfolio=None, seed: int | None = None) -> None:  # noqa: B027
        """Start a new episode of ``scenario`` (an :class:`envs.scenario.Scenario`)."""

    @abstractmethod
    def allocate(self, stats: Mapping[str, np.ndarray], clock: Clock, active: np.ndarray) -> np.ndarray:
        """Shares over the ``n_plans`` plans: non-negative, 0 where ``active`` is false, summing to 1."""
