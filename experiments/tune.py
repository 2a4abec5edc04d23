"""Tune an SB3 agent's hyperparameters with Optuna: ``python -m experiments.tune agent=ppo env=default``.

::

    python -m experiments.tune agent=ppo env=default n_trials=50 storage=sqlite:///outputs/tune/ppo.db
    python -m experiments.tune agent=ppo env=default n_trials=50 storage=postgresql://tuner@db/optuna \\
        study_name=ppo_default            # the same line on every machine: each one is a worker
    python -m experiments.tune -m worker_id=0,1,2,3 hydra/launcher=joblib hydra.launcher.n_jobs=4

A worker joins the study ``study_name`` in ``storage`` (created on first use) and runs trials until
the study holds ``n_trials`` finished ones (complete or pruned) over all its workers. A trial draws
an agent config from the search space of ``conf/tune/<agent>.yaml`` (TPE, seeded), trains it with
:func:`experiments.train.train` (the training settings of ``conf/train.yaml``, overridden in
``conf/tune.yaml``), reports the mean evaluation return after every evaluation to a median pruner
(the step is the evaluation's index, so trials with different ``n_envs`` compare alike), and scores
the last evaluation's mean return. Every trial evaluates on the same fixed episodes
(``eval.seed + i``) from the same training seed.

Workers draw apart: each seeds TPE from ``(sampler.seed, worker_id)`` (fresh entropy, recorded in
``provenance.json``, when ``worker_id`` is null) and ``constant_liar`` counts running trials as bad.
The study records its setup (agent, env, seed, budget, evaluation, search space); a worker with
another setup is refused, naming the first field that differs.

Storage URLs: ``sqlite:///<path>`` (one machine; ``sqlite:////<absolute path>``), any SQLAlchemy URL
(PostgreSQL or MySQL for clusters), or ``journal:///<path>``: Optuna's JournalStorage on an
append-only file (an NFS share without a database server).

Fault tolerance: every running trial records a heartbeat every ``heartbeat.interval_s``; a worker
about to start a trial first marks trials silent for ``heartbeat.grace_period_s`` as FAILED and
queues them again with the same parameters (``RetryHeartbeatStaleTrialCallback``, at most
``heartbeat.max_retry`` times). RDBStorage has this built in (its database clock); JournalStorage has
no heartbeat in Optuna, so :class:`HeartbeatJournalStorage` adds it (heartbeats are trial system
attributes holding the worker's wall clock, so the workers' clocks must agree to well within the
grace period). Stale trials are noticed when a worker joins or starts its next trial. A trial that
raises (a NaN, a bad combination) ends FAILED with ``error.txt`` in its folder and the worker goes
on; ``max_failures`` failures in a row stop the worker (exit 1).

The worker's output folder (``hydra.run.dir``, default ``outputs/tune/<study>/<time>``) gets:

- ``trials/trial_<number>/``: each trial this worker ran, a full :mod:`experiments.train` run folder
  (``config.yaml``, ``evaluations.csv``, ``model.zip``, ...);
- ``<agent>_tuned.yaml``: the study's best trial as a ready-to-use agent config (copy it into
  ``conf/agent/``, or pass ``export_best=true``, then ``python -m experiments.train agent=ppo_tuned``);
- ``summary.json`` and ``summary.md``: trial counts by state, the best trial, parameter importances
  (``optuna.importance.get_param_importances``; given once the study has enough complete trials),
  every trial, and this worker's throughput;
- ``config.yaml`` (resolved) and ``provenance.json`` (command, versions, git commit, sampler seed).

Rerunning the command on a finished study writes the summary and the best config again, with no trial.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import shlex
import socket
import sys
import time
import traceback
import warnings
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from inspect import Parameter, signature
from pathlib import Path
from typing import Any

import hydra
import numpy as np
import optuna
import sqlalchemy
import yaml
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf
from optuna.storages import BaseStorage, JournalStorage, RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.storages._heartbeat import BaseHeartbeat  # the interface RDBStorage implements
from optuna.storages.journal import JournalFileBackend
from optuna.trial import FrozenTrial, TrialState
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.vec_env import VecNormalize

from agents.sb3 import ALGOS, check_agent
from envs.jit import warm_up
from experiments import provenance
from experiments.common import register_configs, scenario_from_config
from experiments.train import train

log = logging.getLogger(__name__)
register_configs()

ROOT = Path(__file__).resolve().parent.parent
#: The fields a training run reads (conf/train.yaml minus its defaults and hydra nodes): a trial's config.
TRAIN_FIELDS = tuple(k for k in OmegaConf.load(ROOT / "conf" / "train.yaml") if k not in ("defaults", "hydra"))
JOURNAL_PREFIX = "journal:///"
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
DISTRIBUTIONS = ("float", "int", "categorical")
#: Agent config fields a search space may set (conf/agent/*.yaml, kind: sb3).
TUNABLE = ("n_envs", "hyperparams", "policy_kwargs", "normalize")


# -------------------------------------------------------------------------------------------------
# Search space: conf/tune/<agent>.yaml
# -------------------------------------------------------------------------------------------------


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


def _leaves(node: Mapping[str, Any], prefix: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], Any]]:
    """(path, leaf) pairs of a nested mapping; a leaf is a mapping with a ``type`` key, or a non-mapping."""
    out = []
    for key, value in node.items():
        path = (*prefix, str(key))
        if isinstance(value, Mapping) and "type" not in value:
            out.extend(_leaves(value, path))
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
    for path, spec in _leaves(tune_cfg.get("search_space") or {}):
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
    for path, source in _leaves(tune_cfg.get("tie") or {}):
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


# -------------------------------------------------------------------------------------------------
# Storage and study
# -------------------------------------------------------------------------------------------------


class HeartbeatJournalStorage(JournalStorage, BaseHeartbeat):
    """Optuna's JournalStorage with the heartbeat RDBStorage has, so killed workers' trials get failed.

    A heartbeat is the trial system attribute ``heartbeat`` (seconds since the epoch on the worker's
    clock); :func:`optuna.storages.fail_stale_trials` (run by ``study.optimize`` before each trial)
    fails RUNNING trials whose last heartbeat is older than ``grace_period`` seconds.
    """

    ATTR = "heartbeat"

    def __init__(
        self,
        backend: JournalFileBackend,
        heartbeat_interval: int,
        grace_period: int,
        stale_trial_callback: Callable[[optuna.Study, FrozenTrial], None] | None = None,
    ) -> None:
        super().__init__(backend)
        self.heartbeat_interval = heartbeat_interval
        self.grace_period = grace_period
        self.stale_trial_callback = stale_trial_callback

    def record_heartbeat(self, trial_id: int) -> None:
        try:
            self.set_trial_system_attr(trial_id, self.ATTR, time.time())
        except optuna.exceptions.UpdateFinishedTrialError:
            pass  # another worker already judged it stale

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        now = time.time()
        return [
            t._trial_id
            for t in self.get_all_trials(study_id, deepcopy=False, states=(TrialState.RUNNING,))
            if self.ATTR in t.system_attrs and now - t.system_attrs[self.ATTR] > self.grace_period
        ]

    def get_heartbeat_interval(self) -> int | None:
        return self.heartbeat_interval

    def get_heartbeat_stale_trial_callback(self) -> Callable[[optuna.Study, FrozenTrial], None] | None:
        return self.stale_trial_callback


def redact(url: str) -> str:
    """The storage URL without its password (for logs, summaries and provenance)."""
    if url.startswith(JOURNAL_PREFIX):
        return url
    try:
        return sqlalchemy.engine.make_url(url).render_as_string(hide_password=True)
    except sqlalchemy.exc.ArgumentError:
        return url


def make_storage(url: str, heartbeat: Mapping[str, Any]) -> BaseStorage:
    """The storage of ``url`` with heartbeats and retries of stale trials (see the module docstring)."""
    interval, grace = int(heartbeat["interval_s"]), int(heartbeat["grace_period_s"])
    if interval < 1 or grace <= interval:
        raise ValueError(
            f"heartbeat.interval_s must be >= 1 and heartbeat.grace_period_s > interval_s, got {interval} and {grace}"
        )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        retry = RetryHeartbeatStaleTrialCallback(max_retry=heartbeat["max_retry"])
    if url.startswith(JOURNAL_PREFIX):
        path = Path(url[len(JOURNAL_PREFIX) :])
        path.parent.mkdir(parents=True, exist_ok=True)
        return HeartbeatJournalStorage(JournalFileBackend(str(path)), interval, grace, retry)
    try:
        parsed = sqlalchemy.engine.make_url(url)
    except sqlalchemy.exc.ArgumentError as exc:
        raise ValueError(
            f"storage must be sqlite:///<path>, an SQLAlchemy database URL or journal:///<path>, got {url!r}"
        ) from exc
    engine_kwargs: dict[str, Any] = {}
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine_kwargs["connect_args"] = {"timeout": 60}  # workers queue on SQLite's file lock
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # heartbeat_interval
        # Workers starting together race to create the tables; the loser finds them on a retry.
        attempt = 0
        while True:
            try:
                return RDBStorage(
                    url,
                    engine_kwargs=engine_kwargs,
                    heartbeat_interval=interval,
                    grace_period=grace,
                    heartbeat_stale_trial_callback=retry,
                )
            except sqlalchemy.exc.OperationalError:
                attempt += 1
                if attempt == 5:
                    raise
                time.sleep(attempt)


def study_setup(cfg: DictConfig) -> dict[str, Any]:
    """What every worker of one study must share: a worker with another setup would mix up its results."""
    plain = OmegaConf.to_container(cfg, resolve=True)
    return {
        "agent": plain["agent"],
        "env": plain["env"],
        "seed": plain["seed"],
        "total_timesteps": plain["total_timesteps"],
        "eval": plain["eval"],
        "tune": plain["tune"],
    }


def check_setup(study: optuna.Study, setup: dict[str, Any]) -> None:
    """Record the setup on a new study; refuse to join one set up otherwise, naming the first difference."""
    recorded = study.user_attrs.get("setup")
    if recorded is None:
        study.set_user_attr("setup", setup)
        return
    mine, theirs = dict(_leaves(setup)), dict(_leaves(recorded))
    for path in sorted(set(mine) | set(theirs)):
        if mine.get(path) != theirs.get(path):
            raise ValueError(
                f"study {study.study_name!r} was set up with {'.'.join(path)}={theirs.get(path)!r}, this worker has "
                f"{mine.get(path)!r}: its trials would not compare; use the study's settings or another study_name"
            )


def work_left(study: optuna.Study, n_trials: int) -> int:
    """Trials still to start: queued ones, plus what the finished, running and queued ones leave of n_trials."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)  # a dead worker's RUNNING trial must not hold a slot
    counts = Counter(t.state for t in study.get_trials(deepcopy=False))
    taken = counts[TrialState.COMPLETE] + counts[TrialState.PRUNED] + counts[TrialState.RUNNING]
    waiting = counts[TrialState.WAITING]
    return waiting + max(n_trials - taken - waiting, 0)


# -------------------------------------------------------------------------------------------------
# Trials
# -------------------------------------------------------------------------------------------------


class SurplusTrial(Exception):
    """A trial started after the study already held n_trials (two workers started their last one at once)."""


class ReportEvaluations(BaseCallback):
    """After each evaluation: report its mean return to the trial, stop training if the pruner says so."""

    def __init__(self, trial: optuna.Trial) -> None:
        super().__init__()
        self.trial = trial
        self.evaluations = 0
        self.pruned_at: int | None = None

    def _on_step(self) -> bool:
        self.evaluations += 1
        mean_return = float(self.parent.last_mean_reward)
        self.trial.report(mean_return, step=self.evaluations - 1)  # step 0: the first evaluation
        if self.trial.should_prune():
            self.pruned_at = self.evaluations
            return False
        return True


class Objective:
    """One trial: draw an agent config, train it in ``trials/trial_<n>``, return its last mean evaluation return."""

    def __init__(self, cfg: DictConfig, out_dir: Path, params: list[Param], ties: dict[tuple, tuple]) -> None:
        self.cfg = cfg
        self.out_dir = out_dir
        self.params = params
        self.ties = ties
        self.base_agent = OmegaConf.to_container(cfg.agent, resolve=True)
        plain = OmegaConf.to_container(cfg, resolve=True)
        self.train_fields = {k: plain[k] for k in ("env", *TRAIN_FIELDS)}
        self.worker = f"{socket.gethostname()}:{os.getpid()}"
        self.env_steps = 0

    def is_surplus(self, trial: optuna.Trial) -> bool:
        live = trial.study.get_trials(deepcopy=False, states=(*FINISHED, TrialState.RUNNING, TrialState.WAITING))
        me = next(t for t in live if t.number == trial.number)
        if "fixed_params" in me.system_attrs or "failed_trial" in me.system_attrs:
            return False  # an enqueued trial or a retry fills a slot that was already counted
        return sum(t.number < trial.number for t in live) >= self.cfg.n_trials

    def __call__(self, trial: optuna.Trial) -> float:
        if self.is_surplus(trial):
            trial.set_user_attr("surplus", True)
            trial.study.stop()
            raise SurplusTrial(f"the study already holds {self.cfg.n_trials} trials")
        agent = sample_agent(trial, self.base_agent, self.params, self.ties)
        run_dir = self.out_dir / "trials" / f"trial_{trial.number:04d}"
        run_dir.mkdir(parents=True, exist_ok=True)
        trial.set_user_attr("worker", self.worker)
        trial.set_user_attr("run_dir", str(run_dir.resolve()))
        trial.set_user_attr("agent", agent)
        trial_cfg = OmegaConf.create({**self.train_fields, "agent": agent, "resume": False, "overwrite": False})
        report = ReportEvaluations(trial)
        try:
            summary = train(trial_cfg, run_dir, callback_after_eval=report)
        except Exception:
            (run_dir / "error.txt").write_text(traceback.format_exc())
            raise
        finally:
            (run_dir / "cmd.txt").write_text(self.command(trial, run_dir))
        self.env_steps += summary["num_timesteps"]
        if report.pruned_at is not None:
            raise optuna.TrialPruned(
                f"at evaluation {report.pruned_at} ({summary['num_timesteps']} env steps): "
                f"mean return {summary.get('last_eval_mean_return')}"
            )
        return float(summary["last_eval_mean_return"])

    def command(self, trial: optuna.Trial, run_dir: Path) -> str:
        """What ran this folder and how to repeat it (train.py would record the tune command as a train one)."""
        return (
            f"# trial {trial.number} of study {trial.study.study_name!r}, by worker {self.worker}:\n"
            f"# {shlex.join([Path(sys.executable).name, '-m', 'experiments.tune', *sys.argv[1:]])}\n"
            "# repeat it (config.yaml is this trial's whole training config):\n"
            f"python -m experiments.train --config-path {run_dir.resolve()} --config-name config "
            "hydra.run.dir=<new folder>\n"
        )


class StopWhenDone:
    """Stop this worker once the study has nothing left to start, or after ``max_failures`` failures in a row."""

    def __init__(self, n_trials: int, max_failures: int) -> None:
        self.n_trials = n_trials
        self.max_failures = max_failures
        self.failures_in_a_row = 0
        self.broken = False

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        if trial.state == TrialState.FAIL and not trial.user_attrs.get("surplus"):
            self.failures_in_a_row += 1
            if self.failures_in_a_row >= self.max_failures:
                log.error("%d trials failed in a row: stopping this worker", self.failures_in_a_row)
                self.broken = True
                study.stop()
                return
        elif trial.state in FINISHED:
            self.failures_in_a_row = 0
        if work_left(study, self.n_trials) == 0:
            study.stop()


# -------------------------------------------------------------------------------------------------
# Outputs: the best agent config and the study summary
# -------------------------------------------------------------------------------------------------


def export_agent(study: optuna.Study, cfg: DictConfig, folder: Path) -> Path | None:
    """Write the best trial's agent config as ``<folder>/<agent>_tuned.yaml``; None before any complete trial."""
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not complete:
        return None
    best = study.best_trial
    agent = dict(best.user_attrs["agent"])
    agent["name"] = f"{cfg.agent.name}_tuned"
    n_steps = cfg.total_timesteps
    header = [
        f"# {cfg.agent.algo} tuned by Optuna (python -m experiments.tune): study {study.study_name!r},",
        f"# trial {best.number} of {len(complete)} complete: mean evaluation return {best.value:.6g} on env "
        f"{cfg.env.name!r} after {n_steps} env steps (seed {cfg.seed}).",
        "# Drawn: " + ", ".join(f"{k}={v}" for k, v in best.params.items()),
        f"#   python -m experiments.train agent={agent['name']} env={cfg.env.name}",
    ]
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{agent['name']}.yaml"
    path.write_text("\n".join(header) + "\n" + yaml.safe_dump(agent, sort_keys=False, default_flow_style=None))
    return path


def importances(study: optuna.Study) -> tuple[dict[str, float] | None, str | None]:
    """Optuna's parameter importances of the complete trials, or why there are none yet."""
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if len(complete) < 2 or len({t.value for t in complete}) < 2:
        return None, f"needs at least 2 complete trials with different values; the study has {len(complete)}"
    try:
        return dict(optuna.importance.get_param_importances(study)), None
    except (ValueError, RuntimeError, ZeroDivisionError) as exc:
        return None, f"{type(exc).__name__}: {exc}"


def _trial_row(trial: FrozenTrial, out_dir: Path) -> dict[str, Any]:
    run_dir = trial.user_attrs.get("run_dir")
    if run_dir is not None and Path(run_dir).is_relative_to(out_dir.resolve()):
        run_dir = str(Path(run_dir).relative_to(out_dir.resolve()))
    duration = trial.duration.total_seconds() if trial.duration is not None else None
    return {
        "number": trial.number,
        "state": trial.state.name,
        "value": trial.value,
        "evaluations": len(trial.intermediate_values),
        "duration_s": round(duration, 2) if duration is not None else None,
        "worker": trial.user_attrs.get("worker"),
        "run_dir": run_dir,  # relative to this folder when this worker ran it
        "retry_of": trial.system_attrs.get("failed_trial"),  # RetryHeartbeatStaleTrialCallback's record
        "surplus": bool(trial.user_attrs.get("surplus", False)),
        "params": trial.params,
    }


def write_summary(
    study: optuna.Study, cfg: DictConfig, out_dir: Path, worker: dict[str, Any], best_config: Path | None
) -> dict[str, Any]:
    trials = study.get_trials(deepcopy=False)
    counts = Counter(t.state.name for t in trials)
    importance, importance_note = importances(study)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    best = study.best_trial if complete else None
    summary = {
        "study_name": study.study_name,
        "storage": redact(cfg.storage),
        "direction": "maximize",
        "objective": "mean return of the last evaluation",
        "n_trials": cfg.n_trials,
        "finished": counts["COMPLETE"] + counts["PRUNED"],
        "states": dict(counts),
        "best": None
        if best is None
        else {"number": best.number, "value": best.value, "params": best.params, "config": best_config.name},
        "importances": importance,
        "importances_note": importance_note,
        "worker": worker,
        "trials": [_trial_row(t, out_dir) for t in trials],
    }
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    (out_dir / "summary.md").write_text(summary_markdown(summary))
    return summary


def summary_markdown(s: dict[str, Any]) -> str:
    md = [
        f"# Optuna study `{s['study_name']}`",
        "",
        f"Storage `{s['storage']}`; objective: {s['objective']} (maximised). "
        f"{s['finished']} of {s['n_trials']} trials finished; states: "
        + ", ".join(f"{k} {v}" for k, v in sorted(s["states"].items()))
        + ".",
        "",
    ]
    if s["best"] is not None:
        b = s["best"]
        md += [f"## Best trial: {b['number']}, mean return {b['value']:.6g}", "", f"Agent config: `{b['config']}`.", ""]
        md += ["Drawn values (the config holds the values trained, e.g. batch_size capped at one rollout):", ""]
        md += ["| parameter | value |", "|---|---|"] + [f"| `{k}` | {v} |" for k, v in b["params"].items()] + [""]
    md += ["## Parameter importances", ""]
    if s["importances"]:
        md += [f"Optuna's default evaluator over the {s['states'].get('COMPLETE', 0)} complete trials.", ""]
        md += ["| parameter | importance |", "|---|---|"]
        md += [f"| `{k}` | {v:.3f} |" for k, v in s["importances"].items()] + [""]
    else:
        md += [f"_Not available: {s['importances_note']}._", ""]
    w = s["worker"]
    md += [
        "## This worker",
        "",
        f"{w['name']}: {w['trials_run']} trials in {w['wall_s']:.0f} s ({w['trials_per_hour']:.1f} per hour, "
        f"{w['env_steps_per_s']:.0f} env steps/s); sampler seed {w['sampler_seed']}.",
        "",
        "## Trials",
        "",
        "| # | state | value | evaluations | s | worker | retry of |",
        "|---|---|---|---|---|---|---|",
    ]
    for t in s["trials"]:
        value = f"{t['value']:.6g}" if t["value"] is not None else ""
        retry = t["retry_of"] if t["retry_of"] is not None else ""
        state = t["state"] + (" (surplus)" if t["surplus"] else "")
        md.append(
            f"| {t['number']} | {state} | {value} | {t['evaluations']} | {t['duration_s']} | {t['worker']} | {retry} |"
        )
    return "\n".join(md) + "\n"


# -------------------------------------------------------------------------------------------------
# The worker
# -------------------------------------------------------------------------------------------------


def sampler_seed(seed: int, worker_id: int | None) -> int:
    """This worker's TPE seed: workers of one study must not draw the same startup trials."""
    if worker_id is None:
        return secrets.randbits(32)
    return int(np.random.SeedSequence([seed, worker_id]).generate_state(1)[0])


def check_config(cfg: DictConfig) -> None:
    if cfg.n_trials < 0:
        raise ValueError(f"n_trials must be >= 0, got {cfg.n_trials}")
    if not 0 < cfg.eval.freq <= cfg.total_timesteps:
        raise ValueError(
            f"eval.freq must be in (0, total_timesteps={cfg.total_timesteps}]: the pruner and the objective "
            f"read evaluations; got {cfg.eval.freq}"
        )
    if cfg.max_failures < 1:
        raise ValueError(f"max_failures must be >= 1, got {cfg.max_failures}")


def tune(cfg: DictConfig, out_dir: Path) -> dict[str, Any]:
    """Run this worker of the study of ``cfg`` in ``out_dir``; returns what ``summary.json`` holds."""
    check_config(cfg)
    agent = OmegaConf.to_container(cfg.agent, resolve=True)
    check_agent(agent)
    scenario_from_config(cfg.env)  # a bad env fails here, not in every trial
    params, ties = search_space(OmegaConf.to_container(cfg.tune, resolve=True), agent)
    warm_up()

    seed = sampler_seed(cfg.sampler.seed, cfg.worker_id)
    sampler = optuna.samplers.TPESampler(
        seed=seed,
        n_startup_trials=cfg.sampler.n_startup_trials,
        multivariate=cfg.sampler.multivariate,
        constant_liar=cfg.sampler.constant_liar,
    )
    pruner = optuna.pruners.MedianPruner(
        n_startup_trials=cfg.pruner.n_startup_trials,
        n_warmup_steps=cfg.pruner.n_warmup_steps,
        interval_steps=cfg.pruner.interval_steps,
    )
    storage = make_storage(cfg.storage, cfg.heartbeat)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # multivariate, constant_liar
        study = optuna.create_study(
            storage=storage,
            study_name=cfg.study_name,
            direction="maximize",
            sampler=sampler,
            pruner=pruner,
            load_if_exists=True,
        )
    check_setup(study, study_setup(cfg))

    objective = Objective(cfg, out_dir, params, ties)
    resolved = OmegaConf.to_container(cfg, resolve=True)
    resolved["storage"] = redact(cfg.storage)  # a password given through ${oc.env:...} stays out of files
    OmegaConf.save(OmegaConf.create(resolved), out_dir / "config.yaml")
    provenance.write(
        out_dir,
        seed=cfg.seed,
        extra={
            "study_name": study.study_name,
            "storage": redact(cfg.storage),
            "worker": objective.worker,
            "sampler_seed": seed,
        },
    )
    log.info("worker %s joins study %r in %s", objective.worker, study.study_name, redact(cfg.storage))

    stop = StopWhenDone(cfg.n_trials, cfg.max_failures)
    start = time.perf_counter()
    before = {t.number for t in study.get_trials(deepcopy=False)}
    if work_left(study, cfg.n_trials) > 0:
        study.optimize(objective, timeout=cfg.timeout_s, callbacks=[stop], catch=(Exception,), gc_after_trial=True)
    wall_s = time.perf_counter() - start
    mine = [
        t
        for t in study.get_trials(deepcopy=False)
        if t.number not in before and t.user_attrs.get("worker") == objective.worker
    ]
    worker = {
        "name": objective.worker,
        "sampler_seed": seed,
        "trials_run": len(mine),
        "states": dict(Counter(t.state.name for t in mine)),
        "wall_s": round(wall_s, 2),
        "trials_per_hour": 3600 * len(mine) / wall_s if wall_s > 0 else 0.0,
        "env_steps": objective.env_steps,
        "env_steps_per_s": objective.env_steps / wall_s if wall_s > 0 else 0.0,
    }
    best_config = export_agent(study, cfg, out_dir)
    if best_config is not None and cfg.export_best:
        export_dir = Path(cfg.export_dir) if cfg.export_dir else ROOT / "conf" / "agent"
        log.info("best agent config: %s", export_agent(study, cfg, export_dir))
    summary = write_summary(study, cfg, out_dir, worker, best_config)
    log.info(
        "study %r: %d/%d finished (%s); this worker ran %d trials in %.0f s%s",
        study.study_name,
        summary["finished"],
        cfg.n_trials,
        summary["states"],
        len(mine),
        wall_s,
        f"; best trial {summary['best']['number']}: {summary['best']['value']:.6g}" if summary["best"] else "",
    )
    if stop.broken:
        raise RuntimeError(f"{cfg.max_failures} trials failed in a row; see trials/*/error.txt in {out_dir}")
    return summary


@hydra.main(version_base="1.3", config_path="../conf", config_name="tune")
def main(cfg: DictConfig) -> float | None:
    summary = tune(cfg, Path(HydraConfig.get().runtime.output_dir))
    return summary["best"]["value"] if summary["best"] else None


if __name__ == "__main__":
    main()
