"""Training and model endpoints at the door: bad training specs are 422s that say what to fix."""

import httpx
import pytest

from tests.utils.jobs import train_spec


def post(api, spec) -> httpx.Response:
    return api.post("/v1/jobs", json=spec)


def errors(response: httpx.Response) -> dict[str, str]:
    return {".".join(str(p) for p in error["loc"]): error["msg"] for error in response.json()["detail"]}


@pytest.mark.parametrize(
    ("change", "field", "words"),
    [
        ({"output_model": "../up"}, "output_model", "letters, digits"),
        ({"output_model": "org/name"}, "output_model", "letters, digits"),
        ({"output_model": "tiny-ddpm"}, "output_model", "is a folder in the models dir"),
        ({"params": {"dataset": "builtin:cats"}}, "params.dataset", "the built-in ones are builtin:glyphs"),
        ({"params": {"dataset": "../etc"}}, "params.dataset", "neither 'builtin:<name>'"),
        ({"params": {"dataset": "0" * 32}}, "params.dataset", "no upload with id"),
        ({"params": {"dataset": "datasets/none"}}, "params.dataset", "holds no images"),
        ({"params": {"mixed_precision": "fp8"}}, "params.mixed_precision", "'no', 'fp16' or 'bf16'"),
        ({"params": {"learning_rate": 0}}, "params.learning_rate", "greater than 0"),
        ({"params": {"image_size": 15}}, "params", "multiple of 2"),
        ({"params": {"block_out_channels": [16, 30]}}, "params", "multiples of norm_num_groups"),
        (
            {"params": {"down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D"]}},
            "params.down_block_types",
            "unknown",
        ),
        ({"params": {"layers_per_block": 0}}, "params.layers_per_block", "greater than or equal to 1"),
        ({"params": {"steps": 3}}, "params.steps", "Extra inputs are not permitted"),
    ],
)
def test_bad_training_specs_are_422(admin_api, change, field, words) -> None:
    """As an admin, who may name any storage prefix (others: tests/api/routes/test_owners.py)."""
    spec = train_spec("fine-name")
    spec = spec | change | {"params": spec["params"] | change.get("params", {})}
    response = post(admin_api, spec)
    assert response.status_code == 422, response.text
    found = {loc: msg for loc, msg in errors(response).items() if loc.endswith(field)}
    assert found, errors(response)
    assert any(words in msg for msg in found.values()), found


def test_lora_needs_a_base_model(api) -> None:
    response = post(api, {"type": "train_lora", "output_model": "x", "params": {"dataset": "builtin:glyphs"}})
    assert response.status_code == 422
    assert "body.train_lora.model" in errors(response)


def test_unknown_models_and_metrics(api) -> None:
    assert api.get("/v1/models/no-such-model").status_code == 404
    missing = api.get("/v1/jobs/00000000-0000-0000-0000-000000000000/metrics")
    assert missing.status_code == 404
    listed = api.get("/v1/models").json()
    assert listed["count"] == len(listed["data"])
    response = post(api, {"type": "unconditional", "model": "no-such-model", "params": {}})
    assert "not found in the models dir" in errors(response)["body.model"]
