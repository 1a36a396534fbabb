"""Calling core functions as a one-shot caller does: on a session of their own, committed at the end."""

from collections.abc import Callable
from typing import Any, TypeVar

from core.db import db_session

T = TypeVar("T")


def in_session(function: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """`function(session, *args, **kwargs)` on a fresh session, committed when it returns."""
    with db_session() as session:
        return function(session, *args, **kwargs)
