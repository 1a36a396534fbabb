"""The submission API. Start it with `diffq api`."""

from fastapi import FastAPI

from api.routes import batches, files, jobs, metrics, models, schedulers, schedules, uploads

app = FastAPI(
    title="diffq",
    summary="A job queue for diffusion models: submit generation and training jobs, watch them run, "
    "fetch images and models.",
)
app.include_router(jobs.router)
app.include_router(files.router)
app.include_router(uploads.router)
app.include_router(batches.router)
app.include_router(schedulers.router)
app.include_router(metrics.router)
app.include_router(models.router)
app.include_router(schedules.router)


@app.get("/healthz", tags=["health"])
def healthz() -> dict[str, str]:
    return {"status": "ok"}
