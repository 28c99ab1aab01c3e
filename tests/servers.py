"""Starting real condagate servers and a real PostgreSQL for the tests."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import httpx

ADMIN_KEY = "cg_test_admin_" + uuid.uuid4().hex


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
        return httpx.Client(base_url=self.url, timeout=60, **kwargs)  # type: ignore[arg-type]

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


def _run_as_postgres(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["runuser", "-u", "postgres", "--", *args], capture_output=True, text=True, check=False)


def postgres_database() -> str | None:
    """Start Debian's PostgreSQL cluster when installed and return the URL of a fresh database."""
    if os.environ.get("CONDAGATE_TEST_POSTGRES_URL"):
        return os.environ["CONDAGATE_TEST_POSTGRES_URL"]
    if shutil.which("pg_lsclusters") is None or shutil.which("runuser") is None:
        return None
    clusters = subprocess.run(["pg_lsclusters", "--no-header"], capture_output=True, text=True, check=False)
    lines = [line.split() for line in clusters.stdout.splitlines() if line.strip()]
    if not lines:
        return None
    version, name, port, status = lines[0][:4]
    if status != "online":
        subprocess.run(["pg_ctlcluster", version, name, "start"], check=True, capture_output=True)
    _run_as_postgres("psql", "-p", port, "-c", "CREATE ROLE condagate LOGIN PASSWORD 'condagate' CREATEDB")
    database = "condagate_test_" + uuid.uuid4().hex[:12]
    created = _run_as_postgres("createdb", "-p", port, "-O", "condagate", database)
    if created.returncode != 0:
        raise RuntimeError(f"could not create the test database: {created.stderr}")
    return f"postgresql+psycopg://condagate:condagate@127.0.0.1:{port}/{database}"
