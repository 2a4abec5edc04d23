"""Where an Optuna study lives and who may join it: storage, heartbeats, the study's setup, work left.

:func:`make_storage` opens a storage URL (SQLite, any SQLAlchemy database, or ``journal:///<path>``)
with heartbeats and retries of stale trials; :func:`join_study` creates or loads the study and refuses
a worker whose setup differs from the one the study recorded (:func:`check_setup`). The URL forms
and the fault tolerance are described in :mod:`experiments.tune`.
"""

from __future__ import annotations

import time
import warnings
from collections import Counter
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import optuna
import sqlalchemy
from omegaconf import DictConfig
from optuna.storages import BaseStorage, JournalStorage, RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.storages._heartbeat import BaseHeartbeat  # the interface RDBStorage implements
from optuna.storages.journal import JournalFileBackend
from optuna.trial import FrozenTrial, TrialState

from agents.config import plain
from experiments.tune_space import leaves

JOURNAL_PREFIX = "journal:///"
#: Trial states that count towards a study's n_trials.
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


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
    resolved = plain(cfg)
    return {
        "agent": resolved["agent"],
        "env": resolved["env"],
        "family": resolved.get("family"),  # trained on one preset or on a family: different studies
        "vec_env": resolved.get("vec_env"),
        "seed": resolved["seed"],
        "total_timesteps": resolved["total_timesteps"],
        "eval": resolved["eval"],
        "tune": resolved["tune"],
    }


def check_setup(study: optuna.Study, setup: dict[str, Any]) -> None:
    """Record the setup on a new study; refuse to join one set up otherwise, naming the first difference."""
    recorded = study.user_attrs.get("setup")
    if recorded is None:
        study.set_user_attr("setup", setup)
        return
    mine, theirs = dict(leaves(setup)), dict(leaves(recorded))
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


def join_study(cfg: DictConfig, sampler_seed: int) -> optuna.Study:
    """The study ``cfg.study_name`` in ``cfg.storage`` (created on first use), with this worker's TPE sampler
    (seeded ``sampler_seed``) and the median pruner; refuses a study set up otherwise (:func:`check_setup`).
    """
    sampler = optuna.samplers.TPESampler(
        seed=sampler_seed,
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
    return study
