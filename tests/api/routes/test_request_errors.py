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
