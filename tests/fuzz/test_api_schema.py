"""API fuzzing with schemathesis: bodies, paths, queries and uploads drawn from `/openapi.json` for
every route, sent to the API in-process on the real Postgres, Redis and S3.

Properties: no response is a 5xx, and every 4xx says what to fix (a non-empty message, and for a
422 each error names its location). `DIFFQ_FUZZ_EXAMPLES` sets the number of cases per route and phase
(10 in the suite: some thousands of requests over every route, about 40 s); `bench/fuzz.py api` runs a
large number outside the suite.
"""

import os
from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, settings

from tests.conftest import bearer, cancel_queued_jobs
from tests.utils.jobs import UNSERVED_QUEUE

EXAMPLES = int(os.environ.get("DIFFQ_FUZZ_EXAMPLES", "10"))


def load_schema() -> Any:
    from api.main import app

    return schemathesis.openapi.from_asgi("/openapi.json", app)


schema = load_schema()


@pytest.fixture(scope="module")
def fuzzed_api(api_client) -> Iterator[None]:
    """The API on its services, sending jobs to queues that no worker reads; afterwards the jobs the
    fuzzer got accepted are canceled. The end-to-end tests' worker would otherwise run them while later
    tests wait (its boundary cases include 999 steps: 20 s)."""
    from core.config import get_settings

    with pytest.MonkeyPatch.context() as patch:
        for queue in ("queue", "train_queue"):
            patch.setattr(get_settings(), queue, UNSERVED_QUEUE)
        yield
    cancel_queued_jobs()


def problems_in_4xx(body: Any) -> list[str]:
    """What is missing from a 4xx body for it to say what to fix."""
    if not isinstance(body, dict) or "detail" not in body:
        return [f"no 'detail' in {body!r}"]
    detail = body["detail"]
    if isinstance(detail, str):
        return [] if detail.strip() else ["an empty detail"]
    if isinstance(detail, list) and detail:
        return [
            f"error without a message or a location: {error!r}"
            for error in detail
            if not (isinstance(error, dict) and str(error.get("msg", "")).strip() and error.get("loc"))
        ]
    return [f"detail is neither a message nor a list of errors: {detail!r}"]


@schema.parametrize()
@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    derandomize=not os.environ.get("DIFFQ_FUZZ_RANDOM"),
)
def test_no_5xx_and_every_4xx_says_what_to_fix(case, fuzzed_api) -> None:
    # The tests' own key (not an admin's): what every owner may reach.
    response = case.call(headers=bearer(os.environ["DIFFQ_API_KEY"]))
    where = f"{case.method} {case.formatted_path}"
    assert response.status_code < 500, f"{where}: {response.status_code} {response.text}"
    if 400 <= response.status_code < 500:
        try:
            body = response.json()
        except ValueError:
            body = response.text
        assert problems_in_4xx(body) == [], f"{where}: {response.status_code} {response.text}"
