"""A job's expected failure (the user's to fix) is one WARNING line with its code; a bug keeps its
traceback."""

import logging

import pytest

from core.errors import BadInput, BadModel, JobError
from workers.tasks import log_failure


@pytest.mark.parametrize("error", [BadModel("model 'x' not found\nmore"), BadInput("bad seed")])
def test_an_expected_failure_is_one_warning_line(caplog: pytest.LogCaptureFixture, error: JobError) -> None:
    with caplog.at_level(logging.INFO, logger="workers.tasks"):
        log_failure("j1", error)
    [record] = caplog.records
    assert record.levelno == logging.WARNING and record.exc_info is None
    assert record.getMessage() == f"job j1 failed: {error.code}: {str(error).splitlines()[0]}"


def test_an_internal_error_keeps_its_traceback(caplog: pytest.LogCaptureFixture) -> None:
    try:
        raise KeyError("oops")
    except KeyError as error:
        with caplog.at_level(logging.INFO, logger="workers.tasks"):
            log_failure("j2", error)
    [record] = caplog.records
    assert record.levelno == logging.ERROR and record.exc_info is not None
    assert "Traceback" in caplog.text
