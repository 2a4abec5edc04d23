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
no heartbeat in Optuna, so :class:`experiments.tune_study.HeartbeatJournalStorage` adds it
(heartbeats are trial system attributes holding the worker's wall clock, so the workers' clocks must
agree to well within the grace period). Stale trials are noticed when a worker joins or starts its
next trial. A trial that raises (a NaN, a bad combination) ends FAILED with ``error.txt`` in its
folder and the worker goes on; ``max_failures`` failures in a row stop the worker (exit 1).

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

import logging
import os
import secrets
import shlex
import socket
import sys
import time
import traceback
from collections import Counter
from pathlib import Path
from typing import Any

import hydra
import numpy as np
import optuna
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf
from optuna.trial import FrozenTrial, TrialState
from stable_baselines3.common.callbacks import BaseCallback

from agents.config import plain
from agents.sb3 import check_agent
from envs.jit import warm_up
from experiments import provenance
from experiments.common import register_configs, run_entry, scenario_from_config
from experiments.train import train
from experiments.tune_space import Param, sample_agent, search_space
from experiments.tune_study import FINISHED, join_study, redact, work_left
from experiments.tune_summary import export_agent, write_summary

log = logging.getLogger(__name__)
register_configs()

ROOT = Path(__file__).resolve().parent.parent
#: The fields a training run reads (conf/train.yaml minus its defaults and hydra nodes): a trial's config.
TRAIN_FIELDS = tuple(k for k in OmegaConf.load(ROOT / "conf" / "train.yaml") if k not in ("defaults", "hydra"))


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
        self.base_agent = plain(cfg.agent)
        resolved = plain(cfg)
        self.train_fields = {k: resolved[k] for k in ("env", *TRAIN_FIELDS)}
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
    agent = plain(cfg.agent)
    check_agent(agent)
    scenario_from_config(cfg.env)  # a bad env fails here, not in every trial
    params, ties = search_space(plain(cfg.tune), agent)
    warm_up()

    seed = sampler_seed(cfg.sampler.seed, cfg.worker_id)
    study = join_study(cfg, seed)
    objective = Objective(cfg, out_dir, params, ties)
    record_worker(cfg, out_dir, study, objective.worker, seed)
    log.info("worker %s joins study %r in %s", objective.worker, study.study_name, redact(cfg.storage))

    stop = StopWhenDone(cfg.n_trials, cfg.max_failures)
    start = time.perf_counter()
    before = {t.number for t in study.get_trials(deepcopy=False)}
    if work_left(study, cfg.n_trials) > 0:
        study.optimize(objective, timeout=cfg.timeout_s, callbacks=[stop], catch=(Exception,), gc_after_trial=True)
    wall_s = time.perf_counter() - start
    worker = worker_record(study, objective, before, seed, wall_s)

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
        worker["trials_run"],
        wall_s,
        f"; best trial {summary['best']['number']}: {summary['best']['value']:.6g}" if summary["best"] else "",
    )
    if stop.broken:
        raise RuntimeError(f"{cfg.max_failures} trials failed in a row; see trials/*/error.txt in {out_dir}")
    return summary


def record_worker(cfg: DictConfig, out_dir: Path, study: optuna.Study, worker: str, seed: int) -> None:
    """This worker's ``config.yaml`` (resolved, storage password redacted) and ``provenance.json``."""
    resolved = plain(cfg)
    resolved["storage"] = redact(cfg.storage)  # a password given through ${oc.env:...} stays out of files
    OmegaConf.save(OmegaConf.create(resolved), out_dir / "config.yaml")
    provenance.write(
        out_dir,
        seed=cfg.seed,
        extra={"study_name": study.study_name, "storage": redact(cfg.storage), "worker": worker, "sampler_seed": seed},
    )


def worker_record(
    study: optuna.Study, objective: Objective, before: set[int], seed: int, wall_s: float
) -> dict[str, Any]:
    """What this worker did in ``wall_s`` seconds: its trials (those not in ``before``) by state, throughput."""
    mine = [
        t
        for t in study.get_trials(deepcopy=False)
        if t.number not in before and t.user_attrs.get("worker") == objective.worker
    ]
    return {
        "name": objective.worker,
        "sampler_seed": seed,
        "trials_run": len(mine),
        "states": dict(Counter(t.state.name for t in mine)),
        "wall_s": round(wall_s, 2),
        "trials_per_hour": 3600 * len(mine) / wall_s if wall_s > 0 else 0.0,
        "env_steps": objective.env_steps,
        "env_steps_per_s": objective.env_steps / wall_s if wall_s > 0 else 0.0,
    }


@hydra.main(version_base="1.3", config_path="../conf", config_name="tune")
def main(cfg: DictConfig) -> float | None:
    summary = tune(cfg, Path(HydraConfig.get().runtime.output_dir))
    return summary["best"]["value"] if summary["best"] else None


if __name__ == "__main__":
    run_entry(main)
