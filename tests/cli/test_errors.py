"""Bad settings and database URLs are one `error:` line naming the variable, and exit 1: the real
command in a subprocess, no server needed."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def run_cli(*args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "cli", *args],
        cwd=ROOT,
        env=os.environ | env,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.e2e  # real `diffq` processes: a second each, so not in the fast tier
@pytest.mark.parametrize(
    ("args", "url"),
    [(("db", "upgrade"), "bogus://x"), (("keys", "list"), "bogus://x"), (("keys", "list"), "not a url")],
)
def test_a_bad_database_url_is_one_line(args: tuple[str, ...], url: str) -> None:
    result = run_cli(*args, DIFFQ_DATABASE_URL=url)
    assert result.returncode == 1
    assert result.stderr.startswith(f"error: DIFFQ_DATABASE_URL={url} is not a database URL diffq can use")
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


@pytest.mark.e2e  # real `diffq` processes: a second each, so not in the fast tier
@pytest.mark.parametrize("args", [("config",), ("keys", "list")])
def test_a_bad_setting_is_one_line_naming_it(args: tuple[str, ...]) -> None:
    result = run_cli(*args, DIFFQ_MAX_PIXELS="abc")
    assert result.returncode == 1
    assert result.stderr.startswith(
        "error: bad setting DIFFQ_MAX_PIXELS='abc': Input should be a valid integer"
    )
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


@pytest.mark.e2e  # a real `diffq` process: seconds, so not in the fast tier
def test_quickstart_checks_its_options_before_it_trains(tmp_path: Path) -> None:
    """A generation option the API would refuse stops the quickstart before the database, the API, the
    worker or the training start, not after the training has run."""
    result = run_cli("quickstart", "--scheduler", "bogus", "--epochs", "1", DIFFQ_HOME=str(tmp_path))
    assert result.returncode == 1
    assert result.stderr.startswith("error: --scheduler bogus: Value error, unknown scheduler 'bogus'")
    assert "1/4" not in result.stdout and not list(tmp_path.iterdir())


def test_quickstart_problems_name_the_option() -> None:
    from cli.quickstart import quickstart_problems

    ok = {"epochs": 1, "num_images": 16, "inference_steps": 100, "scheduler": "ddpm", "name": "glyphs"}
    assert quickstart_problems(**ok) == []
    [bad_name] = quickstart_problems(**ok | {"name": "../x"})
    assert bad_name.startswith("--name ../x: ")


def test_reconcile_says_what_it_did_in_words() -> None:
    from cli.main import reconcile_summary

    assert reconcile_summary({}) == "nothing to do: no running job's lease had run out"
    assert reconcile_summary({"requeued": 2, "worker_lost": 1}) == (
        "requeued 2 jobs whose worker died (lease ran out); failed 1 job with worker_lost (attempts used up)"
    )


@pytest.mark.e2e  # real `diffq` processes: a second each, so not in the fast tier
def test_reconcile_prints_no_json(database) -> None:
    result = run_cli("reconcile")
    assert result.returncode == 0, result.stderr
    assert not result.stdout.startswith("{") and ("nothing to do" in result.stdout or "job" in result.stdout)
