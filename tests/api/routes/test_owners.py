"""Owners and API keys: each owner sees and names only its own things (another's answer 404, as if
absent), keys are checked (401) with scopes (403), quotas answer 429 with Retry-After and hold under
concurrent submitters, and the rate limit counts per key. The API in-process on the real Postgres,
Redis and S3; the concurrency test over HTTP (uvicorn in a thread)."""

import io
import logging
import shutil
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from sqlalchemy import func, select

from tests.conftest import bearer, cancel_queued_jobs, new_key
from tests.utils.jobs import UNSERVED_QUEUE


def text2img(prompt: str = "a fox") -> dict:
    return {"type": "text2img", "model": "tiny-sd", "params": {"prompt": prompt, "num_inference_steps": 2}}


def png_bytes(size: int = 64) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (size, size), (200, 30, 30)).save(buffer, format="PNG")
    return buffer.getvalue()


class Owner:
    """A fresh owner with a read+submit key, talking through the shared TestClient."""

    def __init__(self, api: TestClient, **limits: int | str) -> None:
        self.name = f"owner-{uuid.uuid4().hex[:8]}"
        self.key = new_key(self.name, **limits)
        self.api = api

    def get(self, url: str, **kwargs) -> httpx.Response:
        return self.api.get(url, headers=bearer(self.key), **kwargs)

    def post(self, url: str, **kwargs) -> httpx.Response:
        return self.api.post(url, headers=bearer(self.key), **kwargs)

    def request(self, method: str, url: str, **kwargs) -> httpx.Response:
        return self.api.request(method, url, headers=bearer(self.key), **kwargs)


@pytest.fixture
def owners(api: TestClient) -> Iterator[tuple[Owner, Owner]]:
    yield Owner(api), Owner(api)
    cancel_queued_jobs()


def test_owners_see_and_touch_only_their_own(owners: tuple[Owner, Owner], admin_api: TestClient) -> None:
    alice, bob = owners
    job = alice.post("/v1/jobs", json=text2img())
    assert job.status_code == 201, job.text
    job_id = job.json()["id"]
    batch = alice.post("/v1/batches", json={"jobs": [text2img("a"), text2img("b")]})
    assert batch.status_code == 201, batch.text
    batch_id = batch.json()["id"]
    schedule = alice.post("/v1/schedules", json={"cron": "0 3 * * *", "job": text2img()})
    assert schedule.status_code == 201, schedule.text
    schedule_id = schedule.json()["id"]
    upload = alice.post("/v1/uploads", files={"file": ("a.png", png_bytes())})
    assert upload.status_code == 201, upload.text
    upload_id = upload.json()["id"]

    # Alice reaches all of it.
    assert alice.get(f"/v1/jobs/{job_id}").status_code == 200
    assert alice.get(f"/v1/batches/{batch_id}").status_code == 200
    assert alice.get(f"/v1/schedules/{schedule_id}").status_code == 200
    assert job_id in {j["id"] for j in alice.get("/v1/jobs").json()["data"]}

    # Bob gets 404s, exactly as for ids that do not exist.
    for method, url in [
        ("GET", f"/v1/jobs/{job_id}"),
        ("POST", f"/v1/jobs/{job_id}/cancel"),
        ("GET", f"/v1/jobs/{job_id}/metrics"),
        ("GET", f"/v1/batches/{batch_id}"),
        ("POST", f"/v1/batches/{batch_id}/cancel"),
        ("GET", f"/v1/batches/{batch_id}/manifest.json"),
        ("GET", f"/v1/batches/{batch_id}/manifest.csv"),
        ("GET", f"/v1/schedules/{schedule_id}"),
        ("DELETE", f"/v1/schedules/{schedule_id}"),
    ]:
        response = bob.request(method, url)
        assert response.status_code == 404, (method, url, response.text)
        real_id, random_id = url.split("/")[3], str(uuid.uuid4())
        unknown = bob.request(method, url.replace(real_id, random_id))
        assert response.json()["detail"] == unknown.json()["detail"].replace(random_id, real_id)
    assert bob.request("PATCH", f"/v1/schedules/{schedule_id}", json={"enabled": False}).status_code == 404
    assert job_id not in {j["id"] for j in bob.get("/v1/jobs").json()["data"]}
    assert bob.get("/v1/jobs", params={"batch_id": batch_id}).json()["count"] == 0
    assert schedule_id not in {s["id"] for s in bob.get("/v1/schedules").json()["data"]}

    # Bob can't name Alice's upload or her job's outputs in a job of his.
    img2img = {
        "type": "img2img",
        "model": "tiny-sd",
        "params": {"prompt": "x", "image": {"upload": upload_id}},
    }
    refused = bob.post("/v1/jobs", json=img2img)
    assert refused.status_code == 422
    assert f"upload '{upload_id}' does not exist" in refused.text
    by_key = img2img | {"params": {"prompt": "x", "image": {"key": f"jobs/{job_id}/0.png"}}}
    assert "is not yours to read" in bob.post("/v1/jobs", json=by_key).text
    # ... while Alice can.
    assert alice.post("/v1/jobs", json=img2img).status_code == 201

    # An admin sees every owner's, and can list one owner's.
    assert admin_api.get(f"/v1/jobs/{job_id}").status_code == 200
    assert bob.get("/v1/jobs", params={"owner": alice.name}).status_code == 403  # ?owner= is for admins
    listed = admin_api.get("/v1/jobs", params={"owner": alice.name}).json()["data"]
    assert listed and {j["id"] for j in listed} >= {job_id}
    # The schedule stays Alice's: Bob's 404s did not touch it.
    assert alice.get(f"/v1/schedules/{schedule_id}").json()["enabled"] is True


def test_models_are_their_owners_until_published(owners: tuple[Owner, Owner], admin_api: TestClient) -> None:
    from core.config import get_settings
    from core.db import db_session
    from core.tables import ModelKind, RegisteredModel

    alice, bob = owners
    name = f"glyphs-{uuid.uuid4().hex[:6]}"
    with db_session() as session:
        session.add(
            RegisteredModel(
                name=name, kind=ModelKind.UNCONDITIONAL, storage_prefix=f"models/{name}/x", owner=alice.name
            )
        )
    job = {"type": "unconditional", "model": name, "params": {"num_inference_steps": 2}}
    assert alice.get(f"/v1/models/{name}").status_code == 200
    assert bob.get(f"/v1/models/{name}").status_code == 404
    assert name not in {m["name"] for m in bob.get("/v1/models").json()["data"]}
    refused = bob.post("/v1/jobs", json=job)
    assert refused.status_code == 422 and refused.json()["detail"][0]["type"] == "unknown_model"
    # Nor through the workers' cache of it in the models dir, by anyone: a model is named by its name.
    cached = get_settings().models_dir / ".registry" / name / "x"
    shutil.copytree(get_settings().models_dir / "tiny-ddpm", cached)
    for owner in (bob, alice):
        by_path = owner.post("/v1/jobs", json=job | {"model": f".registry/{name}/x"})
        assert by_path.status_code == 422 and by_path.json()["detail"][0]["type"] == "unknown_model"
        assert "hidden folder" in by_path.text
    train_lora = {
        "type": "train_lora",
        "model": f".registry/{name}/x",
        "output_model": f"lora-{name}",
        "params": {"dataset": "builtin:glyphs"},
    }
    assert "hidden folder" in bob.post("/v1/jobs", json=train_lora).text
    # Nobody trains over another owner's model.
    train = {
        "type": "train_unconditional",
        "output_model": name,
        "overwrite_output_model": True,
        "params": {"dataset": "builtin:glyphs"},
    }
    assert "taken by another owner" in bob.post("/v1/jobs", json=train).text

    # Only an admin publishes; then every owner may use it.
    assert bob.request("PATCH", f"/v1/models/{name}", json={"published": True}).status_code == 403
    published = admin_api.patch(f"/v1/models/{name}", json={"published": True})
    assert published.status_code == 200 and published.json()["published"] is True
    assert bob.get(f"/v1/models/{name}").json()["owner"] == alice.name
    assert bob.post("/v1/jobs", json=job).status_code == 201


def test_keys_are_checked(api: TestClient) -> None:
    from core.auth import revoke_key
    from core.db import db_session

    missing = api.get("/v1/jobs", headers={"Authorization": ""})
    assert missing.status_code == 401
    assert missing.headers["www-authenticate"] == "Bearer"
    assert "diffq keys create --owner" in missing.json()["detail"]
    for wrong in ["nonsense", "dq_00000000_" + "A" * 43, new_key("someone")[:-1] + "#"]:
        response = api.get("/v1/jobs", headers=bearer(wrong))
        assert response.status_code == 401, wrong
        assert "unknown or was revoked" in response.json()["detail"]
    key = new_key("someone")
    assert api.get("/v1/jobs", headers=bearer(key)).status_code == 200
    with db_session() as session:
        assert revoke_key(session, key.split("_")[1])
    assert api.get("/v1/jobs", headers=bearer(key)).status_code == 401
    # Health stays open.
    assert api.get("/healthz", headers={"Authorization": ""}).status_code == 200


def test_scopes(api: TestClient) -> None:
    reader = new_key("scoped", ["read"])
    submitter = new_key("scoped", ["submit"])
    refused = api.post("/v1/jobs", json=text2img(), headers=bearer(reader))
    assert refused.status_code == 403
    assert "lacks the 'submit' scope" in refused.json()["detail"]
    assert api.get("/v1/jobs", headers=bearer(reader)).status_code == 200
    assert api.get("/v1/jobs", headers=bearer(submitter)).status_code == 403
    created = api.post("/v1/jobs", json=text2img(), headers=bearer(submitter))
    assert created.status_code == 201
    assert api.post(f"/v1/jobs/{created.json()['id']}/cancel", headers=bearer(submitter)).status_code == 200


def test_metrics_need_an_admin_key_or_the_scrape_token(api: TestClient, admin_key: str) -> None:
    from core.config import get_settings

    assert api.get("/metrics", headers={"Authorization": ""}).status_code == 401
    assert api.get("/metrics").status_code == 403  # the tests' own key is not an admin's
    assert api.get("/metrics", headers=bearer(admin_key)).status_code == 200
    settings = get_settings()
    settings.metrics_token = "scrape-" + uuid.uuid4().hex
    try:
        assert api.get("/metrics", headers=bearer(settings.metrics_token)).status_code == 200
        assert api.get("/metrics", headers=bearer(settings.metrics_token + "x")).status_code == 401
    finally:
        settings.metrics_token = ""


def test_openapi_declares_the_bearer_scheme(api: TestClient) -> None:
    schema = api.get("/openapi.json").json()
    assert schema["components"]["securitySchemes"]["APIKey"] == {
        "type": "http",
        "scheme": "bearer",
        "description": schema["components"]["securitySchemes"]["APIKey"]["description"],
    }
    assert {"APIKey": []} in schema["paths"]["/v1/jobs"]["post"]["security"]


def test_me_shows_the_owner_and_its_limits(api: TestClient) -> None:
    owner = Owner(api, max_queued_jobs=7)
    me = owner.get("/v1/me").json()
    assert me["owner"] == owner.name and me["scopes"] == ["read", "submit"]
    assert me["limits"]["max_queued_jobs"] == 7


def test_auth_off_is_explicit_and_loud(api: TestClient, caplog: pytest.LogCaptureFixture) -> None:
    from api.main import app
    from core.config import get_settings

    settings = get_settings()
    settings.auth = False
    try:
        with caplog.at_level(logging.WARNING, logger="diffq.api"), TestClient(app) as anonymous:
            me = anonymous.get("/v1/me").json()
        assert me["owner"] == "default" and "admin" in me["scopes"]
        assert "AUTH IS OFF" in caplog.text
    finally:
        settings.auth = True


def test_queued_quota_holds_under_concurrent_submitters(
    api: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """20 threads submit at once over HTTP with a key that may have 5 queued jobs: exactly 5 are accepted."""
    from cli.quickstart import free_port, start_api
    from core.config import get_settings
    from core.db import db_session
    from core.tables import Job, JobStatus

    owner = Owner(api, max_queued_jobs=5)
    # Into a queue no worker serves: an end-to-end worker of this session would otherwise run them.
    monkeypatch.setattr(get_settings(), "queue", UNSERVED_QUEUE)
    port = free_port()
    start_api(port)
    url = f"http://127.0.0.1:{port}/v1/jobs"

    def submit(_: int) -> httpx.Response:
        return httpx.post(url, json=text2img(), headers=bearer(owner.key), timeout=60)

    with ThreadPoolExecutor(20) as pool:
        answers = list(pool.map(submit, range(20)))
    codes = sorted(response.status_code for response in answers)
    assert codes == [201] * 5 + [429] * 15, codes
    refused = next(response for response in answers if response.status_code == 429)
    assert int(refused.headers["retry-after"]) > 0
    assert "max_queued_jobs" in refused.json()["detail"]
    with db_session() as session:
        queued = session.scalar(
            select(func.count()).where(Job.owner == owner.name, Job.status == JobStatus.QUEUED)
        )
    assert queued == 5
    # A batch that would pass the quota is refused whole.
    batch = owner.post("/v1/batches", json={"jobs": [text2img()]})
    assert batch.status_code == 429


def test_batch_and_upload_quotas(api: TestClient) -> None:
    owner = Owner(api, max_batch_jobs=2, max_upload_bytes_per_day=2 * len(png_bytes()) + 10)
    # Over max_batch_jobs alone: no wait lets it pass, so no Retry-After.
    too_big = owner.post("/v1/batches", json={"jobs": [text2img(), text2img(), text2img()]})
    assert too_big.status_code == 422 and "retry-after" not in too_big.headers
    [error] = too_big.json()["detail"]
    assert "(max_batch_jobs); split it into batches of at most 2 jobs" in error["msg"]
    assert owner.post("/v1/batches", json={"jobs": [text2img(), text2img()]}).status_code == 201

    for _ in range(2):
        assert owner.post("/v1/uploads", files={"file": ("a.png", png_bytes())}).status_code == 201
    over = owner.post("/v1/uploads", files={"file": ("a.png", png_bytes())})
    assert over.status_code == 429
    assert "max_upload_bytes_per_day" in over.json()["detail"]
    # The oldest upload leaves the 24-hour window in about a day.
    assert 23 * 3600 < int(over.headers["retry-after"]) <= 24 * 3600 + 1


def test_rate_limit_per_key(api: TestClient) -> None:
    limited = Owner(api, rate_limit="3/minute")
    other = Owner(api)
    codes = [limited.get("/v1/jobs").status_code for _ in range(4)]
    assert codes == [200, 200, 200, 429]
    refused = limited.get("/v1/jobs")
    assert refused.status_code == 429 and 0 < int(refused.headers["retry-after"]) <= 60
    assert "3 per 1 minute" in refused.json()["detail"]
    assert other.get("/v1/jobs").status_code == 200  # counted per key


def test_storage_keys_belong_to_the_owner_of_their_job_or_upload(owners: tuple[Owner, Owner]) -> None:
    """What `/v1/files` (local storage) and input image keys allow: core/ownership.py `may_read_key`."""
    from core.auth import ANONYMOUS_ADMIN, Principal
    from core.db import db_session
    from core.ownership import may_read_key

    alice, bob = owners
    job_id = alice.post("/v1/jobs", json=text2img()).json()["id"]
    upload_id = alice.post("/v1/uploads", files={"file": ("a.png", png_bytes())}).json()["id"]
    as_alice = Principal(alice.name, frozenset({"read"}))
    as_bob = Principal(bob.name, frozenset({"read"}))
    with db_session() as session:
        for key in (f"jobs/{job_id}/0.png", f"jobs/{job_id}/samples/epoch-0001.png", f"uploads/{upload_id}"):
            assert may_read_key(session, as_alice, key), key
            assert not may_read_key(session, as_bob, key), key
            assert may_read_key(session, ANONYMOUS_ADMIN, key), key
        for key in ("notes/readme.txt", f"jobs/{uuid.uuid4()}/0.png", "jobs/not-a-uuid/0.png"):
            assert not may_read_key(session, as_alice, key), key


def test_priority_is_shown_and_limited_by_the_key(owners: tuple[Owner, Owner]) -> None:
    alice, _ = owners
    job = alice.post("/v1/jobs", json=text2img() | {"priority": 5})
    assert job.status_code == 201, job.text
    assert job.json()["priority"] == 5 and alice.get(f"/v1/jobs/{job.json()['id']}").json()["priority"] == 5

    body = {"priority": 4, "jobs": [text2img("a"), text2img("b") | {"priority": 7}]}
    batch = alice.post("/v1/batches", json=body)
    assert batch.status_code == 201, batch.text
    assert batch.json()["priority"] == 4
    jobs = alice.get("/v1/jobs", params={"batch_id": batch.json()["id"]}).json()["data"]
    assert [job["priority"] for job in jobs] == [4, 7]  # a job's own priority wins over its batch's

    capped = Owner(alice.api, max_priority=2)
    refused = capped.post("/v1/jobs", json=text2img() | {"priority": 3})
    assert refused.status_code == 422, refused.text
    [error] = refused.json()["detail"]
    assert error["loc"] == ["body", "priority"] and error["type"] == "priority_too_high"
    assert "2" in error["msg"], error["msg"]
    refused = capped.post("/v1/batches", json={"priority": 3, "jobs": [text2img()]})
    assert refused.status_code == 422, refused.text
    assert capped.post("/v1/jobs", json=text2img() | {"priority": 2}).status_code == 201


def test_batches_list_shows_the_owners_own_newest_first(
    owners: tuple[Owner, Owner], admin_api: TestClient
) -> None:
    alice, bob = owners
    made = []
    for prompts in (["a"], ["b", "c"]):
        created = alice.post("/v1/batches", json={"name": prompts[0], "jobs": [text2img(p) for p in prompts]})
        assert created.status_code == 201, created.text
        made.append(created.json()["id"])
    assert bob.post("/v1/batches", json={"jobs": [text2img()]}).status_code == 201

    listed = alice.get("/v1/batches").json()
    assert [batch["id"] for batch in listed["data"]] == made[::-1] and listed["count"] == 2
    assert [batch["total"] for batch in listed["data"]] == [2, 1]
    assert listed["data"][0]["counts"]["queued"] == 2 and listed["data"][0]["running"] == []
    assert [b["id"] for b in alice.get("/v1/batches", params={"limit": 1, "offset": 1}).json()["data"]] == [
        made[0]
    ]
    refused = bob.get("/v1/batches", params={"owner": alice.name})
    assert refused.status_code == 403 and "admin keys" in refused.json()["detail"]
    as_admin = admin_api.get("/v1/batches", params={"owner": alice.name}).json()
    assert [batch["id"] for batch in as_admin["data"]] == made[::-1]
    assert alice.get("/v1/batches", params={"limit": 0}).status_code == 422


def test_a_batch_larger_than_the_queued_quota_is_422_saying_to_split_it(api: TestClient) -> None:
    """Waiting can never let 5 jobs into a queue of 4: a 422 saying how to split, not a 429 to retry."""
    owner = Owner(api, max_queued_jobs=4)
    sweep = {"seed": [1, 2, 3, 4, 5]}
    template = {"model": "tiny-sd", "params": {"prompt": "a fox", "num_inference_steps": 2}}
    never = owner.post("/v1/batches", json={"template": template, "sweep": sweep})
    assert never.status_code == 422 and "retry-after" not in never.headers, never.text
    [error] = never.json()["detail"]
    assert error["msg"] == (
        f"the batch has 5 jobs and owner '{owner.name}' may have at most 4 queued (max_queued_jobs), so "
        "it can never fit; split it into batches of at most 4 jobs"
    )
    # Waiting helps a batch that fits the quota but not the room left in it: 429 with Retry-After.
    assert owner.post("/v1/batches", json={"jobs": [text2img()] * 3}).status_code == 201
    wait = owner.post("/v1/batches", json={"jobs": [text2img()] * 2})
    assert wait.status_code == 429 and int(wait.headers["retry-after"]) > 0
    assert "Wait for some to run" in wait.json()["detail"]
    cancel_queued_jobs()


def test_a_file_larger_than_the_daily_upload_quota_is_422(api: TestClient) -> None:
    owner = Owner(api, max_upload_bytes_per_day=len(png_bytes()) - 1)
    response = owner.post("/v1/uploads", files={"file": ("a.png", png_bytes())})
    assert response.status_code == 422 and "retry-after" not in response.headers, response.text
    [error] = response.json()["detail"]
    assert error["loc"] == ["body", "file"]
    assert "so it can never be uploaded; send a smaller file" in error["msg"]
