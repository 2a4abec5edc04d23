"""Build any allocator from its ``conf/agent/<name>.yaml`` node: ``make_allocator(agent_cfg)``.

- ``kind: heuristic``: ``name`` picks the rule in :data:`agents.config.HEURISTIC_ALLOCATORS`
  (``static``, ``uniform``, ``proportional``, ``cpa_guard``, ``boost``, ``thompson``, ``rank``, ``oracle_rank``,
  ``oracle``);
  ``params`` are checked against the rule's ``Params`` dataclass (unknown key, wrong type, value
  out of range: an error naming ``agent.params.<key>``).
- ``kind: trained``: :class:`agents.trained.TrainedAllocator` loads the policy of the training run
  folder ``run`` (imported lazily, so evaluating heuristics never imports torch).
- ``kind: sb3``: an untrained learner's hyperparameters; train it first (``experiments.train``),
  then evaluate the run with ``kind: trained``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from agents.base import Allocator
from agents.config import AGENT_KINDS, HEURISTIC_ALLOCATORS, plain


class AgentConfigError(ValueError):
    """An ``agent`` config node that no allocator can be built from."""


def make_params(name: str, params: Mapping[str, Any] | None):
    """The validated ``Params`` dataclass instance of heuristic ``name``."""
    cls = HEURISTIC_ALLOCATORS[name].Params
    try:
        merged = OmegaConf.merge(OmegaConf.structured(cls), dict(params or {}))
        return OmegaConf.to_object(merged)
    except OmegaConfBaseException as exc:
        key = getattr(exc, "full_key", None) or getattr(exc, "key", None)
        raise AgentConfigError(f"agent.params.{key}: {exc.msg if hasattr(exc, 'msg') else exc}") from exc


def make_allocator(agent_cfg: Mapping[str, Any]) -> Allocator:
    """An allocator from an ``agent`` config node (a DictConfig or a plain mapping)."""
    if not isinstance(agent_cfg, Mapping):
        raise AgentConfigError(f"agent config must be a mapping, got {type(agent_cfg).__name__}")
    cfg = plain(agent_cfg)
    kind = cfg.get("kind")
    name = cfg.get("name")
    if kind not in AGENT_KINDS:
        raise AgentConfigError(f"agent.kind must be one of {list(AGENT_KINDS)}, got {kind!r}")
    if not isinstance(name, str) or not name:
        raise AgentConfigError(f"agent.name must be a non-empty string, got {name!r}")
    if kind == "heuristic":
        if name not in HEURISTIC_ALLOCATORS:
            raise AgentConfigError(
                f"agent.name must name a heuristic, one of {sorted(HEURISTIC_ALLOCATORS)}, got {name!r}"
            )
        unknown = sorted(set(cfg) - {"name", "kind", "params"})
        if unknown:
            raise AgentConfigError(f"unknown field agent.{unknown[0]} for a heuristic; expected name, kind, params")
        return HEURISTIC_ALLOCATORS[name](make_params(name, cfg.get("params")))
    if kind == "trained":
        if not cfg.get("run"):
            raise AgentConfigError(
                f"agent.run must be the training run folder of a kind=trained agent, got {cfg.get('run')!r}"
            )
        from agents.trained import TrainedAllocator  # lazy: pulls in torch and Stable-Baselines3

        return TrainedAllocator(run_dir=cfg["run"], deterministic=bool(cfg.get("deterministic", True)))
    raise AgentConfigError(
        f"agent {name!r} has kind=sb3: it is a learner to train (python -m experiments.train agent={name}), "
        "not an allocator to evaluate; evaluate the trained run with a kind=trained agent (run=<run folder>)"
    )
