"""Run Alembic from code, so `diffq db upgrade` needs no alembic.ini in the working directory."""

from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import create_engine, make_url, text
from sqlalchemy.exc import OperationalError

from core.config import get_settings
from core.errors import first_line

MIGRATIONS_DIR = Path(__file__).resolve().parent
# Postgres's "database does not exist".
INVALID_CATALOG_NAME = "3D000"


class DatabaseUnavailable(RuntimeError):
    """The database can't be reached or created; the message says what to do."""


def alembic_config(database_url: str | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("sqlalchemy.url", database_url or get_settings().database_url)
    return config


def ensure_database(database_url: str) -> bool:
    """Create the database the URL names if it does not exist yet (a SQLite file's folder, or a
    Postgres database, created from the server's `postgres` database). True if it was created."""
    url = make_url(database_url)
    if url.get_backend_name() == "sqlite":
        if url.database and url.database != ":memory:":
            Path(url.database).parent.mkdir(parents=True, exist_ok=True)
        return False
    if url.get_backend_name() != "postgresql":
        return False
    engine = create_engine(url)
    try:
        with engine.connect():
            return False
    except OperationalError as error:
        # psycopg gives no sqlstate for a refused connection, only the server's message.
        missing = f'database "{url.database}" does not exist' in str(error.orig)
        if getattr(error.orig, "sqlstate", None) != INVALID_CATALOG_NAME and not missing:
            raise DatabaseUnavailable(f"can't connect to {_safe(url)}: {_first_line(error)}") from None
    finally:
        engine.dispose()
    server = create_engine(url.set(database="postgres"), isolation_level="AUTOCOMMIT")
    try:
        with server.connect() as connection:
            name = connection.dialect.identifier_preparer.quote(url.database)
            connection.execute(text(f"CREATE DATABASE {name}"))
    except OperationalError as error:
        raise DatabaseUnavailable(
            f"database {url.database!r} does not exist and could not be created ({_first_line(error)}); "
            f"create it with: createdb -h {url.host or 'localhost'} -U {url.username or 'postgres'} "
            f"{url.database}"
        ) from None
    finally:
        server.dispose()
    return True


def upgrade(revision: str = "head", database_url: str | None = None) -> bool:
    """Bring the schema to `revision`, creating the database first if needed; True if it was created."""
    url = database_url or get_settings().database_url
    created = ensure_database(url)
    command.upgrade(alembic_config(url), revision)
    return created


def schema_problem(database_url: str | None = None) -> str | None:
    """Why the database can't serve diffq yet (unreachable, no schema, an older schema), with the command
    that fixes it; None when its schema is at the newest revision. Read before a server starts, so that
    it says so in one line instead of failing inside every request or task."""
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory

    url = make_url(database_url or get_settings().database_url)
    head = ScriptDirectory.from_config(alembic_config(str(url))).get_current_head()
    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            current = MigrationContext.configure(connection).get_current_revision()
    except OperationalError as error:
        return f"can't use the database at {_safe(url)} ({_first_line(error)}); `diffq db upgrade` creates it"
    finally:
        engine.dispose()
    if current != head:
        state = "has no diffq schema" if current is None else f"has an older diffq schema ({current})"
        return f"the database at {_safe(url)} {state}; run `diffq db upgrade` first"
    return None


def _safe(url) -> str:
    return url.render_as_string(hide_password=True)


def _first_line(error: Exception) -> str:
    """The first line of the database driver's own message, without SQLAlchemy's wrapping."""
    return first_line(getattr(error, "orig", None) or error)
