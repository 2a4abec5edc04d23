"""A real single-node SLURM cluster, with or without an accounting database, and a throwaway PostgreSQL server.

:func:`slurm_cluster` starts munged, slurmctld and slurmd (each in the foreground, as a child whose PID
this process holds) from a ``slurm.conf`` generated in a temporary folder: free ports, the node line
from ``slurmd -C``, state, spool and logs in that folder, no cgroups (containers rarely delegate them).
By default there is no accounting database (``sacct`` disabled: the common case on small clusters);
``accounting=True`` adds what sites with one run: a throwaway MariaDB (:func:`mariadb_server`) and
slurmdbd storing job records in it, the cluster registered with ``sacctmgr``, and a ``MinJobAge`` of
seconds so that the controller forgets ended jobs quickly and ``sacct`` is left to tell their states.
It waits for the node to be idle (and ``sacct`` to answer), and stops every daemon by its PID on the
way out, also after a failure. :meth:`SlurmCluster.exported` points ``SLURM_CONF`` at a cluster so that
``sbatch``, ``squeue``, ``scancel``, ``sacct`` (and submitit) talk to it.
:func:`postgres_server` does the same for PostgreSQL (``initdb`` and ``pg_ctl`` as the ``postgres``
user, 127.0.0.1 on a free port, a password-protected role, stopped by the postmaster's PID).

Missing programs are installed once per machine with apt (Debian's ``slurm-wlm``, ``munge``,
``slurmdbd``, ``mariadb-server-core``, ``mariadb-client-core`` and ``postgresql``) under a file lock, as
CI does as root with the package registries; where that is not possible (no root, no apt, no registry)
the fixtures skip, naming what is missing.
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
SLURM_PACKAGES = ("slurm-wlm", "munge")
#: slurmdbd 22.05 stores job records in MySQL or MariaDB only (accounting_storage/mysql).
ACCOUNTING_PROGRAMS = ("slurmdbd", "sacctmgr", "sacct", "mariadbd", "mariadb-install-db", "mariadb")
ACCOUNTING_PACKAGES = ("slurmdbd", "mariadb-server-core", "mariadb-client-core")
PARTITION = "debug"
CLUSTER_NAME = "budgetshift-test"


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


class _Daemons:
    """Foreground daemons started in turn and stopped in reverse order, each by its PID (``stack``'s callbacks)."""

    def __init__(self, stack: contextlib.ExitStack, log_dir: Path, env: dict[str, str]) -> None:
        self.stack, self.log_dir, self.env = stack, log_dir, env
        self.running: list[tuple[str, subprocess.Popen]] = []

    def start(self, name: str, command: list[str]) -> None:
        with open(self.log_dir / f"{name}.out", "w") as out:  # the child keeps its own descriptor
            process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=self.env)
        self.stack.callback(_stop, process, name)
        self.running.append((name, process))

    def check(self) -> None:
        """Raise if one of them has exited (a daemon that cannot start exits at once; its log says why)."""
        for name, process in self.running:
            if process.poll() is not None:
                raise RuntimeError(f"{name} exited with {process.returncode}; logs in {self.log_dir}")


@dataclass(frozen=True)
class SlurmCluster:
    """A running cluster: its config, partition and folders."""

    conf: Path
    partition: str
    node: str
    logs: Path

    @contextlib.contextmanager
    def exported(self) -> Iterator[SlurmCluster]:
        """``SLURM_CONF`` pointing at this cluster (for SLURM's commands and submitit) until the block ends."""
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv("SLURM_CONF", str(self.conf))
            yield self

    def squeue_states(self) -> dict[str, str]:
        """Job id (``<array>_<task>`` for array tasks) -> state, for every job slurmctld still holds."""
        out = subprocess.run(
            ["squeue", "-h", "-r", "--states=all", "-o", "%i|%T"],
            capture_output=True,
            text=True,
            check=True,
            env={**os.environ, "SLURM_CONF": str(self.conf)},
        ).stdout
        return dict(line.split("|", 1) for line in out.split())


def _slurm_conf(root: Path, node_line: str, node: str, munge_socket: Path, dbd_port: int | None) -> str:
    """A single-node cluster without cgroups; jobs may use the node's CPUs and memory.

    With slurmdbd on ``dbd_port``, ended jobs are forgotten after 2 s (purged every 10 s, slurmctld's
    shortest interval), so that ``sacct`` is soon the only one to know them. Commands reach slurmdbd
    through the munged named by ``AccountingStoragePass`` (``AuthInfo`` serves slurmctld and slurmd only).
    """
    if dbd_port is None:
        accounting = "AccountingStorageType=accounting_storage/none\nMinJobAge=300"
    else:
        accounting = (
            "AccountingStorageType=accounting_storage/slurmdbd\nAccountingStorageHost=127.0.0.1\n"
            f"AccountingStoragePort={dbd_port}\nAccountingStoragePass={munge_socket}\nMinJobAge=2"
        )
    return f"""\
ClusterName={CLUSTER_NAME}
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
{accounting}
JobCompType=jobcomp/none
MpiDefault=none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
ReturnToService=2
KillWait=2
SlurmdTimeout=60
{node_line} NodeAddr=127.0.0.1 State=UNKNOWN
PartitionName={PARTITION} Nodes={node} Default=YES MaxTime=INFINITE State=UP
"""


def _slurmdbd_conf(root: Path, munge_socket: Path, dbd_port: int, database: MariaDB) -> str:
    return f"""\
AuthType=auth/munge
AuthInfo=socket={munge_socket}
DbdHost=localhost
DbdAddr=127.0.0.1
DbdPort={dbd_port}
SlurmUser=root
PidFile={root / "slurmdbd.pid"}
LogFile={root / "log" / "slurmdbd.log"}
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort={database.port}
StorageUser={database.user}
StoragePass={database.password}
StorageLoc={database.database}
"""


def _node_line() -> tuple[str, str]:
    """``slurmd -C``'s NodeName line (CPUs, sockets, memory of this machine) and the node's name."""
    out = subprocess.run(["slurmd", "-C"], capture_output=True, text=True, check=True).stdout
    line = next(line for line in out.splitlines() if line.startswith("NodeName="))
    return line, line.split()[0].split("=", 1)[1]


def _answers(command: list[str], env: dict[str, str]) -> bool:
    return subprocess.run(command, capture_output=True, env=env).returncode == 0


@contextlib.contextmanager
def slurm_cluster(root: Path, accounting: bool = False) -> Iterator[SlurmCluster]:
    """munged, slurmctld and slurmd (and, with ``accounting``, MariaDB and slurmdbd) serving ``root``'s
    ``slurm.conf`` until the block ends."""
    for folder in ("state", "spool", "log", "munge"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    (root / "munge").chmod(0o700)
    key, munge_socket = root / "munge" / "munge.key", root / "munge" / "munge.socket"
    subprocess.run(["mungekey", "-c", "-k", str(key)], check=True, capture_output=True)
    node_line, node = _node_line()
    conf = root / "slurm.conf"
    dbd_port = free_port() if accounting else None
    conf.write_text(_slurm_conf(root, node_line, node, munge_socket, dbd_port))
    env = {**os.environ, "SLURM_CONF": str(conf)}  # slurmdbd reads slurmdbd.conf from the same folder
    logs = [root / "log" / name for name in ("munged.log", "slurmdbd.log", "slurmctld.log", "slurmd.log")]
    with contextlib.ExitStack() as stack:
        daemons = _Daemons(stack, root / "log", env)
        daemons.start("munged", [
            "munged", "-F", "--force", f"--key-file={key}", f"--socket={munge_socket}",
            f"--pid-file={root / 'munge' / 'munged.pid'}", f"--seed-file={root / 'munge' / 'seed'}",
            f"--log-file={logs[0]}",
        ])  # fmt: skip
        _wait_for(munge_socket.exists, 20, "munged's socket", logs)
        if dbd_port is not None:
            database = stack.enter_context(mariadb_server(root / "mariadb"))
            dbd_conf = root / "slurmdbd.conf"
            dbd_conf.write_text(_slurmdbd_conf(root, munge_socket, dbd_port, database))
            dbd_conf.chmod(0o600)  # slurmdbd refuses a config others can read (it holds the password)

            def dbd_answers() -> bool:
                daemons.check()
                return _answers(["sacctmgr", "-n", "list", "cluster"], env)

            daemons.start("slurmdbd", ["slurmdbd", "-D"])
            _wait_for(dbd_answers, 60, "slurmdbd answering", [*logs, root / "log" / "slurmdbd.out"])
            subprocess.run(["sacctmgr", "-i", "add", "cluster", CLUSTER_NAME], env=env, capture_output=True, check=True)
        stack.callback(_kill_lost_steps, logs[3])  # runs after slurmd has stopped
        daemons.start("slurmctld", ["slurmctld", "-D", "-i", "-f", str(conf)])
        daemons.start("slurmd", ["slurmd", "-D", "-N", node, "-f", str(conf)])
        stack.callback(_drain_jobs, env)  # runs first

        def node_idle() -> bool:
            daemons.check()
            out = subprocess.run(["sinfo", "-h", "-n", node, "-o", "%t"], capture_output=True, text=True, env=env)
            return out.stdout.strip() == "idle"

        _wait_for(node_idle, 60, f"node {node} idle", [*logs, root / "log" / "slurmd.out"])
        if accounting:
            _wait_for(lambda: _answers(["sacct", "-n", "-X"], env), 30, "sacct answering", logs)
        yield SlurmCluster(conf=conf, partition=PARTITION, node=node, logs=root / "log")


def _drain_jobs(env: dict[str, str], timeout_s: float = 30) -> None:
    """Cancel what is left and let every job finish ending: a slurmstepd whose slurmd is gone never exits."""
    subprocess.run(["scancel", "--me"], capture_output=True, env=env)
    active = ["squeue", "--me", "-h", "--states=PENDING,CONFIGURING,RUNNING,COMPLETING,SUSPENDED", "-o", "%i"]
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        done = subprocess.run(active, capture_output=True, text=True, env=env)
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
class MariaDB:
    """A running MariaDB server on 127.0.0.1 where ``user`` (password ``password``) owns ``database``."""

    port: int
    user: str
    password: str
    database: str


@contextlib.contextmanager
def mariadb_server(root: Path) -> Iterator[MariaDB]:
    """A throwaway MariaDB (datadir, socket and logs in ``root``, a free port) until the block ends.

    Small and fast rather than durable: a 32 MiB buffer pool, no doublewrite, the log flushed once a second.
    """
    root.mkdir(parents=True, exist_ok=True)
    data, sock, port = root / "data", root / "mariadbd.sock", free_port()
    as_root = ["--user=root"] if os.geteuid() == 0 else []  # mariadbd refuses to run as root unless told
    install = ["mariadb-install-db", "--no-defaults", f"--datadir={data}", *as_root, "--skip-test-db"]
    subprocess.run([*install, "--auth-root-authentication-method=normal"], check=True, capture_output=True)
    server = [
        "mariadbd", "--no-defaults", f"--datadir={data}", *as_root, f"--socket={sock}", f"--port={port}",
        "--bind-address=127.0.0.1", "--skip-name-resolve", f"--pid-file={root / 'mariadbd.pid'}",
        f"--log-error={root / 'error.log'}", "--innodb-buffer-pool-size=32M", "--innodb-doublewrite=0",
        "--innodb-flush-log-at-trx-commit=0",
    ]  # fmt: skip
    client = ["mariadb", "--no-defaults", f"--socket={sock}", "-u", "root", "-e"]
    with contextlib.ExitStack() as stack:
        daemons = _Daemons(stack, root, dict(os.environ))
        daemons.start("mariadbd", server)

        def ready() -> bool:
            daemons.check()
            return sock.exists() and _answers([*client, "SELECT 1"], dict(os.environ))

        _wait_for(ready, 60, "MariaDB answering", [root / "error.log"])
        database = MariaDB(port=port, user="slurm", password=secrets.token_hex(16), database="slurm_acct_db")
        user = f"'{database.user}'@'127.0.0.1'"
        sql = f"CREATE USER {user} IDENTIFIED BY '{database.password}'; GRANT ALL ON {database.database}.* TO {user}"
        subprocess.run([*client, sql], check=True, capture_output=True)
        yield database


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
