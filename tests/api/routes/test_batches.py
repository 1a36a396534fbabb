"""Batch validation at the door: every job is checked before any is written, and errors say where."""

import uuid
from collections.abc import Iterator

import httpx
import jsonschema
import pytest
import redis
from sqlalchemy import event, func, select

from api.routes.batches import EXAMPLE
from core.config import get_settings
from core.db import db_session, get_engine
from core.tables import Batch, Job
from tests.conftest import bearer, new_key
from tests.utils.images import noise_image
from tests.utils.jobs import text2img_spec, upload_image
from tests.utils.worker_rows import idle_worker_rows


def post(api, body: dict) -> httpx.Response:
    return api.post("/v1/batches", json=body)


def post_jsonl(api, text: str, **fields: str) -> httpx.Response:
    return api.post(
        "/v1/batches/jsonl",
        files={"file": ("jobs.jsonl", text.encode())},
        data=fields,
    )


def batch_count() -> int:
    with db_session() as session:
        return session.query(Batch).count()


MALFORMED = [
    ({"jobs": []}, "at least 1 item"),
    (
        {"jobs": [text2img_spec()], "template": {"model": "tiny-sd"}, "sweep": {"seed": [1]}},
        "either jobs",
    ),
    ({"template": {"model": "tiny-sd", "params": {"prompt": "x"}}}, "a template needs a sweep"),
    ({"template": {"model": "tiny-sd"}, "sweep": {"seed": []}}, "must not be empty: seed"),
    ({"jobs": [text2img_spec()], "sweep": {"seed": [1]}}, "leave sweep out"),
]
WELL_FORMED = [
    EXAMPLE,
    {"jobs": [text2img_spec(), text2img_spec(seed=2)]},
    {"name": "n", "template": {"model": "tiny-sd"}, "sweep": {"seed": [1]}},
]


@pytest.mark.parametrize(("body", "words"), MALFORMED)
def test_malformed_batch_is_422(api, body: dict, words: str) -> None:
    response = post(api, body)
    assert response.status_code == 422
    assert words in response.text


def batch_body_validator() -> jsonschema.Draft202012Validator:
    from api.main import app

    openapi = app.openapi()
    [content] = openapi["paths"]["/v1/batches"]["post"]["requestBody"]["content"].values()
    return jsonschema.Draft202012Validator(content["schema"] | {"components": openapi["components"]})


@pytest.mark.parametrize("body", [body for body, _ in MALFORMED])
def test_the_body_schema_refuses_what_the_route_refuses(body: dict) -> None:
    assert not batch_body_validator().is_valid(body)


@pytest.mark.parametrize("body", WELL_FORMED)
def test_the_body_schema_accepts_a_list_of_jobs_or_a_template_and_sweep(body: dict) -> None:
    batch_body_validator().validate(body)


def test_one_bad_job_rejects_the_whole_batch_and_names_it(api) -> None:
    before = batch_count()
    jobs = [text2img_spec(), text2img_spec(model="no-such-model"), text2img_spec(width=65)]
    response = post(api, {"jobs": jobs})
    assert response.status_code == 422
    locs = {tuple(error["loc"]): error["msg"] for error in response.json()["detail"]}
    assert ("body", "jobs", 2, "text2img", "params", "width") in locs
    assert batch_count() == before  # nothing written, not even the good job


def test_unknown_model_in_a_job_is_located(api) -> None:
    response = post(api, {"jobs": [text2img_spec(), text2img_spec(model="no-such-model")]})
    assert response.status_code == 422
    [error] = response.json()["detail"]
    assert error["loc"] == ["body", "jobs", 1, "model"]
    assert "not found in the models dir" in error["msg"]


def test_sweep_errors_name_the_expansion(api) -> None:
    template = {"model": "tiny-sd", "params": {"prompt": "x", "num_inference_steps": 2}}
    response = post(api, {"template": template, "sweep": {"scheduler": ["euler", "warp_drive"]}})
    assert response.status_code == 422
    [error] = response.json()["detail"]
    assert error["loc"] == ["body", "sweep", 1, "text2img", "params", "scheduler"]
    assert "unknown scheduler 'warp_drive'" in error["msg"]


def test_sweep_over_the_job_limit_is_422_before_expanding(api) -> None:
    sweep = {"seed": list(range(1000)), "guidance_scale": [float(g) for g in range(100)]}
    response = post(api, {"template": {"model": "tiny-sd", "params": {"prompt": "x"}}, "sweep": sweep})
    assert response.status_code == 422
    assert "the batch has 100000 jobs; the limit is 50000" in response.text


def test_jsonl_errors_name_the_line(api) -> None:
    text = "\n".join(
        [
            '{"prompt": "fine"}',
            "",
            "not json",
            "[1, 2]",
            '{"prompt": "x", "width": 65}',
            '{"params": {"prompt": "y"}, "extra": 1}',
        ]
    )
    response = post_jsonl(api, text, model="tiny-sd")
    assert response.status_code == 422
    errors = {tuple(error["loc"][:4]): error["msg"] for error in response.json()["detail"]}
    assert "not JSON" in errors[("body", "file", "line", 3)]
    assert "must be a JSON object" in errors[("body", "file", "line", 4)]
    assert "multiple of 8" in errors[("body", "file", "line", 5)]
    assert "Extra inputs are not permitted" in errors[("body", "file", "line", 6)]
    assert ("body", "file", "line", 1) not in errors


def test_jsonl_without_a_model_is_422(api) -> None:
    response = post_jsonl(api, '{"prompt": "x"}\n')
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"][-1] == "model"


def test_empty_jsonl_is_422(api) -> None:
    response = post_jsonl(api, "\n\n", model="tiny-sd")
    assert response.status_code == 422
    assert "no jobs" in response.text


def test_unknown_batch_is_404(api) -> None:
    for path in ("", "/manifest.json", "/manifest.csv"):
        response = api.get(f"/v1/batches/{uuid.uuid4()}{path}")
        assert response.status_code == 404
        assert "no batch with id" in response.text


def test_jsonl_form_type_is_the_default_job_type(api) -> None:
    response = post_jsonl(api, '{"prompt": "x"}\n', model="tiny-sd", type="img2img")
    assert response.status_code == 422
    [error] = response.json()["detail"]
    assert error["loc"] == ["body", "file", "line", 1, "img2img", "params", "image"]


@pytest.fixture
def own_queue(monkeypatch: pytest.MonkeyPatch, broker: str) -> Iterator[str]:
    """A queue of this test's own for generation jobs, which no worker consumes, with three live idle
    worker rows that serve it; the messages in it can be counted."""
    queue = f"diffq-test-batch-{uuid.uuid4().hex[:8]}"
    monkeypatch.setattr(get_settings(), "queue", queue)
    with idle_worker_rows(queue, broker, "batch"):
        yield queue
    redis.Redis.from_url(broker).delete(queue)


def test_a_10000_job_batch_wakes_each_serving_worker_once(api, own_queue: str, broker: str) -> None:
    key = new_key(f"batch-{uuid.uuid4().hex[:8]}", max_queued_jobs=0)
    template = {"model": "tiny-sd", "params": {"num_inference_steps": 2, "width": 64, "height": 64}}
    sweep = {"prompt": [f"a squirrel, take {i}" for i in range(100)], "seed": list(range(100))}
    response = api.post("/v1/batches", json={"template": template, "sweep": sweep}, headers=bearer(key))
    assert response.status_code == 201, response.text[:500]
    assert response.json()["total"] == 10_000
    with db_session() as session:
        queued = session.scalar(
            select(func.count()).select_from(Job).where(Job.batch_id == uuid.UUID(response.json()["id"]))
        )
    assert queued == 10_000
    # The wake-ups went out after the response (TestClient runs background tasks before returning):
    # one per live worker serving the queue, not one per job.
    assert redis.Redis.from_url(broker).llen(own_queue) == 3


def test_every_invalid_job_of_a_big_batch_is_named(api) -> None:
    """Admission answers each distinct question once (core/memo.py), yet still names every job that
    fails it, and only those."""
    jobs = [text2img_spec(seed=i) for i in range(2000)]
    jobs[7] = text2img_spec(model="no-such-model")
    jobs[1500] = text2img_spec(num_inference_steps=1000, scheduler="ddim")  # tiny-sd runs at most 999
    jobs[1501] = text2img_spec(num_inference_steps=1000)
    jobs[1502] = text2img_spec(num_inference_steps=999, scheduler="ddim")
    jobs[1999] = text2img_spec(num_images=17)  # over DIFFQ_MAX_NUM_IMAGES
    response = post(api, {"jobs": jobs})
    assert response.status_code == 422
    locs = {tuple(error["loc"]): error["msg"] for error in response.json()["detail"]}
    steps = ("params", "num_inference_steps")
    assert locs == {
        ("body", "jobs", 7, "model"): locs[("body", "jobs", 7, "model")],
        ("body", "jobs", 1500, *steps): "scheduler 'ddim' on tiny-sd allows at most 999 steps, "
        "got num_inference_steps=1000",
        (
            "body",
            "jobs",
            1501,
            *steps,
        ): "tiny-sd's scheduler allows at most 999 steps, got num_inference_steps=1000",
        ("body", "jobs", 1999, "params", "num_images"): "num_images must be at most 16, got 17",
    }
    assert "not found in the models dir" in locs[("body", "jobs", 7, "model")]


def test_a_batch_looks_each_distinct_reference_up_once(api) -> None:
    """A batch of img2img jobs that all name one upload, one model and one scheduler runs as many SQL
    statements when it has 200 jobs as when it has 10: each is looked up once, not once per job."""
    image = upload_image(api, noise_image())

    def statements_for(count: int) -> int:
        params = {"prompt": "x", "image": image, "num_inference_steps": 4, "strength": 0.5}
        jobs = [{"type": "img2img", "model": "tiny-sd", "params": params | {"seed": i}} for i in range(count)]
        statements: list[str] = []

        def count_statement(conn, cursor, statement: str, *args) -> None:
            statements.append(statement)

        event.listen(get_engine(), "before_cursor_execute", count_statement)
        try:
            response = post(api, {"jobs": jobs})
        finally:
            event.remove(get_engine(), "before_cursor_execute", count_statement)
        assert response.status_code == 201, response.text[:500]
        assert response.json()["total"] == count
        return len(statements)

    assert statements_for(200) == statements_for(10)


@pytest.mark.parametrize(
    ("field", "value", "words"),
    [
        ("priority", 5, 'set priority on the batch, not in its template: {"priority": 5, "template"'),
        ("webhook", {"url": "http://127.0.0.1:9/h"}, "set webhook on the batch, not in its template"),
    ],
)
def test_a_job_field_in_a_template_says_to_set_it_on_the_batch(
    api, monkeypatch: pytest.MonkeyPatch, field: str, value, words: str
) -> None:
    monkeypatch.setattr(get_settings(), "webhook_allow_private", True)
    template = {"model": "tiny-sd", "params": {"prompt": "x", "num_inference_steps": 2}}
    response = post(api, {"template": template | {field: value}, "sweep": {"seed": [1, 2]}})
    assert response.status_code == 422, response.text
    [error] = response.json()["detail"]
    assert error["loc"] == ["body", "template", field] and error["msg"].startswith(words)
    # Where the message says: the batch's own field.
    accepted = post(api, {field: value, "template": template, "sweep": {"seed": [1, 2]}})
    assert accepted.status_code == 201, accepted.text
    # The template stored with the batch holds no such field (its JSON schema neither).
    from api.schemas import BatchTemplate

    assert BatchTemplate.model_validate(template).model_dump() == {"type": "text2img"} | template
    assert field not in BatchTemplate.model_json_schema()["properties"]
