"""After a restart, a proxy feed serves the kept copy of its upstream's repodata exactly as before: the
records the checks dropped or rewrote stay so (the note in the database row that names the kept blob),
a kept blob that is not the one condagate checked is checked again, record by record, and this host's
copy of it is used only when it is the row's."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import zstandard
from sqlalchemy import text
from test_proxy_isolation import _connector, _feed, _inject

from condagate.store.db import make_engine

from servers import Server, start_server
from upstream_channel import UpstreamChannel

GOOD = {"name": "evil", "version": "1.0", "build": "0", "build_number": 0, "depends": [], "subdir": "linux-64"}
HOSTILE = {
    "evil-1.0-0.conda": json.dumps({**GOOD, "url": "https://elsewhere.example/evil.conda"}).encode(),
    "evil-1.1-0.conda": json.dumps({**GOOD, "version": "1.1", "size": 2**64}).encode(),
    "evil-1.2-0.conda": json.dumps({**GOOD, "version": "1.2", "name": "other"}).encode(),
}


def _kept_copy(data_dir: Path) -> Path:
    """This host's copy of the kept body (a cache of the blob)."""
    (folder,) = data_dir.glob("upstream/*/linux-64")
    return folder / "repodata.json.zst"


def _kept_row(server: Server) -> dict[str, Any]:
    """The shared state of the connector's linux-64 repodata."""
    engine = make_engine(server.database_url or f"sqlite:///{server.data_dir / 'condagate.db'}")
    try:
        with engine.connect() as connection:
            row = connection.execute(text("SELECT * FROM upstream_repodata WHERE subdir = 'linux-64'")).one()
    finally:
        engine.dispose()
    return dict(row._mapping)


def _blob(server: Server, sha256: str) -> Path:
    return server.data_dir / "blobs" / sha256[:2] / sha256[2:4] / sha256


def _first_run(tmp_path: Path, upstream: UpstreamChannel) -> tuple[Server, str, httpx.Response]:
    """A server whose proxy feed fetched the upstream's linux-64 once; the server and the upstream are
    stopped afterwards (a restart can only serve what was kept)."""
    server = start_server(tmp_path / "data")
    try:
        feed = _feed(server, [_connector(server, upstream.url)])
        with server.client() as client:
            first = client.get(f"/conda/{feed}/linux-64/repodata.json")
    finally:
        server.stop()
    upstream.stop()
    return server, feed, first


def _after_restart(server: Server, feed: str) -> httpx.Response:
    again = start_server(server.data_dir)
    try:
        with again.client() as client:
            return client.get(f"/conda/{feed}/linux-64/repodata.json")
    finally:
        again.stop()


def test_a_restart_serves_the_kept_copy_with_the_same_records_dropped_and_rewritten(
    tmp_path: Path, upstream: UpstreamChannel
):
    _inject(upstream, "linux-64", HOSTILE)
    server, feed, answer = _first_run(tmp_path, upstream)
    first = answer.json()
    kept = _kept_row(server)
    assert set(json.loads(kept["not_as_written"])) == set(HOSTILE) and len(kept["checks"]) == 64
    assert _blob(server, kept["sha256"]).read_bytes() == _kept_copy(server.data_dir).read_bytes()
    response = _after_restart(server, feed)
    assert response.status_code == 200 and response.json() == first
    evil = {name: record for name, record in first["packages.conda"].items() if name.startswith("evil")}
    assert list(evil) == ["evil-1.0-0.conda"] and "url" not in evil["evil-1.0-0.conda"]
    assert "numpy-2.0.0-py311h0_0.conda" in first["packages.conda"]


def test_a_kept_copy_changed_behind_condagates_back_is_checked_again(tmp_path: Path, upstream: UpstreamChannel):
    server, feed, first = _first_run(tmp_path, upstream)
    assert "numpy-2.0.0-py311h0_0.conda" in first.json()["packages.conda"]
    # The kept blob (and this host's copy) gain hostile records the note (bound to the blob's sha256)
    # does not name.
    _inject(upstream, "linux-64", HOSTILE)
    changed = zstandard.ZstdCompressor().compress((upstream.root / "linux-64" / "repodata.json").read_bytes())
    _blob(server, _kept_row(server)["sha256"]).write_bytes(changed)
    _kept_copy(server.data_dir).write_bytes(changed)
    response = _after_restart(server, feed)
    assert response.status_code == 200, response.text
    listed = response.json()["packages.conda"]
    assert "numpy-2.0.0-py311h0_0.conda" in listed
    assert [name for name in listed if name.startswith("evil")] == ["evil-1.0-0.conda"]
    assert "url" not in listed["evil-1.0-0.conda"]


def test_a_local_copy_that_is_not_the_rows_is_not_used(tmp_path: Path, upstream: UpstreamChannel):
    server, feed, first = _first_run(tmp_path, upstream)
    assert first.status_code == 200
    # This host's copy is replaced by one with hostile records: were it read with the row's note (which
    # names none of them), they would be served unchecked.
    _inject(upstream, "linux-64", HOSTILE)
    copy = _kept_copy(server.data_dir)
    copy.write_bytes(zstandard.ZstdCompressor().compress((upstream.root / "linux-64" / "repodata.json").read_bytes()))
    copy.chmod(0o666)
    response = _after_restart(server, feed)
    assert response.status_code == 200 and response.json() == first.json()  # the row's blob, as before
    assert not [name for name in response.json()["packages.conda"] if name.startswith("evil")]
    assert copy.read_bytes() == _blob(server, _kept_row(server)["sha256"]).read_bytes()  # the copy set right


def test_a_copy_kept_by_an_older_version_is_taken_over(tmp_path: Path, upstream: UpstreamChannel):
    """Before the shared state, the copy and a meta.json naming its address were all there was: an upgrade
    with the upstream down still serves it (every record checked), and keeps it for every replica."""
    _inject(upstream, "linux-64", HOSTILE)
    server, feed, answer = _first_run(tmp_path, upstream)
    first = answer.json()
    kept = _kept_row(server)
    engine = make_engine(f"sqlite:///{server.data_dir / 'condagate.db'}")
    try:
        with engine.begin() as connection:
            connection.execute(text("DELETE FROM upstream_repodata"))
    finally:
        engine.dispose()
    _blob(server, kept["sha256"]).unlink()
    meta = _kept_copy(server.data_dir).with_name("meta.json")
    meta.write_text(json.dumps({"etag": kept["etag"], "url": upstream.url, "saved_at": "2026-01-01T00:00:00+00:00"}))
    response = _after_restart(server, feed)
    assert response.status_code == 200 and response.json() == first
    taken = _kept_row(server)
    assert (taken["sha256"], taken["etag"]) == (kept["sha256"], kept["etag"])
    assert _blob(server, kept["sha256"]).is_file()
    assert set(json.loads(taken["not_as_written"])) == set(HOSTILE) and not meta.exists()
