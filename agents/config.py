"""Config nodes on the library side: the heuristic list, the ``agent`` schemas, plain-data conversion.

Heuristics: :data:`HEURISTIC_ALLOCATORS` maps every rule that ``kind: heuristic`` builds to its
class; :data:`HEURISTIC_NAMES` is its order, the one list that the report's table order and the
sweeps' agent list (``conf/sweep/heuristics.yaml``, checked against it by ``tests/test_configs.py``)
follow.

Schemas (structured configs for Hydra's ConfigStore): each heuristic's schema is generated from
its ``Params`` dataclass (:mod:`agents.heuristics`, :mod:`agents.oracle`, :mod:`agents.planner`), the
single source of its knobs and defaults, and stored as ``agent/<name>_schema``.
``conf/agent/<name>.yaml`` lists it first in its defaults, so a typo'd key or a wrong type
(``agent.params.powr=2``, ``agent.params.power=abc``) fails at compose time naming the key; ranges are checked when
:func:`agents.registry.make_allocator` builds the allocator. ``kind: trained`` configs may use
``agent/trained_schema`` (``run``, ``deterministic``). ``kind: sb3`` configs (the training side's
free-form hyperparameters) have no schema here.

Plain data: :func:`plain` turns a config node (an OmegaConf ``DictConfig`` or any mapping) into a
dict, and :func:`env_mapping` an ``env`` node into the mapping
:func:`envs.scenario.scenario_from_mapping` takes. This module needs OmegaConf but not Hydra, so
the export and the loaders can read configs without the entry points' machinery.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, make_dataclass
from typing import TYPE_CHECKING, Any

from omegaconf import MISSING, DictConfig, OmegaConf

from agents.heuristics import HEURISTICS
from agents.oracle import OracleRankAllocator
from agents.planner import OracleAllocator

if TYPE_CHECKING:
    from hydra.core.config_store import ConfigStore

AGENT_KINDS = ("heuristic", "sb3", "trained")

#: Every allocator that ``make_allocator`` builds from ``kind: heuristic``.
HEURISTIC_ALLOCATORS = {
    **HEURISTICS,
    OracleRankAllocator.name: OracleRankAllocator,
    OracleAllocator.name: OracleAllocator,
}
#: Their names, in the order of sweeps, tables and plots.
HEURISTIC_NAMES = tuple(HEURISTIC_ALLOCATORS)


def plain(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """A config node as a plain dict: a ``DictConfig`` resolved and converted, any other mapping copied."""
    if isinstance(cfg, DictConfig):
        return OmegaConf.to_container(cfg, resolve=True)
    return dict(cfg)


def env_mapping(env_cfg: Mapping[str, Any]) -> dict[str, Any]:
    """A scenario mapping from an ``env`` config node (unset optional fields dropped)."""
    return {k: v for k, v in plain(env_cfg).items() if v is not None or k == "max_change"}


def heuristic_schema(name: str) -> type:
    """The structured config of ``conf/agent/<name>.yaml`` for a heuristic."""
    cls = HEURISTIC_ALLOCATORS[name]
    fields = [
        ("name", str, field(default=MISSING)),
        ("kind", str, field(default="heuristic")),
        ("params", cls.Params, field(default_factory=cls.Params)),
    ]
    schema = make_dataclass(f"{cls.__name__}Conf", fields)
    # Hydra's launchers pickle configs into worker processes: the class must be findable by name.
    schema.__module__ = __name__
    globals()[schema.__name__] = schema
    return schema


#: name -> schema, built at import so that unpickling a config in a worker process finds the classes.
HEURISTIC_SCHEMAS = {name: heuristic_schema(name) for name in HEURISTIC_ALLOCATORS}


@dataclass
class TrainedAgentConf:
    name: str = MISSING
    kind: str = "trained"
    run: str = MISSING  # the training run folder
    deterministic: bool = True


def register_agent_schemas(cs: ConfigStore) -> None:
    for name, schema in HEURISTIC_SCHEMAS.items():
        cs.store(group="agent", name=f"{name}_schema", node=schema)
    cs.store(group="agent", name="trained_schema", node=TrainedAgentConf)
