"""Vulnerability advisories end to end: OSV imports through the REST API and the CLI, re-imports,
withdrawals, assessments, name overrides, permissions, and the matcher (``vulnerability_state``)
reading the running server's database in-process.

The server lives for the whole session, so each test imports the real PyPA advisories under ids of
its own (``PYSEC-2023-74-<run>``) and checks its own ids.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import uuid
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from condagate.services import vulnerabilities
from condagate.services.advisory_index import VulnerabilityState
from condagate.services.context import Services
from condagate.settings import Settings
from condagate.store import feeds as feed_store

from conftest import upload
from servers import Server, condagate_command

DATA = Path(__file__).parent.parent / "data" / "osv"
REAL = sorted(p.relative_to(DATA).as_posix() for p in DATA.glob("*/*.json"))
BAD = "cipherbcrypt/PYSEC-2024-55.json"
MakePackage = Callable[..., Path]


def documents(run: str) -> dict[str, dict[str, Any]]:
    """The real advisories, each under an id of this run."""
    found = {}
    for name in REAL:
        document = json.loads((DATA / name).read_text())
        document["id"] = f"{document['id']}-{run}"
        found[name] = document
    return found


def as_zip(docs: dict[str, dict[str, Any]]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, document in docs.items():
            archive.writestr(name, json.dumps(document))
    return buffer.getvalue()


def import_body(server: Server, body: bytes, kind: str = "application/zip", source: str = "osv.zip") -> dict[str, Any]:
    with server.admin() as admin:
        response = admin.post(
            "/api/advisories/import", content=body, params={"source": source}, headers={"Content-Type": kind}
        )
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result


def counts(result: dict[str, Any]) -> dict[str, int]:
    return {key: result[key] for key in ("new", "updated", "withdrawn", "unchanged", "failed")}


def cli(server: Server, *args: str, key: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONDAGATE_") and k != "COLUMNS"}
    env.update({"CONDAGATE_URL": server.url, "CONDAGATE_API_KEY": server.api_key if key is None else key})
    return subprocess.run(
        [*condagate_command(), "advisories", *args], capture_output=True, text=True, env=env, timeout=120
    )


@pytest.fixture
def run() -> str:
    return uuid.uuid4().hex[:8]


@pytest.fixture
def services(server: Server) -> Iterator[Services]:
    opened = Services.open(Settings.from_env(server.env))
    yield opened
    opened.close()


def state(
    services: Services, name: str, version: str, feed_id: int | None = None
) -> VulnerabilityState:
    vulnerabilities.note_change(services)  # the server changed the data: read the revision now
    return vulnerabilities.vulnerability_state(services, feed_id=feed_id, name=name, version=version)


def test_import_reimport_update_withdraw(server: Server, run: str) -> None:
    docs = documents(run)
    first = import_body(server, as_zip(docs))
    # One real document is bad: it is reported with its file and why, and the other seven are in.
    assert counts(first) == {"new": 6, "updated": 0, "withdrawn": 1, "unchanged": 0, "failed": 1}
    assert first["failures"] == [
        {"file": f"osv.zip:{BAD}", "reason": "'modified' '1-01-01T00:00:00Z' is not an RFC 3339 timestamp"}
    ]
    with server.client() as anyone, server.admin() as admin:
        shown = admin.get(f"/api/advisories/PYSEC-2023-192-{run}").json()
        assert shown["advisory"]["severity"] == "high" and shown["advisory"]["score"] == 8.1
        assert shown["advisory"]["aliases"] == ["CVE-2023-43804", "GHSA-v845-jxx5-vc9f"]
        assert shown["affected"][0]["name"] == "urllib3"
        assert shown["advisory"]["source"] == "osv.zip:urllib3/PYSEC-2023-192.json"
        assert anyone.get(f"/api/advisories/PYSEC-2024-55-{run}").status_code in (401, 404)
        assert admin.get(f"/api/advisories/PYSEC-2024-55-{run}").json()["error"]["code"] == "advisory_not_found"

    again = import_body(server, as_zip(docs))
    assert counts(again) == {"new": 0, "updated": 0, "withdrawn": 0, "unchanged": 7, "failed": 1}

    changed = documents(run)
    requests = changed["requests/PYSEC-2023-74.json"]
    requests["modified"] = "2024-11-01T00:00:00Z"
    requests["affected"][0]["ranges"][1]["events"][1] = {"fixed": "2.32.0"}
    pillow = changed["pillow/PYSEC-2022-168.json"]
    pillow["modified"] = "2024-11-01T00:00:00Z"
    pillow["withdrawn"] = "2024-11-01T00:00:00Z"
    older = changed["jinja2/PYSEC-2019-217.json"]
    older["modified"] = "2001-01-01T00:00:00Z"  # older than what is stored: left as it is
    older["summary"] = "not taken"
    del changed[BAD]
    third = import_body(server, as_zip(changed))
    assert counts(third) == {"new": 0, "updated": 1, "withdrawn": 1, "unchanged": 5, "failed": 0}

    with server.admin() as admin:
        updated = admin.get(f"/api/advisories/PYSEC-2023-74-{run}").json()
        ecosystem_range = [r for r in updated["affected"][0]["ranges"] if r["type"] == "ECOSYSTEM"][0]
        assert ecosystem_range["events"] == [{"introduced": "2.3.0"}, {"fixed": "2.32.0"}]
        assert admin.get(f"/api/advisories/PYSEC-2019-217-{run}").json()["advisory"]["summary"] != "not taken"
        withdrawn = admin.get("/api/advisories", params={"withdrawn": "true", "limit": 1000}).json()
        withdrawn_ids = {item["id"] for item in withdrawn["items"]}
        assert {f"PYSEC-2022-168-{run}", f"PYSEC-2023-73-{run}"} <= withdrawn_ids
        by_package = admin.get("/api/advisories", params={"package": "urllib3", "severity": "high"}).json()
        assert f"PYSEC-2023-192-{run}" in {item["id"] for item in by_package["items"]}
        assert all(item["severity"] == "high" for item in by_package["items"])
        single = json.dumps(documents(run)["py/PYSEC-2022-42969.json"]).encode()
        one = admin.post("/api/advisories/import", content=single, headers={"Content-Type": "application/json"})
        assert one.status_code == 200 and counts(one.json())["unchanged"] == 1
        garbage = admin.post("/api/advisories/import", content=b"PK\x03\x04 not really a zip")
        assert garbage.status_code == 400 and garbage.json()["error"]["code"] == "import_refused"
        bad_severity = admin.get("/api/advisories", params={"severity": "dire"})
        assert bad_severity.status_code == 400


def test_cli_import_list_show(server: Server, run: str, tmp_path: Path) -> None:
    folder = tmp_path / "osv"
    for name, document in documents(run).items():
        if name != BAD:
            (folder / name).parent.mkdir(parents=True, exist_ok=True)
            (folder / name).write_text(json.dumps(document))
    done = cli(server, "import", str(folder), "--json")
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert {k: summary[k] for k in ("new", "withdrawn", "failed", "documents")} == {
        "new": 6,
        "withdrawn": 1,
        "failed": 0,
        "documents": 7,
    }
    again = json.loads(cli(server, "import", str(folder), "--json").stdout)
    assert again["unchanged"] == 7

    bad = tmp_path / "bad.json"
    bad.write_text('{"id": "X-1"}')
    failed = cli(server, "import", str(bad), "--json")
    assert failed.returncode == 1
    assert json.loads(failed.stdout)["failures"] == [
        {"file": "bad.json", "reason": "required field 'modified' is missing"}
    ]
    human = cli(server, "import", str(bad))
    assert "failed bad.json: required field 'modified' is missing" in human.stdout

    listed = json.loads(cli(server, "list", "--package", "urllib3", "--json").stdout)
    assert f"PYSEC-2023-192-{run}" in {item["id"] for item in listed["items"]}
    shown = cli(server, "show", f"PYSEC-2023-192-{run}")
    assert shown.returncode == 0 and "CVE-2023-43804" in shown.stdout and "high" in shown.stdout
    missing = cli(server, "show", "NO-SUCH-1")
    assert missing.returncode == 1 and missing.stderr.count("\n") == 1 and "has not been imported" in missing.stderr


def test_assessments_are_recorded_with_who_and_when(server: Server, run: str, feed: str, services: Services) -> None:
    import_body(server, as_zip(documents(run)))
    advisory = f"PYSEC-2023-74-{run}"
    blocked = cli(server, "assess", advisory, "block", "--comment", "leaks proxy credentials", "--json")
    assert blocked.returncode == 0, blocked.stderr
    assert json.loads(blocked.stdout)["verdict"] == "block"
    ignored = json.loads(
        cli(server, "assess", advisory, "ignore", "--feed", feed, "--comment", "no proxies", "--json").stdout
    )
    assert (ignored["feed"], ignored["verdict"]) == (feed, "ignore") and ignored["actor"]
    assert cli(server, "assess", advisory, "maybe").returncode == 1

    with server.admin() as admin:
        history = admin.get(f"/api/advisories/{advisory}/assessments").json()
    assert [(h["verdict"], h["feed"], h["in_force"]) for h in history] == [
        ("ignore", feed, True),
        ("block", None, True),
    ]
    assert all(h["actor"] and h["at"] for h in history)
    assert history[1]["comment"] == "leaks proxy credentials"

    # In force for the feed: its own verdict; elsewhere the system-wide one.
    with services.db.read() as session:
        feed_id = feed_store.get_feed(session=session, name=feed).id
    here = state(services, "requests", "2.30.0", feed_id)
    finding = next(f for f in here.findings if f.advisory_id == advisory)
    assert (finding.assessment, finding.assessment_comment) == ("ignore", "no proxies")
    elsewhere = next(f for f in state(services, "requests", "2.30.0").findings if f.advisory_id == advisory)
    assert elsewhere.assessment == "block"

    cleared = cli(server, "assess", advisory, "clear", "--feed", feed, "--json")
    assert json.loads(cleared.stdout)["in_force"] is False
    after = next(f for f in state(services, "requests", "2.30.0", feed_id).findings if f.advisory_id == advisory)
    assert after.assessment == "block"  # the feed's own cleared: the system-wide one counts
    rows = json.loads(cli(server, "assessments", advisory, "--json").stdout)
    assert [r["verdict"] for r in rows] == ["clear", "ignore", "block"]  # the history is kept


def test_vulnerability_state_from_the_servers_database(server: Server, run: str, services: Services) -> None:
    import_body(server, as_zip(documents(run)))
    requests = state(services, "requests", "2.30.0")
    assert requests.status == "affected"
    assert (requests.ecosystem_name, requests.mapping_source) == ("PyPI:requests", "grayskull")
    finding = next(f for f in requests.findings if f.advisory_id == f"PYSEC-2023-74-{run}")
    assert finding.aliases == ("CVE-2023-32681", "GHSA-j8r2-6x86-q33q")
    assert finding.fixed_in == ("2.31.0",) and finding.severity == "unknown" and finding.links
    urllib3 = next(
        f for f in state(services, "urllib3", "1.26.16").findings if f.advisory_id == f"PYSEC-2023-192-{run}"
    )
    assert (urllib3.severity, urllib3.score, urllib3.fixed_in) == ("high", 8.1, ("1.26.17", "2.0.6"))
    assert state(services, "requests", "2.32.3").status == "clean"
    # Withdrawn advisories are not matched.
    redis = state(services, "redis", "4.5.5")
    assert f"PYSEC-2023-73-{run}" not in {f.advisory_id for f in redis.findings}
    # A grayskull-mapped package without advisories is clean; an unmapped one has no data.
    assert state(services, "msgpack-python", "1.0.0").status == "clean"
    assert state(services, "msgpack-python", "1.0.0").ecosystem_name == "PyPI:msgpack"
    nothing = state(services, f"private-tool-{run}", "1.0")
    assert (nothing.status, nothing.mapping_source) == ("no-data", "fallback")
    assert state(services, "_libgcc_mutex", "0.1").status == "no-data"
    # A conda spelling PEP 440 cannot place.
    odd = state(services, "requests", "2.30_0")
    assert odd.status == "unknown-version" and "not a PEP 440 version" in odd.note
    assert vulnerabilities.sca_revision(services) > 0


def test_name_overrides(server: Server, run: str, services: Services) -> None:
    import_body(server, as_zip(documents(run)))
    fork = f"requests-fork-{run}"
    assert state(services, fork, "2.30.0").status == "no-data"
    before = vulnerabilities.sca_revision(services)
    mapped = json.loads(cli(server, "map", fork, "Requests", "--json").stdout)
    assert (mapped["ecosystem_name"], mapped["source"], mapped["override"]) == ("PyPI:requests", "override", True)
    overridden = state(services, fork, "2.30.0")
    assert (overridden.status, overridden.mapping_source) == ("affected", "override")
    # What a feed's cache asks after a change: which of its names to evaluate again.
    changed = vulnerabilities.names_changed_since(services, revision=before, names=[fork, "numpy", "requests"])
    assert changed == {fork}
    none = json.loads(cli(server, "map", fork, "--none", "--json").stdout)
    assert none["ecosystem_name"] is None
    assert state(services, fork, "2.30.0").status == "no-data"
    with server.admin() as admin:
        listed = admin.get("/api/package-names").json()
        assert {"conda_name": fork, "ecosystem_name": None} in [
            {k: row[k] for k in ("conda_name", "ecosystem_name")} for row in listed
        ]
        assert admin.put("/api/package-names/Not%20Conda", json={"pypi_name": "x"}).status_code == 400
        assert admin.put(f"/api/package-names/{fork}", json={"pypi_name": "-bad-"}).status_code == 400
    cleared = json.loads(cli(server, "map", fork, "--clear", "--json").stdout)
    assert (cleared["source"], cleared["override"]) == ("fallback", False)
    shown = cli(server, "map", "msgpack-python")
    assert "msgpack-python -> PyPI:msgpack (grayskull)" in shown.stdout


def test_a_feeds_vulnerable_packages(server: Server, run: str, feed: str, make_package: MakePackage) -> None:
    import_body(server, as_zip(documents(run)))
    for version in ("2.30.0", "2.32.3"):
        assert upload(server, feed, make_package("requests", version=version)).status_code == 201
    assert upload(server, feed, make_package(f"private-{run}", version="1.0")).status_code == 201
    found = json.loads(cli(server, "list", "--feed", feed, "--json").stdout)
    assert [(p["name"], p["version"], p["state"]["status"]) for p in found["packages"]] == [
        ("requests", "2.30.0", "affected")
    ]
    assert (found["versions"], found["affected"], found["no_data"]) == (3, 1, 1)
    table = cli(server, "list", "--feed", feed)
    assert table.returncode == 0 and "requests" in table.stdout
    assert "1 affected, 0 undecided, 1 without advisory data, of 3 package versions" in " ".join(table.stdout.split())


def test_permissions(server: Server) -> None:
    body = as_zip(documents("perm"))
    with server.client() as anonymous:
        assert anonymous.post("/api/advisories/import", content=body).status_code == 401
        assert anonymous.post("/api/advisories/X-1/assessments", json={"verdict": "block"}).status_code == 401
        assert anonymous.get("/api/assessments").status_code == 401
        assert anonymous.get("/api/advisories").status_code == 200  # anonymous callers view by default
    with server.admin() as admin:
        reader_key = admin.post("/api/apikeys", json={"permissions": ["view"]}).json()["key"]
    with server.client(headers={"X-API-Key": reader_key}) as reader:
        assert reader.post("/api/advisories/import", content=body).status_code == 403
        assert reader.post("/api/advisories/X-1/assessments", json={"verdict": "block"}).status_code == 403
        assert reader.put("/api/package-names/x", json={"pypi_name": "y"}).status_code == 403
        assert reader.get("/api/assessments").status_code == 403
        assert reader.get("/api/advisories").status_code == 200
        assert reader.get("/api/package-names/msgpack-python").json()["ecosystem_name"] == "PyPI:msgpack"
    refused = cli(server, "import", str(DATA / "requests" / "PYSEC-2023-74.json"), key=reader_key)
    assert refused.returncode == 1 and refused.stderr.startswith("error: 403")
