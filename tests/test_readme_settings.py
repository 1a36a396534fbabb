"""The README's settings table is true to `core.config.Settings`: every setting has a row, once, and every
`DIFFQ_` row names a setting (or one of the few variables read outside it)."""

import re
from collections import Counter
from pathlib import Path

from core.config import Settings

README = Path(__file__).resolve().parents[1] / "README.md"
# Read by the CLI, Flower or the path helpers rather than by `Settings`.
OUTSIDE_SETTINGS = {"DIFFQ_HOME", "DIFFQ_API_KEY", "DIFFQ_FLOWER_USER", "DIFFQ_FLOWER_PASSWORD"}


def table_names() -> list[str]:
    rows = [line for line in README.read_text().splitlines() if line.startswith("| `DIFFQ_")]
    return [name for row in rows for name in re.findall(r"`(DIFFQ_[A-Z0-9_]+)`", row.split("|")[1])]


def test_every_setting_has_one_row_and_every_row_a_setting() -> None:
    names = table_names()
    settings = {f"DIFFQ_{field.upper()}" for field in Settings.model_fields}
    assert sorted(settings - set(names)) == []
    assert sorted(set(names) - settings - OUTSIDE_SETTINGS) == []
    assert [name for name, count in Counter(names).items() if count > 1] == []
