"""The usual deployment: TLS at a real nginx that rewrites Host, condagate behind it."""

from __future__ import annotations

import datetime
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from servers import Server, free_port, start_server

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"


def _self_signed(directory: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_path, key_path


@pytest.fixture(scope="module")
def proxied(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, str]]:
    if not Path(NGINX).exists():
        if __import__("os").environ.get("CI"):
            pytest.fail("nginx is not installed: scripts/test installs nginx-light")
        pytest.skip("nginx is not installed here (apt-get install nginx-light)")
    work = tmp_path_factory.mktemp("proxy")
    port = free_port()
    public_url = f"https://127.0.0.1:{port}"
    server = start_server(
        work / "data",
        extra_env={"CONDAGATE_PUBLIC_URL": public_url, "CONDAGATE_TRUSTED_PROXIES": "127.0.0.2"},
    )
    cert, key = _self_signed(work)
    upstream = server.url.removeprefix("http://")
    config = work / "nginx.conf"
    config.write_text(f"""
daemon off;
worker_processes 1;
pid {work}/nginx.pid;
error_log {work}/error.log;
events {{ worker_connections 256; }}
http {{
    access_log off;
    client_body_temp_path {work}/body;
    proxy_temp_path {work}/proxy;
    fastcgi_temp_path {work}/fastcgi;
    uwsgi_temp_path {work}/uwsgi;
    scgi_temp_path {work}/scgi;
    server {{
        listen 127.0.0.1:{port} ssl;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        location / {{
            proxy_pass http://{upstream};
            proxy_bind 127.0.0.2;  # the proxy's own address: the only one condagate trusts
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto $scheme;
            proxy_set_header X-Forwarded-Host $host:$server_port;
        }}
    }}
}}
""")
    nginx = subprocess.Popen([NGINX, "-c", str(config), "-p", str(work)], stderr=subprocess.PIPE)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            if httpx.get(public_url + "/health", verify=False, timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.1)
    else:
        nginx.kill()
        server.stop()
        pytest.fail(f"nginx did not start: {(work / 'error.log').read_text(errors='replace')}")
    yield server, public_url
    nginx.terminate()
    nginx.wait(timeout=20)
    server.stop()


def _csrf(page: str) -> str:
    match = re.search(r'name="csrf_token" value="([^"]+)"', page)
    assert match, "the form carries no CSRF token"
    return match.group(1)


def test_ui_forms_work_through_a_proxy_that_rewrites_host(proxied: tuple[Server, str]):
    server, public_url = proxied
    browser_headers = {"Origin": public_url, "Sec-Fetch-Site": "same-origin"}
    with httpx.Client(base_url=public_url, verify=False, headers=browser_headers) as browser:
        logged_in = browser.post("/login", data={"api_key": server.api_key, "next": "/"})
        assert logged_in.status_code == 303, logged_in.text
        cookie = logged_in.headers["set-cookie"]
        assert "HttpOnly" in cookie and "Secure" in cookie and "samesite=lax" in cookie.lower()
        assert server.api_key not in cookie  # the cookie holds a session id, never the key
        wizard = browser.get("/feeds/new")
        assert wizard.status_code == 200
        created = browser.post(
            "/feeds/new", data={"name": "behind-proxy", "kind": "hosted", "csrf_token": _csrf(wizard.text)}
        )
        assert created.status_code == 303, created.text
        assert created.headers["location"].endswith("/feeds/behind-proxy")
        forged = browser.post(
            "/feeds/new",
            data={"name": "forged", "kind": "hosted", "csrf_token": _csrf(wizard.text)},
            headers={"Origin": "https://evil.example", "Sec-Fetch-Site": "cross-site"},
        )
        assert forged.status_code == 403
        no_token = browser.post("/feeds/new", data={"name": "no-token", "kind": "hosted"})
        assert no_token.status_code == 403
    with server.admin() as admin:
        names = [feed["name"] for feed in admin.get("/api/feeds").json()]
    assert "behind-proxy" in names and "forged" not in names and "no-token" not in names


def test_client_address_comes_from_the_trusted_proxy_only(proxied: tuple[Server, str]):
    """nginx connects from 127.0.0.2 (trusted) and appends the real peer (127.0.0.1) to
    X-Forwarded-For: condagate logs that peer, never the proxy and never what a client wrote."""
    server, public_url = proxied
    with httpx.Client(base_url=public_url, verify=False) as through_proxy:
        assert through_proxy.get("/api/me", headers={"X-Forwarded-For": "198.51.100.7"}).status_code == 200
    with server.client() as direct:  # not through the proxy: the header is not believed
        assert direct.get("/api/me", headers={"X-Forwarded-For": "198.51.100.8"}).status_code == 200
    time.sleep(0.3)
    lines = [line for line in server.log().splitlines() if '"path": "/api/me"' in line]
    assert len(lines) == 2
    assert all('"client": "127.0.0.1"' in line for line in lines), lines
