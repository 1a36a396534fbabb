"""All diffq settings, read from `DIFFQ_*` environment variables.

The defaults are the embedded ones: a SQLite file, a local output folder and a filesystem broker,
all under `DIFFQ_HOME` (a per-user data folder, e.g. `~/.local/share/diffq` on Linux), so that diffq
runs with no server at all, and every process of one user finds the same ones wherever it starts.
"""

from functools import lru_cache
from pathlib import Path

from platformdirs import user_data_path
from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="DIFFQ_", extra="ignore")

    home: Path = Field(default_factory=lambda: user_data_path("diffq", appauthor=False))
    database_url: str = ""
    broker_url: str = ""
    storage_url: str = ""
    s3_endpoint_url: str | None = None
    # The endpoint put in presigned URLs, when clients reach the store at another address than the API
    # and workers do (MinIO inside docker compose: http://minio:9000 inside, http://localhost:9000 outside).
    s3_public_endpoint_url: str | None = None
    models_dir: Path = Path()

    # Public base URL of the API, used for links to locally stored files outside a request.
    public_url: str = "http://127.0.0.1:8000"
    presign_expires_s: int = 3600

    # Validation limits.
    max_pixels: int = 1024 * 1024
    max_num_images: int = 16
    # Input images: a byte limit on uploads, and a pixel limit checked from the image header before any
    # decoding, so that a small file that decodes to a huge bitmap (a decompression bomb) is refused.
    max_upload_bytes: int = Field(default=20 * 1024 * 1024, ge=1)
    max_upload_pixels: int = Field(default=4096 * 4096, ge=1)
    max_batch_jobs: int = Field(default=50_000, ge=1)

    # Worker behaviour.
    device: str = "auto"  # "auto", "cpu", "cuda", "cuda:N"
    dtype: str = "auto"  # "auto" (fp16 on CUDA, fp32 on CPU), "float32", "float16", "bfloat16"
    progress_min_interval_s: float = Field(default=0.5, ge=0)
    # Between progress writes, a running job reads its own status at most this often, so that a cancel
    # stops it within a step or two; 0 checks at every step.
    cancel_check_interval_s: float = Field(default=0.1, ge=0)
    task_time_limit_s: int = 6 * 3600
    # Event streams (core/events.py): where they live (empty: the broker when it is Redis, else the
    # database, "database"), how long one is kept after its last event, and how often a reader that has
    # waited that long for an event checks the job in the database (a job may end without one).
    events_url: str = ""
    events_ttl_s: float = Field(default=3600, gt=0)
    events_recheck_s: float = Field(default=5, gt=0)
    # Previews while denoising (workers/previews.py): every this many steps unless a job says
    # (`preview_every`; 0: off), and the longest side of a preview image in pixels.
    preview_every: int = Field(default=0, ge=0)
    preview_size: int = Field(default=128, ge=16, le=1024)
    # A running job's worker renews its lease every lease_s / 3; a job whose lease ran out is
    # taken over (its worker died) until it has been tried max_attempts times.
    lease_s: float = Field(default=60, gt=0)
    max_attempts: int = Field(default=3, ge=1)
    reconcile_interval_s: float = Field(default=15, gt=0)
    # Generation jobs wait in `queue`, training jobs in `train_queue` (see core/scheduling.py), so that a
    # worker serving only generation never claims a training job.
    queue: str = "diffq"
    train_queue: str = "diffq-train"
    # An idle worker reads the jobs table this often for work it could claim, whatever the broker holds.
    idle_poll_s: float = Field(default=2, gt=0)

    # The pipeline cache. Its budget is what loaded pipelines may take: `cache_budget_mb` when set, else
    # `cache_memory_fraction` of the device's memory (VRAM on a GPU, RAM on the CPU). `pipeline_cache_size`
    # also caps how many pipelines stay loaded; 0 leaves that to the budget alone.
    cache_budget_mb: float = Field(default=0, ge=0)
    cache_memory_fraction: float = Field(default=0.6, gt=0, le=1)
    pipeline_cache_size: int = Field(default=0, ge=0)

    # The worker fleet. `device_label` names the device on each job (set by `diffq worker --gpus`);
    # each worker writes its row in the `workers` table every `worker_heartbeat_s`, and a row older than
    # `worker_stale_s` counts as a worker that is gone.
    device_label: str = ""
    worker_heartbeat_s: float = Field(default=5, gt=0)
    worker_stale_s: float = Field(default=30, gt=0)
    # The claim's order (core/scheduling.py): fair share between owners within a priority, and model
    # affinity, which never passes over a job that has waited `affinity_max_wait_s`.
    fair_share: bool = True
    affinity: bool = True
    # Job fusion (workers/fusion.py): compatible text2img jobs run as one pipeline call of at most this many
    # images; 1, or `fusion` false, runs every job alone.
    fusion: bool = True
    max_fused_images: int = Field(default=8, ge=1)
    affinity_max_wait_s: float = Field(default=30, ge=0)

    # API keys (core/auth.py). Off only when set to false explicitly; the API then logs a warning at start
    # and every request acts as the `default` owner with every scope.
    auth: bool = True
    # A bearer token for Prometheus to scrape /metrics with, besides an admin key; empty: admin keys only.
    metrics_token: str = ""

    # Owner quotas (core/quotas.py); an API key's `limits` may override each. 0 means no limit.
    max_queued_jobs: int = Field(default=10_000, ge=0)
    max_running_jobs: int = Field(default=0, ge=0)
    max_upload_bytes_per_day: int = Field(default=10 * 1024**3, ge=0)
    max_priority: int = Field(default=10, ge=0)
    # Requests per API key, in the `limits` library's notation ("100/second;2000/minute"); counters in
    # Redis when the broker is Redis, in the API process's memory otherwise. Empty: no rate limit.
    rate_limit: str = "50/second"

    # Webhooks (core/webhooks.py): how long a delivery is retried, each attempt's timeout, and whether
    # URLs may point at loopback, private or link-local addresses (refused by default: SSRF).
    webhook_retry_s: float = Field(default=24 * 3600, gt=0)
    webhook_timeout_s: float = Field(default=10, gt=0)
    webhook_allow_private: bool = False
    # The wait before retry n is webhook_backoff_s * 2^(n-1), at most webhook_backoff_max_s, times a
    # random factor between 0.5 and 1 (so that deliveries that failed together don't retry together).
    webhook_backoff_s: float = Field(default=5, gt=0)
    webhook_backoff_max_s: float = Field(default=3600, gt=0)
    # A dispatcher looks for due deliveries this often, and sends up to webhook_threads at once.
    webhook_poll_s: float = Field(default=1.0, gt=0)
    webhook_threads: int = Field(default=8, ge=1)
    # Ended deliveries (and their attempts) are deleted this long after they ended; 0 keeps them for good.
    webhook_keep_s: float = Field(default=7 * 24 * 3600, ge=0)

    # Flower's basic auth (`diffq flower` refuses to start without it, unless told `--no-auth`).
    flower_user: str = ""
    flower_password: str = ""
    # The most an uploaded dataset zip may unpack to (training data is held in memory).
    max_dataset_bytes: int = 4 * 1024**3
    # How often `diffq beat` looks for due schedules.
    schedule_interval_s: float = Field(default=1.0, gt=0)

    @model_validator(mode="after")
    def _embedded_defaults(self) -> "Settings":
        home = self.home.expanduser().resolve()
        self.home = home
        if not self.database_url:
            self.database_url = f"sqlite:///{home / 'diffq.db'}"
        if not self.broker_url:
            self.broker_url = "filesystem://"
        if not self.storage_url:
            self.storage_url = (home / "outputs").as_uri()
        if self.models_dir == Path():
            self.models_dir = home / "models"
        self.models_dir = self.models_dir.expanduser().resolve()
        return self

    @property
    def broker_dir(self) -> Path:
        """Folder of the filesystem broker, used when `broker_url` is `filesystem://`."""
        return self.home / "broker"


@lru_cache
def get_settings() -> Settings:
    return Settings()
