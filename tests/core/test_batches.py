import csv
import io
import json

import pytest

from core.batch_specs import (
    MAX_ERRORS,
    BatchInvalid,
    expand_sweep,
    parse_jsonl,
    specs_from_jsonl,
    specs_from_sweep,
    sweep_size,
)
from core.batches import CSV_COLUMNS, manifest_csv


def test_sweep_is_the_product_with_the_last_key_fastest() -> None:
    template = {"type": "text2img", "model": "tiny-sd", "params": {"prompt": "x", "num_inference_steps": 2}}
    sweep = {"prompt": ["a", "b"], "seed": [1, 2, 3]}
    specs = expand_sweep(template, sweep)
    assert sweep_size(sweep) == len(specs) == 6
    assert [(s["params"]["prompt"], s["params"]["seed"]) for s in specs] == [
        ("a", 1),
        ("a", 2),
        ("a", 3),
        ("b", 1),
        ("b", 2),
        ("b", 3),
    ]
    assert all(s["params"]["num_inference_steps"] == 2 and s["model"] == "tiny-sd" for s in specs)
    assert template["params"] == {"prompt": "x", "num_inference_steps": 2}  # left as it was


def test_jsonl_lines_are_params_or_whole_specs() -> None:
    text = "\n".join(
        [
            '{"prompt": "a"}',
            "",
            '{"type": "img2img", "params": {"prompt": "b"}}',
            '{"model": "other", "params": {}}',
        ]
    )
    lines = parse_jsonl(text, {"type": "text2img", "model": "tiny-sd"})
    assert [line.number for line in lines] == [1, 3, 4]
    assert [line.spec for line in lines] == [
        {"type": "text2img", "model": "tiny-sd", "params": {"prompt": "a"}},
        {"type": "img2img", "model": "tiny-sd", "params": {"prompt": "b"}},
        {"type": "text2img", "model": "other", "params": {}},
    ]


def test_jsonl_bad_lines_say_why() -> None:
    lines = parse_jsonl('{"prompt": "a"\n"just a string"\n', {"type": "text2img", "model": None})
    assert lines[0].spec is None and "not JSON" in (lines[0].error or "")
    assert lines[1].error == "a line must be a JSON object, got str"
    # A default left unset is left out, so that validation says the field is missing.
    assert parse_jsonl('{"prompt": "a"}', {"type": "text2img", "model": None})[0].spec == {
        "type": "text2img",
        "params": {"prompt": "a"},
    }


def test_sweep_specs_are_validated_and_located_by_expansion() -> None:
    template = {"type": "text2img", "model": "tiny-sd", "params": {"prompt": "x", "num_inference_steps": 2}}
    batch = specs_from_sweep(template, {"seed": [1, 2]})
    assert [spec.params.seed for spec in batch.specs] == [1, 2]
    assert batch.locs == [["body", "sweep", 0], ["body", "sweep", 1]]
    assert batch.source == {"source": "sweep", "template": template, "sweep": {"seed": [1, 2]}}
    with pytest.raises(BatchInvalid) as caught:
        specs_from_sweep(template, {"width": [64, 65]})
    [error] = caught.value.errors
    assert error["loc"] == ["body", "sweep", 1, "text2img", "params", "width"]
    assert "multiple of 8" in error["msg"]


def test_sweep_over_the_job_limit_is_refused_before_expanding() -> None:
    sweep = {"seed": list(range(1000)), "guidance_scale": [float(g) for g in range(100)]}
    with pytest.raises(BatchInvalid) as caught:
        specs_from_sweep({"model": "tiny-sd", "params": {}}, sweep)
    assert caught.value.errors == [
        {
            "loc": ["body"],
            "msg": "the batch has 100000 jobs; the limit is 50000 (DIFFQ_MAX_BATCH_JOBS); split it",
            "type": "too_many_jobs",
        }
    ]


def test_jsonl_specs_are_located_by_line_and_bad_lines_all_reported() -> None:
    batch = specs_from_jsonl(b'{"prompt": "a"}\n\n{"prompt": "b", "seed": 7}\n', None, "tiny-sd")
    assert [spec.params.prompt for spec in batch.specs] == ["a", "b"]
    assert batch.locs == [["body", "file", "line", 1], ["body", "file", "line", 3]]
    assert batch.source == {"source": "jsonl", "defaults": {"type": "text2img", "model": "tiny-sd"}}
    with pytest.raises(BatchInvalid) as caught:
        specs_from_jsonl(b'nope\n{"prompt": "a", "width": 65}\n', "text2img", "tiny-sd")
    locs = [error["loc"][:4] for error in caught.value.errors]
    assert locs == [["body", "file", "line", 1], ["body", "file", "line", 2]]


@pytest.mark.parametrize(
    ("data", "words"),
    [(b"\xff\xfe", "not UTF-8 text"), (b"\n \n", "the file has no jobs")],
)
def test_jsonl_that_is_not_text_or_empty_is_refused(data: bytes, words: str) -> None:
    with pytest.raises(BatchInvalid) as caught:
        specs_from_jsonl(data, None, "tiny-sd")
    [error] = caught.value.errors
    assert error["loc"] == ["body", "file"] and words in error["msg"]


def test_errors_are_capped_with_a_count_of_the_rest() -> None:
    errors = [{"loc": ["body", "jobs", i], "msg": "bad", "type": "x"} for i in range(MAX_ERRORS + 7)]
    capped = BatchInvalid(errors).errors
    assert len(capped) == MAX_ERRORS + 1
    assert capped[-1] == {"loc": ["body"], "msg": "and 7 more errors", "type": "too_many_errors"}


def test_manifest_csv_has_a_row_per_output_and_one_for_a_job_without() -> None:
    params = {"prompt": "a cat", "seed": 1}
    entries = [
        {
            "index": 0,
            "job_id": "j0",
            "status": "succeeded",
            "type": "text2img",
            "model": "tiny-sd",
            "params": params,
            "error": None,
            "outputs": [
                {"key": "jobs/j0/0.png", "url": "http://x/0.png", "seed": 1, "width": 64, "height": 64},
                {"key": "jobs/j0/1.png", "url": "http://x/1.png", "seed": 2, "width": 64, "height": 64},
            ],
        },
        {
            "index": 1,
            "job_id": "j1",
            "status": "failed",
            "type": "text2img",
            "model": "tiny-sd",
            "params": params,
            "error": {"code": "bad_input", "message": "no"},
            "outputs": [],
        },
    ]
    rows = list(csv.DictReader(io.StringIO(manifest_csv(entries))))
    assert list(rows[0]) == list(CSV_COLUMNS)
    assert [(row["job_id"], row["output"], row["seed"], row["url"]) for row in rows] == [
        ("j0", "0", "1", "http://x/0.png"),
        ("j0", "1", "2", "http://x/1.png"),
        ("j1", "", "1", ""),
    ]
    assert json.loads(rows[1]["params"]) == {"prompt": "a cat", "seed": 2}  # the output's own seed
    assert rows[2]["error"] == "bad_input: no" and rows[2]["prompt"] == "a cat"
