"""What every Hydra entry point shares: the config schemas, early validation and seed derivation.

Schemas (structured configs in Hydra's ConfigStore) make composition fail on a typo'd key or a
wrong type, naming the key:

- ``env``: :class:`EnvConf`, generated from the fields of :class:`envs.scenario.Scenario` (the single
  source of a scenario's fields and defaults); registered as ``env/env_schema`` too.
- ``agent``: per-heuristic schemas from :mod:`agents.config`; learned agents stay open.
- the evaluation entry point's top level: :class:`EvaluateConf` (``evaluate_schema``).

Values are range-checked right after composition, before anything runs:
:func:`scenario_from_config` (``envs.scenario.scenario_from_mapping``: a ScenarioError names the
field, the value and the preset) and :func:`agents.registry.make_allocator`.

Seeds: an entry point's ``seed`` derives one env seed per episode with
``numpy.random.SeedSequence(seed).spawn(episodes)`` (:func:`episode_seeds`); the env seeds depend on
``seed`` and the episode index only, so every allocator of a sweep meets the same portfolios
(common random numbers) and adding episodes keeps the first ones unchanged.
"""

from __future__ import annotations

import dataclasses
import re
import sys
import typing
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields, make_dataclass
from typing import Any, Optional

import numpy as np
from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig

from agents.config import env_mapping, register_agent_schemas
from conf import CONF_DIR
from envs.scenario import PlanMix, Scenario, ScenarioError, load_yaml, scenario_from_mapping

# Scenario fields whose config form differs from the dataclass (mappings by name in the YAML).
_MAPPING_FIELDS = ("channels", "verticals")
_DERIVED_FIELDS = ("channel_mix", "vertical_mix")  # built from the channels'/verticals' ``share``
# Optional in a preset although the dataclass has no default (scenario_from_mapping fills them).
_OPTIONAL_FIELDS = ("max_plans",)


def _config_type(tp: Any) -> Any:
    """A type OmegaConf can hold for a dataclass field type (tuples become lists, unknowns Any)."""
    if tp in (int, float, str, bool):
        return tp
    args = typing.get_args(tp)
    if type(None) in args:
        inner = [a for a in args if a is not type(None)]
        return Optional[_config_type(inner[0])] if len(inner) == 1 else Any  # noqa: UP045 (OmegaConf)
    if typing.get_origin(tp) is tuple:
        return list[_config_type(args[0])] if args else list[Any]
    return Any


def _importable(schema: type) -> type:
    """Hydra's launchers pickle configs into worker processes: a schema must be findable by name."""
    schema.__module__ = __name__
    return schema


def _plan_mix_schema() -> type:
    hints = typing.get_type_hints(PlanMix)
    specs = []
    for f in fields(PlanMix):
        default = list(f.default) if isinstance(f.default, tuple) else f.default
        specs.append(
            (
                f.name,
                _config_type(hints[f.name]),
                field(default_factory=lambda d=default: d) if isinstance(default, list) else field(default=default),
            )
        )
    return _importable(make_dataclass("PlanMixConf", specs))


PlanMixConf = _plan_mix_schema()


def _env_schema() -> type:
    hints = typing.get_type_hints(Scenario)
    specs: list[tuple[str, Any, Any]] = []
    for f in fields(Scenario):
        if f.name in _DERIVED_FIELDS:
            continue
        if f.name in _MAPPING_FIELDS:
            specs.append((f.name, dict[str, Any], field(default=MISSING)))
        elif f.name == "platform":  # checked field by field by envs.scenario (its dataclass holds a tuple)
            specs.append((f.name, dict[str, Any], field(default_factory=dict)))
        elif f.name == "market_events":
            specs.append((f.name, list[Any], field(default_factory=list)))
        elif f.name == "plans":
            specs.append((f.name, PlanMixConf, field(default_factory=PlanMixConf)))
        elif f.name in _OPTIONAL_FIELDS:
            specs.append((f.name, Optional[_config_type(hints[f.name])], field(default=None)))  # noqa: UP045
        else:
            default = MISSING if f.default is dataclasses.MISSING else f.default
            specs.append((f.name, _config_type(hints[f.name]), field(default=default)))
    return _importable(make_dataclass("EnvConf", specs))


EnvConf = _env_schema()


@dataclass
class EvaluateConf:
    """Top level of ``conf/config.yaml`` (``python -m experiments.evaluate``)."""

    env: EnvConf = MISSING  # type: ignore[valid-type]
    agent: Any = MISSING  # checked per kind: heuristics by their schema, learned agents by their loader
    seed: int = 0  # root of every episode seed of the run (see episode_seeds)
    episodes: int = 10  # episodes to evaluate
    max_steps: Optional[int] = None  # noqa: UP045 -- stop episodes after this many steps (smoke tests)
    backend: str = "numba"  # "numba" or "reference" (the slow NumPy oracle)
    steps_table: str = "parquet"  # per-step table format: "parquet", "csv" or "none"


STEPS_TABLE_FORMATS = ("parquet", "csv", "none")


# conf/hydra/launcher/{joblib,submitit_local,submitit_slurm}.yaml keep the plugins' names, so that
# `hydra/launcher=joblib` picks this project's settings; Hydra then validates each against the plugin's
# schema of the same name and warns that this matching is deprecated. The files set `_target_` and
# every field, so they work with or without the matching: the warning is noise.
# The filter is installed on import: launcher workers import this module (unpickling the schemas in
# the ConfigStore they receive) before they compose their job's config.
LAUNCHER_SCHEMA_WARNING = r"(?s).*'hydra/launcher/\w+' is validated against ConfigStore schema with the same name"
warnings.filterwarnings("ignore", message=LAUNCHER_SCHEMA_WARNING, category=UserWarning)


def register_configs() -> None:
    """Put every schema in Hydra's ConfigStore (idempotent; call before composing)."""
    cs = ConfigStore.instance()
    cs.store(name="evaluate_schema", node=EvaluateConf)
    cs.store(group="env", name="env_schema", node=EnvConf)
    register_agent_schemas(cs)


def scenario_from_config(env_cfg: Mapping[str, Any], source: str | None = None) -> Scenario:
    """The validated scenario of an ``env`` node; raises ScenarioError naming the field and value."""
    return scenario_from_mapping(env_mapping(env_cfg), source=source)


def check_run_config(cfg: DictConfig, env_source: str | None = None) -> Scenario:
    """Range-check the top-level fields and the env; the first thing an entry point does."""
    if cfg.episodes < 1:
        raise ValueError(f"episodes must be >= 1, got {cfg.episodes}")
    if cfg.max_steps is not None and cfg.max_steps < 1:
        raise ValueError(f"max_steps must be >= 1 or null, got {cfg.max_steps}")
    if cfg.backend not in ("numba", "reference"):
        raise ValueError(f"backend must be 'numba' or 'reference', got {cfg.backend!r}")
    if cfg.steps_table not in STEPS_TABLE_FORMATS:
        raise ValueError(f"steps_table must be one of {list(STEPS_TABLE_FORMATS)}, got {cfg.steps_table!r}")
    return scenario_from_config(cfg.env, source=env_source)


def episode_seeds(seed: int, episodes: int) -> list[int]:
    """One env seed per episode, derived from the run's ``seed`` (``SeedSequence(seed).spawn``)."""
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    return [int(child.generate_state(1, dtype=np.uint32)[0]) for child in np.random.SeedSequence(seed).spawn(episodes)]


def agent_seed(env_seed: int) -> int:
    """The allocator's seed for the episode with ``env_seed`` (an independent stream)."""
    return int(np.random.SeedSequence([env_seed, 1]).generate_state(1, dtype=np.uint32)[0])


__all__ = [
    "EnvConf",
    "EvaluateConf",
    "ScenarioError",
    "register_configs",
    "scenario_from_config",
    "check_run_config",
    "episode_seeds",
    "agent_seed",
]


_GROUP_OVERRIDE = re.compile(r"^[+~]*([A-Za-z_][\w/]*)=(.+)$")


def check_chosen_config_files(argv: Sequence[str]) -> None:
    """Parse every config file that the command line's ``group=name`` overrides pick (``env=mine``
    reads ``conf/env/mine.yaml``) before Hydra composes: a file YAML cannot parse then fails with one
    line naming it, where Hydra would print its own traceback. Raises :class:`ScenarioError`."""
    for arg in argv:
        match = _GROUP_OVERRIDE.match(arg)
        if not match:
            continue
        group, values = match.groups()
        for name in values.split(","):
            path = CONF_DIR / group / f"{name.strip()}.yaml"
            if path.is_file():
                load_yaml(path)


def run_entry(main: Callable[[], object]) -> None:
    """Start a Hydra entry point after :func:`check_chosen_config_files`; a broken file exits with 2."""
    try:
        check_chosen_config_files(sys.argv[1:])
    except ScenarioError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    main()
