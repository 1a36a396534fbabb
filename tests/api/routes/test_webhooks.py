"""Webhooks at the door: URLs that lead to private addresses are 422s that say why and which setting
allows them; an accepted webhook is shown on its job or batch, and its deliveries are listed."""

from collections.abc import Iterator

import httpx
import pytest

from core.config import get_settings
from tests.conftest import TEST_OWNER
from tests.utils.jobs import UNSERVED_QUEUE, text2img_spec
from tests.utils.webhooks import forget_deliveries


@pytest.fixture(autouse=True)
def no_deliveries_left(database: str) -> Iterator[None]:
    yield
    forget_deliveries()


def submit(api, url: str, **webhook) -> httpx.Response:
    return api.post("/v1/jobs", json=text2img_spec() | {"webhook": {"url": url, **webhook}})


def error_at(response: httpx.Response, loc: list) -> str:
    """The message of the 422's error whose location ends with `loc` (a schema error's location also
    names the job type: body.text2img.webhook.url)."""
    assert response.status_code == 422, response.text
    messages = [error["msg"] for error in response.json()["detail"] if error["loc"][-len(loc) :] == loc]
    assert messages, response.json()
    return messages[0]


@pytest.mark.parametrize(
    ("url", "kind"),
    [
        ("http://127.0.0.1:8080/hooks", "loopback"),
        ("http://localhost/hooks", "loopback"),
        ("http://[::1]:8080/hooks", "loopback"),
        ("http://10.1.2.3/hooks", "private"),
        ("https://192.168.0.10/hooks", "private"),
        ("http://[::ffff:10.0.0.1]/hooks", "private"),
        ("http://[64:ff9b::7f00:1]/hooks", "loopback"),
        ("http://169.254.10.1/hooks", "link-local"),
        ("http://0.0.0.0/hooks", "unspecified"),
        ("http://100.64.0.1/hooks", "non-public"),
        ("http://224.0.0.1/hooks", "multicast"),
    ],
)
def test_private_addresses_are_refused_naming_the_setting(api, url, kind) -> None:
    message = error_at(submit(api, url), ["webhook", "url"])
    assert f"{kind} address" in message and "DIFFQ_WEBHOOK_ALLOW_PRIVATE=true" in message


@pytest.mark.parametrize("url", ["http://169.254.169.254/latest/meta-data/", "http://[fd00:ec2::254]/"])
def test_metadata_addresses_are_refused_even_when_private_ones_are_allowed(api, monkeypatch, url) -> None:
    monkeypatch.setattr(get_settings(), "webhook_allow_private", True)
    assert "cloud metadata address" in error_at(submit(api, url), ["webhook", "url"])


@pytest.mark.parametrize(
    ("url", "words"),
    [
        ("ftp://example.com/hooks", "must start with http:// or https://"),
        ("file:///etc/passwd", "must start with http:// or https://"),
        ("http:///hooks", "names no host"),
        ("http://no-such-host.invalid/hooks", "does not resolve"),
        ("http://1.1.1.1:99999/", "has port 99999; a port is from 1 to 65535"),
        ("http://1.1.1.1:0/", "has port 0; a port is from 1 to 65535"),
        ("http://1.1.1.1:-1/", "has port -1"),
        ("http://1.1.1.1:abc/", "is not a URL (Invalid port: 'abc')"),
    ],
)
def test_urls_that_are_not_http_or_do_not_resolve_are_refused(api, url, words) -> None:
    assert words in error_at(submit(api, url), ["webhook", "url"])


def test_a_batch_event_is_not_a_job_event(api, monkeypatch) -> None:
    monkeypatch.setattr(get_settings(), "webhook_allow_private", True)
    response = submit(api, "http://127.0.0.1:9/hooks", events=["completed"])
    assert response.status_code == 422 and "'canceled'" in response.text


def test_allowed_with_the_setting_and_shown_on_the_job(api, monkeypatch) -> None:
    monkeypatch.setattr(get_settings(), "webhook_allow_private", True)
    response = submit(api, "http://127.0.0.1:9/hooks", events=["succeeded", "failed", "succeeded"])
    assert response.status_code == 201, response.text
    job = response.json()
    assert job["webhook"] == {"url": "http://127.0.0.1:9/hooks", "events": ["succeeded", "failed"]}
    assert job["owner"] == TEST_OWNER
    assert api.get(f"/v1/jobs/{job['id']}/webhooks").json() == {"data": [], "count": 0}


def test_a_canceled_job_lists_its_pending_delivery(api, monkeypatch) -> None:
    monkeypatch.setattr(get_settings(), "webhook_allow_private", True)
    # Where no worker of this session can start it before the cancel.
    monkeypatch.setattr(get_settings(), "queue", UNSERVED_QUEUE)
    job = submit(api, "http://127.0.0.1:9/hooks").json()
    assert job["webhook"]["events"] == ["started", "succeeded", "failed", "canceled"]
    assert api.post(f"/v1/jobs/{job['id']}/cancel").status_code == 200
    (delivery,) = api.get(f"/v1/jobs/{job['id']}/webhooks").json()["data"]
    assert delivery["event"] == "job.canceled" and delivery["status"] == "pending"
    assert delivery["id"].startswith("msg_") and delivery["attempts"] == []


def test_batch_webhooks_are_checked_and_their_job_events_go_to_the_jobs(api, monkeypatch) -> None:
    body = {
        "template": {
            "type": "text2img",
            "model": "tiny-sd",
            "params": {"prompt": "x", "num_inference_steps": 2},
        },
        "sweep": {"seed": [1, 2]},
        "webhook": {"url": "http://10.0.0.1/hooks", "events": ["completed", "failed"]},
    }
    assert "DIFFQ_WEBHOOK_ALLOW_PRIVATE" in error_at(
        api.post("/v1/batches", json=body), ["body", "webhook", "url"]
    )

    monkeypatch.setattr(get_settings(), "webhook_allow_private", True)
    batch = api.post("/v1/batches", json=body).json()
    assert batch["webhook"] == body["webhook"] and batch["owner"] == TEST_OWNER
    jobs = api.get("/v1/jobs", params={"batch_id": batch["id"]}).json()["data"]
    assert [job["webhook"] for job in jobs] == [{"url": "http://10.0.0.1/hooks", "events": ["failed"]}] * 2

    canceled = api.post(f"/v1/batches/{batch['id']}/cancel").json()
    assert canceled["status"] == "canceled"
    (completed,) = api.get(f"/v1/batches/{batch['id']}/webhooks").json()["data"]
    assert completed["event"] == "batch.completed" and completed["batch_id"] == batch["id"]


def test_a_jsonl_batch_takes_its_webhook_as_a_form_field(api, monkeypatch) -> None:
    monkeypatch.setattr(get_settings(), "webhook_allow_private", True)
    lines = b'{"prompt": "a", "num_inference_steps": 2}\n'
    form = {"model": "tiny-sd", "webhook": '{"url": "http://127.0.0.1:9/hooks"}'}
    response = api.post("/v1/batches/jsonl", files={"file": ("p.jsonl", lines)}, data=form)
    assert response.status_code == 201, response.text
    assert response.json()["webhook"] == {"url": "http://127.0.0.1:9/hooks", "events": ["completed"]}

    form["webhook"] = '{"url": "http://127.0.0.1:9/hooks", "events": ["done"]}'
    response = api.post("/v1/batches/jsonl", files={"file": ("p.jsonl", lines)}, data=form)
    assert "'completed'" in error_at(response, ["body", "webhook", "events", 0])
