"""Hydra schemas of the ``agent`` config group (structured configs in Hydra's ConfigStore).

Each heuristic's schema is generated from its ``Params`` dataclass (:mod:`agents.heuristics`,
:mod:`agents.oracle`), the single source of its knobs and defaults, and stored as
``agent/<name>_schema``. ``conf/agent/<name>.yaml`` lists it first in its defaults, so a typo'd key
or a wrong type (``agent.params.powr=2``, ``agent.params.power=abc``) fails at compose time naming
the key; ranges are checked when :func:`agents.registry.make_allocator` builds the allocator.

``kind: trained`` configs may use ``agent/trained_schema`` (``run``, ``deterministic``).
``kind: sb3`` configs (the training side's free-form hyperparameters) have no schema here.
"""

from __future__ import annotations

from dataclasses import dataclass, field, make_dataclass

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

from agents.heuristics import HEURISTICS
from agents.oracle import OracleAllocator

AGENT_KINDS = ("heuristic", "sb3", "trained")

#: Every allocator that ``make_allocator`` builds from ``kind: heuristic``.
HEURISTIC_ALLOCATORS = {**HEURISTICS, OracleAllocator.name: OracleAllocator}


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


def register_agent_schemas(cs: ConfigStore | None = None) -> None:
    cs = cs or ConfigStore.instance()
    for name, schema in HEURISTIC_SCHEMAS.items():
        cs.store(group="agent", name=f"{name}_schema", node=schema)
    cs.store(group="agent", name="trained_schema", node=TrainedAgentConf)
