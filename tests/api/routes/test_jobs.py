"""Validation at the door: bad specs are 422s that name the field and say what to fix."""

import httpx
import pytest

from tests.utils.jobs import text2img_spec


def post(api, spec) -> httpx.Response:
    return api.post("/v1/jobs", json=spec)


def messages(response: httpx.Response) -> dict[str, str]:
    return {".".join(str(p) for p in error["loc"]): error["msg"] for error in response.json()["detail"]}


@pytest.mark.parametrize(
    ("params", "field", "words"),
    [
        ({"width": 65}, "width", "multiple of 8"),
        ({"height": 100}, "height", "multiple of 8"),
        ({"num_inference_steps": 0}, "num_inference_steps", "greater than or equal to 1"),
        ({"num_inference_steps": 1001}, "num_inference_steps", "less than or equal to 1000"),
        ({"guidance_scale": -1}, "guidance_scale", "greater than or equal to 0"),
        ({"num_images": 0}, "num_images", "greater than or equal to 1"),
        ({"num_images": 17}, "num_images", "at most 16"),
        ({"prompt": ""}, "prompt", "at least 1 character"),
        ({"steps": 3}, "steps", "Extra inputs are not permitted"),
    ],
)
def test_bad_params_are_422_per_field(api, params, field, words) -> None:
    response = post(api, text2img_spec(**params))
    assert response.status_code == 422
    found = {loc: msg for loc, msg in messages(response).items() if loc.endswith(f"params.{field}")}
    assert found, messages(response)
    assert words in next(iter(found.values()))


def test_pixel_limit(api) -> None:
    response = post(api, text2img_spec(width=2048, height=2048))
    assert response.status_code == 422
    assert "the limit is 1048576" in response.text


def test_unknown_type(api) -> None:
    response = post(api, {"type": "text2video", "model": "tiny-sd", "params": {}})
    assert response.status_code == 422
    assert "'text2video'" in response.text and "'text2img'" in response.text


@pytest.mark.parametrize(
    ("model", "words"),
    [
        ("no-such-model", "not found in the models dir"),
        ("../etc", "must be a name under the models dir"),
        ("/etc/passwd", "must be a name under the models dir"),
    ],
)
def test_unknown_or_escaping_model(api, model, words) -> None:
    response = post(api, text2img_spec(model=model))
    assert response.status_code == 422
    assert words in messages(response)["body.model"]


def test_missing_job_is_404(api) -> None:
    response = api.get("/v1/jobs/00000000-0000-0000-0000-000000000000")
    assert response.status_code == 404
    assert "no job with id" in response.json()["detail"]


def test_list_rejects_unknown_status(api) -> None:
    response = api.get("/v1/jobs", params={"status": "done"})
    assert response.status_code == 422


def test_healthz_and_docs(api) -> None:
    assert api.get("/healthz").json() == {"status": "ok"}
    assert api.get("/docs").status_code == 200
    assert "/v1/jobs" in api.get("/openapi.json").json()["paths"]


def test_a_nul_character_in_a_model_name_is_a_422_not_a_500(api) -> None:
    response = post(api, {"type": "unconditional", "model": "\u0000"})  # found by the API fuzzer
    assert response.status_code == 422, response.text
    assert "remove NUL characters" in str(response.json()["detail"])


def test_nul_in_a_path_is_a_422(api) -> None:
    response = api.get("/v1/models/a%00b")
    assert response.status_code in (404, 422), response.text
    assert response.status_code != 422 or "remove NUL characters" in response.text


@pytest.mark.parametrize(
    "body",
    [
        b'{"type": "text2img", "model": "tiny-sd", "params": {"prompt": "x", "seed": 1e400}}',  # inf
        b'{"type": "text2img", "model": "tiny-sd", "params": {"prompt": "a\\ud800b", "steps": 1}}',
        b'{"type": "text2img", "model": "tiny-sd", "params": {"prompt": "' + b"x" * 200_000 + b'"}}',
    ],
    ids=["infinite-seed", "lone-surrogate", "huge-prompt"],
)
def test_a_422_never_fails_on_or_echoes_the_input(api, body: bytes) -> None:
    """Found by a new user: FastAPI's own 422 echoed the input, and an `inf` or a lone surrogate made
    that answer a 500, a huge prompt an answer as large."""
    response = api.post("/v1/jobs", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 422, response.text
    assert len(response.content) < 5_000
    assert all(
        error["msg"] and not error["msg"].startswith("Value error") for error in response.json()["detail"]
    )


def test_list_rejects_unknown_type(api) -> None:
    response = api.get("/v1/jobs", params={"type": "text2video"})
    assert response.status_code == 422 and "text2img" in response.text
    assert api.get("/v1/jobs", params={"type": "text2img"}).status_code == 200


@pytest.mark.parametrize("number", ["1e999", "-1e999", "Infinity", "NaN"])
def test_infinite_or_nan_numbers_are_422(api, number: str) -> None:
    """A literal too large for a float parses as inf; it made every latent NaN at the first step."""
    params = '{"prompt": "x", "guidance_scale": ' + number + "}"
    body = '{"type": "text2img", "model": "tiny-sd", "params": ' + params + "}"
    response = api.post("/v1/jobs", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 422, response.text
    assert response.json()["detail"][0]["loc"][-1] == "guidance_scale"


INT32_MAX, INT64_MAX = 2**31 - 1, 2**63 - 1


@pytest.mark.parametrize(
    ("path", "name", "limit"),
    [
        ("/v1/jobs/{job}/metrics", "after_step", INT32_MAX),  # job_metrics.step: integer
        ("/v1/jobs", "offset", INT64_MAX),  # OFFSET: bigint
        ("/v1/batches", "offset", INT64_MAX),
    ],
)
def test_integer_parameters_name_their_bounds(api, path: str, name: str, limit: int) -> None:
    job = post(api, text2img_spec())
    assert job.status_code == 201, job.text
    url = path.format(job=job.json()["id"])
    response = api.get(url, params={name: limit + 1})
    assert response.status_code == 422, response.text
    [error] = response.json()["detail"]
    assert error["loc"] == ["query", name]
    assert error["msg"] == f"Input should be less than or equal to {limit}"
    assert api.get(url, params={name: limit}).status_code == 200


@pytest.mark.parametrize(
    ("cast", "words"),
    [
        ("CAST(:value AS integer)", "keep that integer within 32 bits (-2147483648 to 2147483647)"),
        ("CAST(:value AS bigint)", "keep that integer within 64 bits"),
    ],
)
def test_the_database_range_message_names_the_columns_type(api, cast: str, words: str) -> None:
    """The net under the parameters' bounds: Postgres's own refusal, answered with the range of the type
    it names (a 32-bit column had been told "keep integers within 64 bits")."""
    import json

    from sqlalchemy import text
    from sqlalchemy.exc import DataError
    from starlette.requests import Request

    from api.main import refused_by_the_database
    from core.db import db_session

    with db_session() as session, pytest.raises(DataError) as raised:
        session.execute(text(f"SELECT {cast}"), {"value": 2**63})
    response = refused_by_the_database(Request({"type": "http"}), raised.value)
    [error] = json.loads(response.body)["detail"]
    assert response.status_code == 422 and words in error["msg"], error
    assert "NUL" not in error["msg"]
