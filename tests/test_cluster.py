"""Sweeps and tuning on a real (single-node) SLURM cluster with no accounting database, and a PostgreSQL
study: what a user reaches for when one machine is not enough (README, "Beyond one machine").

A sweep through ``hydra/launcher=submitit_slurm`` reports exactly what the same sweep reports on the
basic launcher; a training job leaves its whole run folder; a job killed with ``scancel`` fails the
sweep promptly, naming the job, while the others' results stay, with or without an accounting
database (a second cluster with slurmdbd, where a job the controller has forgotten gets its state
from ``sacct``); tuning workers submitted as SLURM jobs share one PostgreSQL study, a worker killed
mid-trial has its trial retried by the other, and the database password lands in no file. The
clusters and the server come from ``tests/cluster.py`` (skipped, naming what is missing, where the
machine cannot run them).
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from cluster import (
    ACCOUNTING_PACKAGES,
    ACCOUNTING_PROGRAMS,
    SLURM_PACKAGES,
    SLURM_PROGRAMS,
    SlurmCluster,
    ensure_installed,
    postgres_server,
    slurm_cluster,
)
from optuna.trial import TrialState
from test_tune import HEARTBEAT, TINY

from envs.jit import warm_up
from experiments.train import RUN_ARTIFACTS
from experiments.tune_study import make_storage
from hydra_plugins.budgetshift_slurm_launcher.slurm_launcher import GONE, SqueueWatcher

ROOT = Path(__file__).resolve().parent.parent
#: Tiny jobs: one CPU and 1 GB each (the node has 2 CPUs), a quick poll so a lost job is seen at once.
SLURM = [
    "hydra/launcher=submitit_slurm",
    "hydra.launcher.partition=debug",
    "hydra.launcher.timeout_min=10",
    "hydra.launcher.mem_gb=1",
    "+hydra.launcher.state_poll_s=2",
    "+hydra.launcher.result_grace_s=2",
    "+hydra.launcher.max_wait_min=10",  # a broken cluster fails the test instead of holding CI
]
QUICK = ["env=small", "episodes=1", "max_steps=24", "steps_table=csv"]

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def slurm(tmp_path_factory) -> SlurmCluster:
    ensure_installed(SLURM_PROGRAMS, SLURM_PACKAGES)
    warm_up()  # jobs load the kernels from the cache instead of each compiling them
    with slurm_cluster(tmp_path_factory.mktemp("slurm")) as cluster, cluster.exported():
        yield cluster


@pytest.fixture(scope="session")
def accounting_cluster(tmp_path_factory) -> SlurmCluster:
    """A second cluster, with slurmdbd and MariaDB: started only if a test asks for it."""
    ensure_installed(SLURM_PROGRAMS + ACCOUNTING_PROGRAMS, SLURM_PACKAGES + ACCOUNTING_PACKAGES)
    warm_up()
    with slurm_cluster(tmp_path_factory.mktemp("slurm-accounting"), accounting=True) as cluster:
        yield cluster


@pytest.fixture
def slurm_with_sacct(accounting_cluster) -> SlurmCluster:
    """The cluster with accounting, for this test only (the one without may be up meanwhile)."""
    with accounting_cluster.exported() as cluster:
        yield cluster


def recipe(module: str) -> list[str]:
    """The arguments of README's *Beyond one machine* command for ``python -m <module>`` (the tested recipe)."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Beyond one machine", 1)[1].split("\n## ", 1)[0]
    block = section.split("```bash\n", 1)[1].split("```", 1)[0].replace("\\\n", " ")
    for line in block.splitlines():
        words = shlex.split(line, comments=True)
        if words[:3] == ["python", "-m", module]:
            return words[3:]
    raise AssertionError(f"README's Beyond one machine section has no python -m {module} command")


def with_folder(args: list[str], key: str, folder: Path) -> list[str]:
    """``args`` with ``key=...`` pointing at ``folder`` (the recipe's folders are relative to the project)."""
    assert any(a.startswith(f"{key}=") for a in args), f"the recipe sets no {key}"
    return [f"{key}={folder}" if a.startswith(f"{key}=") else a for a in args]


def cli(module: str, *args: str, ok: bool = True, env: dict | None = None) -> subprocess.CompletedProcess:
    done = subprocess.run(
        [sys.executable, "-m", module, *args], cwd=ROOT, capture_output=True, text=True, timeout=300, env=env
    )
    assert (done.returncode == 0) == ok, done.stderr[-3000:]
    return done


def test_the_readme_sweep_on_slurm_reports_exactly_what_the_basic_launcher_reports(slurm, tmp_path):
    sweep = recipe("experiments.evaluate") + QUICK  # later overrides win: tiny runs on the small preset
    cli("experiments.evaluate", *with_folder(sweep, "hydra.sweep.dir", tmp_path / "slurm"), *SLURM)
    basic = [a for a in sweep if not a.lstrip("+").startswith(("hydra/launcher", "hydra.launcher"))]
    cli("experiments.evaluate", *with_folder(basic, "hydra.sweep.dir", tmp_path / "basic"))
    (report_dir,) = recipe("experiments.report")
    assert f"hydra.sweep.dir={report_dir}" in sweep, "the recipe reports the folder its sweep wrote"
    for sweep in ("slurm", "basic"):
        cli("experiments.report", str(tmp_path / sweep), "--reps", "200")
    runs = sorted(p.parent.name for p in (tmp_path / "slurm").glob("*/metrics.json"))
    assert len(runs) == 6 and runs == sorted(p.parent.name for p in (tmp_path / "basic").glob("*/metrics.json"))
    assert list((tmp_path / "slurm" / ".submitit").iterdir()), "the jobs ran through SLURM"
    for name in ("report.md", "summary.csv", "paired.csv"):
        on_slurm, basic = ((tmp_path / sweep / name).read_text().replace(str(tmp_path / sweep), "<sweep>")
                           for sweep in ("slurm", "basic"))  # fmt: skip
        assert on_slurm == basic, name


def test_a_training_job_on_slurm_leaves_its_whole_run_folder(slurm, tmp_path):
    sweep = tmp_path / "train"
    cli(
        "experiments.train",
        "-m",
        "agent=ppo",
        "env=small",
        "seed=0",
        "total_timesteps=96",
        "agent.n_envs=2",
        "agent.hyperparams.n_steps=24",
        "agent.hyperparams.batch_size=48",
        "eval.freq=48",
        "eval.n_episodes=1",
        "progress_bar=false",
        *SLURM,
        f"hydra.sweep.dir={sweep}",
    )
    (run,) = [p.parent for p in sweep.glob("*/train_summary.json")]
    missing = [name for name in RUN_ARTIFACTS if not (run / name).exists()]
    assert not missing, f"{run} lacks {missing}"
    assert (run / "bundle" / "manifest.json").is_file() and (run / "bundle" / "policy.onnx").is_file()
    assert json.loads((run / "train_summary.json").read_text())["num_timesteps"] >= 96


def wait_for_running(slurm: SlurmCluster, suffix: str, timeout_s: float = 120) -> str:
    """The id of the array task ending in ``suffix`` once SLURM runs it."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        running = [job for job, state in slurm.squeue_states().items() if state == "RUNNING" and job.endswith(suffix)]
        if running:
            return running[0]
        time.sleep(0.5)
    raise AssertionError(f"no task {suffix} running after {timeout_s} s: {slurm.squeue_states()}")


def cancel_one_job_of_a_sweep(slurm: SlurmCluster, sweep: Path) -> None:
    """Run a sweep of three jobs, ``scancel`` the long one, and check what the user is told and left with."""
    # Job 2 plays 20000 short episodes (minutes); jobs 0 and 1 end in seconds.
    command = [sys.executable, "-m", "experiments.evaluate", "-m", "agent=uniform", "seed=0", "episodes=1,2,20000"]
    command += ["env=small", "max_steps=24", "steps_table=none", *SLURM, f"hydra.sweep.dir={sweep}"]
    sweep_process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        victim = wait_for_running(slurm, "_2")
        subprocess.run(["scancel", victim], check=True)
        killed_at = time.monotonic()
        _, stderr = sweep_process.communicate(timeout=120)
    finally:
        if sweep_process.poll() is None:
            sweep_process.kill()
    assert sweep_process.returncode != 0
    assert time.monotonic() - killed_at < 60, "the sweep noticed the cancelled job promptly"
    assert f"SLURM job {victim} #2 (agent=uniform seed=0 episodes=20000" in stderr, stderr[-3000:]
    assert "1 of 3 jobs ended without a result" in stderr and "CANCELLED" in stderr
    finished = sorted(p.parent.name for p in sweep.glob("*/metrics.json"))
    assert finished == ["0_small_uniform_s0", "1_small_uniform_s0"]


def test_a_job_killed_with_scancel_fails_the_sweep_naming_it_and_the_others_stay(slurm, tmp_path):
    cancel_one_job_of_a_sweep(slurm, tmp_path / "sweep")


def test_a_job_slurm_has_forgotten_counts_as_ended_without_sacct(slurm):
    """A job past MinJobAge (or lost with its controller's state) is in neither squeue nor sacct."""
    watcher = SqueueWatcher(delay_s=1)
    done = subprocess.run(["sacct", "-j", "1"], capture_output=True, text=True)
    assert done.returncode != 0 and "accounting storage is disabled" in done.stderr  # the case under test
    assert watcher.is_done("999999_0", mode="force")
    assert watcher.get_state("999999_0", mode="cache") == GONE and watcher.sacct_works is False


@pytest.fixture(scope="module")
def postgres():
    with postgres_server() as server:
        yield server


def job_pids(task: str) -> set[int]:
    """The PIDs of a running array task's processes (``scontrol listpids`` wants the task's own job id)."""
    job_id = subprocess.run(["squeue", "-h", "-j", task, "-o", "%A"], capture_output=True, text=True).stdout.strip()
    out = subprocess.run(["scontrol", "listpids", job_id], capture_output=True, text=True).stdout
    return {int(line.split()[0]) for line in out.splitlines()[1:] if line.split() and line.split()[0].isdigit()}


def kill_worker_mid_trial(slurm: SlurmCluster, study_name: str, url: str, timeout_s: float = 180) -> tuple[str, int]:
    """SIGKILL worker 0's SLURM job while a trial of it runs; returns the job id and that trial's number."""
    storage = make_storage(url, HEARTBEAT)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        time.sleep(0.5)
        try:
            study = optuna.load_study(study_name=study_name, storage=storage)
        except KeyError:  # not created yet
            continue
        trials = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        # A trial that has not reached its first evaluation still has half its training ahead.
        young = [t for t in trials if "worker" in t.user_attrs and not t.intermediate_values]
        running = {int(t.user_attrs["worker"].rsplit(":", 1)[1]): t.number for t in young}
        victims = [job for job, state in slurm.squeue_states().items() if job.endswith("_0") and state == "RUNNING"]
        for job in victims:
            mine = [number for pid, number in running.items() if pid in job_pids(job)]
            if mine:
                # SIGKILL at once: a plain scancel's SIGTERM is ignored by submitit's jobs for KillWait
                # seconds, long enough for a tiny trial to finish.
                subprocess.run(["scancel", "--signal=KILL", "--full", job], check=True)
                return job, mine[0]
    raise AssertionError(f"worker 0 never ran a trial within {timeout_s} s")


def test_tuning_workers_on_slurm_share_a_postgres_study_and_a_killed_workers_trial_is_retried(
    slurm, postgres, tmp_path
):
    sweep = tmp_path / "tune"
    env = {**os.environ, "OPTUNA_DB_PASSWORD": postgres.password}  # the recipe's ${oc.env:...}, in jobs only
    args = with_folder(recipe("experiments.tune"), "hydra.sweep.dir", sweep)
    args = [a.replace("@db.example:5432/", f"@{postgres.host}:{postgres.port}/") for a in args]
    assert f"storage={postgres.url(password='${oc.env:OPTUNA_DB_PASSWORD}')}" in args and "worker_id=0,1" in args
    command = [sys.executable, "-m", "experiments.tune", *args, *TINY, "study_name=cluster", "n_trials=6"]
    # Five evaluations a trial: a trial killed before its first still had 4/5 of its training ahead, seconds
    # on a loaded machine (at 960 steps, half a trial, a CI run once saw it finish before the SIGKILL landed).
    command += ["total_timesteps=2400", "eval.freq=480", *SLURM]
    workers = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        victim, killed = kill_worker_mid_trial(slurm, "cluster", postgres.url())
        _, stderr = workers.communicate(timeout=300)
    finally:
        if workers.poll() is None:
            workers.kill()
    assert workers.returncode != 0 and f"SLURM job {victim} #0 (worker_id=0" in stderr, stderr[-3000:]

    study = optuna.load_study(study_name="cluster", storage=make_storage(postgres.url(), HEARTBEAT))
    trials = {t.number: t for t in study.get_trials(deepcopy=False)}
    assert trials[killed].state == TrialState.FAIL
    (retry,) = [t for t in trials.values() if t.system_attrs.get("failed_trial") == killed]
    assert retry.state in (TrialState.COMPLETE, TrialState.PRUNED) and retry.params == trials[killed].params
    finished = [t for t in trials.values() if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert len(finished) == 6 and not [t for t in trials.values() if t.state == TrialState.RUNNING]
    survivor = json.loads((sweep / "worker_1" / "summary.json").read_text())
    assert survivor["finished"] == 6 and survivor["storage"] == postgres.url(password="***")

    written = [p for folder in (sweep, slurm.logs) for p in folder.rglob("*") if p.is_file()]
    assert len(written) > 20
    leaks = [str(p) for p in written if postgres.password.encode() in p.read_bytes()]
    assert not leaks, f"the database password is written in {leaks}"
    assert "tuner:***@" in (sweep / "worker_1" / "config.yaml").read_text()


def test_with_accounting_a_job_killed_with_scancel_fails_the_sweep_naming_it_and_the_others_stay(
    slurm_with_sacct, tmp_path
):
    done = subprocess.run(["sacct", "-n", "-X", "-o", "JobID"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr  # the case under test: sacct answers
    # Ended jobs leave squeue within seconds here (MinJobAge=2): the sweep's may reach sacct's path too.
    cancel_one_job_of_a_sweep(slurm_with_sacct, tmp_path / "sweep")


def sbatch(*command: str) -> str:
    done = subprocess.run(["sbatch", "--parsable", "-o", "/dev/null", "--wrap", shlex.join(command)],
                          capture_output=True, text=True, check=True)  # fmt: skip
    return done.stdout.strip().split(";")[0]


def test_a_job_slurm_has_forgotten_gets_its_state_from_sacct(slurm_with_sacct):
    """Past MinJobAge a job is in sacct only: its real state, not GONE."""
    completed, cancelled = sbatch("true"), sbatch("sleep", "600")
    subprocess.run(["scancel", cancelled], check=True)
    deadline = time.monotonic() + 60  # slurmctld purges every 10 s at the shortest
    while {completed, cancelled} & set(slurm_with_sacct.squeue_states()):
        assert time.monotonic() < deadline, f"squeue still lists them: {slurm_with_sacct.squeue_states()}"
        time.sleep(0.5)
    watcher = SqueueWatcher(delay_s=1)
    for job in (completed, cancelled, "999999"):
        watcher.register_job(job)
    watcher.update()
    assert watcher.sacct_works is True
    assert watcher.get_state(completed, mode="cache") == "COMPLETED"
    assert watcher.get_state(cancelled, mode="cache") == "CANCELLED"
    assert watcher.get_state("999999", mode="cache") == GONE  # in neither: ended long ago, as without sacct
    assert all(watcher.is_done(job, mode="cache") for job in (completed, cancelled, "999999"))


def test_a_controller_that_stays_down_ends_the_wait_naming_it(monkeypatch):
    """squeue failing without a break for squeue_outage_min: the sweep gives up instead of waiting forever."""
    watcher = SqueueWatcher(delay_s=0, outage_s=0.2)
    watcher.register_job("4242_0")

    def down() -> None:
        watcher._last_error = "slurm_load_jobs error: Unable to contact slurm controller"
        return None

    monkeypatch.setattr(watcher, "_squeue", down)
    watcher.update()  # the first failure starts the clock
    time.sleep(0.3)
    with pytest.raises(RuntimeError, match=r"squeue has failed for \d+ s .*Unable to contact .*\['4242_0'\]"):
        watcher.update()
