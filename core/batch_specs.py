"""A batch's job specs from its three input formats: a list of job specs, a template × a sweep, and a
JSON Lines file.

Each builder returns the validated specs with the location each one's errors are reported under
(`["body", "jobs", 3]`, `["body", "sweep", 3]`, `["body", "file", "line", 4]`), or raises `BatchInvalid`
with FastAPI-style error details for every job that is malformed. What a spec needs beyond its schema
(a model that exists, input images that fit) is checked afterwards, at admission, under the same
locations.
"""

import itertools
import json
import math
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from core.config import get_settings
from core.specs import JOB_SPEC, JobSpec

Loc = list[str | int]

# Enough errors to see the pattern without a megabyte of JSON for a bad 10,000-job batch.
MAX_ERRORS = 50
# A JSON Lines line with this key is a whole job spec; any other line is the params of one.
SPEC_KEY = "params"


class BatchInvalid(Exception):
    """A batch none of whose jobs may be written; `errors` are FastAPI-style error details."""

    def __init__(self, errors: list[dict[str, Any]]) -> None:
        super().__init__(f"{len(errors)} errors")
        self.errors = cap_errors(errors)


@dataclass
class BatchSpecs:
    """A batch's validated job specs, the location of each, and how it was given (stored on the batch)."""

    specs: list[JobSpec]
    locs: list[Loc]
    source: dict[str, Any] = field(default_factory=dict)


def cap_errors(errors: list[dict[str, Any]]) -> list[dict[str, Any]]:
    if len(errors) <= MAX_ERRORS:
        return errors
    more = {"loc": ["body"], "msg": f"and {len(errors) - MAX_ERRORS} more errors", "type": "too_many_errors"}
    return [*errors[:MAX_ERRORS], more]


def check_job_count(count: int) -> None:
    """Raise `BatchInvalid` past DIFFQ_MAX_BATCH_JOBS."""
    limit = get_settings().max_batch_jobs
    if count > limit:
        message = f"the batch has {count} jobs; the limit is {limit} (DIFFQ_MAX_BATCH_JOBS); split it"
        raise BatchInvalid([{"loc": ["body"], "msg": message, "type": "too_many_jobs"}])


def validate_specs(raw: list[tuple[Loc, Any]]) -> tuple[list[JobSpec], list[dict[str, Any]]]:
    """Job specs from raw dicts, each with the location its errors are reported under."""
    specs, errors = [], []
    for loc, value in raw:
        try:
            specs.append(JOB_SPEC.validate_python(value))
        except ValidationError as error:
            errors += [
                {"loc": [*loc, *detail["loc"]], "msg": detail["msg"], "type": detail["type"]}
                for detail in error.errors(include_url=False, include_context=False, include_input=False)
            ]
    return specs, errors


def specs_from_jobs(jobs: list[JobSpec]) -> BatchSpecs:
    """A batch given as a list of job specs, already validated with the request body."""
    check_job_count(len(jobs))
    return BatchSpecs(jobs, [["body", "jobs", index] for index in range(len(jobs))], {"source": "jobs"})


def sweep_size(sweep: dict[str, list[Any]]) -> int:
    return math.prod(len(values) for values in sweep.values())


def expand_sweep(template: dict[str, Any], sweep: dict[str, list[Any]]) -> list[dict[str, Any]]:
    """The job specs of a template and a sweep: one per combination of the sweep's values.

    `sweep` maps a params field to the values it takes; the combinations come in the order of
    `itertools.product` over the keys as given, so the last key varies fastest: a sweep of
    `{"prompt": [a, b], "seed": [1, 2]}` gives (a, 1), (a, 2), (b, 1), (b, 2). A swept field replaces the
    template's value.
    """
    keys = list(sweep)
    specs = []
    for values in itertools.product(*(sweep[key] for key in keys)):
        params = dict(template.get("params") or {}) | dict(zip(keys, values, strict=True))
        specs.append({**template, "params": params})
    return specs


def specs_from_sweep(template: dict[str, Any], sweep: dict[str, list[Any]]) -> BatchSpecs:
    """A batch given as a template and a sweep; the size is checked before expanding."""
    check_job_count(sweep_size(sweep))
    locs: list[Loc] = []
    raw = []
    for index, spec in enumerate(expand_sweep(template, sweep)):
        locs.append(["body", "sweep", index])
        raw.append((locs[-1], spec))
    specs, errors = validate_specs(raw)
    if errors:
        raise BatchInvalid(errors)
    return BatchSpecs(specs, locs, {"source": "sweep", "template": template, "sweep": sweep})


@dataclass
class JsonlLine:
    number: int
    spec: dict[str, Any] | None = None
    error: str | None = None


def parse_jsonl(text: str, defaults: dict[str, Any]) -> list[JsonlLine]:
    """Job specs from JSON Lines, one JSON object a line; blank lines are skipped.

    A line with a "params" key is a job spec (`{"type": ..., "model": ..., "params": {...}}`) whose
    missing `type` and `model` come from `defaults`; any other line is the params of a job of the
    default type and model (`{"prompt": "a cat", "seed": 1}`). Specs are validated later, per line.
    """
    lines = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as error:
            lines.append(JsonlLine(number, error=f"not JSON: {error}"))
            continue
        if not isinstance(value, dict):
            lines.append(JsonlLine(number, error=f"a line must be a JSON object, got {type(value).__name__}"))
            continue
        if SPEC_KEY in value:
            spec = {key: val for key, val in defaults.items() if val is not None} | value
        else:
            spec = {key: val for key, val in defaults.items() if val is not None} | {"params": value}
        lines.append(JsonlLine(number, spec=spec))
    return lines


def specs_from_jsonl(data: bytes, type_: str | None, model: str | None) -> BatchSpecs:
    """A batch given as a JSON Lines file; `type_` (text2img if not given) and `model` are the defaults
    of the lines that name none. Errors are located by line number."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise BatchInvalid(
            [{"loc": ["body", "file"], "msg": f"not UTF-8 text: {error}", "type": "bad_jsonl"}]
        ) from None
    defaults = {"type": type_ or "text2img", "model": model}
    lines = parse_jsonl(text, defaults)
    if not lines:
        raise BatchInvalid([{"loc": ["body", "file"], "msg": "the file has no jobs", "type": "bad_jsonl"}])
    check_job_count(len(lines))
    errors = [
        {"loc": ["body", "file", "line", line.number], "msg": line.error, "type": "bad_jsonl"}
        for line in lines
        if line.error
    ]
    specs, spec_errors = validate_specs(
        [(["body", "file", "line", line.number], line.spec) for line in lines if line.spec is not None]
    )
    if errors or spec_errors:
        raise BatchInvalid(errors + spec_errors)
    locs: list[Loc] = [["body", "file", "line", line.number] for line in lines]
    return BatchSpecs(specs, locs, {"source": "jsonl", "defaults": defaults})
