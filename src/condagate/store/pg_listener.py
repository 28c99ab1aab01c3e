"""The cross-host half of the change signal on PostgreSQL: one thread per process that ``LISTEN``s on
``condagate_changes`` over a dedicated autocommit connection and tells the process's ``ChangeSignal``
of every commit made elsewhere (``Database.write`` sends the ``NOTIFY`` inside its transaction, so it
is delivered only if, and once, the commit is visible).

Correctness never depends on this thread: it vouches for its connection only while notifications
demonstrably reach it. Every ``HEARTBEAT_SECONDS`` it notifies a channel of its own and vouches for
``HEARTBEAT_SECONDS + ANSWER_SECONDS`` once that comes back (so a lost or silent connection, or a pooler
that hands the LISTEN to another client, ends the vouching); without it, readers fall back to their
bounded trust (``CONDAGATE_CHANGE_MAX_AGE_SECONDS``). It reconnects with back-off, and after each
(re)connect reports one change: whatever was committed while it was not listening.
"""

from __future__ import annotations

import logging
import os
import secrets
import select
import threading
import time
from typing import Any

import psycopg
from psycopg import pq
from sqlalchemy import Engine

from condagate.store.change_signal import ChangeSignal
from condagate.store.db import CHANGES_CHANNEL

log = logging.getLogger(__name__)

APPLICATION_NAME = "condagate change listener"  # how operators (and the tests) find it in pg_stat_activity
HEARTBEAT_SECONDS = 1.0
# A heartbeat's answer may take this long before the listener stops vouching (a busy database).
ANSWER_SECONDS = 0.5
FIRST_RETRY_SECONDS = 0.1
MAX_RETRY_SECONDS = 5.0


def connect_args(engine: Engine) -> dict[str, Any]:
    """psycopg keyword arguments for a connection like the engine's, plus TCP keepalives and a send
    deadline, so that a dead network path ends the connection instead of blocking the thread."""
    args, params = engine.dialect.create_connect_args(engine.url)
    if args:
        params["conninfo"] = args[0]
    params.setdefault("application_name", APPLICATION_NAME)
    params.setdefault("connect_timeout", 5)
    params.setdefault("keepalives", 1)
    params.setdefault("keepalives_idle", 5)
    params.setdefault("keepalives_interval", 2)
    params.setdefault("keepalives_count", 3)
    params.setdefault("tcp_user_timeout", 10_000)
    return dict(params)


class ChangeListener:
    def __init__(self, signal: ChangeSignal, params: dict[str, Any]) -> None:
        self._signal = signal
        self._params = params
        self._stopping = threading.Event()
        self._wake_read, self._wake_write = os.pipe()
        self._thread = threading.Thread(target=self._run, name="condagate-change-listener", daemon=True)
        self.connections = 0  # how many times it has (re)connected: for tests and logs
        self._listening = False
        self._last_received = 0.0  # monotonic time of the last notification (heartbeat or change)

    def start(self) -> None:
        self._thread.start()

    def thread_alive(self) -> bool:
        return self._thread.is_alive()

    def stop(self) -> None:
        """Stop listening and wait for the thread (it wakes at once unless a heartbeat is stuck on a
        dead network path; being a daemon thread, it never holds up the process's exit)."""
        self._stopping.set()
        os.write(self._wake_write, b"x")
        if self._thread.is_alive():
            self._thread.join(timeout=5)
        self._signal.vouch_until(0.0)
        if not self._thread.is_alive():
            os.close(self._wake_read)
            os.close(self._wake_write)

    def _run(self) -> None:
        retry = FIRST_RETRY_SECONDS
        failures = 0  # in a row, since the last connection that listened
        while not self._stopping.is_set():
            listened = False
            try:
                listened = self._listen()
            except (psycopg.Error, OSError) as exc:
                listened = self._listening
                failures = 1 if listened else failures + 1
                reason = (str(exc).strip() or type(exc).__name__).splitlines()[0]
                # Once per outage: the connection dropped, or the first attempt at start failed.
                (log.warning if failures == 1 else log.debug)(
                    "change listener: %s (%s); until it is back, other replicas' changes show here "
                    "within the fallback bound only",
                    "lost its connection" if listened else "cannot connect",
                    reason,
                )
            except Exception:  # a bug must not end the thread: this process would stop hearing for good
                log.exception("change listener failed; restarting it")
            finally:
                self._listening = False
                self._signal.vouch_until(0.0)
            if self._stopping.is_set():
                break
            if listened:
                retry = FIRST_RETRY_SECONDS  # it had a connection: try again at once, then back off
            self._stopping.wait(retry)
            retry = min(retry * 2, MAX_RETRY_SECONDS)

    def _listen(self) -> bool:
        """Listen until stopped (then return True) or until the connection fails (raise)."""
        echo = f"condagate_heartbeat_{secrets.token_hex(8)}"  # this listener's own channel
        with psycopg.connect(autocommit=True, **self._params) as connection:
            # Notifications that arrive while a heartbeat runs come through the handler.
            connection.add_notify_handler(lambda notification: self._received(notification.channel, echo))
            connection.execute(f"LISTEN {CHANGES_CHANNEL}")
            connection.execute(f"LISTEN {echo}")
            self.connections += 1
            self._listening = True
            self._signal.heard()  # anything may have been committed while nobody listened
            log.info("change listener: listening for other replicas' changes (connection %d)", self.connections)
            socket = connection.fileno()
            next_heartbeat = 0.0
            warned = False
            while not self._stopping.is_set():
                now = time.monotonic()
                if now >= next_heartbeat:
                    if next_heartbeat and self._echoes_missing(now) and not warned:
                        warned = True
                        log.warning(
                            "change listener: its heartbeat notification does not come back (a pooler in "
                            "transaction mode? set CONDAGATE_CHANGE_LISTENER=off); other replicas' changes "
                            "show here within the fallback bound only"
                        )
                    # Delivered to this very session before the statement's answer: proof that it listens.
                    connection.execute("SELECT pg_notify(%s, '')", (echo,))
                    next_heartbeat = time.monotonic() + HEARTBEAT_SECONDS
                    continue
                readable, _, _ = select.select([socket, self._wake_read], [], [], next_heartbeat - now)
                if self._wake_read in readable:
                    break
                if socket in readable:
                    # Notifications, or the server saying goodbye: consume_input raises once it has gone.
                    connection.pgconn.consume_input()
                    while (notification := connection.pgconn.notifies()) is not None:
                        self._received(notification.relname.decode(), echo)
                    if connection.pgconn.status != pq.ConnStatus.OK:
                        raise psycopg.OperationalError("the connection was closed")
        return True

    def _received(self, channel: str, echo: str) -> None:
        if channel != echo:
            self._signal.heard()
        # Notifications reach this session: every commit before the one just received has been heard of
        # (they arrive in commit order), and the next heartbeat is due within HEARTBEAT_SECONDS.
        self._last_received = time.monotonic()
        self._signal.vouch_until(self._last_received + HEARTBEAT_SECONDS + ANSWER_SECONDS)

    def _echoes_missing(self, now: float) -> bool:
        return now - self._last_received > HEARTBEAT_SECONDS + ANSWER_SECONDS


def start_listener(signal: ChangeSignal, engine: Engine) -> ChangeListener | None:
    """Start a listener that feeds ``signal``, or None where the driver cannot listen (then readers keep
    their fallback bound)."""
    if engine.dialect.name != "postgresql" or engine.dialect.driver != "psycopg":
        if engine.dialect.name == "postgresql":
            log.warning(
                "change listener needs the psycopg driver (postgresql+psycopg://), not %s: other replicas' "
                "changes show here within the fallback bound only",
                engine.dialect.driver,
            )
        return None
    listener = ChangeListener(signal, connect_args(engine))
    listener.start()
    signal.attach(listener)
    return listener
