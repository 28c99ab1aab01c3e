"""The last good repodata of each connector subdir, kept where every replica finds it.

The truth is shared (``SharedState``, built by the services over the database and the blob store): per
connector subdir, the blob of the body as kept (repodata.json.zst), the ETag and Last-Modified the
upstream sent with it, when it arrived and was last validated, and condagate's note of the records the
checks dropped or rewrote, bound to the fingerprint of the code of the checks. The note lets any
replica read the body again without checking every record (``reload_checked_repodata``); it applies to
the blob's bytes only, which are hashed when read.

A copy of the body in this host's data folder (DATA_DIR/upstream/CONNECTOR_ID/SUBDIR/repodata.json.zst)
saves reading it from the blob store at every start; it is used only when its sha256 is the row's.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from condagate.conda.upstream_repodata import UpstreamRecords, checks_fingerprint
from condagate.conda.upstream_stream import parse_document, reload_checked_document
from condagate.errors import CondagateError
from condagate.upstream.connector import ConnectorConfig
from condagate.upstream.repodata_fetch import ZstdDocument

log = logging.getLogger(__name__)

LOCAL_NAME = "repodata.json.zst"
_LEGACY = ("meta.json", "checked.json")  # what versions before the shared state kept next to the copy


@dataclass(frozen=True)
class KeptState:
    """What the shared state says of one connector subdir's kept repodata."""

    url: str  # the connector's address it was fetched from
    sha256: str  # the blob: the body as kept (zstd)
    size: int
    etag: str
    last_modified: str
    fetched_at: float  # time.time() the body arrived
    validated_at: float  # time.time() of its last 200 or 304
    checks: str  # checks_fingerprint() the note was made with ("" for none)
    not_as_written: frozenset[str] | None  # the note: records dropped or rewritten; None: unknown


class SharedState(Protocol):
    """The rows and blobs of the kept repodata, shared by replicas (``services.upstream_state``)."""

    def read(self, connector_id: int, subdir: str) -> KeptState | None: ...

    def read_body(self, sha256: str) -> bytes | None: ...

    def store_body(self, compressed: bytes) -> str:
        """Put the body in the blob store; its sha256."""

    def save(self, connector_id: int, subdir: str, state: KeptState, compressed: bytes) -> None:
        """Make ``state`` the row (storing the body again if its blob is gone); delete the blob it replaces
        when nothing else uses it."""

    def validated(self, connector_id: int, subdir: str, sha256: str, at: float) -> None: ...

    def note(
        self, connector_id: int, subdir: str, sha256: str, checks: str, not_as_written: frozenset[str] | None
    ) -> None: ...

    def subdirs(self, connector_id: int) -> list[str]: ...

    def remove(self, connector_id: int) -> None:
        """Drop the connector's rows and the blobs nothing else uses."""

    def fetching(self, connector_id: int, subdir: str) -> contextlib.AbstractContextManager[None]:
        """Held while a process asks the upstream for the subdir's repodata: one asks at a time over
        every process (and replica) sharing the state; the next finds what it kept."""


class KeptCopies:
    def __init__(self, root: Path, shared: SharedState) -> None:
        self._root = root
        self._shared = shared
        self._writer = ThreadPoolExecutor(2, thread_name_prefix="upstream-keep")
        # This host's copies, one at a time in the order kept (never behind the shared stores above).
        self._local_writer = ThreadPoolExecutor(1, thread_name_prefix="upstream-local-copy")
        self._legacy_tried: set[tuple[int, str]] = set()

    def close(self) -> None:
        self._writer.shutdown(wait=False, cancel_futures=True)
        self._local_writer.shutdown(wait=False, cancel_futures=True)

    def _folder(self, connector_id: int, subdir: str) -> Path:
        return self._root / str(connector_id) / subdir

    def read(self, connector: ConnectorConfig, subdir: str) -> KeptState | None:
        """The shared state of the subdir, if it is from the connector's current address."""
        try:
            state = self._shared.read(connector.id, subdir)
        except Exception:  # the database is down: serve what memory holds, fetch as if nothing were kept
            log.exception("could not read the kept state of %s/%s", connector.name, subdir)
            return None
        if state is None:
            return self._import_legacy(connector, subdir)
        return state if state.url == connector.url else None

    def records(self, connector: ConnectorConfig, subdir: str, state: KeptState) -> UpstreamRecords | None:
        """The kept body's records: without checking each again when the note is for these very bytes
        and this very code; None when the body cannot be read."""
        try:
            compressed, digest = self._body(connector, subdir, state)
            if compressed is None:
                return None
            document = ZstdDocument(compressed)
            fingerprint = checks_fingerprint()
            parsed = None
            noted = state.not_as_written
            if digest == state.sha256 and fingerprint and state.checks == fingerprint and noted is not None:
                parsed = reload_checked_document(document, noted, connector.name_filter)
            if parsed is None:
                parsed = parse_document(document, connector.name_filter)
                if digest == state.sha256:
                    self._note(connector, subdir, state.sha256, parsed.not_as_written)
            return parsed
        except (OSError, ValueError, CondagateError) as exc:
            log.warning("the kept repodata of %s/%s is unusable: %s", connector.name, subdir, exc)
            return None
        except Exception:
            log.exception("could not read the kept repodata of %s/%s", connector.name, subdir)
            return None

    def _note(
        self, connector: ConnectorConfig, subdir: str, sha256: str, not_as_written: frozenset[str] | None
    ) -> None:
        """The note of a body read with every record checked (the checks changed, or there was none)."""
        fingerprint = checks_fingerprint() if not_as_written is not None else ""
        try:
            self._shared.note(connector.id, subdir, sha256, fingerprint, not_as_written if fingerprint else None)
        except Exception as exc:  # only how fast the next load is depends on it
            log.warning("could not note the checked records of %s/%s: %s", connector.name, subdir, exc)

    def _body(self, connector: ConnectorConfig, subdir: str, state: KeptState) -> tuple[bytes | None, str]:
        """The body's bytes and their sha256: this host's copy when it is the row's, else the blob's."""
        local = self._folder(connector.id, subdir) / LOCAL_NAME
        with contextlib.suppress(OSError):
            compressed = local.read_bytes()
            digest = hashlib.sha256(compressed).hexdigest()
            if digest == state.sha256:
                return compressed, digest
        found = self._shared.read_body(state.sha256)
        if found is None:
            log.warning("the kept repodata of %s/%s is missing from the blob store", connector.name, subdir)
            return None, ""
        digest = hashlib.sha256(found).hexdigest()
        if digest == state.sha256:
            self._write_local(connector.id, subdir, found)
        else:  # not the bytes condagate kept: served only after every record is checked again
            log.warning("the kept repodata blob of %s/%s has other bytes than its name", connector.name, subdir)
        return found, digest

    def store_early(self, compressed: bytes) -> Future[str]:
        """Start putting a fetched body in the blob store while its records are checked."""
        return self._writer.submit(self._store, compressed)

    def _store(self, compressed: bytes) -> str:
        return self._shared.store_body(compressed)

    def keep(
        self,
        connector: ConnectorConfig,
        subdir: str,
        compressed: bytes,
        stored: Future[str] | None,
        *,
        etag: str,
        last_modified: str,
        fetched_at: float,
        not_as_written: frozenset[str] | None,
    ) -> str:
        """Make a fetched body the kept one for every replica; its sha256, or "" when it could not be kept
        (then the previous state stays: what memory holds is served all the same)."""
        sha256 = ""
        try:
            if stored is not None:
                with contextlib.suppress(Exception):  # stored again under the lock below
                    sha256 = stored.result()
            sha256 = sha256 or hashlib.sha256(compressed).hexdigest()
            fingerprint = checks_fingerprint() if not_as_written is not None else ""
            state = KeptState(
                connector.url, sha256, len(compressed), etag, last_modified, fetched_at, fetched_at,
                fingerprint, not_as_written if fingerprint else None,
            )
            self._shared.save(connector.id, subdir, state, compressed)
        except Exception as exc:
            log.warning("could not keep the repodata of %s/%s for other replicas: %s", connector.name, subdir, exc)
            return ""
        # This host's copy only makes the next start faster: written after the answer, not before it.
        self._local_writer.submit(self._write_local, connector.id, subdir, compressed)
        return sha256

    def validated(self, connector: ConnectorConfig, subdir: str, sha256: str, at: float) -> None:
        if not sha256:
            return
        try:
            self._shared.validated(connector.id, subdir, sha256, at)
        except Exception as exc:  # only other replicas' next check depends on it
            log.warning("could not note the validation of %s/%s: %s", connector.name, subdir, exc)

    def subdirs(self, connector_id: int) -> list[str]:
        return self._shared.subdirs(connector_id)

    def fetching(self, connector: ConnectorConfig, subdir: str) -> contextlib.AbstractContextManager[None]:
        return self._shared.fetching(connector.id, subdir)

    def remove(self, connector_id: int) -> None:
        self._shared.remove(connector_id)
        shutil.rmtree(self._root / str(connector_id), ignore_errors=True)

    def _write_local(self, connector_id: int, subdir: str, compressed: bytes) -> None:
        folder = self._folder(connector_id, subdir)
        try:
            folder.mkdir(parents=True, exist_ok=True)
            temp = folder / f".{LOCAL_NAME}.{os.getpid()}.{threading.get_ident()}.tmp"
            temp.write_bytes(compressed)
            os.replace(temp, folder / LOCAL_NAME)
            for name in _LEGACY:
                (folder / name).unlink(missing_ok=True)
        except OSError as exc:  # only how fast this host starts depends on it
            log.warning("could not keep a local copy of the upstream repodata in %s: %s", folder, exc)

    def _import_legacy(self, connector: ConnectorConfig, subdir: str) -> KeptState | None:
        """A copy kept on this host by a version before the shared state (meta.json next to it): made the
        shared state once, its records all checked again, so that an upgrade keeps serving with the
        upstream down."""
        folder = self._folder(connector.id, subdir)
        if (connector.id, subdir) in self._legacy_tried or not (folder / "meta.json").exists():
            return None
        self._legacy_tried.add((connector.id, subdir))  # once per process: it checks every record
        try:
            meta = json.loads((folder / "meta.json").read_text())
            if not isinstance(meta, dict) or meta.get("url") != connector.url:
                return None
            compressed = (folder / LOCAL_NAME).read_bytes()
            parsed = parse_document(ZstdDocument(compressed), connector.name_filter)
        except (OSError, ValueError, CondagateError):
            return None
        etag = meta.get("etag")
        self.keep(
            connector, subdir, compressed, None, etag=etag if isinstance(etag, str) else "", last_modified="",
            fetched_at=0.0, not_as_written=parsed.not_as_written,
        )
        try:
            return self._shared.read(connector.id, subdir)
        except Exception:
            return None
