"""A one-node SLURM cluster on localhost for the tests: munge, MariaDB + slurmdbd (accounting, which
submitit needs to read job states through ``sacct``), slurmctld and slurmd, all as plain processes.

Everything lives in one directory: configuration, state, the database, logs and the pid file of every
daemon this module started; the daemons listen on free ports of 127.0.0.1. munge is the exception: SLURM's
clients reach slurmdbd only through munged's default socket, so munged runs there with the package's key
(a munged already answering there is used as it is and left running). ``stop`` cancels the cluster's jobs,
then ends exactly the daemons it started (by the pids it recorded, after checking that each pid is still
one of this cluster's processes), never anything found by name. Needs root (the daemons run as root,
munged as ``munge``, MariaDB as ``mysql``) and the Debian packages ``slurm-wlm munge slurmdbd
mariadb-server``; ``.ci/run`` installs them.

    python -m tests.slurm_cluster start DIR    # prints the SLURM_CONF to export
    python -m tests.slurm_cluster status DIR
    python -m tests.slurm_cluster stop DIR
"""

from __future__ import annotations

import argparse
import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

PROGRAMS = (
    "munged",
    "mariadbd",
    "mariadb-install-db",
    "mariadb",
    "mariadb-admin",
    "slurmdbd",
    "slurmctld",
    "slurmd",
    "sacctmgr",
    "sinfo",
    "sbatch",
    "sacct",
    "scancel",
    "squeue",
)
PACKAGES = "slurm-wlm munge slurmdbd mariadb-server"
CLUSTER = "ablatetest"
PARTITION = "debug"
DAEMONS = ("slurmd", "slurmctld", "slurmdbd", "mariadbd", "munged")  # stop order
DB_PASSWORD = "ablate-test"


class ClusterUnavailableError(RuntimeError):
    """The cluster cannot run on this machine (the message says why)."""


@dataclass
class Cluster:
    """A started cluster: its directory and the ``SLURM_CONF`` every client command needs."""

    root: Path
    partition: str = PARTITION
    start_seconds: float = 0.0

    @property
    def conf(self) -> Path:
        return self.root / "slurm.conf"

    def env(self) -> dict[str, str]:
        """The environment for SLURM clients (sbatch, sacct, scancel, submitit) talking to this cluster."""
        return {**os.environ, "SLURM_CONF": str(self.conf)}


def missing_requirements() -> str | None:
    """Why the cluster cannot start here, or None when it can be tried."""
    if os.geteuid() != 0:
        return "the test cluster's daemons must be started as root"
    missing = [p for p in PROGRAMS if shutil.which(p) is None and not Path("/usr/sbin", p).exists()]
    if missing:
        return f"{', '.join(missing)} not installed (apt-get install {PACKAGES})"
    for user in ("munge", "mysql"):
        try:
            pwd.getpwnam(user)
        except KeyError:
            return f"user {user!r} does not exist (created by the munge / mariadb-server packages)"
    return None


def _which(name: str) -> str:
    return shutil.which(name) or str(Path("/usr/sbin", name))


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _run(cmd: list[str], env: dict[str, str] | None = None, timeout: float = 60) -> str:
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    if proc.returncode != 0:
        raise ClusterUnavailableError(
            f"{' '.join(cmd[:3])} failed: {(proc.stderr or proc.stdout).strip()[-500:]}"
        )
    return proc.stdout


def _wait(what: str, check: Callable[[], bool], timeout: float, root: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except (OSError, subprocess.SubprocessError):
            pass
        time.sleep(0.2)
    raise ClusterUnavailableError(
        f"{what} did not come up within {timeout:.0f} s (logs under {root / 'log'})"
    )


def _spawn(root: Path, name: str, cmd: list[str], env: dict[str, str], user: str | None = None) -> int:
    """Start a daemon in the foreground of its own session, its output in log/, its pid in pids/."""
    log = open(root / "log" / f"{name}.out", "ab")  # noqa: SIM115 (the daemon keeps the file)
    proc = subprocess.Popen(
        cmd,
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
        user=user,
        group=user,
        extra_groups=[] if user else None,
        start_new_session=True,
        cwd=root,
    )
    log.close()
    (root / "pids" / f"{name}.pid").write_text(f"{proc.pid}\n")
    time.sleep(0.1)
    if proc.poll() is not None:
        tail = (root / "log" / f"{name}.out").read_text(errors="replace")[-800:]
        raise ClusterUnavailableError(f"{name} exited at start (status {proc.returncode}): {tail.strip()}")
    return proc.pid


def _munge_answers() -> bool:
    """Whether a munged answers on the default socket (a credential encodes and decodes)."""
    try:
        cred = subprocess.run(["munge", "-n"], capture_output=True, timeout=10)
        if cred.returncode != 0:
            return False
        return subprocess.run(["unmunge"], input=cred.stdout, capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


def _start_munged(root: Path, env: dict[str, str]) -> None:
    """munged as user ``munge`` with the package's key (created when absent), on the default socket."""
    key = Path("/etc/munge/munge.key")
    if not key.exists():
        key.parent.mkdir(parents=True, exist_ok=True)
        key.write_bytes(os.urandom(1024))
        key.chmod(0o400)
        shutil.chown(key, "munge", "munge")
    run = Path("/run/munge")
    run.mkdir(parents=True, exist_ok=True)
    shutil.chown(run, "munge", "munge")
    run.chmod(0o755)
    munge = root / "munge"
    munge.mkdir(exist_ok=True)
    shutil.chown(munge, "munge", "munge")
    _spawn(
        root,
        "munged",
        [
            _which("munged"),
            "--foreground",
            f"--key-file={key}",
            f"--log-file={munge / 'munged.log'}",
            f"--pid-file={munge / 'munged.pid'}",
            f"--seed-file={munge / 'munged.seed'}",
        ],
        env,
        user="munge",
    )
    _wait("munged", _munge_answers, 15, root)


def _hostname() -> str:
    """The node name: this machine's short hostname, made resolvable (/etc/hosts) when it is not."""
    host = socket.gethostname().split(".")[0]
    try:
        socket.gethostbyname(host)
    except OSError:
        with open("/etc/hosts", "a") as f:
            f.write(f"127.0.0.1 {host}\n")
    return host


def _node_line(host: str) -> str:
    out = _run([_which("slurmd"), "-C"]).splitlines()[0].split()
    keep = [
        w
        for w in out
        if w.split("=")[0]
        in ("CPUs", "Boards", "SocketsPerBoard", "CoresPerSocket", "ThreadsPerCore", "RealMemory")
    ]
    return " ".join([f"NodeName={host}", "NodeAddr=127.0.0.1", *keep, "State=UNKNOWN"])


def start(root: Path) -> Cluster:
    """Start the cluster in ``root`` (created; must not hold a running cluster). Raises
    :class:`ClusterUnavailableError` with the reason when it cannot; what did start is stopped again."""
    reason = missing_requirements()
    if reason:
        raise ClusterUnavailableError(reason)
    began = time.monotonic()
    root = Path(root).resolve()
    for sub in ("log", "pids", "state", "spool"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    root.chmod(0o755)  # munged (user munge) and mariadbd (user mysql) reach their directories through it
    try:
        cluster = _start(root)
    except BaseException:
        stop(root)
        raise
    cluster.start_seconds = round(time.monotonic() - began, 1)
    (root / "start_seconds").write_text(f"{cluster.start_seconds}\n")
    return cluster


def _start(root: Path) -> Cluster:
    env = {**os.environ, "SLURM_CONF": str(root / "slurm.conf")}
    mysql_port, dbd_port, ctld_port, slurmd_port = _free_ports(4)
    host = _hostname()

    # munge on its default socket (slurm's clients reach slurmdbd only through that one); a munged already
    # answering there is used as it is (and left running)
    if not _munge_answers():
        _start_munged(root, env)
    # MariaDB: a data directory of our own, TCP on a free port of 127.0.0.1
    db = root / "mysql"
    (db / "data").mkdir(parents=True, exist_ok=True)
    shutil.chown(db, "mysql", "mysql")
    shutil.chown(db / "data", "mysql", "mysql")
    _run(
        [
            _which("mariadb-install-db"),
            "--no-defaults",
            "--user=mysql",
            f"--datadir={db / 'data'}",
            "--skip-test-db",
            "--auth-root-authentication-method=socket",
        ],
        timeout=120,
    )
    db_sock = db / "mysqld.sock"
    _spawn(
        root,
        "mariadbd",
        [
            _which("mariadbd"),
            "--no-defaults",
            "--user=mysql",
            f"--datadir={db / 'data'}",
            f"--socket={db_sock}",
            f"--port={mysql_port}",
            "--bind-address=127.0.0.1",
            f"--pid-file={db / 'mariadbd.pid'}",
            f"--log-error={root / 'log' / 'mariadbd.log'}",
            "--skip-name-resolve",
            "--innodb-buffer-pool-size=32M",
            "--innodb-log-file-size=16M",
        ],
        env,
    )
    admin = [_which("mariadb-admin"), f"--socket={db_sock}", "-u", "root"]
    _wait("mariadbd", lambda: subprocess.run([*admin, "ping"], capture_output=True).returncode == 0, 60, root)
    sql = (
        "CREATE DATABASE IF NOT EXISTS slurm_acct_db;"
        f"CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY '{DB_PASSWORD}';"
        "GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';"
    )
    _run([_which("mariadb"), f"--socket={db_sock}", "-u", "root", "-e", sql])

    auth = ["AuthType=auth/munge"]
    dbd_conf = root / "slurmdbd.conf"
    dbd_conf.write_text(
        "\n".join(
            [
                *auth,
                "DbdHost=localhost",
                f"DbdPort={dbd_port}",
                "SlurmUser=root",
                "StorageType=accounting_storage/mysql",
                "StorageHost=127.0.0.1",
                f"StoragePort={mysql_port}",
                "StorageUser=slurm",
                f"StoragePass={DB_PASSWORD}",
                "StorageLoc=slurm_acct_db",
                f"LogFile={root / 'log' / 'slurmdbd.log'}",
                f"PidFile={root / 'state' / 'slurmdbd.pid'}",
                "",
            ]
        )
    )
    dbd_conf.chmod(0o600)
    (root / "slurm.conf").write_text(
        "\n".join(
            [
                f"ClusterName={CLUSTER}",
                f"SlurmctldHost={host}(127.0.0.1)",
                "SlurmUser=root",
                "SlurmdUser=root",
                *auth,
                "MailProg=/bin/true",
                f"SlurmctldPort={ctld_port}",
                f"SlurmdPort={slurmd_port}",
                f"StateSaveLocation={root / 'state'}",
                f"SlurmdSpoolDir={root / 'spool'}",
                f"SlurmctldPidFile={root / 'state' / 'slurmctld.pid'}",
                f"SlurmdPidFile={root / 'state' / 'slurmd.pid'}",
                f"SlurmctldLogFile={root / 'log' / 'slurmctld.log'}",
                f"SlurmdLogFile={root / 'log' / 'slurmd.log'}",
                "ProctrackType=proctrack/linuxproc",
                "TaskPlugin=task/none",
                "JobAcctGatherType=jobacct_gather/none",
                "AccountingStorageType=accounting_storage/slurmdbd",
                "AccountingStorageHost=localhost",
                f"AccountingStoragePort={dbd_port}",
                "SelectType=select/cons_tres",
                "SelectTypeParameters=CR_CPU_Memory",
                "ReturnToService=2",
                "MpiDefault=none",
                # a cancelled task gets SIGKILL 5 s after SIGTERM (default 30 s), so tests wait less
                "KillWait=5",
                "SchedulerType=sched/builtin",
                _node_line(host),
                f"PartitionName={PARTITION} Nodes={host} Default=YES MaxTime=INFINITE State=UP",
                "",
            ]
        )
    )

    _spawn(root, "slurmdbd", [_which("slurmdbd"), "-D"], env)
    sacctmgr = [_which("sacctmgr"), "-n", "-i"]
    _wait(
        "slurmdbd",
        lambda: subprocess.run([*sacctmgr, "list", "cluster"], env=env, capture_output=True).returncode == 0,
        30,
        root,
    )
    _run([*sacctmgr, "add", "cluster", CLUSTER], env=env)
    _spawn(root, "slurmctld", [_which("slurmctld"), "-D", "-i"], env)
    _spawn(root, "slurmd", [_which("slurmd"), "-D"], env)
    sinfo = [_which("sinfo"), "-h", "-o", "%t"]
    _wait("the node", lambda: _run(sinfo, env=env, timeout=10).strip() == "idle", 60, root)
    return Cluster(root)


def _running(pid: int, root: Path) -> bool:
    """Whether ``pid`` is alive and still one of this cluster's processes (not a reused pid)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        environ = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return False
    ours = str(root).encode()
    return any(ours in part for part in cmdline) or ours in environ


def stop(root: Path, timeout: float = 20) -> list[str]:
    """Stop the daemons started in ``root`` (SIGTERM, then SIGKILL after ``timeout``); returns their names."""
    root = Path(root).resolve()
    if status(root).get("slurmctld"):
        cancel_all(root)
    stopped = []
    for name in DAEMONS:
        pid_file = root / "pids" / f"{name}.pid"
        if not pid_file.exists():
            continue
        pid = int(pid_file.read_text().split()[0])
        if _running(pid, root):
            os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + timeout
            while _running(pid, root) and time.monotonic() < deadline:
                _reap(pid)
                time.sleep(0.1)
            if _running(pid, root):
                os.kill(pid, signal.SIGKILL)
            _reap(pid)
            stopped.append(name)
        pid_file.unlink()
    return stopped


def cancel_all(root: Path, timeout: float = 30) -> None:
    """Cancel every job of the cluster in ``root`` and wait until the queue is empty (their processes are
    the daemons' children: stopping slurmd first would leave them running)."""
    env = {**os.environ, "SLURM_CONF": str(Path(root) / "slurm.conf")}
    squeue = [_which("squeue"), "-h", "-o", "%A"]
    try:
        jobs = subprocess.run(squeue, env=env, capture_output=True, text=True, timeout=10).stdout.split()
        if jobs:
            subprocess.run([_which("scancel"), *sorted(set(jobs))], env=env, capture_output=True, timeout=10)
        deadline = time.monotonic() + timeout
        while jobs and time.monotonic() < deadline:
            time.sleep(0.5)
            jobs = subprocess.run(squeue, env=env, capture_output=True, text=True, timeout=10).stdout.split()
    except (OSError, subprocess.SubprocessError):
        pass  # the controller is gone: nothing left to ask


def _reap(pid: int) -> None:
    """Collect ``pid``'s exit status when it is our child (else it would linger as a zombie)."""
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def status(root: Path) -> dict[str, bool]:
    """Which of the cluster's daemons run."""
    root = Path(root).resolve()
    out = {}
    for name in DAEMONS:
        pid_file = root / "pids" / f"{name}.pid"
        out[name] = pid_file.exists() and _running(int(pid_file.read_text().split()[0]), root)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=("start", "stop", "status"))
    parser.add_argument("dir", type=Path, help="the cluster's directory (config, state, logs, pid files)")
    args = parser.parse_args(argv)
    if args.command == "start":
        try:
            cluster = start(args.dir)
        except ClusterUnavailableError as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
        print(f"cluster up in {cluster.start_seconds} s; export SLURM_CONF={cluster.conf}")
    elif args.command == "stop":
        print("stopped: " + (", ".join(stop(args.dir)) or "nothing"))
    else:
        states = status(args.dir)
        print(" ".join(f"{k}={'up' if v else 'down'}" for k, v in states.items()))
        return 0 if all(states.values()) else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
