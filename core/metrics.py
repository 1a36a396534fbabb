"""Prometheus metrics for `GET /metrics`, read at scrape time from shared state.

Jobs run in worker processes, not in the API, so nothing is counted in the API's memory: job counts and
the duration and time-in-queue histograms come from the `jobs` table, cache and denoising figures from
the `workers` table (each worker writes its own row, see core/worker_nodes.py), queue depths (queued
jobs per queue) from the `jobs` table too.
Every API replica therefore reports the same numbers, and they survive restarts.

The histograms are aggregated in SQL over every job that has started (time in queue: `started_at -
created_at`) or finished after starting (duration: `finished_at - started_at`), so their buckets only
ever grow, as Prometheus expects of a histogram.
"""

import logging
from collections.abc import Iterator, Sequence
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import case, extract, func, select
from sqlalchemy.orm import Session

from core.config import get_settings
from core.tables import Job, JobStatus, WorkerNode
from core.worker_nodes import live_workers

logger = logging.getLogger(__name__)

DURATION_BUCKETS = (0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 4 * 3600)
QUEUE_BUCKETS = (0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600, 4 * 3600)


def _seconds_between(session: Session, start: Any, end: Any) -> Any:
    """SQL for `end - start` in seconds, on Postgres and SQLite."""
    if session.get_bind().dialect.name == "sqlite":
        return (func.julianday(end) - func.julianday(start)) * 86400.0
    return extract("epoch", end - start)


def _histogram(
    session: Session, name: str, documentation: str, start: Any, end: Any, buckets: Sequence[float]
) -> HistogramMetricFamily:
    seconds = _seconds_between(session, start, end)
    rows = session.execute(
        select(
            Job.type,
            func.count(),
            func.coalesce(func.sum(seconds), 0.0),
            *[func.sum(case((seconds <= bound, 1), else_=0)) for bound in buckets],
        )
        .where(start.is_not(None), end.is_not(None))
        .group_by(Job.type)
        .order_by(Job.type)
    ).all()
    family = HistogramMetricFamily(name, documentation, labels=["type"])
    for job_type, count, total, *cumulative in rows:
        bucket_counts = [(str(float(b)), float(c or 0)) for b, c in zip(buckets, cumulative, strict=True)]
        family.add_metric([job_type], bucket_counts + [("+Inf", float(count))], float(total))
    return family


def _jobs_by_status(session: Session) -> GaugeMetricFamily:
    rows = session.execute(select(Job.type, Job.status, func.count()).group_by(Job.type, Job.status)).all()
    counts = {(job_type, status): count for job_type, status, count in rows}
    family = GaugeMetricFamily(
        "diffq_jobs", "Jobs in the jobs table, by type and status.", labels=["type", "status"]
    )
    for job_type in sorted({job_type for job_type, _status in counts}):
        for status in JobStatus.ALL:
            family.add_metric([job_type, status], counts.get((job_type, status), 0))
    return family


def _queue_depth(session: Session) -> GaugeMetricFamily:
    """Queued jobs per queue, from the jobs table: the queue itself (core/scheduling.py); the broker only
    holds wake-ups."""
    settings = get_settings()
    rows = session.execute(
        select(Job.queue, func.count()).where(Job.status == JobStatus.QUEUED).group_by(Job.queue)
    ).all()
    depths = dict.fromkeys([settings.queue, settings.train_queue], 0) | dict(rows)
    family = GaugeMetricFamily("diffq_queue_depth", "Queued jobs in each queue.", labels=["queue"])
    for queue, depth in sorted(depths.items()):
        family.add_metric([queue], depth)
    return family


def _worker_metrics(workers: list[WorkerNode]) -> Iterator[Metric]:
    labels = ["worker", "device"]
    gauges = {
        "busy": GaugeMetricFamily("diffq_worker_busy", "1 while the worker runs a job.", labels=labels),
        "last_seen": GaugeMetricFamily(
            "diffq_worker_last_seen_timestamp_seconds", "When the worker last wrote its row.", labels=labels
        ),
        "resident_models": GaugeMetricFamily(
            "diffq_cache_resident_models", "Pipelines loaded in the worker's cache.", labels=labels
        ),
        "resident_bytes": GaugeMetricFamily(
            "diffq_cache_resident_bytes",
            "Bytes of the pipelines loaded in the worker's cache.",
            labels=labels,
        ),
        "budget": GaugeMetricFamily(
            "diffq_cache_budget_bytes", "The worker's pipeline cache budget.", labels=labels
        ),
        "steps_per_s": GaugeMetricFamily(
            "diffq_denoising_steps_per_second",
            "Denoising steps per second of the worker's jobs (steps over time spent denoising).",
            labels=labels,
        ),
    }
    counters = {
        "hits": CounterMetricFamily(
            "diffq_cache_hits", "Jobs whose pipeline was already loaded.", labels=labels
        ),
        "misses": CounterMetricFamily("diffq_cache_misses", "Pipeline loads.", labels=labels),
        "evictions": CounterMetricFamily("diffq_cache_evictions", "Pipelines evicted.", labels=labels),
        "load_seconds": CounterMetricFamily(
            "diffq_cache_load_seconds", "Seconds spent loading pipelines.", labels=labels
        ),
        "jobs": CounterMetricFamily("diffq_worker_jobs", "Jobs the worker process ran.", labels=labels),
        "busy_seconds": CounterMetricFamily(
            "diffq_worker_busy_seconds",
            "Seconds the worker spent running jobs, loads included.",
            labels=labels,
        ),
        "steps": CounterMetricFamily("diffq_denoising_steps", "Denoising steps run.", labels=labels),
        "step_seconds": CounterMetricFamily(
            "diffq_denoising_seconds", "Seconds spent in denoising loops.", labels=labels
        ),
    }
    model_resident = GaugeMetricFamily(
        "diffq_cache_model_resident",
        "1 for each model loaded in a worker's cache.",
        labels=[*labels, "model"],
    )
    for worker in workers:
        key = [worker.name, worker.device]
        resident = worker.resident or []
        gauges["busy"].add_metric(key, 1 if worker.current_job else 0)
        gauges["last_seen"].add_metric(key, worker.last_seen.timestamp())
        gauges["resident_models"].add_metric(key, len(resident))
        gauges["resident_bytes"].add_metric(key, sum(entry["bytes"] for entry in resident))
        if worker.cache_budget_bytes is not None:
            gauges["budget"].add_metric(key, worker.cache_budget_bytes)
        if worker.denoising_seconds > 0:
            gauges["steps_per_s"].add_metric(key, worker.denoising_steps / worker.denoising_seconds)
        counters["hits"].add_metric(key, worker.cache_hits)
        counters["misses"].add_metric(key, worker.cache_misses)
        counters["evictions"].add_metric(key, worker.cache_evictions)
        counters["load_seconds"].add_metric(key, worker.cache_load_seconds)
        counters["jobs"].add_metric(key, worker.jobs_run)
        counters["busy_seconds"].add_metric(key, worker.busy_seconds)
        counters["steps"].add_metric(key, worker.denoising_steps)
        counters["step_seconds"].add_metric(key, worker.denoising_seconds)
        for model in sorted({entry["model"] for entry in resident}):
            model_resident.add_metric([*key, model], 1)
    yield from gauges.values()
    yield from counters.values()
    yield model_resident


class DiffqCollector(Collector):
    """Reads on `session` at each collection; it only reads, so nobody needs to commit."""

    def __init__(self, session: Session) -> None:
        self.session = session

    def collect(self) -> Iterator[Metric]:
        yield _jobs_by_status(self.session)
        yield _histogram(
            self.session,
            "diffq_job_duration_seconds",
            "Seconds from a job's start to its end.",
            Job.started_at,
            Job.finished_at,
            DURATION_BUCKETS,
        )
        yield _histogram(
            self.session,
            "diffq_job_queue_seconds",
            "Seconds a job waited between its submission and its start.",
            Job.created_at,
            Job.started_at,
            QUEUE_BUCKETS,
        )
        workers = live_workers(self.session, get_settings().worker_stale_s)
        yield _queue_depth(self.session)
        yield from _worker_metrics(workers)


def metrics_registry(session: Session) -> CollectorRegistry:
    """A registry of diffq's metrics, read on `session` when it is collected (one per scrape)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(DiffqCollector(session))
    return registry
