"""Relative names that must stay inside a root: storage keys, and paths under a folder.

Every place that turns a name it was given into a key or a path goes through here, so that a name with
`..`, an absolute path or a symlink out of the folder is refused the same way everywhere.
"""

from pathlib import Path


class PathEscapeError(ValueError):
    """A relative path that leads outside its root."""


# A key no backend can hold: a part over a file name's limit on common file systems (ext4, APFS, NTFS), or
# the whole over S3's limit on object keys. Both in UTF-8 bytes.
MAX_KEY_PART_BYTES = 255
MAX_KEY_BYTES = 1024


class BadKey(ValueError):
    """A name that can't be a storage key; `reason` says what to fix."""

    def __init__(self, key: str, reason: str) -> None:
        self.reason = reason
        shown = repr(key) if len(key) <= 100 else f"{key[:60]!r}... ({len(key)} characters)"
        super().__init__(f"bad storage key {shown}: {reason}")


def clean_key(key: str) -> str:
    """`key` as a storage key: its parts joined by single slashes. `BadKey` (a ValueError) if it has no
    part, a `.` or `..` part, a NUL character, a part over `MAX_KEY_PART_BYTES` or over `MAX_KEY_BYTES`
    in all (UTF-8)."""
    parts = [p for p in key.split("/") if p]
    if not parts or any(p in (".", "..") for p in parts):
        raise BadKey(key, "give a relative key without '.' or '..' parts")
    if "\x00" in key:
        raise BadKey(key, "it holds a NUL character")
    if long := next((p for p in parts if len(p.encode()) > MAX_KEY_PART_BYTES), None):
        raise BadKey(
            key,
            f"a part of {len(long.encode())} bytes; each part between slashes may be at most "
            f"{MAX_KEY_PART_BYTES} bytes",
        )
    joined = "/".join(parts)
    if len(joined.encode()) > MAX_KEY_BYTES:
        raise BadKey(key, f"{len(joined.encode())} bytes long; a key may be at most {MAX_KEY_BYTES} bytes")
    return joined


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
