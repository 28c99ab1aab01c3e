"""A feed anonymous users cannot read, installed from by a real client (py-rattler) with every credential
form conda clients use: basic auth in the URL (a feed key, and a user name with an ``@`` and its password),
conda's ``/t/TOKEN/`` path, rattler's authentication file and a ``.netrc``.

What rattler does with credentials (rattler_networking; checked against py-rattler 0.28):

* ``rattler.Gateway()`` and ``rattler.install()`` without ``client=`` use a bare HTTP client with no
  authentication middleware: only credentials in the URL itself (``user:password@`` or ``/t/TOKEN/``) are
  sent. The authentication file, the keyring, ``~/.rattler/credentials.json`` and ``.netrc`` are only read
  by a client built with ``rattler.Client.default_client()`` (``AuthenticationMiddleware``), and they are
  read once, when that client is built (``AuthenticationStorage::from_env_and_defaults``).
* Backends in order: the JSON file named by ``RATTLER_AUTH_FILE``, the keyring, ``$HOME/.rattler/
  credentials.json``, then ``$NETRC`` (else ``$HOME/.netrc``).
* The JSON file maps a host to ``{"BearerToken": KEY}``, ``{"CondaToken": KEY}`` (inserted as ``/t/KEY/``)
  or ``{"BasicHTTP": {"username": ..., "password": ...}}``. The lookup key is the URL's host alone, without
  the port (``url.host_str()``): ``"127.0.0.1"`` matches ``http://127.0.0.1:PORT/...``,
  ``"127.0.0.1:PORT"`` never does; ``*.domain`` wildcards apply to domain names only, not IP addresses.
  The same goes for ``.netrc``: ``machine 127.0.0.1``, not ``machine 127.0.0.1:PORT``.
* Credentials found in storage are not used when the request already has an ``Authorization`` header.
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import pytest
import rattler

from package_factory import PackageSpec, write_package
from servers import Server, start_server

HOST = "127.0.0.1"
USER = "alice@example.com"
# ':' '/' '@' and '%' all need percent-encoding in a URL; ':' also tests that the server splits Basic
# credentials at the first colon only.
PASSWORD = "correct:horse/battery@staple%42"
KEY_PATTERN = re.compile(r"[A-Za-z0-9-]+")  # conda's /t/TOKEN/ pattern is /t/([a-zA-Z0-9-]*)
APP = "secret-app"
LIB = "libsecret"
EXPECTED = sorted([f"{APP}=1.0=py_0", f"{LIB}=2.0=h0_0"])


@dataclass
class Setup:
    server: Server
    feed: str
    other_feed: str
    feed_key: str
    other_feed_key: str
    personal_key: str
    lib_filename: str

    @property
    def port(self) -> int:
        return int(self.server.url.rsplit(":", 1)[1])

    @property
    def channel(self) -> str:
        return f"{self.server.url}/conda/{self.feed}"


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    """A server of this module's own (the shared one must keep its anonymous grant) with the system-wide
    anonymous view grant removed, a feed holding two packages, a user, and keys."""
    root = tmp_path_factory.mktemp("client-credentials")
    server = start_server(root / "data")
    try:
        yield _populate(server, root)
    finally:
        server.stop()


def _populate(server: Server, root: Path) -> Setup:
    feed = "private-" + uuid.uuid4().hex[:8]
    other_feed = "other-" + uuid.uuid4().hex[:8]
    lib = write_package(root, PackageSpec(LIB, "2.0", "h0_0", subdir="linux-64"), ".tar.bz2")
    app = write_package(root, PackageSpec(APP, "1.0", "py_0", depends=[f"{LIB} >=2"]), ".conda")
    with server.admin() as admin:
        removed = admin.delete("/api/grants", params={"principal": "anonymous", "permission": "view"})
        assert removed.status_code == 204, removed.text
        for name in (feed, other_feed):
            created = admin.post("/api/feeds", json={"name": name})
            assert created.status_code == 201, created.text
        for path in (lib, app):
            uploaded = admin.post(f"/api/feeds/{feed}/upload/{path.name}", content=path.read_bytes())
            assert uploaded.status_code == 201, uploaded.text
        user = admin.post("/api/users", json={"name": USER, "password": PASSWORD})
        assert user.status_code == 201, user.text
        grant = admin.post("/api/grants", json={"principal": f"user:{USER}", "permission": "view", "feed": feed})
        assert grant.status_code == 201, grant.text
        keys = []
        for body in ({"feeds": [feed], "permissions": ["view"]},
                     {"feeds": [other_feed], "permissions": ["view"]},
                     {"user": USER}):
            response = admin.post("/api/apikeys", json=body)
            assert response.status_code == 201, response.text
            keys.append(response.json()["key"])
    return Setup(server, feed, other_feed, *keys, lib_filename=lib.name)


@pytest.fixture
def isolated_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No credentials of the machine's user (``~/.netrc``, ``~/.rattler``, an auth file) leak into a test."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("RATTLER_AUTH_FILE", raising=False)
    monkeypatch.delenv("NETRC", raising=False)
    return home


def install(channel: str, prefix: Path, *, storage: bool = False, sharded: bool = False) -> list[str]:
    """Solve and install ``secret-app`` with py-rattler; ``storage``: with the client that reads rattler's
    credential storage (auth file, ~/.rattler, .netrc), built now so it sees the current environment."""

    async def run() -> list[str]:
        client = rattler.Client.default_client() if storage else None
        gateway = rattler.Gateway(
            cache_dir=tempfile.mkdtemp(prefix="rattler-cache-"),
            default_config=rattler.SourceConfig(sharded_enabled=sharded),
            client=client,
        )
        records = await rattler.solve([channel], [APP], platforms=["linux-64", "noarch"], gateway=gateway)
        await rattler.install(records, target_prefix=prefix, cache_dir=Path(tempfile.mkdtemp(prefix="pkgs-")),
                              client=client)
        return sorted(f"{r.name.normalized}={r.version}={r.build}" for r in records)

    return asyncio.run(run())


def assert_installed(installed: list[str], prefix: Path) -> None:
    assert installed == EXPECTED
    assert (prefix / "share" / LIB / "README.txt").read_text() == f"{LIB} 2.0\n"
    assert (prefix / "conda-meta" / f"{APP}-1.0-py_0.json").is_file()


def with_userinfo(url: str, user: str, password: str) -> str:
    scheme, rest = url.split("://", 1)
    return f"{scheme}://{quote(user, safe='')}:{quote(password, safe='')}@{rest}"


def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


# 1. No credentials


def test_generated_keys_fit_condas_token_pattern(setup: Setup):
    for key in (setup.feed_key, setup.other_feed_key, setup.personal_key):
        assert KEY_PATTERN.fullmatch(key), key
    assert len({setup.feed_key, setup.other_feed_key, setup.personal_key}) == 3


@pytest.mark.parametrize(
    "path",
    ["noarch/repodata.json", "linux-64/repodata.json", "noarch/repodata.json.zst", "channeldata.json",
     "noarch/repodata_shards.msgpack.zst", "linux-64/{lib}"],
)
def test_anonymous_requests_are_asked_for_credentials(setup: Setup, path: str):
    with setup.server.client() as client:
        response = client.get(f"/conda/{setup.feed}/" + path.format(lib=setup.lib_filename))
    assert response.status_code == 401, response.text
    assert response.headers["www-authenticate"].startswith("Basic ")


def test_anonymous_cannot_tell_a_hidden_feed_from_a_missing_one(setup: Setup):
    with setup.server.client() as client:
        hidden = client.get(f"/conda/{setup.feed}/noarch/repodata.json")
        missing = client.get("/conda/no-such-feed-here/noarch/repodata.json")
    assert hidden.status_code == missing.status_code == 401
    assert hidden.headers["www-authenticate"] == missing.headers["www-authenticate"]


def test_rattler_without_credentials_fails(setup: Setup, isolated_home: Path, tmp_path: Path):
    with pytest.raises(Exception, match="401"):
        install(setup.channel, tmp_path / "env", storage=True)
    assert not (tmp_path / "env" / "conda-meta").exists()


# 2. py-rattler installs with each credential form


@pytest.mark.parametrize("sharded", [False, True], ids=["repodata", "sharded"])
def test_rattler_installs_with_a_feed_key_as_basic_auth_in_the_url(setup: Setup, isolated_home: Path,
                                                                   tmp_path: Path, sharded: bool):
    channel = with_userinfo(setup.channel, "api", setup.feed_key)
    assert_installed(install(channel, tmp_path / "env", sharded=sharded), tmp_path / "env")


@pytest.mark.parametrize("sharded", [False, True], ids=["repodata", "sharded"])
def test_rattler_installs_with_a_conda_token_in_the_path(setup: Setup, isolated_home: Path, tmp_path: Path,
                                                         sharded: bool):
    channel = f"{setup.server.url}/t/{setup.feed_key}/conda/{setup.feed}"
    assert_installed(install(channel, tmp_path / "env", sharded=sharded), tmp_path / "env")


@pytest.mark.parametrize("sharded", [False, True], ids=["repodata", "sharded"])
def test_rattler_installs_with_a_user_name_and_password_in_the_url(setup: Setup, isolated_home: Path,
                                                                   tmp_path: Path, sharded: bool):
    channel = with_userinfo(setup.channel, USER, PASSWORD)
    assert channel.startswith(f"http://alice%40example.com:correct%3Ahorse%2Fbattery%40staple%2542@{HOST}:")
    assert_installed(install(channel, tmp_path / "env", sharded=sharded), tmp_path / "env")


def test_rattler_installs_with_a_personal_key_as_a_conda_token(setup: Setup, isolated_home: Path, tmp_path: Path):
    channel = f"{setup.server.url}/t/{setup.personal_key}/conda/{setup.feed}"
    assert_installed(install(channel, tmp_path / "env"), tmp_path / "env")


@pytest.mark.parametrize(
    "entry",
    [
        lambda s: {"BearerToken": s.feed_key},
        lambda s: {"CondaToken": s.feed_key},
        lambda s: {"BasicHTTP": {"username": USER, "password": PASSWORD}},
    ],
    ids=["bearer-token", "conda-token", "basic-http-user"],
)
@pytest.mark.parametrize("sharded", [False, True], ids=["repodata", "sharded"])
def test_rattler_installs_with_credentials_from_its_auth_file(setup: Setup, isolated_home: Path, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch, entry, sharded: bool):
    auth_file = tmp_path / "credentials.json"
    # rattler looks credentials up by the URL's host without the port.
    auth_file.write_text(json.dumps({HOST: entry(setup)}))
    monkeypatch.setenv("RATTLER_AUTH_FILE", str(auth_file))
    assert_installed(install(setup.channel, tmp_path / "env", storage=True, sharded=sharded), tmp_path / "env")


def test_rattler_auth_file_with_a_wrong_key_fails(setup: Setup, isolated_home: Path, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch):
    auth_file = tmp_path / "credentials.json"
    auth_file.write_text(json.dumps({HOST: {"BearerToken": "cg-not-a-key-" + uuid.uuid4().hex}}))
    monkeypatch.setenv("RATTLER_AUTH_FILE", str(auth_file))
    with pytest.raises(Exception, match="401"):
        install(setup.channel, tmp_path / "env", storage=True)


def test_rattler_installs_with_a_feed_key_from_the_netrc_named_by_NETRC(
        setup: Setup, isolated_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    netrc = tmp_path / "netrc"
    netrc.write_text(f"machine {HOST}\nlogin api\npassword {setup.feed_key}\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))
    assert_installed(install(setup.channel, tmp_path / "env", storage=True), tmp_path / "env")


def test_rattler_installs_with_a_user_and_password_from_home_netrc(setup: Setup, isolated_home: Path,
                                                                   tmp_path: Path):
    netrc = isolated_home / ".netrc"
    netrc.write_text(f'machine {HOST}\nlogin {USER}\npassword {PASSWORD}\n')
    netrc.chmod(0o600)
    assert_installed(install(setup.channel, tmp_path / "env", storage=True), tmp_path / "env")


# 3. Keys for another feed, wrong keys


def test_a_key_for_another_feed_sees_this_feed_as_missing(setup: Setup):
    headers = {"X-API-Key": setup.other_feed_key}
    with setup.server.client(headers=headers) as client:
        own = client.get(f"/conda/{setup.other_feed}/noarch/repodata.json")
        hidden = client.get(f"/conda/{setup.feed}/noarch/repodata.json")
        hidden_file = client.get(f"/conda/{setup.feed}/linux-64/{setup.lib_filename}")
        missing = client.get("/conda/no-such-feed-here/noarch/repodata.json")
    assert own.status_code == 200, own.text
    assert hidden.status_code == 404, hidden.text
    assert hidden_file.status_code == 404, hidden_file.text
    assert missing.status_code == 404, missing.text
    assert "www-authenticate" not in hidden.headers
    hidden_body = hidden.text.replace(setup.feed, "FEED")
    missing_body = missing.text.replace("no-such-feed-here", "FEED")
    assert hidden_body == missing_body


def test_rattler_with_a_key_for_another_feed_fails(setup: Setup, isolated_home: Path, tmp_path: Path):
    with pytest.raises(Exception, match="404"):
        install(with_userinfo(setup.channel, "api", setup.other_feed_key), tmp_path / "env")
    with pytest.raises(Exception, match="404"):
        install(f"{setup.server.url}/t/{setup.other_feed_key}/conda/{setup.feed}", tmp_path / "env2")


@pytest.mark.parametrize(
    "headers",
    [
        lambda key: {"X-API-Key": key},
        lambda key: basic("api", key),
        lambda key: basic(USER, "not-" + PASSWORD),
    ],
    ids=["x-api-key", "basic-key", "basic-wrong-password"],
)
def test_wrong_credentials_are_refused_with_401(setup: Setup, headers):  # type: ignore[no-untyped-def]
    wrong = "cg-wrong-" + uuid.uuid4().hex
    with setup.server.client(headers=headers(wrong)) as client:
        response = client.get(f"/conda/{setup.feed}/noarch/repodata.json")
    assert response.status_code == 401, response.text
    assert response.headers["www-authenticate"].startswith("Basic ")
    with setup.server.client() as client:
        token = client.get(f"/t/{wrong}/conda/{setup.feed}/noarch/repodata.json")
    assert token.status_code == 401, token.text


# 4. Raw HTTP forms


@pytest.mark.parametrize(
    "request_for",
    [
        lambda s: ({"X-API-Key": s.feed_key}, ""),
        lambda s: ({"X-ApiKey": s.feed_key}, ""),
        lambda s: ({"Authorization": f"Bearer {s.feed_key}"}, ""),
        lambda s: (basic("api", s.feed_key), ""),
        lambda s: (basic(USER, PASSWORD), ""),
        lambda s: ({}, f"/t/{s.feed_key}"),
        lambda s: ({"Authorization": f"Bearer {s.personal_key}"}, ""),
    ],
    ids=["x-api-key", "x-apikey", "bearer", "basic-key", "basic-user-password", "conda-token", "personal-key"],
)
def test_every_credential_form_reads_the_private_feed(setup: Setup, request_for):  # type: ignore[no-untyped-def]
    headers, prefix = request_for(setup)
    with setup.server.client(headers=headers) as client:
        response = client.get(f"{prefix}/conda/{setup.feed}/noarch/repodata.json")
        package = client.get(f"{prefix}/conda/{setup.feed}/linux-64/{setup.lib_filename}")
    assert response.status_code == 200, response.text
    assert sorted(record["name"] for record in response.json()["packages.conda"].values()) == [APP]
    assert package.status_code == 200, package.text
    assert package.content.startswith(b"BZh")
