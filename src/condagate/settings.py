"""One settings model: each field has a CLI flag and a ``CONDAGATE_*`` environment variable of the same name."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

import platformdirs

DEFAULT_PORT = 8624
ENV_PREFIX = "CONDAGATE_"


def default_data_dir() -> Path:
    return Path(platformdirs.user_data_dir("condagate", appauthor=False))


@dataclass(frozen=True)
class Settings:
    data_dir: Path = field(default_factory=default_data_dir)
    database_url: str = ""
    storage_url: str = ""
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    admin_api_key: str = ""
    max_upload_bytes: int = 4 * 1024**3
    download_flush_seconds: float = 2.0
    # Upstream files up to this size are verified before the first byte goes out (a mismatch is a
    # clean 502); larger ones stream to the client while they download.
    proxy_verify_before_send_bytes: int = 8 * 1024 * 1024
    # Proxy feeds: see README "Proxy an upstream channel".
    upstream_concurrency: int = 2  # fetches of repodata running at once per connector
    upstream_backoff_seconds: float = 30.0  # after a failed fetch, no new one for this long (doubling)
    upstream_max_backoff_seconds: float = 600.0
    revalidate_wait_seconds: float = 0.5  # lifetime 0: how long a request waits for the revalidation
    proxy_max_inflight_bytes: int = 8 * 1024**3  # upstream files being downloaded at once, per connector
    log_level: str = "info"
    workers: int = 1
    # Security: see docs/security.md.
    security_refresh_seconds: float = 1.0  # how soon other processes see a change to grants or keys
    max_body_bytes: int = 1024 * 1024  # JSON and form bodies; only upload routes take more
    body_timeout_seconds: float = 20.0  # a JSON or form body must arrive whole within this time
    upload_idle_seconds: float = 60.0  # an upload that sends nothing for this long is cut
    public_url: str = ""  # e.g. https://conda.example.com when a reverse proxy serves condagate
    trusted_proxies: str = ""  # addresses whose X-Forwarded-For / -Proto are believed (comma-separated)
    metrics_allow: str = ""  # addresses and CIDR ranges that may read /metrics without a key (comma-separated)
    secret_key: str = ""  # encrypts upstream credentials; default: DATA_DIR/secret.key
    session_hours: float = 12.0
    failed_auth_limit: int = 20  # wrong keys or passwords per client address and minute before 429
    max_connections: int = 10000  # concurrent requests per worker (bounded by the open-file limit)
    header_timeout_seconds: float = 5.0  # a request's line and headers must arrive within this time
    access_log_days: int = 90
    # The channel fast lane (web.fast_lane): "off" sends every channel request through the routes.
    fast_lane: str = "on"
    # PostgreSQL: what this process read is trusted at most this long while its change listener cannot
    # vouch for other replicas' changes (README "Configuration"); "off": no listener, always this bound.
    change_max_age_seconds: float = 0.1
    change_listener: str = "on"
    # Behind nginx: package downloads answer X-Accel-Redirect: ACCEL_REDIRECT/<blob path> (README).
    accel_redirect: str = ""
    sendfile_header: str = ""  # e.g. X-Sendfile: the blob's absolute path, for other front servers
    # S3 storage: "on" answers package downloads with a 302 to a presigned URL valid this long (README).
    s3_redirect: str = "off"
    s3_redirect_seconds: int = 300

    @property
    def presigned_redirects(self) -> bool:
        return self.s3_redirect.strip().lower() in ("1", "on", "true", "yes")

    @property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{self.data_dir / 'condagate.db'}"

    @property
    def resolved_storage_url(self) -> str:
        return self.storage_url or str(self.data_dir / "blobs")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: object) -> Settings:
        environ = os.environ if environ is None else environ
        values: dict[str, object] = {}
        for name, spec in cls.__dataclass_fields__.items():
            raw = environ.get(ENV_PREFIX + name.upper())
            if raw is None or raw == "":
                continue
            kind = spec.type
            if kind == "Path":
                values[name] = Path(raw).expanduser()
            elif kind == "int":
                values[name] = int(raw)
            elif kind == "float":
                values[name] = float(raw)
            else:
                values[name] = raw
        settings = cls(**values)  # type: ignore[arg-type]
        return replace(settings, **{k: v for k, v in overrides.items() if v is not None})  # type: ignore[arg-type]

    def to_env(self) -> dict[str, str]:
        """The environment that reproduces these settings in a server worker process."""
        return {ENV_PREFIX + name.upper(): str(getattr(self, name)) for name in self.__dataclass_fields__}
