"""Database engine, sessions and migrations (SQLite by default, PostgreSQL by URL)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from condagate.errors import Conflict

MIGRATIONS = Path(__file__).parent / "migrations"
# PostgreSQL: every non-quiet write notifies this channel (store.pg_listener hears it on other hosts).
CHANGES_CHANNEL = "condagate_changes"


class WriteConflict(Conflict):
    code = "write_conflict"


def make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30}, pool_size=20)

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
            # Let SQLAlchemy's "begin" event decide how a transaction starts (see below).
            dbapi_connection.isolation_level = None
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.close()

        @event.listens_for(engine, "begin")
        def _sqlite_begin(connection: Any) -> None:
            # Writers take the lock up front: a deferred transaction that later upgrades to a
            # write can fail with "database is locked" without waiting for the busy timeout.
            if connection.get_execution_options().get("write"):
                connection.exec_driver_sql("BEGIN IMMEDIATE")
            else:
                connection.exec_driver_sql("BEGIN")

        return engine
    return create_engine(url, pool_size=20, max_overflow=20, pool_pre_ping=True)


def migrate(engine: Engine) -> None:
    """Apply every Alembic migration up to head."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "head")


class Database:
    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = make_engine(url)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        # Called after every commit of ``write()`` (the host's change signal, see store.change_signal).
        self.on_commit: Callable[[], None] | None = None
        # Other hosts' half of the signal: a NOTIFY in the transaction, delivered only once it commits.
        self.notifies = self.engine.dialect.name == "postgresql"

    @contextmanager
    def read(self) -> Iterator[Session]:
        with self._sessions() as session:
            yield session

    @contextmanager
    def write(self, quiet: bool = False) -> Iterator[Session]:
        """A session whose transaction commits at the end, or rolls back on any error. ``quiet``: a
        write that changes nothing a channel serves (counters, logs, health), so no change signal."""
        with self._sessions() as session:
            session.connection(execution_options={"write": True})
            try:
                yield session
                if self.notifies and not quiet:
                    session.execute(text(f"NOTIFY {CHANGES_CHANNEL}"))
                session.commit()
                if self.on_commit is not None and not quiet:
                    self.on_commit()
            except IntegrityError as exc:
                session.rollback()
                # A concurrent change won (same name committed, parent row deleted): a conflict, not a crash.
                raise WriteConflict(f"a concurrent change conflicts with this one: {exc.orig}") from exc
            except BaseException:
                session.rollback()
                raise

    def ping(self) -> None:
        """Raise unless the database answers (the health check)."""
        with self.read() as session:
            session.execute(text("SELECT 1"))

    def dispose(self) -> None:
        self.engine.dispose()
