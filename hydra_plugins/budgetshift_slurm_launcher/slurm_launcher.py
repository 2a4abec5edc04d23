"""Hydra's SLURM launcher (hydra-submitit-launcher) that learns job states without ``sacct`` and ends its wait.

``hydra/launcher=submitit_slurm`` (``conf/hydra/launcher/submitit_slurm.yaml``) runs each job of a
sweep as a task of one SLURM job array through submitit, as the plugin does. The plugin then waits
for each job in turn, and submitit learns a job's state from ``sacct`` alone. Without an accounting
database (``sacct`` disabled: the common case on small clusters and in containers) every state reads
UNKNOWN, so a job that dies without writing its result (``scancel``, out of memory, a lost node)
leaves the sweep waiting forever. This launcher differs in two ways:

- :class:`SqueueWatcher` asks ``squeue`` (the controller's live view, always there) first, ``sacct``
  only for jobs the controller has already forgotten (``MinJobAge`` after they ended), and counts a
  job found in neither as ``GONE``: ended, without a result.
- :meth:`SlurmLauncher.launch` waits for every job of the sweep before collecting any, then fails
  naming each job that ended without a result (SLURM job id, state, the job's overrides, its log) once
  the others have ended; their results and run folders are kept. ``max_wait_min`` bounds the wait.

Settings beyond the plugin's schema are added with ``+``: ``+hydra.launcher.state_poll_s=10``
(most seconds between two ``squeue`` calls, default 60; sooner while the jobs are young),
``+hydra.launcher.result_grace_s=30`` (how long an ended job's result file may take to appear on a
shared filesystem, default 15), ``+hydra.launcher.max_wait_min=600`` (give up waiting, default none:
a queue may hold jobs for days), ``+hydra.launcher.squeue_outage_min=10`` (give up when ``squeue`` has
failed for this long without a break: the controller is down or unreachable, default 10).
"""

from __future__ import annotations

import logging
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, filter_overrides
from hydra_plugins.hydra_submitit_launcher import submitit_launcher
from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
from omegaconf import OmegaConf
from submitit.core.utils import FailedJobError, UncompletedJobError
from submitit.slurm.slurm import SlurmInfoWatcher, SlurmJob

log = logging.getLogger(__name__)

#: State of a job neither ``squeue`` nor ``sacct`` knows: it ended (long enough ago to be forgotten).
GONE = "GONE"
#: States after which a job runs no more (squeue's and sacct's names); PREEMPTED jobs get requeued.
ENDED = frozenset(
    {"COMPLETED", "CANCELLED", "FAILED", "TIMEOUT", "NODE_FAIL", "BOOT_FAIL", "DEADLINE", "OUT_OF_MEMORY", GONE}
)
#: This launcher's own settings (added with ``+hydra.launcher.<name>=``) and their defaults.
DEFAULTS = {"state_poll_s": 60.0, "result_grace_s": 15.0, "max_wait_min": None, "squeue_outage_min": 10.0}


class SqueueWatcher(SlurmInfoWatcher):
    """Job states from ``squeue``, then ``sacct`` where it works, else ``GONE`` (see the module docstring).

    One watcher serves every job of a sweep: each update is one ``squeue`` call for all of them.
    """

    def __init__(self, delay_s: float, outage_s: float = 600.0) -> None:
        super().__init__(delay_s=int(delay_s))
        self.sacct_works: bool | None = None  # learnt from the first call
        self.outage_s = outage_s
        self._failing_since: float | None = None  # monotonic time of the first squeue failure in a row
        self._last_error = ""

    def update(self) -> None:
        waiting = self._registered - self._finished
        if not waiting:
            return
        self._num_calls += 1
        live = self._squeue()
        if live is None:
            now = time.monotonic()
            self._failing_since = self._failing_since if self._failing_since is not None else now
            if now - self._failing_since >= self.outage_s:
                raise RuntimeError(
                    f"squeue has failed for {now - self._failing_since:.0f} s without a break (last: "
                    f"{self._last_error}); the SLURM controller is down or unreachable, so the states of jobs "
                    f"{sorted(waiting)} are unknown: giving up waiting (squeue_outage_min)"
                )
        else:
            self._failing_since = None
        if live is not None:  # the controller answered: anything it does not hold has ended
            self._info_dict.update({job_id: info for job_id, info in live.items() if job_id in waiting})
            forgotten = sorted(job_id for job_id in waiting if job_id not in live)
            past = self._sacct(forgotten) if forgotten else {}
            for job_id in forgotten:
                self._info_dict[job_id] = past.get(job_id) or {"JobID": job_id, "State": GONE}
        self._last_status_check = time.time()
        self._finished |= {job_id for job_id in waiting if self.is_done(job_id, mode="cache")}

    def is_done(self, job_id: str, mode: str = "standard") -> bool:
        """Ended for good: submitit's own test treats squeue's transient states (CONFIGURING, ...) as ended."""
        return self.get_state(job_id, mode=mode).upper() in ENDED

    def _squeue(self) -> dict[str, dict[str, str]] | None:
        """This user's jobs the controller holds (pending, running and recently ended), array tasks one each."""
        command = ["squeue", "--me", "--noheader", "--array", "--states=all", "--format=%i|%T"]
        try:
            out = subprocess.run(command, capture_output=True, text=True, timeout=60, check=True).stdout
        except (OSError, subprocess.SubprocessError) as exc:
            self._last_error = " ".join(str(exc).split())
            log.warning("squeue failed (%s); job states unchanged until the next call", exc)
            return None
        rows = (line.split("|", 1) for line in out.splitlines() if "|" in line)
        return {job_id.strip(): {"JobID": job_id.strip(), "State": state.strip()} for job_id, state in rows}

    def _sacct(self, job_ids: Sequence[str]) -> dict[str, dict[str, str]]:
        """States of ended jobs from the accounting database, or nothing where ``sacct`` is disabled."""
        if self.sacct_works is False:
            return {}
        command = ["sacct", "-o", "JobID,State,NodeList", "--parsable2"]
        for array_id in sorted({job_id.split("_")[0] for job_id in job_ids}):
            command += ["-j", array_id]
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=60)
        except (OSError, subprocess.SubprocessError):
            return {}
        self.sacct_works = done.returncode == 0
        if not self.sacct_works:
            log.info("sacct unavailable (%s): jobs squeue no longer lists count as ended", done.stderr.strip())
            return {}
        states = self.read_info(done.stdout)
        return {job_id: {**info, "State": info["State"].split()[0]} for job_id, info in states.items()}


class SlurmLauncher(submitit_launcher.SlurmLauncher):
    """The plugin's SLURM launcher with :class:`SqueueWatcher` and a bounded wait (see the module docstring)."""

    def __init__(self, **params: Any) -> None:
        own = {name: params.pop(name, default) for name, default in DEFAULTS.items()}
        super().__init__(**params)
        self.state_poll_s = float(own["state_poll_s"])
        self.result_grace_s = float(own["result_grace_s"])
        self.max_wait_min = None if own["max_wait_min"] is None else float(own["max_wait_min"])
        self.squeue_outage_min = float(own["squeue_outage_min"])

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        jobs = self._submit(job_overrides, initial_job_idx)
        watcher = SqueueWatcher(delay_s=self.state_poll_s, outage_s=60 * self.squeue_outage_min)
        for job in jobs:
            job.watcher = watcher  # this sweep's jobs only; submitit's class-wide watcher stays as it is
            job._results_timeout_s = self.result_grace_s
        named = {job.job_id: f"#{initial_job_idx + i} ({' '.join(filter_overrides(overrides)) or 'no overrides'})"
                 for i, (job, overrides) in enumerate(zip(jobs, job_overrides, strict=True))}  # fmt: skip
        self._wait(jobs, named)
        returns: list[JobReturn] = []
        lost: list[str] = []
        for job in jobs:
            try:
                returns.append(job.results()[0])
            except (UncompletedJobError, FailedJobError) as exc:
                lost.append(f"SLURM job {job.job_id} {named[job.job_id]} ended {job.state}: {_first_line(exc)}")
        if lost:
            sweep_dir = self.config.hydra.sweep.dir
            raise RuntimeError(
                f"{len(lost)} of {len(jobs)} jobs ended without a result (cancelled, out of memory, node lost or "
                f"past the time limit; their logs are in {Path(str(self.params['submitit_folder'])).parent}):\n  "
                + "\n  ".join(lost)
                + f"\nThe other jobs' results are kept in {sweep_dir}; the same command with "
                f"hydra.sweep.dir={sweep_dir} runs the lost ones again."
            )
        return returns

    def _wait(self, jobs: list[SlurmJob], named: dict[str, str]) -> None:
        """Until every job has ended (result written, or SLURM says it ended); raises after ``max_wait_min``."""
        deadline = None if self.max_wait_min is None else time.monotonic() + 60 * self.max_wait_min
        while not all(job.done() for job in jobs):
            if deadline is not None and time.monotonic() > deadline:
                waiting = [f"SLURM job {j.job_id} {named[j.job_id]}: {j.state}" for j in jobs if not j.done()]
                raise TimeoutError(
                    f"gave up after max_wait_min={self.max_wait_min:g} minutes; still queued or running (not "
                    f"cancelled, scancel them to stop them):\n  " + "\n  ".join(waiting)
                )
            time.sleep(1)

    def _submit(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> list[SlurmJob]:
        """The plugin's submission (one job array, the plugin's parameters), returning the jobs without waiting."""
        import submitit  # lazy, as in the plugin: keeps Hydra's plugin discovery fast

        assert self.config is not None
        init_keys = {"submitit_folder", "max_num_timeout"}
        executor = submitit.AutoExecutor(
            cluster=self._EXECUTOR,
            folder=self.params["submitit_folder"],
            slurm_max_num_timeout=self.params["max_num_timeout"],
        )
        queue_keys = set(OmegaConf.structured(BaseQueueConf).keys())
        params = {k: v for k, v in self.params.items() if k not in init_keys}
        executor.update_parameters(**{k if k in queue_keys else f"{self._EXECUTOR}_{k}": v for k, v in params.items()})
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        if "mode" in self.config.hydra.sweep:
            sweep_dir.chmod(int(str(self.config.hydra.sweep.mode), 8))
        log.info(f"Submitit '{self._EXECUTOR}' sweep output dir : {sweep_dir}")
        job_params = []
        for idx, overrides in enumerate(job_overrides, start=initial_job_idx):
            log.info(f"\t#{idx} : {' '.join(filter_overrides(overrides))}")
            job_params.append((list(overrides), "hydra.sweep.dir", idx, f"job_id_for_{idx}", Singleton.get_state()))
        return executor.map_array(self, *zip(*job_params, strict=True))


def _first_line(exc: BaseException) -> str:
    lines = [line for line in str(exc).splitlines() if line.strip()]
    return " ".join(lines[:2]) if lines else type(exc).__name__
