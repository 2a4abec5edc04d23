"""A real single-node SLURM cluster and a throwaway PostgreSQL server for the cluster tests.

:func:`slurm_cluster` starts munged, slurmctld and slurmd (each in the foreground, as a child whose PID
this process holds) from a ``slurm.conf`` generated in a temporary folder: free ports, the node line
from ``slurmd -C``, state, spool and logs in that folder, no cgroups (containers rarely delegate them)
and no accounting database (``sacct`` disabled: the common case on small clusters). It exports
``SLURM_CONF`` so that ``sbatch``, ``squeue`` and ``scancel`` (and submitit) talk to it, waits for the
node to be idle, and stops every daemon by its PID on the way out, also after a failure.
:func:`postgres_server` does the same for PostgreSQL (``initdb`` and ``pg_ctl`` as the ``postgres``
user, 127.0.0.1 on a free port, a password-protected role, stopped by the postmaster's PID).

Missing programs are installed once per machine with apt (Debian's ``slurm-wlm``, ``munge`` and
``postgresql``) under a file lock, as CI does as root with the package registries; where that is not
possible (no root, no apt, no registry) the fixtures skip, naming what is missing.
"""

from __future__ import annotations

import contextlib
import fcntl
import glob
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

APT_LOCK = Path("/tmp/budgetshift-apt.lock")
SLURM_PROGRAMS = ("munged", "mungekey", "slurmctld", "slurmd", "sbatch", "squeue", "scancel", "sinfo")
PARTITION = "debug"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _which(program: str) -> str | None:
    return shutil.which(program) or shutil.which(program, path="/usr/sbin:/usr/bin:/usr/lib/postgresql/15/bin")


def ensure_installed(programs: tuple[str, ...], packages: tuple[str, ...]) -> None:
    """Install ``packages`` with apt if one of ``programs`` is missing; skip the test where that is impossible."""
    if all(_which(p) for p in programs):
        return
    missing = [p for p in programs if not _which(p)]
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        pytest.skip(f"{', '.join(missing)} not installed and no root apt-get to install {' '.join(packages)}")
    with open(APT_LOCK, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one apt at a time (pytest-xdist workers, parallel sessions)
        if all(_which(p) for p in programs):
            return
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        apt = ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *packages]
        done = subprocess.run(apt, env=env, capture_output=True, text=True)
        if done.returncode != 0:  # a fresh machine has no package lists yet
            subprocess.run(["apt-get", "update", "-qq"], env=env, capture_output=True)
            done = subprocess.run(apt, env=env, capture_output=True, text=True)
        if done.returncode != 0 or not all(_which(p) for p in programs):
            pytest.skip(f"could not install {' '.join(packages)} with apt-get: {done.stderr.strip()[-300:]}")


def _stop(process: subprocess.Popen, name: str, grace_s: float = 10) -> None:
    """SIGTERM then, after ``grace_s``, SIGKILL: this daemon only, by its PID."""
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=grace_s)


def _wait_for(check, timeout_s: float, what: str, logs: list[Path]) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            tails = "\n".join(f"--- {p}\n{p.read_text(errors='replace')[-2000:]}" for p in logs if p.exists())
            raise RuntimeError(f"{what} not reached in {timeout_s:.0f} s\n{tails}")
        time.sleep(0.2)


@dataclass(frozen=True)
class SlurmCluster:
    """A running cluster: its config (exported as ``SLURM_CONF``), partition and folders."""

    conf: Path
    partition: str
    node: str
    logs: Path

    def squeue_states(self) -> dict[str, str]:
        """Job id (``<array>_<task>`` for array tasks) -> state, for every job slurmctld still holds."""
        out = subprocess.run(
            ["squeue", "-h", "-r", "--states=all", "-o", "%i|%T"], capture_output=True, text=True, check=True
        ).stdout
        return dict(line.split("|", 1) for line in out.split())


def _slurm_conf(root: Path, node_line: str, node: str, munge_socket: Path) -> str:
    """A single-node cluster without accounting or cgroups; jobs may use the node's CPUs and memory."""
    return f"""\
ClusterName=budgetshift-test
SlurmctldHost={node}(127.0.0.1)
SlurmctldPort={free_port()}
SlurmdPort={free_port()}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={munge_socket}
StateSaveLocation={root / "state"}
SlurmdSpoolDir={root / "spool"}
SlurmctldPidFile={root / "slurmctld.pid"}
SlurmdPidFile={root / "slurmd.pid"}
SlurmctldLogFile={root / "log" / "slurmctld.log"}
SlurmdLogFile={root / "log" / "slurmd.log"}
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
ReturnToService=2
KillWait=2
MinJobAge=300
SlurmdTimeout=60
{node_line} NodeAddr=127.0.0.1 State=UNKNOWN
PartitionName={PARTITION} Nodes={node} Default=YES MaxTime=INFINITE State=UP
"""


def _node_line() -> tuple[str, str]:
    """``slurmd -C``'s NodeName line (CPUs, sockets, memory of this machine) and the node's name."""
    out = subprocess.run(["slurmd", "-C"], capture_output=True, text=True, check=True).stdout
    line = next(line for line in out.splitlines() if line.startswith("NodeName="))
    return line, line.split()[0].split("=", 1)[1]


@contextlib.contextmanager
def slurm_cluster(root: Path) -> Iterator[SlurmCluster]:
    """munged, slurmctld and slurmd serving ``root``'s ``slurm.conf`` until the block ends."""
    for folder in ("state", "spool", "log", "munge"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    (root / "munge").chmod(0o700)
    key, munge_socket = root / "munge" / "munge.key", root / "munge" / "munge.socket"
    subprocess.run(["mungekey", "-c", "-k", str(key)], check=True, capture_output=True)
    node_line, node = _node_line()
    conf = root / "slurm.conf"
    conf.write_text(_slurm_conf(root, node_line, node, munge_socket))
    logs = [root / "log" / name for name in ("munged.log", "slurmctld.log", "slurmd.log")]
    previous_conf = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = str(conf)
    daemons: list[tuple[str, subprocess.Popen]] = []
    try:
        munged = [
            "munged", "-F", "--force", f"--key-file={key}", f"--socket={munge_socket}",
            f"--pid-file={root / 'munge' / 'munged.pid'}", f"--seed-file={root / 'munge' / 'seed'}",
            f"--log-file={logs[0]}",
        ]  # fmt: skip
        daemons.append(("munged", subprocess.Popen(munged, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)))
        _wait_for(munge_socket.exists, 20, "munged's socket", logs)
        for name, command in (("slurmctld", ["slurmctld", "-D", "-i"]), ("slurmd", ["slurmd", "-D", "-N", node])):
            out = open(root / "log" / f"{name}.out", "w")  # noqa: SIM115 (closed with the process)
            daemons.append((name, subprocess.Popen([*command, "-f", str(conf)], stdout=out, stderr=subprocess.STDOUT)))

        def node_idle() -> bool:
            for name, process in daemons:
                if process.poll() is not None:
                    raise RuntimeError(f"{name} exited with {process.returncode}; logs in {root / 'log'}")
            out = subprocess.run(["sinfo", "-h", "-n", node, "-o", "%t"], capture_output=True, text=True).stdout
            return out.strip() == "idle"

        _wait_for(node_idle, 60, f"node {node} idle", [*logs, root / "log" / "slurmd.out"])
        yield SlurmCluster(conf=conf, partition=PARTITION, node=node, logs=root / "log")
    finally:
        if daemons:
            _drain_jobs()
        for name, process in reversed(daemons):
            _stop(process, name)
        _kill_lost_steps(logs[2])
        if previous_conf is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = previous_conf


def _drain_jobs(timeout_s: float = 30) -> None:
    """Cancel what is left and let every job finish ending: a slurmstepd whose slurmd is gone never exits."""
    subprocess.run(["scancel", "--me"], capture_output=True)
    active = ["squeue", "--me", "-h", "--states=PENDING,CONFIGURING,RUNNING,COMPLETING,SUSPENDED", "-o", "%i"]
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        done = subprocess.run(active, capture_output=True, text=True)
        if done.returncode != 0 or not done.stdout.strip():
            return
        time.sleep(0.5)


def _kill_lost_steps(slurmd_log: Path) -> None:
    """SIGKILL this cluster's stray slurmstepd processes (they hold its slurmd log open), each by its PID."""
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            if not (proc / "cmdline").read_bytes().startswith(b"slurmstepd"):
                continue
            if any(os.readlink(fd) == str(slurmd_log) for fd in (proc / "fd").iterdir()):
                os.kill(int(proc.name), signal.SIGKILL)
        except OSError:
            continue  # gone meanwhile, or not ours to read


@dataclass(frozen=True)
class PostgresServer:
    """A running server with database ``optuna`` owned by role ``tuner`` (password ``password``)."""

    host: str
    port: int
    database: str
    user: str
    password: str

    def url(self, password: str | None = None) -> str:
        """The SQLAlchemy URL; ``password`` replaces the real one (an interpolation, say)."""
        secret = self.password if password is None else password
        return f"postgresql://{self.user}:{secret}@{self.host}:{self.port}/{self.database}"


def _postgres_bin() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not found:
        ensure_installed(("initdb",), ("postgresql",))
        found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb")) or [shutil.which("initdb")]
    return Path(found[-1]).parent


@contextlib.contextmanager
def postgres_server() -> Iterator[PostgresServer]:
    """A PostgreSQL server in a fresh folder under /tmp, listening on 127.0.0.1 only, until the block ends.

    Not under pytest's temporary folders: those are private to root, and the server runs as ``postgres``.
    """
    bin_dir = _postgres_bin()
    try:
        owner = pwd.getpwnam("postgres")
    except KeyError:
        pytest.skip("no postgres user (the postgresql package creates it)")
    as_postgres = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    if os.geteuid() not in (0, owner.pw_uid):
        pytest.skip("PostgreSQL's initdb must run as the postgres user: needs root (runuser) or that user")
    root = Path(tempfile.mkdtemp(prefix="budgetshift-postgres-"))
    os.chown(root, owner.pw_uid, owner.pw_gid)
    password = secrets.token_urlsafe(16)
    pwfile = root / "pwfile"
    pwfile.write_text(password + "\n")
    os.chown(pwfile, owner.pw_uid, owner.pw_gid)
    pwfile.chmod(0o600)
    data, port = root / "data", free_port()
    initdb = [str(bin_dir / "initdb"), "-D", str(data), "-U", "postgres", "-A", "scram-sha-256", f"--pwfile={pwfile}"]
    try:
        subprocess.run([*as_postgres, *initdb], check=True, capture_output=True)
    except subprocess.CalledProcessError:
        shutil.rmtree(root)
        raise
    options = f"-h 127.0.0.1 -p {port} -k {root}"
    start = [str(bin_dir / "pg_ctl"), "-D", str(data), "-o", options, "-l", str(root / "server.log"), "-w", "start"]
    subprocess.run([*as_postgres, *start], check=True, capture_output=True)
    postmaster = int((data / "postmaster.pid").read_text().split()[0])
    try:
        env = {**os.environ, "PGPASSWORD": password}
        psql = [str(bin_dir / "psql"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "-v", "ON_ERROR_STOP=1"]
        for sql in (f"CREATE ROLE tuner LOGIN PASSWORD '{password}'", "CREATE DATABASE optuna OWNER tuner"):
            subprocess.run([*psql, "-c", sql], env=env, check=True, capture_output=True)
        yield PostgresServer("127.0.0.1", port, "optuna", "tuner", password)
    finally:
        os.kill(postmaster, signal.SIGINT)  # fast shutdown: roll back, disconnect clients, stop
        deadline = time.monotonic() + 30
        while Path(f"/proc/{postmaster}").exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        shutil.rmtree(root, ignore_errors=True)
