"""Helpers for tests and benchmarks: a real local MLflow server, a real PostgreSQL, polling with a deadline."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def wait_until(predicate, what: str, deadline_s: float = 60.0, proc: subprocess.Popen | None = None) -> None:
    """Poll ``predicate`` until it holds; fail with ``what`` at the deadline (or if ``proc`` exits)."""
    import threading
    import time

    tick = threading.Event()
    end = time.monotonic() + deadline_s
    while not predicate():
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"process exited ({proc.returncode}) before {what}")
        if time.monotonic() > end:
            raise AssertionError(f"timed out after {deadline_s:.0f} s waiting for {what}")
        tick.wait(0.01)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class MlflowServer:
    """A real `mlflow server` (sqlite store, local artifacts) in its own process group.

    ``backend_store`` replaces the sqlite store (e.g. ``postgresql://user@host:port/db``); ``env`` is added to
    the server's environment (e.g. ``PGPASSWORD``).
    """

    def __init__(self, root: Path, backend_store: str | None = None, env: dict[str, str] | None = None):
        self.root, self.port = root, free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.backend_store = backend_store or f"sqlite:///{root / 'mlflow.db'}"
        self.env = dict(env or {})
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        import urllib.request

        log = open(self.root / "server.log", "a")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(self.port),
             "--workers", "1", "--backend-store-uri", self.backend_store,
             "--artifacts-destination", str(self.root / "artifacts")],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            # The job runner (huey workers) serves GenAI jobs a training tracker never uses: skip its processes.
            env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", **self.env})

        def healthy() -> bool:
            try:
                return urllib.request.urlopen(f"{self.uri}/health", timeout=1).status == 200
            except OSError:
                return False

        wait_until(healthy, "the MLflow server to answer /health", 120, self.proc)

    def stop(self) -> None:
        """Kill the whole process group (the server forks workers)."""
        import signal

        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait()
        self.proc = None

    def client(self):  # noqa: ANN201 - mlflow is imported lazily
        from mlflow import MlflowClient

        return MlflowClient(self.uri)




def postgres_bindir() -> Path | None:
    """The folder with PostgreSQL's server programs (initdb, pg_ctl): on PATH, else Debian's
    /usr/lib/postgresql/N/bin (the newest N); None when not installed."""
    import glob
    import shutil

    found = shutil.which("pg_ctl")
    if found and shutil.which("initdb"):
        return Path(found).resolve().parent  # a link on PATH (/usr/local/bin/pg_ctl) to the real folder
    for folder in sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda f: int(Path(f).parent.name)
                         if Path(f).parent.name.isdigit() else 0, reverse=True):
        if (Path(folder) / "pg_ctl").exists() and (Path(folder) / "initdb").exists():
            return Path(folder)
    return None


class Postgres:
    """A real PostgreSQL server: ``initdb`` in a new temporary folder, ``pg_ctl`` on a free local port.

    Logins over TCP on 127.0.0.1 only, each with a password (scram-sha-256); no Unix socket. Run as root,
    the server runs as the ``postgres`` user (PostgreSQL refuses root). ``stop(remove=True)`` removes it all.
    """

    ADMIN = "tt_admin"

    def __init__(self, bindir: Path | None = None):
        import secrets
        import tempfile

        self.bindir = bindir or postgres_bindir()
        if self.bindir is None:
            raise RuntimeError("PostgreSQL's server programs (initdb, pg_ctl) are not installed")
        self.port = free_port()
        self.host = "127.0.0.1"
        self.admin_password = secrets.token_hex(12)
        self.root = Path(tempfile.mkdtemp(prefix="tt-postgres-"))
        self.data, self.log = self.root / "data", self.root / "server.log"
        self._as: list[str] = []
        if os.geteuid() == 0:
            import pwd
            import shutil

            user = pwd.getpwnam("postgres")  # KeyError: no postgres user to run the server as
            os.chown(self.root, user.pw_uid, user.pw_gid)
            self._as = [shutil.which("runuser") or "runuser", "-u", "postgres", "--"]
            self._owner: tuple[int, int] | None = (user.pw_uid, user.pw_gid)
        else:
            self._owner = None

    def _run(self, *args: str) -> None:
        r = subprocess.run([*self._as, *args], capture_output=True, text=True, timeout=120)
        if r.returncode != 0:
            raise RuntimeError(f"{Path(args[0]).name} failed ({r.returncode}): {(r.stderr or r.stdout)[-2000:]}")

    def init(self) -> Postgres:
        pwfile = self.root / "admin.pw"
        pwfile.write_text(self.admin_password + "\n")
        if self._owner:
            os.chown(pwfile, *self._owner)
        self._run(str(self.bindir / "initdb"), "-D", str(self.data), "-U", self.ADMIN, f"--pwfile={pwfile}",
                  "--auth=scram-sha-256", "--encoding=UTF8", "--locale=C", "--no-sync")
        pwfile.unlink()
        # Password logins over TCP from this machine, nothing else.
        (self.data / "pg_hba.conf").write_text("host all all 127.0.0.1/32 scram-sha-256\n")
        with open(self.data / "postgresql.conf", "a") as f:
            f.write(f"\nlisten_addresses = '{self.host}'\nport = {self.port}\nunix_socket_directories = ''\n"
                    "password_encryption = 'scram-sha-256'\nfsync = off\nsynchronous_commit = off\n"
                    "full_page_writes = off\n")
        return self

    def start(self) -> None:
        self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-l", str(self.log), "-w", "-t", "60", "start")

    def stop(self, mode: str = "fast", remove: bool = False) -> None:
        import shutil

        if (self.data / "postmaster.pid").exists():
            self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "-t", "60", "stop")
        if remove:
            shutil.rmtree(self.root, ignore_errors=True)

    def restart(self) -> None:
        self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-l", str(self.log), "-m", "fast", "-w",
                  "-t", "60", "restart")

    def pid(self) -> int | None:
        """The postmaster's process id (it changes with each start)."""
        try:
            return int((self.data / "postmaster.pid").read_text().split("\n", 1)[0])
        except (OSError, ValueError):
            return None

    def sql(self, statement: str, db: str = "postgres") -> str:
        """Run ``statement`` as the admin with psql; returns its unaligned output."""
        import shutil

        psql = self.bindir / "psql" if (self.bindir / "psql").exists() else shutil.which("psql") or "psql"
        r = subprocess.run([str(psql), "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h",
                            self.host, "-p", str(self.port), "-U", self.ADMIN, "-d", db, "-c", statement],
                           capture_output=True, text=True, timeout=60,
                           env={**os.environ, "PGPASSWORD": self.admin_password, "PGCONNECT_TIMEOUT": "10"})
        if r.returncode != 0:
            raise RuntimeError(f"psql failed ({r.returncode}): {r.stderr[-2000:]}")
        return r.stdout.strip()

    def add_user(self, user: str, password: str, *databases: str) -> None:
        """A login role with a password, owning new databases ``databases``."""
        self.sql(f"CREATE ROLE \"{user}\" LOGIN PASSWORD '{password}'")
        for db in databases:
            self.sql(f"CREATE DATABASE \"{db}\" OWNER \"{user}\"")

    def url(self, user: str, db: str) -> str:
        """The SQLAlchemy URL without a password (libpq takes it from PGPASSWORD or ~/.pgpass)."""
        return f"postgresql://{user}@{self.host}:{self.port}/{db}"
