"""Names that must stay inside their root."""

from pathlib import Path

import pytest

from core.paths import PathEscapeError, clean_key, safe_join


def test_clean_key_joins_parts_and_refuses_dots() -> None:
    assert clean_key("/jobs//x/0.png") == "jobs/x/0.png"
    for bad in ("", "/", "a/../b", "./a", ".."):
        with pytest.raises(ValueError, match="bad storage key"):
            clean_key(bad)


def test_safe_join_stays_inside_the_root(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "a").mkdir(parents=True)
    assert safe_join(root, "a/b") == (root / "a" / "b").resolve()
    assert safe_join(root, "a/../c") == (root / "c").resolve()  # `..` that stays inside is fine
    with pytest.raises(PathEscapeError, match="escapes"):
        safe_join(root, "a/../../x")
    with pytest.raises(PathEscapeError, match="absolute path"):
        safe_join(root, "/etc/passwd")


def test_safe_join_follows_symlinks_out(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    (tmp_path / "outside").mkdir()
    (root / "link").symlink_to(tmp_path / "outside")
    with pytest.raises(PathEscapeError, match="'link/x' escapes"):
        safe_join(root, "link/x")
