"""Calling core functions as a one-shot caller does: on a session of their own, committed at the end."""

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import pytest
from sqlalchemy.orm import Session

from core.db import db_session, make_engine

T = TypeVar("T")


def in_session(function: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """`function(session, *args, **kwargs)` on a fresh session, committed when it returns."""
    with db_session() as session:
        return function(session, *args, **kwargs)


@contextmanager
def session_on(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Session]:
    """A session on the tests' Postgres database (`request.param == "postgresql"`) or on a new SQLite
    database under `tmp_path`, migrated (`"sqlite"`), for a fixture parametrized over the two. The caller
    cleans up what it wrote before the block ends."""
    from migrations.run import upgrade

    if request.param == "postgresql":
        url = request.getfixturevalue("database")
    else:
        url = f"sqlite:///{tmp_path / 'tests.db'}"
        upgrade(database_url=url)
    engine = make_engine(url)
    try:
        with Session(engine) as session:
            yield session
    finally:
        engine.dispose()
