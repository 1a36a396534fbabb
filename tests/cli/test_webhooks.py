"""`diffq keys webhook-secret` and `diffq webhooks`, run in-process on the real database."""

from collections.abc import Iterator

import pytest
from typer.testing import CliRunner

from cli.client import CliError
from cli.main import app
from tests.conftest import TEST_OWNER
from tests.utils.db import in_session
from tests.utils.jobs import claim_job
from tests.utils.webhooks import fast_retries, forget_deliveries, new_job, receiving

runner = CliRunner()


@pytest.fixture
def clean(database: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    fast_retries(monkeypatch)
    forget_deliveries()
    yield
    forget_deliveries()


def test_webhook_secret_is_kept_until_rotated(clean) -> None:
    first = runner.invoke(app, ["keys", "webhook-secret", "--owner", "hooks-cli"])
    assert first.exit_code == 0, first.output
    secret = first.output.strip()
    assert secret.startswith("whsec_")
    assert runner.invoke(app, ["keys", "webhook-secret", "--owner", "hooks-cli"]).output.strip() == secret
    rotated = runner.invoke(
        app, ["keys", "webhook-secret", "--owner", "hooks-cli", "--rotate"]
    ).output.strip()
    assert rotated.startswith("whsec_") and rotated != secret


def test_webhook_secret_needs_a_valid_owner(clean) -> None:
    assert runner.invoke(app, ["keys", "webhook-secret"]).exit_code == 2  # --owner is required
    result = runner.invoke(app, ["keys", "webhook-secret", "--owner", "no spaces"])
    assert isinstance(result.exception, CliError) and "owner name 'no spaces' is not allowed" in str(
        result.exception
    )


def test_webhooks_once_sends_what_is_due_signed_with_the_current_secret(clean) -> None:
    rotated = runner.invoke(app, ["keys", "webhook-secret", "--owner", TEST_OWNER, "--rotate"]).output.strip()
    with receiving(rotated) as receiver:
        job_id = new_job(receiver.url, events=["started"])
        in_session(claim_job, job_id, "w1")
        result = runner.invoke(app, ["webhooks", "--once"])
    assert result.exit_code == 0, result.output
    assert "webhook attempts made: 1" in result.output
    assert receiver.events() == ["job.started"] and receiver.refused == []
