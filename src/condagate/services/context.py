"""Everything a use case needs, built once from settings by the app factory (nothing at import time)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from condagate.security import secretbox
from condagate.security.ratelimit import FailureLimiter
from condagate.security.secretbox import SecretBox
from condagate.services.access_control import AccessControl
from condagate.services.access_recorder import AccessRecorder
from condagate.services.downloads import DownloadCounter
from condagate.services.encoded_files import EncodedFiles
from condagate.services.lookups import RecentLookups
from condagate.services.repodata_cache import RepodataCache
from condagate.services.shard_files import ShardFiles
from condagate.services.upstream_state import SharedUpstreamState
from condagate.settings import Settings
from condagate.store import connectors as connector_store
from condagate.store.blobs import BlobStore, open_blob_store
from condagate.store.change_signal import ChangeSignal
from condagate.store.db import Database, migrate
from condagate.store.locks import Locks, open_locks
from condagate.store.pg_listener import start_listener
from condagate.upstream.repodata_cache import UpstreamRepodataCache


@dataclass
class Services:
    settings: Settings
    db: Database
    blobs: BlobStore
    locks: Locks  # cross-process (and, on PostgreSQL, cross-replica) named locks
    repodata: RepodataCache
    encoded_files: EncodedFiles  # this host's files of large subdirs' JSON, served with pathsend
    upstream: UpstreamRepodataCache
    downloads: DownloadCounter
    http: httpx.Client
    http_async: httpx.AsyncClient
    lookups: RecentLookups
    changes: ChangeSignal  # bumped after every commit that changes what a channel serves
    access: AccessControl
    access_log: AccessRecorder
    failed_logins: FailureLimiter  # per client address: wrong keys and passwords
    failed_user_logins: FailureLimiter  # per user name: wrong passwords

    @classmethod
    def open(
        cls, settings: Settings, transport: Any = None, async_transport: Any = None, migrated: bool = False
    ) -> Services:
        """Build every service; tests may inject httpx transports for the upstream connections.
        ``migrated``: the schema is known to be current (``serve`` migrated before starting workers)."""
        settings.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        settings.data_dir.chmod(0o700)  # it holds the database and the key of upstream credentials
        db = Database(settings.resolved_database_url)
        locks = open_locks(settings.resolved_database_url, db.engine, settings.data_dir)
        if not migrated:
            with locks.held("migrations"):  # replicas starting together migrate one after the other
                migrate(db.engine)
        sqlite = settings.resolved_database_url.startswith("sqlite")
        changes = ChangeSignal(
            settings.data_dir / "run" / "changes", max_age=None if sqlite else settings.change_max_age_seconds
        )
        db.on_commit = changes.bump
        _owner_only(settings.resolved_database_url)
        secretbox.install(SecretBox.from_settings(settings.secret_key, settings.data_dir / "secret.key"))
        access = AccessControl(db, settings.security_refresh_seconds)
        access.reload()
        instance = _instance_id(settings.data_dir)
        blobs = open_blob_store(settings.resolved_storage_url, settings.data_dir / "tmp", instance)
        user_agent = {"User-Agent": "condagate (conda proxy)"}
        http = httpx.Client(follow_redirects=True, transport=transport, headers=user_agent)
        http_async = httpx.AsyncClient(follow_redirects=True, transport=async_transport, headers=user_agent)

        def record_health(**fields: Any) -> None:
            with db.write(quiet=True) as session:
                connector_store.record_health(session=session, **fields)

        def record_listing(connector_id: int, subdir: str, listed: set[str]) -> None:
            with db.write() as session:
                connector_store.mark_removed_upstream(
                    session=session, connector_id=connector_id, subdir=subdir, listed=listed
                )

        upstream = UpstreamRepodataCache(
            settings.data_dir / "upstream",  # this host's copies; the shared state is the truth
            http,
            record_health,
            shared=SharedUpstreamState(db, blobs, locks),
            record_listing=record_listing,
            concurrency=settings.upstream_concurrency,
            backoff_seconds=settings.upstream_backoff_seconds,
            max_backoff_seconds=settings.upstream_max_backoff_seconds,
            revalidate_wait_seconds=settings.revalidate_wait_seconds,
        )
        if not sqlite and settings.change_listener != "off":
            start_listener(changes, db.engine)  # other replicas' commits; stopped by changes.close()
        return cls(
            settings=settings,
            db=db,
            blobs=blobs,
            locks=locks,
            repodata=RepodataCache(db, upstream, ShardFiles(settings.data_dir / "encoded" / "shards")),
            encoded_files=EncodedFiles(settings.data_dir / "encoded"),
            upstream=upstream,
            downloads=DownloadCounter(db),
            http=http,
            http_async=http_async,
            lookups=RecentLookups(changes),
            changes=changes,
            access=access,
            access_log=AccessRecorder(db, settings.access_log_days),
            failed_logins=FailureLimiter(settings.failed_auth_limit, 60.0),
            failed_user_logins=FailureLimiter(10, 900.0),
        )

    def flush(self) -> None:
        """Write what is counted in memory: downloads, the access log, keys' last use."""
        self.downloads.flush()
        self.access_log.flush(self.access.take_last_used())

    def close(self) -> None:
        self.repodata.close()
        self.upstream.close()
        self.flush()
        self.http.close()
        self.db.dispose()
        self.changes.close()


def _instance_id(data_dir: Path) -> str:
    """This server's name among replicas (made at its first start, kept in its data folder)."""
    path = data_dir / "instance-id"
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        import secrets

        instance = secrets.token_hex(4)
        path.write_text(instance + "\n")
        return instance


def _owner_only(database_url: str) -> None:
    """The SQLite file holds password and key hashes: readable by condagate's user alone."""
    if database_url.startswith("sqlite:///"):
        path = Path(database_url.removeprefix("sqlite:///"))
        for candidate in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
            if candidate.exists():
                candidate.chmod(0o600)
