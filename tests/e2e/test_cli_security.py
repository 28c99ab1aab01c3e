"""The security commands of the CLI (``user``, ``group``, ``grant``, ``apikey``, ``admin create-key``) run as
real processes against real servers: what they create works for conda clients, and bad input fails with
exit status 1 and one line."""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
import typer
from typer.testing import CliRunner

from condagate.cli.main import app
from condagate.cli.security import parse_expiry

from servers import ADMIN_KEY, Server, condagate_command, free_port, start_server

REPODATA = "noarch/repodata.json"


def run_cli(
    *args: str,
    url: str = "",
    key: str = "",
    stdin: str | None = None,
    extra_env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    # No COLUMNS: output goes to a pipe, so Rich would wrap at 80 columns if it wrapped at all.
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONDAGATE_") and k != "COLUMNS"}
    if url:
        env["CONDAGATE_URL"] = url
    if key:
        env["CONDAGATE_API_KEY"] = key
    env.update(extra_env or {})
    return subprocess.run(
        [*condagate_command(), *args], input=stdin or "", capture_output=True, text=True, env=env, timeout=120
    )


def ok(server: Server, *args: str, stdin: str | None = None, key: str | None = None) -> str:
    result = run_cli(*args, url=server.url, key=server.api_key if key is None else key, stdin=stdin)
    assert result.returncode == 0, f"{args}: {result.returncode}\n{result.stdout}\n{result.stderr}"
    return result.stdout


def ok_json(server: Server, *args: str, stdin: str | None = None) -> Any:
    return json.loads(ok(server, *args, "--json", stdin=stdin))


def one_line_failure(result: subprocess.CompletedProcess[str]) -> str:
    """Exit status 1, nothing on stdout, and one line on stderr: the reason."""
    assert result.returncode == 1, f"{result.returncode}\n{result.stdout}\n{result.stderr}"
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: "), lines[0]
    return lines[0]


def fails(server: Server, *args: str, stdin: str | None = None, key: str | None = None) -> str:
    return one_line_failure(run_cli(*args, url=server.url, key=server.api_key if key is None else key, stdin=stdin))


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def create_feed(server: Server) -> str:
    name = unique("feed")
    with server.admin() as admin:
        response = admin.post("/api/feeds", json={"name": name})
        assert response.status_code == 201, response.text
    return name


# Every command has --help ----------------------------------------------------------------------


def commands(group: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    for name, command in group.commands.items():
        if hasattr(command, "commands"):
            yield from commands(command, (*path, name))
        else:
            yield (*path, name)


SECURITY_COMMANDS = [
    c for c in commands(typer.main.get_command(app)) if c[0] in ("user", "group", "grant", "apikey", "admin")
]


def test_every_security_command_is_there_with_help() -> None:
    assert set(SECURITY_COMMANDS) >= {
        ("user", "create"),
        ("user", "list"),
        ("user", "delete"),
        ("user", "set-password"),
        ("group", "create"),
        ("group", "add-member"),
        ("group", "remove-member"),
        ("group", "list"),
        ("group", "delete"),
        ("grant", "add"),
        ("grant", "remove"),
        ("grant", "list"),
        ("apikey", "create"),
        ("apikey", "list"),
        ("apikey", "revoke"),
        ("apikey", "log"),
        ("admin", "create-key"),
    }
    for command in SECURITY_COMMANDS:
        result = CliRunner().invoke(app, [*command, "--help"])
        assert result.exit_code == 0, (command, result.output)
        assert "Usage" in result.output
        if command[0] != "admin":
            assert "--url" in result.output and "--api-key" in result.output, command


def test_expiry_dates_are_iso_dates_or_datetimes_in_utc_unless_an_offset_is_given() -> None:
    assert parse_expiry("2099-01-31") == datetime(2099, 1, 31, tzinfo=UTC)
    assert parse_expiry("2099-01-31T12:00") == datetime(2099, 1, 31, 12, tzinfo=UTC)
    assert parse_expiry("2099-01-31T12:00+02:00") == datetime(2099, 1, 31, 10, tzinfo=UTC)


# Users, groups and grants on the shared servers (SQLite and PostgreSQL) ---------------------------


def me(server: Server, user: str, password: str) -> httpx.Response:
    with server.client(auth=(user, password)) as client:
        response: httpx.Response = client.get("/api/me")
    return response


def test_users_groups_and_grants(server: Server, feed: str) -> None:
    alice = unique("alice") + "@example.com"  # '@' and '.' in a path segment
    bob = unique("bob")
    group = unique("Lead Developers")  # spaces in a path segment
    password = "correct horse:battery/staple"

    user = ok_json(server, "user", "create", alice, "--password-stdin", stdin=password + "\n")
    assert user["name"] == alice and user["has_password"] is True and user["groups"] == []
    assert "without a password" in ok(server, "user", "create", bob)
    assert ok_json(server, "group", "create", group) == {"name": group, "members": []}
    ok(server, "group", "add-member", group, alice)
    ok(server, "group", "add-member", group, bob)

    grant = ok_json(server, "grant", "add", f"group:{group}", "view", "--feed", feed)
    assert (grant["principal"], grant["permission"], grant["feed"]) == (f"group:{group}", "view", feed)
    ok(server, "grant", "add", f"group:{group}", "view", "--feed", feed)  # granting twice changes nothing
    on_feed = ok_json(server, "grant", "list", "--feed", feed)
    assert [(g["principal"], g["permission"], g["feed"]) for g in on_feed] == [(f"group:{group}", "view", feed)]
    everything = ok_json(server, "grant", "list")
    assert {"principal": "user:admin", "permission": "admin", "feed": None}.items() <= next(
        g for g in everything if g["principal"] == "user:admin"
    ).items()
    assert "all feeds" in ok(server, "grant", "list")  # the system-wide grants in the table

    listed = {u["name"]: u for u in ok_json(server, "user", "list")}
    assert listed[alice]["groups"] == [group] and listed[alice]["has_password"] is True
    assert listed[bob]["has_password"] is False
    groups = {g["name"]: g["members"] for g in ok_json(server, "group", "list")}
    assert sorted(groups[group]) == sorted([alice, bob])

    # The password works, and the group's grant reaches its member.
    answer = me(server, alice, password)
    assert answer.status_code == 200, answer.text
    assert answer.json()["user"] == alice and "view" in answer.json()["feed_permissions"][feed]

    ok(server, "user", "set-password", alice, "--password-stdin", stdin="a new secret\n")
    assert me(server, alice, "a new secret").status_code == 200
    assert me(server, alice, password).status_code == 401

    ok(server, "group", "remove-member", group, alice)
    assert feed not in me(server, alice, "a new secret").json()["feed_permissions"]
    ok(server, "grant", "remove", f"group:{group}", "view", "--feed", feed)
    assert ok_json(server, "grant", "list", "--feed", feed) == []
    ok(server, "group", "delete", group)
    ok(server, "user", "delete", alice)
    ok(server, "user", "delete", bob)
    assert group not in {g["name"] for g in ok_json(server, "group", "list")}
    assert not {alice, bob} & {u["name"] for u in ok_json(server, "user", "list")}


BAD_INPUT = [
    (["grant", "add", "anonymous", "bogus"], "", "unknown permission 'bogus'"),
    (["grant", "add", "someone", "view"], "", "invalid principal"),
    (["grant", "add", "user:nobody-{uid}", "view", "--feed", "{feed}"], "", "nobody-{uid}"),
    (["grant", "add", "anonymous", "view", "--feed", "no-feed-{uid}"], "", "no-feed-{uid}"),
    (["grant", "remove", "anonymous", "delete", "--feed", "{feed}"], "", "404"),
    (["apikey", "create", "--user", "missing-{uid}"], "", "missing-{uid}"),
    (["apikey", "create", "--feed", "{feed}", "--permission", "bogus"], "", "unknown permission 'bogus'"),
    (["apikey", "create", "--feed", "no-feed-{uid}"], "", "no-feed-{uid}"),
    (["apikey", "create", "--feed", "{feed}", "--expires", "31/01/2027"], "", "invalid --expires '31/01/2027'"),
    (["apikey", "create", "--feed", "{feed}", "--expires", "2001-01-31"], "", "in the past"),
    (["apikey", "create", "--feed", "{feed}", "--key", "short"], "", "typed-in API key"),
    (["apikey", "revoke", "987654321"], "", "987654321 does not exist"),
    (["apikey", "log", "987654321"], "", "987654321 does not exist"),
    (["user", "create", "bad name"], "", "invalid user name"),
    (["user", "create", "u-{uid}", "--password-stdin"], "", "no password on stdin"),
    (["user", "create", "u-{uid}", "--password-stdin"], "short\n", "8 to 1024 characters"),
    (["user", "set-password", "u-{uid}"], "long enough secret\n", "--password-stdin"),
    (["user", "set-password", "nobody-{uid}", "--password-stdin"], "long enough secret\n", "nobody-{uid}"),
    (["user", "delete", "nobody-{uid}"], "", "nobody-{uid}"),
    (["group", "add-member", "no-group-{uid}", "nobody-{uid}"], "", "404"),
    (["group", "delete", "no-group-{uid}"], "", "no-group-{uid}"),
]


@pytest.mark.parametrize(("args", "stdin", "expected"), BAD_INPUT, ids=[" ".join(a) for a, _, _ in BAD_INPUT])
def test_bad_input_fails_with_one_line(server: Server, feed: str, args: list[str], stdin: str, expected: str) -> None:
    uid = uuid.uuid4().hex[:8]
    line = fails(server, *(a.format(uid=uid, feed=feed) for a in args), stdin=stdin)
    assert expected.format(uid=uid, feed=feed) in line


def test_without_credentials_or_server_the_reason_is_one_line(server: Server) -> None:
    assert "401" in fails(server, "user", "list", key="")
    assert "401" in fails(server, "grant", "list", key="wrong-key-" + uuid.uuid4().hex)
    down = f"http://127.0.0.1:{free_port()}"
    assert "cannot reach condagate" in one_line_failure(run_cli("apikey", "list", url=down, key="k"))


# Keys and grants that change who sees what: a server of this module's own -----------------------


@dataclass
class Locked:
    """A server whose anonymous visitors see nothing (the system-wide anonymous grant removed)."""

    server: Server
    feed: str
    other_feed: str

    def get(self, path: str, auth: tuple[str, str] | None = None) -> httpx.Response:
        with self.server.client(auth=auth) as client:
            response: httpx.Response = client.get(path)
        return response


@pytest.fixture(scope="module")
def locked(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Locked]:
    server = start_server(tmp_path_factory.mktemp("cli-security") / "data")
    try:
        ok(server, "grant", "remove", "anonymous", "view")
        yield Locked(server, create_feed(server), create_feed(server))
    finally:
        server.stop()


def test_anonymous_visitors_see_nothing_once_the_grant_is_removed(locked: Locked) -> None:
    assert locked.get(f"/conda/{locked.feed}/{REPODATA}").status_code == 401
    assert all(g["principal"] != "anonymous" for g in ok_json(locked.server, "grant", "list"))


def test_a_feed_key_from_the_cli_works_on_its_feed_only_until_revoked(locked: Locked) -> None:
    server, feed, other = locked.server, locked.feed, locked.other_feed
    output = ok(server, "apikey", "create", "--feed", feed, "--permission", "view", "--description", "CI of the feed")
    lines = output.splitlines()
    key = lines[lines.index("The key (shown once, stored hashed):") + 1]
    assert len(key) >= 32 and " " not in key
    urls = [line.split()[0] for line in lines if f"/conda/{feed}" in line]
    host = server.url.removeprefix("http://")
    assert urls == [f"http://api:{key}@{host}/conda/{feed}", f"http://{host}/t/{key}/conda/{feed}"]

    assert locked.get(f"/conda/{feed}/{REPODATA}", auth=("api", key)).status_code == 200
    for url in urls:  # the printed channel URLs work as they are
        assert httpx.get(f"{url}/{REPODATA}", timeout=30).status_code == 200, url
    assert locked.get(f"/conda/{other}/{REPODATA}", auth=("api", key)).status_code == 404  # hidden, not forbidden

    entry = next(k for k in ok_json(server, "apikey", "list") if k["hint"].rstrip("…") == key[:7])
    assert entry["kind"] == "feed" and entry["feeds"] == [feed] and entry["permissions"] == ["view"]
    assert entry["status"] == "active" and entry["description"] == "CI of the feed" and "key" not in entry
    log = ok_json(server, "apikey", "log", str(entry["id"]))
    seen = {(e["method"], e["path"], e["status"]) for e in log}
    assert ("GET", f"/conda/{feed}/{REPODATA}", 200) in seen
    assert ("GET", f"/conda/{other}/{REPODATA}", 404) in seen
    assert "GET" in ok(server, "apikey", "log", str(entry["id"]))

    ok(server, "apikey", "revoke", str(entry["id"]))
    assert locked.get(f"/conda/{feed}/{REPODATA}", auth=("api", key)).status_code == 401
    assert "already revoked" in fails(server, "apikey", "revoke", str(entry["id"]))
    assert next(k for k in ok_json(server, "apikey", "list") if k["id"] == entry["id"])["status"] == "revoked"


def test_identical_requests_with_a_key_are_one_access_log_row_with_their_count(locked: Locked) -> None:
    server, feed = locked.server, locked.feed
    created = ok_json(server, "apikey", "create", "--feed", feed)
    for _ in range(20):  # a CI job revalidating: one row per flush of the log, not one per request
        assert locked.get(f"/conda/{feed}/{REPODATA}", auth=("api", created["key"])).status_code == 200
    assert locked.get(f"/conda/{feed}/nothing-here.conda", auth=("api", created["key"])).status_code == 404

    def logged() -> list[dict[str, Any]]:
        return ok_json(server, "apikey", "log", str(created["id"]))

    deadline = datetime.now(UTC) + timedelta(seconds=20)
    log = logged()
    while sum(e["count"] for e in log) < 21 and datetime.now(UTC) < deadline:
        log = logged()
    rows = [e for e in log if e["path"] == f"/conda/{feed}/{REPODATA}"]
    assert sum(e["count"] for e in rows) == 20 and all(e["status"] == 200 for e in rows)
    assert len(rows) < 20  # one row per flush of the log (every 0.2 s here) that saw any of them
    assert all(datetime.fromisoformat(e["first_at"]) <= datetime.fromisoformat(e["at"]) for e in rows)
    missing = [e for e in log if e["status"] == 404]
    assert [e["count"] for e in missing] == [1] and missing[0]["first_at"] == missing[0]["at"]
    table = ok(server, "apikey", "log", str(created["id"]))
    assert "requests" in table and all(str(e["count"]) in table for e in rows)


def test_a_key_created_with_json_on_two_feeds_with_an_expiry(locked: Locked) -> None:
    server, feed, other = locked.server, locked.feed, locked.other_feed
    created = ok_json(server, "apikey", "create", "--feed", feed, "--feed", other, "--expires", "2099-01-31")
    assert sorted(created["feeds"]) == sorted([feed, other]) and created["permissions"] == ["view"]
    assert created["expires_at"].startswith("2099-01-31T00:00:00")
    for name in (feed, other):
        assert locked.get(f"/conda/{name}/{REPODATA}", auth=("api", created["key"])).status_code == 200

    soon = (datetime.now(UTC) + timedelta(days=1)).strftime("%Y-%m-%dT%H:%M")
    assert ok_json(server, "apikey", "create", "--feed", feed, "--expires", soon)["status"] == "active"


def test_a_personal_key_with_a_typed_in_value_acts_as_its_user(locked: Locked) -> None:
    server, feed, other = locked.server, locked.feed, locked.other_feed
    user = unique("ci") + "@example.com"
    ok(server, "user", "create", user)
    ok(server, "grant", "add", f"user:{user}", "view", "--feed", other)
    typed = "typed-" + uuid.uuid4().hex
    output = ok(server, "apikey", "create", "--user", user, "--key", typed)
    assert typed in output.splitlines()
    assert "/conda/" not in output  # no feeds, no channel URLs
    assert locked.get(f"/conda/{other}/{REPODATA}", auth=("api", typed)).status_code == 200
    assert locked.get(f"/conda/{feed}/{REPODATA}", auth=("api", typed)).status_code == 404
    ok(server, "user", "delete", user)  # its keys go with it
    assert locked.get(f"/conda/{other}/{REPODATA}", auth=("api", typed)).status_code == 401


def test_a_group_grant_reaches_its_members_until_they_leave(locked: Locked) -> None:
    server, feed, other = locked.server, locked.feed, locked.other_feed
    user, group, password = unique("dev"), unique("Developers"), uuid.uuid4().hex
    ok(server, "user", "create", user, "--password-stdin", stdin=password + "\n")
    ok(server, "group", "create", group)
    ok(server, "group", "add-member", group, user)
    ok(server, "grant", "add", f"group:{group}", "view", "--feed", feed)
    assert locked.get(f"/conda/{feed}/{REPODATA}", auth=(user, password)).status_code == 200
    assert locked.get(f"/conda/{other}/{REPODATA}", auth=(user, password)).status_code == 404
    ok(server, "group", "remove-member", group, user)
    assert locked.get(f"/conda/{feed}/{REPODATA}", auth=(user, password)).status_code == 404


# admin create-key on the server's host, without a running server --------------------------------


def test_admin_create_key_on_a_stopped_servers_data_dir(tmp_path_factory: pytest.TempPathFactory) -> None:
    root = tmp_path_factory.mktemp("cli-admin")
    data_dir = root / "data"
    start_server(data_dir).stop()

    assert "not a folder" in one_line_failure(
        run_cli("admin", "create-key", "--data-dir", str(data_dir / "condagate.db"))
    )
    assert "no condagate database" in one_line_failure(run_cli("admin", "create-key", "--data-dir", str(root / "none")))
    assert not (root / "none").exists()

    result = run_cli("admin", "create-key", "--data-dir", str(data_dir))
    assert result.returncode == 0, result.stderr
    [line] = result.stdout.splitlines()
    assert line.startswith("CONDAGATE_API_KEY=")
    new_key = line.removeprefix("CONDAGATE_API_KEY=")
    assert len(new_key) >= 32 and "administrator" in result.stderr
    from_env = run_cli("admin", "create-key", "--json", extra_env={"CONDAGATE_DATA_DIR": str(data_dir)})
    assert from_env.returncode == 0, from_env.stderr
    second = json.loads(from_env.stdout)
    assert second["user"] == "admin" and second["key"] != new_key

    server = start_server(data_dir)
    try:
        for key in (new_key, second["key"], ADMIN_KEY):
            with server.client(headers={"X-API-Key": key}) as client:
                assert client.get("/api/users").status_code == 200, key
        keys = ok_json(server, "apikey", "list")
        assert sum(k["description"] == "administrator key (condagate admin create-key)" for k in keys) == 2
    finally:
        server.stop()
