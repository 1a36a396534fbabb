"""Requests the API can't read say what to fix: a body that is not UTF-8 or nests too deeply, one that
is not JSON or sent without `content-type: application/json`, an image in a format Pillow reads but
diffq does not take, and multipart form fields a route does not have. FastAPI's TestClient on the real
Postgres."""

import io

import pytest
from fastapi.testclient import TestClient
from PIL import Image

JSON = {"content-type": "application/json"}
JOB = '{"type": "text2img", "model": "tiny-sd", "params": {"prompt": "a fox", "num_inference_steps": 2}}'


def test_a_body_that_is_not_utf8_says_where(api: TestClient) -> None:
    response = api.post("/v1/jobs", content=b'{"type": "text2img\xff"}', headers=JSON)
    assert response.status_code == 400, response.text
    assert response.json()["detail"] == (
        "the body is not valid UTF-8: byte 0xff at position 18 (invalid start byte); "
        "send JSON encoded as UTF-8"
    )


def test_a_deeply_nested_body_says_so(api: TestClient) -> None:
    response = api.post("/v1/jobs", content=b"[" * 100_000 + b"]" * 100_000, headers=JSON)
    assert response.status_code == 400, response.text
    assert "nests arrays or objects too deeply" in response.json()["detail"]


def test_invalid_json_says_where_and_why(api: TestClient) -> None:
    response = api.post("/v1/jobs", content=b'{"type": "text2img",}', headers=JSON)
    assert response.status_code == 422, response.text
    [error] = response.json()["detail"]
    assert (
        error["msg"]
        == "the body is not valid JSON at character 20: Expecting property name enclosed in double quotes"
    )


@pytest.mark.parametrize("content_type", [None, "text/plain"])
def test_a_body_not_sent_as_json_says_to_send_json(api: TestClient, content_type: str | None) -> None:
    headers = {"content-type": content_type} if content_type else {}
    response = api.post("/v1/jobs", content=JOB.encode(), headers=headers)
    assert response.status_code == 422, response.text
    [error] = response.json()["detail"]
    assert error["msg"].startswith("send the body as JSON with the header content-type: application/json")
    assert f"this request's content-type: {content_type or 'none'}" in error["msg"]
    assert api.post("/v1/jobs", content=JOB.encode(), headers=JSON).status_code == 201


@pytest.mark.parametrize("image_format", ["GIF", "TIFF"])
def test_an_image_in_a_format_not_taken_names_the_formats_taken(api: TestClient, image_format: str) -> None:
    buffer = io.BytesIO()
    Image.new("RGB", (32, 32), (1, 2, 3)).save(buffer, format=image_format)
    response = api.post("/v1/uploads", files={"file": ("a.img", buffer.getvalue())})
    assert response.status_code == 422, response.text
    [error] = response.json()["detail"]
    assert error["msg"] == (
        f"an image in {image_format} format, which diffq does not take; convert it to PNG, JPEG, WEBP or BMP"
    )


def test_unknown_form_fields_are_422_naming_the_allowed_ones(api: TestClient) -> None:
    jsonl = {"file": ("jobs.jsonl", b'{"prompt": "a fox", "num_inference_steps": 2}\n')}
    response = api.post("/v1/batches/jsonl", files=jsonl, data={"model": "tiny-sd", "priorty": "5"})
    assert response.status_code == 422, response.text
    [error] = response.json()["detail"]
    assert error["loc"] == ["body", "priorty"]
    assert (
        error["msg"]
        == "unknown form field 'priorty'; the fields are file, type, model, name, webhook, priority"
    )
    assert (
        api.post("/v1/batches/jsonl", files=jsonl, data={"model": "tiny-sd", "priority": "0"}).status_code
        == 201
    )

    png = io.BytesIO()
    Image.new("RGB", (32, 32)).save(png, format="PNG")
    response = api.post("/v1/uploads", files={"file": ("a.png", png.getvalue())}, data={"kind": "zip"})
    assert response.status_code == 422, response.text
    assert "unknown form field 'kind'; the fields are file" in response.text


TEXT2IMG = {"type": "text2img", "model": "tiny-sd", "params": {"prompt": "a fox", "num_inference_steps": 2}}


def test_bare_strings_where_objects_go_say_which_object(api: TestClient) -> None:
    webhook = api.post("/v1/jobs", json=TEXT2IMG | {"webhook": "https://example.com/h"})
    assert webhook.status_code == 422
    assert 'a webhook is an object: {"url": "https://example.com/h"}' in webhook.json()["detail"][0]["msg"]
    jsonl = {"file": ("jobs.jsonl", b'{"prompt": "a fox", "num_inference_steps": 2}\n')}
    form = api.post(
        "/v1/batches/jsonl", files=jsonl, data={"model": "tiny-sd", "webhook": "https://example.com/h"}
    )
    assert (
        form.status_code == 422
        and 'holds JSON: {"url": "https://example.com/h"}' in form.json()["detail"][0]["msg"]
    )
    params = {"prompt": "a fox", "image": "0123456789abcdef0123456789abcdef"}
    image = api.post("/v1/jobs", json={"type": "img2img", "model": "tiny-sd", "params": params})
    assert image.status_code == 422
    assert '{"upload": "<id from POST /v1/uploads>"}' in image.json()["detail"][0]["msg"]


def test_priority_takes_integers_only(api: TestClient) -> None:
    for priority in (True, "3", 1.5):
        response = api.post("/v1/jobs", json=TEXT2IMG | {"priority": priority})
        assert response.status_code == 422, (priority, response.text)
        assert "priority" in response.json()["detail"][0]["loc"]


def test_a_webhook_url_with_credentials_is_refused(api: TestClient) -> None:
    response = api.post("/v1/jobs", json=TEXT2IMG | {"webhook": {"url": "https://user:pw@example.com/h"}})
    assert response.status_code == 422 and "may not hold credentials" in response.json()["detail"][0]["msg"]
    assert "pw@" not in response.json()["detail"][0]["msg"]


# Over the tests' DIFFQ_MAX_UPLOAD_BYTES (2 MiB, tests/conftest.py), and not JSON: a body that was read
# and parsed would answer 422 (not valid JSON), one refused unread 413.
OVERSIZED = b"x" * (3 * 1024 * 1024)
LIMIT_TEXT = f"the limit is {2 * 1024 * 1024} (DIFFQ_MAX_UPLOAD_BYTES)"


@pytest.mark.parametrize("route", ["/v1/jobs", "/v1/batches", "/v1/schedules"])
def test_a_json_body_over_the_upload_limit_is_413_unread(api: TestClient, route: str) -> None:
    response = api.post(route, content=OVERSIZED, headers=JSON)
    assert response.status_code == 413, response.text
    assert response.json()["detail"].startswith(f"the body is {len(OVERSIZED)} bytes; {LIMIT_TEXT}")
    # Just under the limit the body is read (and found not to be JSON).
    assert api.post(route, content=OVERSIZED[: 1024 * 1024], headers=JSON).status_code == 422


def test_a_chunked_json_body_is_counted_and_refused_past_the_limit(api: TestClient) -> None:
    chunks = (OVERSIZED[i : i + 65536] for i in range(0, len(OVERSIZED), 65536))
    response = api.post("/v1/batches", content=chunks, headers=JSON)
    assert response.status_code == 413, response.text
    assert response.json()["detail"].startswith(f"the body is over {2 * 1024 * 1024} bytes; {LIMIT_TEXT}")
    small = (part for part in [JOB[:10].encode(), JOB[10:].encode()])
    assert api.post("/v1/jobs", content=small, headers=JSON).status_code == 201


def test_over_http_the_413_reaches_the_client(api: TestClient) -> None:
    """uvicorn itself: the client that sent a long body, declared or chunked, reads the 413."""
    import httpx

    from cli.quickstart import free_port, start_api

    port = free_port()
    server = start_api(port)
    try:
        url = f"http://127.0.0.1:{port}/v1/batches"
        headers = JSON | dict(api.headers)
        declared = httpx.post(url, content=OVERSIZED, headers=headers, timeout=60)
        chunked = httpx.post(
            url, content=iter([OVERSIZED[:1024], OVERSIZED[1024:]]), headers=headers, timeout=60
        )
    finally:
        server.stop()
    assert declared.status_code == 413 and LIMIT_TEXT in declared.json()["detail"]
    assert chunked.status_code == 413 and LIMIT_TEXT in chunked.json()["detail"]


def test_multipart_uploads_keep_their_own_limit(api: TestClient) -> None:
    """A file of exactly the limit makes a multipart body over it (the form's framing): it is read, and
    refused only for not being an image."""
    response = api.post("/v1/uploads", files={"file": ("a.png", OVERSIZED[: 2 * 1024 * 1024])})
    assert response.status_code == 422 and "not a decodable image" in response.text, response.text
    over = api.post("/v1/uploads", files={"file": ("a.png", OVERSIZED)})
    assert over.status_code == 413 and "DIFFQ_MAX_UPLOAD_BYTES" in over.json()["detail"]
