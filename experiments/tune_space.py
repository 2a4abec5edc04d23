"""The search space of ``conf/tune/<agent>.yaml``: distributions and ties, checked, then drawn per trial.

Paths in the search space mirror the agent config (``hyperparams.learning_rate``); a leaf is a
distribution (``{type: float|int|categorical, ...}``, see ``conf/tune/ppo.yaml``). ``tie`` sets a
field to another field's drawn value. :func:`search_space` refuses a path the agent config cannot
take (an unknown keyword of the algorithm or of VecNormalize) or a distribution Optuna would refuse,
naming the field; :func:`sample_agent` draws one trial's agent config.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from inspect import Parameter, signature
from typing import Any

import optuna
from stable_baselines3.common.vec_env import VecNormalize

from agents.sb3 import ALGOS

DISTRIBUTIONS = ("float", "int", "categorical")
#: Agent config fields a search space may set (conf/agent/*.yaml, kind: sb3).
TUNABLE = ("n_envs", "hyperparams", "policy_kwargs", "normalize")


@dataclass(frozen=True)
class Param:
    """One distribution of the search space; ``path`` is its place in the agent config."""

    path: tuple[str, ...]  # e.g. ("hyperparams", "learning_rate"); the Optuna name joins it with dots
    spec: dict[str, Any]

    @property
    def name(self) -> str:
        return ".".join(self.path)

    def suggest(self, trial: optuna.Trial) -> Any:
        kind, spec = self.spec["type"], self.spec
        if kind == "float":
            return trial.suggest_float(
                self.name, spec["low"], spec["high"], log=spec.get("log", False), step=spec.get("step")
            )
        if kind == "int":
            return trial.suggest_int(
                self.name, spec["low"], spec["high"], step=spec.get("step", 1), log=spec.get("log", False)
            )
        choices = spec["choices"]
        if isinstance(choices, Mapping):  # named choices: Optuna records the name, the config gets the value
            return choices[trial.suggest_categorical(self.name, list(choices))]
        return trial.suggest_categorical(self.name, list(choices))


def leaves(node: Mapping[str, Any], prefix: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], Any]]:
    """(path, leaf) pairs of a nested mapping; a leaf is a mapping with a ``type`` key, or a non-mapping."""
    out = []
    for key, value in node.items():
        path = (*prefix, str(key))
        if isinstance(value, Mapping) and "type" not in value:
            out.extend(leaves(value, path))
        else:
            out.append((path, value))
    return out


def _accepted_keywords(agent: Mapping[str, Any], section: str) -> set[str] | None:
    """Keyword names an agent config section is passed to (None: anything goes)."""
    target: Callable[..., Any] | None = {"hyperparams": ALGOS[agent["algo"]], "normalize": VecNormalize}.get(section)
    if target is None:
        return None
    params = signature(target).parameters.values()
    if any(p.kind is Parameter.VAR_KEYWORD for p in params):
        return None
    return {p.name for p in params}


def check_path(path: tuple[str, ...], agent: Mapping[str, Any], where: str) -> None:
    """Refuse a search-space or tie path that the agent config cannot take, naming it."""
    name = ".".join(path)
    if path[0] not in TUNABLE:
        raise ValueError(f"{where}.{name}: agent field {path[0]!r} is not tunable; expected one of {list(TUNABLE)}")
    if len(path) == 1:
        if path[0] != "n_envs":
            raise ValueError(f"{where}.{name}: give a keyword of agent.{path[0]}, e.g. {path[0]}.<keyword>")
        return
    accepted = _accepted_keywords(agent, path[0])
    if accepted is not None and path[1] not in accepted:
        target = agent["algo"] if path[0] == "hyperparams" else "VecNormalize"
        raise ValueError(f"{where}.{name}: {path[1]!r} is not a keyword of {target}")


def search_space(tune_cfg: Mapping[str, Any], agent: Mapping[str, Any]) -> tuple[list[Param], dict[tuple, tuple]]:
    """The validated distributions and ties of ``tune_cfg`` (``conf/tune/<agent>.yaml``) for ``agent``.

    Errors name the field, e.g. ``tune.search_space.hyperparams.gamma.low``.
    """
    params: list[Param] = []
    for path, spec in leaves(tune_cfg.get("search_space") or {}):
        where = "tune.search_space." + ".".join(path)
        if not isinstance(spec, Mapping):
            raise ValueError(f"{where} must be a distribution {{type: float|int|categorical, ...}}, got {spec!r}")
        spec = dict(spec)
        check_path(path, agent, "tune.search_space")
        kind = spec.get("type")
        if kind not in DISTRIBUTIONS:
            raise ValueError(f"{where}.type must be one of {list(DISTRIBUTIONS)}, got {kind!r}")
        if kind == "categorical":
            choices = spec.get("choices")
            if not choices or not isinstance(choices, list | Mapping):
                raise ValueError(f"{where}.choices must be a non-empty list or mapping, got {choices!r}")
            if isinstance(choices, list) and not all(isinstance(c, bool | int | float | str) for c in choices):
                raise ValueError(f"{where}.choices: list values must be numbers or strings; name the others")
        else:
            for bound in ("low", "high"):
                if not isinstance(spec.get(bound), int | float):
                    raise ValueError(f"{where}.{bound} must be a number, got {spec.get(bound)!r}")
            if spec["low"] > spec["high"]:
                raise ValueError(f"{where}.low must be <= high, got {spec['low']} > {spec['high']}")
            if spec.get("log") and spec["low"] <= 0:
                raise ValueError(f"{where}.low must be > 0 with log: true, got {spec['low']}")
            distribution = (
                optuna.distributions.FloatDistribution if kind == "float" else optuna.distributions.IntDistribution
            )
            try:  # what else Optuna refuses (a step with log: true, an int step that is not an integer, ...)
                distribution(**{k: v for k, v in spec.items() if k in ("low", "high", "log", "step")})
            except (ValueError, TypeError) as exc:
                raise ValueError(f"{where}: {exc}") from exc
        params.append(Param(path, spec))
    if not params:
        raise ValueError("tune.search_space is empty: conf/tune/<agent>.yaml declares no distribution")
    sampled = {p.path for p in params}
    ties = {}
    for path, source in leaves(tune_cfg.get("tie") or {}):
        check_path(path, agent, "tune.tie")
        source_path = tuple(str(source).split("."))
        if source_path not in sampled:
            raise ValueError(f"tune.tie.{'.'.join(path)}: {source!r} is not a field of tune.search_space")
        ties[path] = source_path
    return params, ties


def _get(node: Mapping[str, Any], path: tuple[str, ...]) -> Any:
    for key in path:
        node = node[key]
    return node


def _set(node: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    for key in path[:-1]:
        node = node.setdefault(key, {})
    node[path[-1]] = value


def sample_agent(
    trial: optuna.Trial, base: Mapping[str, Any], params: list[Param], ties: Mapping[tuple, tuple]
) -> dict[str, Any]:
    """The agent config of ``trial``: ``base`` with every parameter drawn and every tie applied."""
    agent = json.loads(json.dumps(base))  # a deep, plain copy
    for param in params:
        _set(agent, param.path, param.suggest(trial))
    for path, source in ties.items():
        _set(agent, path, _get(agent, source))
    hyper = agent.get("hyperparams") or {}
    if agent["algo"] in ("PPO", "RecurrentPPO") and "batch_size" in hyper:
        rollout = hyper.get("n_steps", 2048) * agent.get("n_envs", 1)
        if hyper["batch_size"] > rollout:  # a minibatch is at most one rollout (rl-baselines3-zoo does the same)
            hyper["batch_size"] = rollout
    return agent
