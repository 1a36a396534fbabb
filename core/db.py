"""The database engine and sessions, for the API's requests and the workers' tasks alike.

Connections that sat idle in the pool are checked before use (`_ping_when_idle`), so every process
reconnects by itself once an unreachable database is back: what fails meanwhile raises one of
`DB_UNAVAILABLE`, which the API answers with a 503 and a worker with giving its message back.
"""

import time
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from typing import Any

from sqlalchemy import Engine, create_engine, event, make_url, text
from sqlalchemy.exc import DisconnectionError, InterfaceError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from core.config import get_settings

# What SQLAlchemy raises when the database can't be reached or the connection dropped (and SQLite's
# "database is locked"): a moment's trouble, not a bad request.
DB_UNAVAILABLE = (OperationalError, InterfaceError)


def masked_url(url: str) -> str:
    """`url` with its password hidden, for messages."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return url


def make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection, _record) -> None:
            # WAL lets the API read while a worker writes progress from another process.
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.close()

        return engine
    engine = create_engine(url)
    event.listen(engine, "checkin", _note_checkin)
    event.listen(
        engine, "checkout", lambda connection, record, _proxy: _ping_when_idle(engine, connection, record)
    )
    return engine


# A connection back in the pool for longer than this is pinged before it is handed out again.
PING_IDLE_S = 1.0


def _note_checkin(_dbapi_connection: Any, record: Any) -> None:
    record.info["checked_in_at"] = time.monotonic()


def _ping_when_idle(engine: Engine, dbapi_connection: Any, record: Any) -> None:
    """SQLAlchemy's `pool_pre_ping`, for connections idle for `PING_IDLE_S`: one that was in use a moment
    ago is known to work, and pinging it cost a round trip per transaction (about 3 ms a job for a worker
    on a busy machine, bench/overhead.py). A connection that fails anyway (the database restarted within
    the second) raises one of `DB_UNAVAILABLE`, and SQLAlchemy then drops every pooled connection. A
    failed ping makes the pool replace the connection (`DisconnectionError`), as `pool_pre_ping` does."""
    if time.monotonic() - record.info.get("checked_in_at", float("-inf")) < PING_IDLE_S:
        return
    try:
        engine.dialect.do_ping(dbapi_connection)
    except Exception as error:
        raise DisconnectionError(f"the connection is gone: {error}") from error


def commit_without_waiting(session: Session) -> None:
    """Commit a best-effort write (progress, the workers table) without waiting for Postgres to flush it
    to disk (`synchronous_commit off`, for this transaction only): a few milliseconds less per write,
    and a database crash can lose only the last fraction of a second of such writes, which the next
    ones make good. State changes (a claim, a job's end) keep waiting."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SET LOCAL synchronous_commit TO OFF"))
    session.commit()


@lru_cache
def get_engine() -> Engine:
    return make_engine(get_settings().database_url)


@lru_cache
def get_sessionmaker() -> sessionmaker[Session]:
    return sessionmaker(bind=get_engine(), expire_on_commit=False)


@contextmanager
def db_session() -> Iterator[Session]:
    """A session for code outside a request (workers, CLI): commits on success, rolls back on error."""
    session = get_sessionmaker()()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()
