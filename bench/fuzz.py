"""Run the suite's fuzzers with more cases than CI does, and print what they found.

- `jobs`: the property-based jobs of tests/fuzz/test_jobs_property.py (Hypothesis) through the real
  API and a real worker on the tiny models, `--examples` drawn specs;
- `api`: schemathesis over every route of `/openapi.json` (tests/fuzz/test_api_schema.py),
  `--examples` cases per route.

Both use the tests' fixtures (Postgres, Redis, moto's S3, the tiny models) in a database and Redis db
of their own (`diffq_fuzz`, 11), so they can run beside the suite. Hypothesis explores at random here
(CI's run is derandomized) and stops at the first failing case, which it prints shrunk.

    .venv/bin/python bench/fuzz.py jobs --examples 200
    .venv/bin/python bench/fuzz.py api --examples 100
"""

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TARGETS = {
    "jobs": "tests/fuzz/test_jobs_property.py::test_accepted_jobs_succeed_with_images_that_remake",
    "api": "tests/fuzz/test_api_schema.py",
}


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("target", choices=sorted(TARGETS))
    parser.add_argument("--examples", type=int, default=100, help="cases (per route, for api)")
    args = parser.parse_args()
    env = os.environ | {
        "DIFFQ_FUZZ_EXAMPLES": str(args.examples),
        "DIFFQ_FUZZ_RANDOM": "1",
        "DIFFQ_TEST_DB": os.environ.get("DIFFQ_TEST_DB", "diffq_fuzz"),
        "DIFFQ_TEST_REDIS_DB": os.environ.get("DIFFQ_TEST_REDIS_DB", "11"),
    }
    command = [
        sys.executable,
        "-m",
        "pytest",
        TARGETS[args.target],
        "-q",
        "-p",
        "no:cacheprovider",
        "--timeout",
        "0",
        "--hypothesis-show-statistics",
    ]
    started = time.monotonic()
    result = subprocess.run(command, cwd=ROOT, env=env)
    print(
        f"{args.target}: {args.examples} examples, exit {result.returncode}, "
        f"{time.monotonic() - started:.0f} s"
    )
    return result.returncode


if __name__ == "__main__":
    raise SystemExit(main())
