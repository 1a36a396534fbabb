"""Relative names that must stay inside a root: storage keys, and paths under a folder.

Every place that turns a name it was given into a key or a path goes through here, so that a name with
`..`, an absolute path or a symlink out of the folder is refused the same way everywhere.
"""

from pathlib import Path


class PathEscapeError(ValueError):
    """A relative path that leads outside its root."""


def clean_key(key: str) -> str:
    """`key` as a storage key: its parts joined by single slashes; ValueError if it has no part, or a
    `.` or `..` part."""
    parts = [p for p in key.split("/") if p]
    if not parts or any(p in (".", "..") for p in parts):
        raise ValueError(f"bad storage key {key!r}")
    return "/".join(parts)


def safe_join(root: Path, relative: str | Path) -> Path:
    """`root / relative`, resolved (symlinks and `..` followed); `PathEscapeError` if that leads outside
    `root` or `relative` is absolute. The OS's own errors for names it refuses (a NUL byte: ValueError)
    pass through."""
    root = Path(root).resolve()
    if Path(relative).is_absolute():
        raise PathEscapeError(f"{str(relative)!r} is an absolute path, not a path under {root}")
    path = (root / relative).resolve()
    if not path.is_relative_to(root):
        raise PathEscapeError(f"{str(relative)!r} escapes {root}")
    return path
