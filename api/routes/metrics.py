"""Prometheus metrics: jobs by status, queue depths, job duration and time in queue, the workers' caches
and denoising rate. What each number means and where it comes from: core/metrics.py."""

from fastapi import APIRouter, Depends, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from api.auth import scrape_access
from api.deps import SessionDep
from core.metrics import metrics_registry

router = APIRouter(tags=["metrics"])


@router.get("/metrics", response_class=Response, dependencies=[Depends(scrape_access)])
def metrics(session: SessionDep) -> Response:
    """Prometheus text format; needs an admin key or the scrape token of DIFFQ_METRICS_TOKEN."""
    return Response(generate_latest(metrics_registry(session)), media_type=CONTENT_TYPE_LATEST)
