"""`diffq keys create/list/revoke`, run in-process on the real database."""

import uuid

from typer.testing import CliRunner

from cli.client import CliError
from cli.main import app

runner = CliRunner()


def test_keys_are_listed_with_their_limits_and_revoked_by_prefix(database: str) -> None:
    owner = f"cli-{uuid.uuid4().hex[:8]}"
    plain = runner.invoke(app, ["keys", "create", "--owner", owner])
    assert plain.exit_code == 0, plain.output
    capped = runner.invoke(
        app, ["keys", "create", "--owner", owner, "--limit", "max_priority=3", "--name", "ci"]
    )
    assert capped.exit_code == 0, capped.output
    plain_prefix, capped_prefix = (result.stdout.strip().split("_")[1] for result in (plain, capped))

    listed = runner.invoke(app, ["keys", "list", "--owner", owner])
    assert listed.exit_code == 0, listed.output
    header, *rows = listed.stdout.strip().splitlines()
    assert header.startswith("id  prefix  owner  scopes  state")
    [plain_row] = [row for row in rows if plain_prefix in row]
    [capped_row] = [row for row in rows if capped_prefix in row]
    assert "active" in plain_row and "default limits" in plain_row and "read,submit" in plain_row
    assert '"max_priority": 3' in capped_row and "(ci)" in capped_row

    assert runner.invoke(app, ["keys", "revoke", plain_prefix]).exit_code == 0
    [revoked] = [row for row in runner.invoke(app, ["keys", "list", "--owner", owner]).stdout.splitlines()
                 if plain_prefix in row]  # fmt: skip
    assert "revoked" in revoked

    bad = runner.invoke(app, ["keys", "create", "--owner", owner, "--limit", "max_cats=1"])
    assert isinstance(bad.exception, CliError) and "unknown limit 'max_cats'" in str(bad.exception)


def test_a_bad_max_priority_limit_does_not_call_zero_no_limit(database: str) -> None:
    bad = runner.invoke(app, ["keys", "create", "--owner", "cli-limits", "--limit", "max_priority=abc"])
    assert isinstance(bad.exception, CliError)
    assert "max_priority must be a whole number ≥ 0" in str(bad.exception)
    assert "no limit" not in str(bad.exception)  # a max_priority of 0 caps priorities at 0
