"""Running it for real: one server per port, clear one-line start-up errors, numbers that are right."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from conftest import upload
from servers import Server, condagate_command


def _serve(env_overrides: dict[str, str], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONDAGATE_")}
    env.update({"COLUMNS": "60", **env_overrides})  # a narrow terminal: the message must still be one line
    return subprocess.run(
        [*condagate_command(), "serve"], env=env, capture_output=True, text=True, timeout=60, cwd=tmp_path
    )


def test_a_second_server_on_a_port_in_use_refuses_to_start(server: Server, tmp_path: Path):
    port = server.url.rsplit(":", 1)[1]
    second = _serve({"CONDAGATE_DATA_DIR": str(tmp_path / "other"), "CONDAGATE_PORT": port}, tmp_path)
    assert second.returncode == 1
    errors = [line for line in second.stderr.splitlines() if line.strip()]
    assert len(errors) == 1 and f"port {port}" in errors[0] and "in use" in errors[0], second.stderr
    assert not (tmp_path / "other").exists()  # nothing created for the server that did not start


def test_a_bad_data_folder_is_one_line_not_a_traceback(tmp_path: Path):
    a_file = tmp_path / "not-a-folder"
    a_file.write_text("x")
    result = _serve({"CONDAGATE_DATA_DIR": str(a_file), "CONDAGATE_PORT": "0"}, tmp_path)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr + result.stdout
    errors = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(errors) == 1 and "is a file" in errors[0], result.stderr


def test_version():
    done = subprocess.run([*condagate_command(), "--version"], capture_output=True, text=True, check=True)
    assert done.stdout.startswith("condagate ") and done.stdout.split()[1][0].isdigit()


def test_feed_and_connector_numbers_are_right(server: Server, feed: str, make_package):
    for version in ("1.0", "2.0"):
        assert upload(server, feed, make_package("counted-files", version=version)).status_code == 201
    with server.admin() as admin:
        assert admin.get(f"/api/feeds/{feed}").json()["package_files"] == 2
        listed = {c["name"]: c for c in admin.get("/api/connectors").json()}
        shown = admin.get("/api/connectors/anaconda").json()
    assert listed["anaconda"]["feeds"] == shown["feeds"]
    assert listed["anaconda"]["cached_files"] == shown["cached_files"]
    assert listed["anaconda"]["health"] == shown["health"]


def test_mirroring_a_hosted_feed_says_there_is_nothing_to_mirror(server: Server, feed: str):
    env = {**os.environ, "CONDAGATE_URL": server.url, "CONDAGATE_API_KEY": server.api_key}
    done = subprocess.run(
        [*condagate_command(), "mirror", feed, "anything"], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert "is hosted" in done.stdout and "no upstream to mirror" in done.stdout
    assert "mirrored" not in done.stdout
