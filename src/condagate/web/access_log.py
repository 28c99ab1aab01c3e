"""The access log, off the request path: a request leaves one small tuple in a bounded buffer; a
background thread turns those into the JSON lines of the ``condagate.access`` logger (written through
its handlers, one write per batch), the request metrics (``telemetry``) and the per-key access log
(``services.access_recorder``).

Lines appear within ``BATCH_DELAY`` seconds; shutting down writes what is left. When the buffer is
full (the writer cannot keep up, or stalls), requests are not held up: their entries are dropped,
counted, and the writer says so in a warning (at most one a minute).
"""

from __future__ import annotations

import atexit
import json
import logging
import threading
import time
from collections import deque
from typing import TYPE_CHECKING

from condagate import telemetry
from condagate.logs import JsonFormatter, json_line, log_time
from condagate.security.permissions import Principal
from condagate.security.redact import redact

if TYPE_CHECKING:
    from condagate.services.access_recorder import AccessRecorder

log = logging.getLogger("condagate.access")
_own_log = logging.getLogger(__name__)

BATCH_DELAY = 0.05  # seconds an entry may wait for others to share its write
BUFFER_LIMIT = 100_000  # entries held at most; beyond, entries are dropped and counted
DROP_WARNING_INTERVAL = 60.0
_PATHS_KEPT = 10_000
_LAYOUTS_KEPT = 10_000


# What the request path captures (a plain tuple: the cheapest to make); the writer derives the rest:
# (time.time() when the answer ended, method, raw path (redacted by the writer), status, seconds taken,
#  bytes of response bodies, client address, principal)
Entry = tuple[float, str, str, int, float, int, str, Principal | None]


class AccessLogWriter:
    def __init__(self, buffer_limit: int = BUFFER_LIMIT, batch_delay: float = BATCH_DELAY) -> None:
        self._buffer: deque[Entry] = deque()
        self._limit = buffer_limit
        self._delay = batch_delay
        self._wake = threading.Event()
        self._signalled = False
        self._closing = False
        self._dropped = 0
        self._dropped_reported = 0
        self._quiet_until = 0.0
        self._recorder: AccessRecorder | None = None
        self._thread: threading.Thread | None = None
        self._write_lock = threading.Lock()  # one batch at a time: the thread's, or a drain's
        self._paths: dict[tuple[str, str], tuple[str, str]] = {}  # see _path_of
        self._lines = _Lines()

    def start(self, recorder: AccessRecorder) -> None:
        self._recorder = recorder
        self._closing = False
        self._thread = threading.Thread(target=self._run, name="condagate-access-log", daemon=True)
        self._thread.start()
        atexit.register(self.close)  # a worker that exits without its lifespan's shutdown

    def put(self, entry: Entry) -> None:
        """The request path's whole share: an append (and, once per batch, a wake-up)."""
        if len(self._buffer) >= self._limit:
            self._dropped += 1
            return
        self._buffer.append(entry)
        if not self._signalled:
            self._signalled = True
            self._wake.set()

    def drain(self) -> None:
        """Write everything buffered so far, now (shutdown, or a caller that must see it)."""
        with self._write_lock:
            batch = self._take()
            if batch:
                self._write(batch)

    def close(self) -> None:
        """Stop the thread after it has written everything (idempotent)."""
        atexit.unregister(self.close)
        self._closing = True
        self._wake.set()
        thread, self._thread = self._thread, None
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=10)
        self.drain()

    def _run(self) -> None:
        while not self._closing:
            self._wake.wait()
            if not self._closing:
                time.sleep(self._delay)  # let the batch fill: one write for many lines
            # Reset before taking: an entry appended after this point wakes the next round.
            self._signalled = False
            self._wake.clear()
            try:
                self.drain()
            except Exception:
                _own_log.exception("writing the access log failed; those lines are lost")

    def _path_of(self, method: str, raw_path: str) -> tuple[str, str]:
        """(the path as logged, redacted; the request's route family): most requests ask for few paths."""
        found = self._paths.get((method, raw_path))
        if found is None:
            if len(self._paths) >= _PATHS_KEPT:
                self._paths.clear()
            found = self._paths[method, raw_path] = (redact(raw_path), telemetry.route_family(method, raw_path))
        return found

    def _take(self) -> list[Entry]:
        buffer = self._buffer
        return [buffer.popleft() for _ in range(len(buffer))]

    def _write(self, batch: list[Entry]) -> None:
        known = [self._path_of(entry[1], entry[2]) for entry in batch]
        paths = [path for path, _ in known]
        if log.isEnabledFor(logging.INFO):
            self._write_lines(batch, paths)
        telemetry.metrics().observe_requests(
            (family, entry[3], entry[4], entry[5]) for entry, (_, family) in zip(batch, known, strict=True)
        )
        if self._recorder is not None:
            self._recorder.record_many(
                (principal.key_id, principal.name, client, method, path, status, created)
                for (created, method, _, status, _, _, client, principal), path in zip(batch, paths, strict=True)
                if principal is not None and principal.authenticated
            )
        dropped = self._dropped
        if dropped != self._dropped_reported and time.monotonic() >= self._quiet_until:
            # One warning, then at most one a minute while the buffer stays full.
            _own_log.warning(
                "the access log's buffer was full: %d lines dropped (%d since the start)",
                dropped - self._dropped_reported,
                dropped,
            )
            self._dropped_reported = dropped
            self._quiet_until = time.monotonic() + DROP_WARNING_INTERVAL

    def _write_lines(self, batch: list[Entry], paths: list[str]) -> None:
        """The lines ``log.info("%s %s %s", method, path, status, extra={"fields": ...})`` writes, as that
        call writes them: through the logger's handlers. The usual set-up (``logs.configure_logging``:
        stream handlers with the JSON formatter, no filters) gets the same lines, one write per batch."""
        handlers = _handlers_of(log)
        if log.filters or any(not _batchable(h) for h in handlers):
            for entry, path in zip(batch, paths, strict=True):
                created, method, _, status = entry[:4]
                record = log.makeRecord(
                    log.name,
                    logging.INFO,
                    "(access log)",
                    0,
                    "%s %s %s",
                    (method, path, status),
                    None,
                    extra={"fields": _fields(entry, path)},
                )
                record.created = created
                record.msecs = (created - int(created)) * 1000
                log.handle(record)
            return
        if not handlers:
            return
        lines = self._lines
        text = "".join([lines.line(entry, path) for entry, path in zip(batch, paths, strict=True)])
        for handler in handlers:
            assert isinstance(handler, logging.StreamHandler)
            handler.acquire()
            try:
                handler.stream.write(text)
                handler.stream.flush()
            finally:
                handler.release()


def _fields(entry: Entry, path: str) -> dict[str, object]:
    _, method, _, status, seconds, _, client, principal = entry
    return {
        "method": method,
        "path": path,
        "status": status,
        "ms": round(seconds * 1000, 2),
        "client": client,
        "principal": principal.name if principal is not None else "anonymous",
    }


class _Lines:
    """``json_line``'s access-log lines (with their newline), the JSON around the two parts that
    change from request to request (the time, "ms") encoded once per distinct rest of the line. Each
    layout is checked against ``json_line`` when it is made, and not used if they differ."""

    def __init__(self) -> None:
        self._layouts: dict[tuple[str, str, int, str, str], tuple[str, str] | None] = {}

    def line(self, entry: Entry, path: str) -> str:
        created, method, _, status, seconds, _, client, principal = entry
        name = principal.name if principal is not None else "anonymous"
        key = (method, path, status, client, name)
        ms = round(seconds * 1000, 2)
        try:
            layout = self._layouts[key]
        except KeyError:
            layout = self._layout(entry, path, key, ms)
        if layout is None:
            return json_line(created, "info", log.name, f"{method} {path} {status}", _fields(entry, path)) + "\n"
        return redact(f'{{"time": "{log_time(created)}"{layout[0]}{ms!r}{layout[1]}') + "\n"

    def _layout(
        self, entry: Entry, path: str, key: tuple[str, str, int, str, str], ms: float
    ) -> tuple[str, str] | None:
        method, _, status, client, name = key
        # json.dumps joins members with ", " and ": ": the pieces of the whole object, member by member.
        before = json.dumps(
            {
                "level": "info",
                "logger": log.name,
                "message": f"{method} {path} {status}",
                "method": method,
                "path": path,
                "status": status,
            }
        )
        after = json.dumps({"client": client, "principal": name})
        pieces = (", " + before[1:-1] + ', "ms": ', ", " + after[1:-1] + "}")
        created = entry[0]
        made = redact(f'{{"time": "{log_time(created)}"{pieces[0]}{ms!r}{pieces[1]}')
        expected = json_line(created, "info", log.name, f"{method} {path} {status}", _fields(entry, path))
        layout = pieces if made == expected else None
        if len(self._layouts) >= _LAYOUTS_KEPT:
            self._layouts.clear()
        self._layouts[key] = layout
        return layout


def _handlers_of(logger: logging.Logger) -> list[logging.Handler]:
    """The handlers ``logger.handle`` reaches for an INFO record (as ``Logger.callHandlers`` walks them)."""
    found: list[logging.Handler] = []
    current: logging.Logger | None = logger
    while current is not None:
        found += [h for h in current.handlers if h.level <= logging.INFO]
        current = current.parent if current.propagate else None
    return found


def _batchable(handler: logging.Handler) -> bool:
    return (
        type(handler) is logging.StreamHandler
        and type(handler.formatter) is JsonFormatter
        and not handler.filters
        and handler.terminator == "\n"
    )
