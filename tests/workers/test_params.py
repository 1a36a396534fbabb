"""A worker reads a job's params typed and without the API's limits; admission keeps the limits."""

import pytest

from api.admission import Admission
from core.auth import Principal, Scope
from core.config import get_settings
from core.db import db_session
from core.errors import BadInput
from core.job_types import JOB_TYPES, JobType
from core.specs import JOB_SPEC, Text2ImgParams
from core.storage import get_storage
from core.tables import Job
from tests.conftest import TEST_OWNER
from workers.job_run import JobRun
from workers.runners import RUNNERS


def stored_text2img(**params) -> Job:
    return Job(type="text2img", model="tiny-sd", params={"prompt": "a cat", "seed": 7, **params}, attempts=1)


def test_worker_parses_params_over_this_process_limits(s3) -> None:
    too_many = get_settings().max_num_images + 1
    run = JobRun.from_job(stored_text2img(num_images=too_many, width=2048, height=2048))
    assert isinstance(run.params, Text2ImgParams)
    assert (run.params.num_images, run.params.width, run.params.seed) == (too_many, 2048, 7)
    # Parsed once: the runner and the job's output records see the same object.
    assert run.params is run.params


def test_worker_refuses_params_that_do_not_fit_the_schema(s3) -> None:
    run = JobRun.from_job(stored_text2img(num_images=0))
    with pytest.raises(BadInput, match="num_images"):
        _ = run.params


def test_worker_refuses_a_type_no_entry_names(s3) -> None:
    job = stored_text2img()
    job.type = "text2video"
    with pytest.raises(BadInput, match="unknown job type 'text2video'"):
        _ = JobRun.from_job(job).params


def test_admission_keeps_the_limits(database, s3, models_dir) -> None:
    limit = get_settings().max_num_images
    spec = JOB_SPEC.validate_python(
        {"type": "text2img", "model": "tiny-sd", "params": {"prompt": "a cat", "num_images": limit + 1}}
    )
    with db_session() as session:
        admission = Admission(session, get_storage(), Principal(TEST_OWNER, frozenset(Scope.DEFAULT)))
        assert admission.problems(spec, ["body"]) == [
            {
                "loc": ["body", "params", "num_images"],
                "msg": f"num_images must be at most {limit}, got {limit + 1}",
                "type": "value_error",
            }
        ]
        spec.params.num_images = limit
        assert admission.problems(spec, ["body"]) == []


@pytest.mark.parametrize(
    ("model", "words"),
    [
        ("org/a..b", "Cannot have -- or .. in repo_id"),
        ("org/-name", "alphanumeric chars"),
        ("org/name.git", "cannot end by '.git'"),
    ],
)
def test_admission_refuses_bad_hub_ids(database, s3, models_dir, model: str, words: str) -> None:
    spec = JOB_SPEC.validate_python({"type": "text2img", "model": model, "params": {"prompt": "a cat"}})
    with db_session() as session:
        [problem] = Admission(
            session, get_storage(), Principal(TEST_OWNER, frozenset(Scope.DEFAULT))
        ).problems(spec, ["body"])
    assert problem["loc"] == ["body", "model"] and problem["type"] == "unknown_model"
    assert "not a folder in the models dir nor a valid Hub repo id" in problem["msg"]
    assert words in problem["msg"]


def test_admission_accepts_a_hub_id(database, s3, models_dir) -> None:
    spec = JOB_SPEC.validate_python({"type": "text2img", "model": "org/name", "params": {"prompt": "a cat"}})
    with db_session() as session:
        assert (
            Admission(session, get_storage(), Principal(TEST_OWNER, frozenset(Scope.DEFAULT))).problems(
                spec, ["body"]
            )
            == []
        )


def test_every_job_type_has_a_runner_and_generation_types_a_loader() -> None:
    from models_store.load import TASKS

    assert set(RUNNERS) == set(JobType)
    assert set(TASKS) == {name for name, entry in JOB_TYPES.items() if entry.pipeline}
    assert {"text2img", "depth2img", "unconditional"} <= set(TASKS)
    assert not {"train_lora", "train_unconditional"} & set(TASKS)
