"""Everything a use case needs, built once from settings by the app factory (nothing at import time)."""

from __future__ import annotations

from dataclasses import dataclass

from condagate.services.downloads import DownloadCounter
from condagate.services.repodata_cache import RepodataCache
from condagate.settings import Settings
from condagate.store.blobs import LocalBlobStore, open_blob_store
from condagate.store.db import Database, migrate


@dataclass
class Services:
    settings: Settings
    db: Database
    blobs: LocalBlobStore
    repodata: RepodataCache
    downloads: DownloadCounter

    @classmethod
    def open(cls, settings: Settings) -> Services:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        db = Database(settings.resolved_database_url)
        migrate(db.engine)
        blobs = open_blob_store(settings.resolved_storage_url)
        blobs.clean_temp_files()
        return cls(
            settings=settings,
            db=db,
            blobs=blobs,
            repodata=RepodataCache(db),
            downloads=DownloadCounter(db),
        )

    def close(self) -> None:
        self.downloads.flush()
        self.db.dispose()
