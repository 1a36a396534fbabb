"""Schedules refuse, with a 422 that says what to write, cron expressions that are not five fields, that
never fire or that croniter reads oddly, and unknown time zones. FastAPI's TestClient on the real Postgres."""

import pytest
from fastapi.testclient import TestClient

JOB = {"type": "text2img", "model": "tiny-sd", "params": {"prompt": "a fox", "num_inference_steps": 2}}


@pytest.mark.parametrize(
    ("cron", "says"),
    [
        ("* * * * * *", "has 6 fields; write five fields"),
        ("0 3 * *", "has 4 fields"),
        ("@daily", "has 1 fields"),
        ("0 0 30 2 *", "never fires"),
        ("0 0 31 2,4 *", "never fires"),
        ("*/100000 * * * *", "the minute step '/100000' must be a whole number from 1 to 59"),
        ("*/0 * * * *", "the minute step '/0'"),
        ("5-1 * * * *", "the minute range '5-1' runs backwards"),
        ("60 * * * *", "is not a cron expression"),
        ("1-1000000 * * * *", "is not a cron expression"),
        ("0 0 * * 1L", "is not a cron expression"),
    ],
)
def test_bad_cron_is_422(api: TestClient, cron: str, says: str) -> None:
    response = api.post("/v1/schedules", json={"name": "a", "cron": cron, "job": JOB})
    assert response.status_code == 422, response.text
    assert says in response.text


@pytest.mark.parametrize("timezone", ["localtime", "zone.tab", "a" * 5000, "Europe/", "utc"])
def test_unknown_timezone_is_422(api: TestClient, timezone: str) -> None:
    response = api.post("/v1/schedules", json={"cron": "0 3 * * *", "timezone": timezone, "job": JOB})
    assert response.status_code == 422, response.text
    assert "time zone" in response.text or "at most 64 characters" in response.text


def test_patch_to_a_cron_that_never_fires_is_422(api: TestClient) -> None:
    created = api.post("/v1/schedules", json={"cron": "0 3 * * *", "timezone": "Europe/Paris", "job": JOB})
    assert created.status_code == 201, created.text
    url = f"/v1/schedules/{created.json()['id']}"
    response = api.patch(url, json={"cron": "0 0 30 2 *"})
    assert response.status_code == 422, response.text
    assert "never fires" in response.text
    assert api.patch(url, json={"cron": "*/15 0-6 1,15 1-12/2 mon-fri"}).status_code == 200
    assert api.delete(url).status_code == 204
