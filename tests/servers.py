"""Starting real condagate servers and a real PostgreSQL for the tests."""

from __future__ import annotations

import atexit
import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx

ADMIN_KEY = "cg_test_admin_" + uuid.uuid4().hex


def wait_until(condition: Callable[[], object], timeout: float = 10.0, every: float = 0.05) -> bool:
    """Whether ``condition()`` became true within ``timeout`` seconds (asked every ``every`` seconds, and
    once more at the end)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(every)
    return bool(condition())


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Server:
    url: str
    data_dir: Path
    database_url: str
    api_key: str
    process: subprocess.Popen[bytes]
    log_path: Path
    env: dict[str, str] = field(default_factory=dict)

    @property
    def admin_headers(self) -> dict[str, str]:
        return {"X-API-Key": self.api_key}

    def client(self, **kwargs: object) -> httpx.Client:
        return httpx.Client(base_url=self.url, **{"timeout": 60, **kwargs})  # type: ignore[arg-type]

    def admin(self) -> httpx.Client:
        return self.client(headers=self.admin_headers)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def condagate_command() -> list[str]:
    return [sys.executable, "-m", "condagate.cli.main"]


def start_server(data_dir: Path, database_url: str = "", admin_key: str | None = ADMIN_KEY,
                 extra_env: dict[str, str] | None = None) -> Server:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONDAGATE_")}
    env.update({"CONDAGATE_DATA_DIR": str(data_dir), "CONDAGATE_DOWNLOAD_FLUSH_SECONDS": "0.2"})
    if admin_key:
        env["CONDAGATE_ADMIN_API_KEY"] = admin_key
    if database_url:
        env["CONDAGATE_DATABASE_URL"] = database_url
    env.update(extra_env or {})
    data_dir.mkdir(parents=True, exist_ok=True)
    log_path = data_dir.parent / f"{data_dir.name}-server.log"
    log_file = log_path.open("wb")
    process = subprocess.Popen(
        [*condagate_command(), "serve", "--host", "127.0.0.1", "--port", str(port)],
        env=env, stdout=log_file, stderr=subprocess.STDOUT,
    )
    server = Server(f"http://127.0.0.1:{port}", data_dir, database_url, admin_key or "", process, log_path, env)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"condagate exited with {process.returncode}:\n{server.log()}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(server.url + "/health", timeout=2).status_code == 200:
                return server
        time.sleep(0.1)
    server.stop()
    raise RuntimeError(f"condagate did not become healthy:\n{server.log()}")


class _PostgresCluster:
    """A throwaway PostgreSQL cluster in a temporary folder, for one pytest session.

    It is initdb'ed from Debian's binaries (``/usr/lib/postgresql/<version>/bin``), listens on 127.0.0.1
    only (trust auth) on a free port with its unix socket inside the folder, and is stopped and deleted
    by :func:`stop_postgres` (a session finalizer in conftest, and ``atexit`` as a fallback).
    The system cluster is never touched.
    """

    user = "condagate"

    def __init__(self, bin_dir: Path) -> None:
        self.bin_dir = bin_dir
        self.root = Path(tempfile.mkdtemp(prefix="condagate-test-pg-"))
        self.data = self.root / "data"
        self.socket_dir = self.root / "socket"
        self.log_path = self.root / "postgres.log"
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None
        self.as_postgres = os.geteuid() == 0  # postgres refuses to run as root
        if self.as_postgres:
            shutil.chown(self.root, "postgres", "postgres")
        self.socket_dir.mkdir()
        if self.as_postgres:
            shutil.chown(self.socket_dir, "postgres", "postgres")

    def _command(self, program: str, *args: str) -> list[str]:
        prefix = ["runuser", "-u", "postgres", "--"] if self.as_postgres else []
        return [*prefix, str(self.bin_dir / program), *args]

    def _env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env["LC_ALL"] = "C"
        return env

    def _run(self, program: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(self._command(program, *args), capture_output=True, text=True, check=False,
                                cwd=self.root, env=self._env(), timeout=120)
        if check and result.returncode != 0:
            raise RuntimeError(f"{program} {' '.join(args)} failed ({result.returncode}):\n"
                               f"{result.stdout}{result.stderr}\n{self.log()}")
        return result

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def start(self) -> None:
        self._run("initdb", "-D", str(self.data), "-U", self.user, "--auth=trust", "--encoding=UTF8",
                  "--locale=C", "--no-sync")
        (self.data / "pg_hba.conf").write_text("local all all trust\nhost all all 127.0.0.1/32 trust\n")
        for _attempt in range(5):
            self.port = free_port()
            with (self.data / "postgresql.conf").open("a") as conf:
                conf.write(
                    f"\nlisten_addresses = '127.0.0.1'\nport = {self.port}\n"
                    f"unix_socket_directories = '{self.socket_dir}'\n"
                    "fsync = off\nsynchronous_commit = off\nfull_page_writes = off\n"
                )
            # The postmaster is our child (not daemonized by pg_ctl), so we reap it when it stops; its own
            # session keeps a Ctrl-C in the terminal from reaching it before the finalizer stops it.
            with self.log_path.open("ab") as log:
                self.process = subprocess.Popen(self._command("postgres", "-D", str(self.data)), cwd=self.root,
                                                env=self._env(), stdout=log, stderr=subprocess.STDOUT,
                                                start_new_session=True)
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and self.process.poll() is None:
                ready = self._run("pg_isready", "-q", "-h", str(self.socket_dir), "-p", str(self.port),
                                  "-U", self.user, "-d", "postgres", check=False)
                if ready.returncode == 0:
                    return
                time.sleep(0.1)
            self._kill()  # it exited (the port was taken meanwhile?) or never got ready: try another port
        raise RuntimeError(f"the test PostgreSQL cluster did not start:\n{self.log()}")

    def create_database(self) -> str:
        database = "condagate_test_" + uuid.uuid4().hex[:12]
        self._run("createdb", "-h", str(self.socket_dir), "-p", str(self.port), "-U", self.user, database)
        return f"postgresql+psycopg://{self.user}@127.0.0.1:{self.port}/{database}"

    def _postmaster_pid(self) -> int | None:
        with contextlib.suppress(OSError, ValueError, IndexError):
            return int((self.data / "postmaster.pid").read_text().split()[0])
        return None

    def _kill(self) -> None:
        """SIGKILL the postmaster (and runuser around it) and reap them."""
        pid = self._postmaster_pid()
        if pid is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        if self.process is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.process.pid, signal.SIGKILL)  # its own process group: runuser, postgres, backends
            self.process.wait()
            self.process = None
        with contextlib.suppress(OSError):
            (self.data / "postmaster.pid").unlink()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            with contextlib.suppress(Exception):
                self._run("pg_ctl", "stop", "-w", "-t", "30", "-m", "immediate", "-D", str(self.data), check=False)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=30)
        self._kill()  # a no-op after a clean stop; otherwise make sure nothing is left running
        shutil.rmtree(self.root, ignore_errors=True)


_cluster: _PostgresCluster | None = None


def postgres_bin_dir() -> Path | None:
    """The newest installed Debian PostgreSQL server binaries, or None."""

    def version(bin_dir: Path) -> tuple[int, ...]:
        with contextlib.suppress(ValueError):
            return tuple(int(part) for part in bin_dir.parent.name.split("."))
        return (0,)

    candidates = [
        path.parent for path in Path("/usr/lib/postgresql").glob("*/bin/initdb")
        if all((path.parent / program).exists() for program in ("pg_ctl", "postgres", "createdb", "pg_isready"))
    ]
    if not candidates:
        return None
    if os.geteuid() == 0 and (shutil.which("runuser") is None or not _postgres_user_exists()):
        return None
    return max(candidates, key=version)


def _postgres_user_exists() -> bool:
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        return False
    return True


def stop_postgres() -> None:
    """Stop the throwaway cluster (if one was started) and delete its folder."""
    global _cluster
    cluster, _cluster = _cluster, None
    if cluster is not None:
        cluster.stop()


atexit.register(stop_postgres)


def postgres_database() -> str | None:
    """Return the URL of a fresh database in a throwaway PostgreSQL cluster, started once per session.

    ``CONDAGATE_TEST_POSTGRES_URL`` points the tests at an existing server instead. Returns None when
    no PostgreSQL server binaries are installed.
    """
    global _cluster
    if os.environ.get("CONDAGATE_TEST_POSTGRES_URL"):
        return os.environ["CONDAGATE_TEST_POSTGRES_URL"]
    if _cluster is None:
        bin_dir = postgres_bin_dir()
        if bin_dir is None:
            return None
        cluster = _PostgresCluster(bin_dir)
        try:
            cluster.start()
        except BaseException:
            cluster.stop()
            raise
        _cluster = cluster
    return _cluster.create_database()
