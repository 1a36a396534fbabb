"""Queue routing: by job type, then by model affinity, against real worker rows in Postgres."""

import uuid
from collections.abc import Iterator
from datetime import timedelta

import pytest
from sqlalchemy import delete, update

from core.config import Settings, get_settings
from core.db import db_session
from core.routing import direct_queue, pick_queue, queue_for, worker_queues
from core.tables import Job, WorkerNode, utcnow
from core.worker_nodes import register_worker, remove_worker, update_worker
from tests.utils.db import in_session

MODEL = "routing-test-model"


@pytest.fixture
def settings() -> Settings:
    return get_settings().model_copy(update={"affinity": True, "affinity_max_backlog": 2})


@pytest.fixture
def workers(database: str) -> Iterator[list[str]]:
    """Two live generation workers; the first has MODEL loaded."""
    settings = get_settings()
    names = [f"routing-{uuid.uuid4().hex[:8]}@test", f"routing-{uuid.uuid4().hex[:8]}@test"]
    for name in names:
        in_session(
            register_worker,
            name,
            "cpu",
            worker_queues("generation", name, settings),
            pid=1,
            cache_budget_bytes=None,
        )
    in_session(update_worker, names[0], resident=[{"model": MODEL, "bytes": 1}])
    yield names
    for name in names:
        in_session(remove_worker, name)


def route(settings: Settings, job_type: str, model: str | None, depths: dict[str, int] | None = None) -> str:
    with db_session() as session:
        return pick_queue(session, settings, job_type, model, lambda queue: (depths or {}).get(queue, 0))


def test_job_types_map_to_queues(settings: Settings) -> None:
    assert queue_for("text2img", settings) == settings.queue
    assert queue_for("unconditional", settings) == settings.queue
    assert queue_for("train_lora", settings) == settings.train_queue
    assert queue_for("train_unconditional", settings) == settings.train_queue


def test_worker_queues_by_what_it_serves(settings: Settings) -> None:
    direct = direct_queue(settings.queue, "gpu0@host.example")
    assert direct == f"{settings.queue}.gpu0-host.example"
    # In the order the worker takes from them: direct, shared generation, training.
    assert worker_queues("generation", "gpu0@host.example", settings) == [direct, settings.queue]
    assert worker_queues("training", "gpu0@host.example", settings) == [settings.train_queue]
    both = [direct, settings.queue, settings.train_queue]
    assert worker_queues("both", "gpu0@host.example", settings) == both
    with pytest.raises(ValueError, match="generation"):
        worker_queues("everything", "gpu0@host", settings)


def test_warm_idle_worker_gets_the_job(settings: Settings, workers: list[str]) -> None:
    assert route(settings, "text2img", MODEL) == direct_queue(settings.queue, workers[0])


def test_cold_model_goes_to_the_shared_queue(settings: Settings, workers: list[str]) -> None:
    assert route(settings, "text2img", "a-model-nobody-has") == settings.queue


def test_busy_warm_worker_takes_jobs_up_to_the_backlog(settings: Settings, workers: list[str]) -> None:
    own = direct_queue(settings.queue, workers[0])
    in_session(update_worker, workers[0], current_job=uuid.uuid4())
    assert route(settings, "text2img", MODEL) == own  # running one, none waiting: backlog 1 < 2
    assert route(settings, "text2img", MODEL, {own: 1}) == settings.queue  # backlog 2: no more


def test_nothing_overtakes_a_job_that_waited_too_long(settings: Settings, workers: list[str]) -> None:
    with db_session() as session:
        waiting = Job(type="text2img", model="cold", params={}, created_at=utcnow() - timedelta(seconds=60))
        session.add(waiting)
    try:
        assert (
            route(settings.model_copy(update={"affinity_max_wait_s": 120}), "text2img", MODEL)
            != settings.queue
        )
        assert (
            route(settings.model_copy(update={"affinity_max_wait_s": 30}), "text2img", MODEL)
            == settings.queue
        )
        # Training jobs wait in their own queue: they don't hold generation back.
        with db_session() as session:
            session.execute(update(Job).where(Job.id == waiting.id).values(type="train_lora"))
        assert (
            route(settings.model_copy(update={"affinity_max_wait_s": 30}), "text2img", MODEL)
            != settings.queue
        )
    finally:
        with db_session() as session:
            session.execute(delete(Job).where(Job.id == waiting.id))


def test_least_busy_warm_worker_wins(settings: Settings, workers: list[str]) -> None:
    in_session(update_worker, workers[1], resident=[{"model": MODEL, "bytes": 1}])
    in_session(update_worker, workers[0], current_job=uuid.uuid4())
    assert route(settings, "text2img", MODEL) == direct_queue(settings.queue, workers[1])


def test_model_being_loaded_for_the_running_job_counts_as_warm(
    settings: Settings, workers: list[str]
) -> None:
    in_session(update_worker, workers[1], current_job=uuid.uuid4(), current_model="another-model")
    assert route(settings, "text2img", "another-model") == direct_queue(settings.queue, workers[1])


def test_stale_worker_is_ignored(settings: Settings, workers: list[str]) -> None:
    with db_session() as session:
        row = session.get(WorkerNode, workers[0])
        assert row is not None
        row.last_seen = utcnow() - timedelta(seconds=settings.worker_stale_s + 1)
    assert route(settings, "text2img", MODEL) == settings.queue


def test_training_and_disabled_affinity_use_the_shared_queues(settings: Settings, workers: list[str]) -> None:
    assert route(settings, "train_lora", MODEL) == settings.train_queue
    assert route(settings.model_copy(update={"affinity": False}), "text2img", MODEL) == settings.queue


def test_worker_without_a_direct_queue_is_not_a_target(settings: Settings, workers: list[str]) -> None:
    in_session(update_worker, workers[0], queues=[settings.queue])  # started with --queues
    assert route(settings, "text2img", MODEL) == settings.queue


def test_busy_warm_worker_loses_to_an_idle_one_when_loading_is_quicker_than_waiting(
    settings: Settings, workers: list[str]
) -> None:
    in_session(
        update_worker, workers[0], current_job=uuid.uuid4(), jobs_run=10, busy_seconds=50.0
    )  # 5 s a job
    in_session(update_worker, workers[1], cache_misses=4, cache_load_seconds=2.0)  # 0.5 s a load
    assert route(settings, "text2img", MODEL) == settings.queue
    # Work waiting in the shared queue will keep the idle worker busy: wait for the warm one instead.
    assert route(settings, "text2img", MODEL, {settings.queue: 1}) == direct_queue(settings.queue, workers[0])


def test_busy_warm_worker_wins_when_loading_is_slower_than_waiting(
    settings: Settings, workers: list[str]
) -> None:
    in_session(
        update_worker, workers[0], current_job=uuid.uuid4(), jobs_run=10, busy_seconds=20.0
    )  # 2 s a job
    in_session(update_worker, workers[1], cache_misses=2, cache_load_seconds=16.0)  # 8 s a load
    assert route(settings, "text2img", MODEL) == direct_queue(settings.queue, workers[0])
