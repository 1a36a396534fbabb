"""compose.yaml and the Dockerfile, checked without a Docker engine: every service, setting, dependency,
health check and GPU reservation the deployment relies on, and every `diffq` command it runs."""

import re
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest
import typer
import yaml

from cli.main import app
from core.config import Settings

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = yaml.safe_load((ROOT / "compose.yaml").read_text())
SERVICES: dict[str, dict[str, Any]] = COMPOSE["services"]
DIFFQ_SERVICES = [name for name, service in SERVICES.items() if service.get("image") == "diffq:latest"]
GPU_WORKERS = sorted(name for name in SERVICES if re.fullmatch(r"worker-gpu\d+", name))
LONG_RUNNING = ["postgres", "redis", "minio", "api", "flower", *GPU_WORKERS]
SHARED_SETTINGS = [
    "DIFFQ_DATABASE_URL",
    "DIFFQ_BROKER_URL",
    "DIFFQ_STORAGE_URL",
    "DIFFQ_S3_ENDPOINT_URL",
    "DIFFQ_S3_PUBLIC_ENDPOINT_URL",
    "DIFFQ_MODELS_DIR",
    "DIFFQ_QUEUE",
    "DIFFQ_TRAIN_QUEUE",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
]


EXAMPLE_ENV = dict(
    line.split("=", 1)
    for line in (ROOT / ".env.example").read_text().splitlines()
    if "=" in line and not line.startswith("#")
)


def interpolate(value: str) -> str:
    """`${VAR}`, `${VAR:-default}` and `${VAR:?error}` as compose resolves them with .env.example."""

    def resolve(match: re.Match[str]) -> str:
        name, operator, rest = match.group(1), match.group(2), match.group(3)
        if name in EXAMPLE_ENV:
            return EXAMPLE_ENV[name]
        if operator == ":-":
            return rest
        raise AssertionError(f"{name} is required but .env.example does not set it")

    return re.sub(r"\$\{(\w+)(?:(:[-?])([^}]*))?\}", resolve, value)


def env(name: str) -> dict[str, str]:
    return {key: interpolate(str(value)) for key, value in (SERVICES[name].get("environment") or {}).items()}


def command(name: str) -> list[str]:
    return SERVICES[name]["command"]


def test_every_service_is_there() -> None:
    expected = {"postgres", "redis", "minio", "minio-init", "migrate", "api", "beat", "flower"}
    assert expected <= set(SERVICES)
    assert len(GPU_WORKERS) >= 2, "one worker service per GPU, at least two as the pattern"
    assert set(DIFFQ_SERVICES) == {"migrate", "api", "beat", "flower", *GPU_WORKERS}
    for name in DIFFQ_SERVICES:
        assert SERVICES[name]["build"]["context"] == "."


def test_long_running_services_have_health_checks() -> None:
    for name in LONG_RUNNING:
        check = SERVICES[name].get("healthcheck")
        assert check and check["test"][0] in ("CMD", "CMD-SHELL"), f"{name} has no health check"
    assert "/healthz" in " ".join(SERVICES["api"]["healthcheck"]["test"])


def test_dependencies_wait_for_health_and_one_shots() -> None:
    for name, service in SERVICES.items():
        for target, rule in (service.get("depends_on") or {}).items():
            assert target in SERVICES, f"{name} depends on a missing service {target}"
            condition = rule["condition"]
            if condition == "service_healthy":
                assert "healthcheck" in SERVICES[target], f"{name} waits for {target} to be healthy"
            elif condition == "service_completed_successfully":
                assert SERVICES[target].get("restart") == "no", f"{target} must be a one-shot"
            else:
                pytest.fail(f"{name} → {target}: {condition} does not wait for readiness")

    def waits(name: str, target: str, condition: str) -> bool:
        return SERVICES[name]["depends_on"][target]["condition"] == condition

    assert waits("minio-init", "minio", "service_healthy")
    assert waits("migrate", "postgres", "service_healthy")
    for name in ["api", *GPU_WORKERS]:
        assert waits(name, "migrate", "service_completed_successfully")
        assert waits(name, "minio-init", "service_completed_successfully")
        assert waits(name, "redis", "service_healthy")
    assert waits("beat", "migrate", "service_completed_successfully")
    assert waits("flower", "redis", "service_healthy")


def test_all_diffq_services_share_one_database_broker_and_store() -> None:
    reference = env("api")
    for name in DIFFQ_SERVICES:
        for key in SHARED_SETTINGS:
            assert env(name).get(key) == reference[key], f"{name} has another {key}"
        unknown = [
            k for k in env(name) if k.startswith("DIFFQ_") and k[6:].lower() not in Settings.model_fields
        ]
        assert not unknown, f"{name} sets variables diffq does not read: {unknown}"

    database = urlparse(reference["DIFFQ_DATABASE_URL"])
    postgres = env("postgres")
    assert database.scheme == "postgresql+psycopg"
    assert (database.hostname, database.port) == ("postgres", 5432)
    assert database.username == postgres["POSTGRES_USER"]
    assert database.path.lstrip("/") == postgres["POSTGRES_DB"]
    assert database.password == postgres["POSTGRES_PASSWORD"]

    assert urlparse(reference["DIFFQ_BROKER_URL"]).hostname == "redis"

    storage = urlparse(reference["DIFFQ_STORAGE_URL"])
    assert storage.scheme == "s3"
    assert (urlparse(reference["DIFFQ_S3_ENDPOINT_URL"]).hostname, 9000) == ("minio", 9000)
    assert f"mc mb --ignore-existing local/{storage.netloc}" in " ".join(command("minio-init"))
    assert (
        reference["AWS_ACCESS_KEY_ID"]
        == env("minio")["MINIO_ROOT_USER"]
        == env("minio-init")["MINIO_ROOT_USER"]
    )
    assert reference["AWS_SECRET_ACCESS_KEY"] == env("minio")["MINIO_ROOT_PASSWORD"]


def test_one_gpu_reserved_per_worker() -> None:
    device_ids = []
    for name in GPU_WORKERS:
        service = SERVICES[name]
        (device,) = service["deploy"]["resources"]["reservations"]["devices"]
        assert device["driver"] == "nvidia"
        assert device["capabilities"] == ["gpu"]
        assert device["device_ids"] == [name.removeprefix("worker-gpu")]
        device_ids += device["device_ids"]
        assert service["hostname"] == name
        assert command(name)[:4] == ["diffq", "worker", "--gpus", "all"]
        # Inside its container a worker sees its one GPU as gpu0: the health check asks for that node.
        assert "gpu0@$$HOSTNAME" in service["healthcheck"]["test"][1]
    assert len(set(device_ids)) == len(device_ids)
    assert "generation" in command(GPU_WORKERS[0]), "one GPU keeps serving generation while others train"


def test_flower_requires_basic_auth() -> None:
    flower = env("flower")
    assert flower["DIFFQ_FLOWER_USER"]
    # ${VAR:?message}: compose refuses to start without a password rather than use a default one.
    raw = SERVICES["flower"]["environment"]["DIFFQ_FLOWER_PASSWORD"]
    assert re.fullmatch(r"\$\{DIFFQ_FLOWER_PASSWORD:\?[^}]+\}", raw)
    assert "--no-auth" not in command("flower")
    assert "5555:5555" in SERVICES["flower"]["ports"]


def test_required_variables_are_in_the_env_example() -> None:
    required = set(re.findall(r"\$\{(\w+):\?", (ROOT / "compose.yaml").read_text()))
    assert required and required <= set(EXAMPLE_ENV)


def test_every_diffq_command_parses() -> None:
    group = typer.main.get_command(app)
    root = group.context_class(group, info_name="diffq")
    for name in DIFFQ_SERVICES:
        argv = command(name)
        assert argv[0] == "diffq"
        subcommand = group.get_command(root, argv[1])
        if argv[1] == "beat" and subcommand is None:
            continue  # `diffq beat` comes with the training scheduler
        assert subcommand is not None, f"{name} runs an unknown command {argv[1]}"
        subcommand.make_context(argv[1], argv[2:], parent=root)  # raises on unknown options or values
    assert command("migrate")[1:] == ["db", "upgrade"]
    assert command("beat")[1:] == ["beat"]


def test_dockerfile_installs_torch_from_a_chosen_index_before_diffq() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^ARG TORCH_INDEX_URL=https://download\.pytorch\.org/whl/\w+$", dockerfile, re.M)
    torch_install = dockerfile.index('--index-url "${TORCH_INDEX_URL}"')
    assert torch_install < dockerfile.index("RUN pip install .")
    assert re.search(r"^USER (?!root)", dockerfile, re.M), "the image runs as a plain user"
    assert SERVICES["api"]["build"]["args"]["TORCH_INDEX_URL"].startswith("${TORCH_INDEX_URL:-")
