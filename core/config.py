"""All diffq settings, read from `DIFFQ_*` environment variables.

The defaults are the embedded ones: a SQLite file, a local output folder and a filesystem broker,
all under `DIFFQ_HOME` (`./.diffq`), so that diffq runs with no server at all.
"""

from functools import lru_cache
from pathlib import Path

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="DIFFQ_", extra="ignore")

    home: Path = Path(".diffq")
    database_url: str = ""
    broker_url: str = ""
    storage_url: str = ""
    s3_endpoint_url: str | None = None
    models_dir: Path = Path()

    # Public base URL of the API, used for links to locally stored files outside a request.
    public_url: str = "http://127.0.0.1:8000"
    presign_expires_s: int = 3600

    # Validation limits.
    max_pixels: int = 1024 * 1024
    max_num_images: int = 16

    # Worker behaviour.
    device: str = "auto"  # "auto", "cpu", "cuda", "cuda:N"
    dtype: str = "auto"  # "auto" (fp16 on CUDA, fp32 on CPU), "float32", "float16", "bfloat16"
    pipeline_cache_size: int = 2
    progress_min_interval_s: float = Field(default=0.5, ge=0)
    task_time_limit_s: int = 6 * 3600
    # A running job's worker renews its lease every lease_s / 3; a job whose lease ran out is
    # taken over (its worker died) until it has been tried max_attempts times.
    lease_s: float = Field(default=60, gt=0)
    max_attempts: int = Field(default=3, ge=1)
    reconcile_interval_s: float = Field(default=15, gt=0)
    queue: str = "diffq"
    # Training jobs go to their own queue when this is set, so that GPU workers sized for training
    # consume them; unset, they share `queue` with generation jobs.
    train_queue: str = ""
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
