"""Everything a use case needs, built once from settings by the app factory (nothing at import time)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from condagate.services.downloads import DownloadCounter
from condagate.services.lookups import RecentLookups
from condagate.services.repodata_cache import RepodataCache
from condagate.settings import Settings
from condagate.store import connectors as connector_store
from condagate.store.blobs import LocalBlobStore, open_blob_store
from condagate.store.db import Database, migrate
from condagate.upstream.repodata_cache import UpstreamRepodataCache


@dataclass
class Services:
    settings: Settings
    db: Database
    blobs: LocalBlobStore
    repodata: RepodataCache
    upstream: UpstreamRepodataCache
    downloads: DownloadCounter
    http: httpx.Client
    http_async: httpx.AsyncClient
    lookups: RecentLookups

    @classmethod
    def open(cls, settings: Settings, transport: Any = None, async_transport: Any = None) -> Services:
        """Build every service; tests may inject httpx transports for the upstream connections."""
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        db = Database(settings.resolved_database_url)
        migrate(db.engine)
        blobs = open_blob_store(settings.resolved_storage_url)
        user_agent = {"User-Agent": "condagate (conda proxy)"}
        http = httpx.Client(follow_redirects=True, transport=transport, headers=user_agent)
        http_async = httpx.AsyncClient(follow_redirects=True, transport=async_transport, headers=user_agent)

        def record_health(**fields: Any) -> None:
            with db.write() as session:
                connector_store.record_health(session=session, **fields)

        upstream = UpstreamRepodataCache(settings.data_dir / "upstream", http, record_health)
        return cls(
            settings=settings,
            db=db,
            blobs=blobs,
            repodata=RepodataCache(db, upstream),
            upstream=upstream,
            downloads=DownloadCounter(db),
            http=http,
            http_async=http_async,
            lookups=RecentLookups(),
        )

    @property
    def locks_dir(self) -> Path:
        return self.settings.data_dir / "locks"

    def close(self) -> None:
        self.downloads.flush()
        self.http.close()
        self.db.dispose()
