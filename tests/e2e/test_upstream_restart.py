"""After a restart, a proxy feed serves the kept copy of its upstream's repodata exactly as before: the
records the checks dropped or rewrote stay so, and a kept copy that is not the one condagate checked
is checked again, record by record."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import zstandard
from test_proxy_isolation import _connector, _feed, _inject

from servers import start_server
from upstream_channel import UpstreamChannel

GOOD = {"name": "evil", "version": "1.0", "build": "0", "build_number": 0, "depends": [], "subdir": "linux-64"}
HOSTILE = {
    "evil-1.0-0.conda": json.dumps({**GOOD, "url": "https://elsewhere.example/evil.conda"}).encode(),
    "evil-1.1-0.conda": json.dumps({**GOOD, "version": "1.1", "size": 2**64}).encode(),
    "evil-1.2-0.conda": json.dumps({**GOOD, "version": "1.2", "name": "other"}).encode(),
}


def _kept_copy(data_dir: Path) -> Path:
    (folder,) = data_dir.glob("upstream/*/linux-64")
    return folder


def test_a_restart_serves_the_kept_copy_with_the_same_records_dropped_and_rewritten(
    tmp_path: Path, upstream: UpstreamChannel
):
    _inject(upstream, "linux-64", HOSTILE)
    server = start_server(tmp_path / "data")
    try:
        feed = _feed(server, [_connector(server, upstream.url)])
        with server.client() as client:
            first = client.get(f"/conda/{feed}/linux-64/repodata.json").json()
    finally:
        server.stop()
    upstream.stop()
    note = _kept_copy(server.data_dir) / "checked.json"
    assert stat.S_IMODE(note.stat().st_mode) == 0o600
    again = start_server(server.data_dir)
    try:
        with again.client() as client:
            response = client.get(f"/conda/{feed}/linux-64/repodata.json")
    finally:
        again.stop()
    assert response.status_code == 200 and response.json() == first
    evil = {name: record for name, record in first["packages.conda"].items() if name.startswith("evil")}
    assert list(evil) == ["evil-1.0-0.conda"] and "url" not in evil["evil-1.0-0.conda"]
    assert "numpy-2.0.0-py311h0_0.conda" in first["packages.conda"]


def test_a_kept_copy_changed_behind_condagates_back_is_checked_again(tmp_path: Path, upstream: UpstreamChannel):
    server = start_server(tmp_path / "data")
    try:
        feed = _feed(server, [_connector(server, upstream.url)])
        with server.client() as client:
            assert "numpy-2.0.0-py311h0_0.conda" in client.get(f"/conda/{feed}/linux-64/repodata.json").json()[
                "packages.conda"
            ]
    finally:
        server.stop()
    upstream.stop()
    # The kept copy gains hostile records the note (bound to the old copy's digest) does not name.
    _inject(upstream, "linux-64", HOSTILE)
    kept = _kept_copy(server.data_dir) / "repodata.json.zst"
    kept.write_bytes(zstandard.ZstdCompressor().compress((upstream.root / "linux-64" / "repodata.json").read_bytes()))
    again = start_server(server.data_dir)
    try:
        with again.client() as client:
            response = client.get(f"/conda/{feed}/linux-64/repodata.json")
    finally:
        again.stop()
    assert response.status_code == 200, response.text
    listed = response.json()["packages.conda"]
    assert "numpy-2.0.0-py311h0_0.conda" in listed
    assert [name for name in listed if name.startswith("evil")] == ["evil-1.0-0.conda"]
    assert "url" not in listed["evil-1.0-0.conda"]


def test_a_note_others_could_have_written_is_not_trusted(tmp_path: Path, upstream: UpstreamChannel):
    _inject(upstream, "linux-64", HOSTILE)
    server = start_server(tmp_path / "data")
    try:
        feed = _feed(server, [_connector(server, upstream.url)])
        with server.client() as client:
            assert client.get(f"/conda/{feed}/linux-64/repodata.json").status_code == 200
    finally:
        server.stop()
    upstream.stop()
    # A note that names no record as dropped, but group- and world-writable: it must be ignored.
    note = _kept_copy(server.data_dir) / "checked.json"
    content = json.loads(note.read_text())
    assert set(content["not_as_written"]) == set(HOSTILE)
    note.write_text(json.dumps({**content, "not_as_written": []}))
    note.chmod(0o666)
    again = start_server(server.data_dir)
    try:
        with again.client() as client:
            listed = client.get(f"/conda/{feed}/linux-64/repodata.json").json()["packages.conda"]
    finally:
        again.stop()
    assert [name for name in listed if name.startswith("evil")] == ["evil-1.0-0.conda"]
    assert "url" not in listed["evil-1.0-0.conda"]
