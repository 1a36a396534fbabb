"""A small HTTP client for the API, used by `diffq submit`, `diffq watch` and the quickstart."""

import time
from collections.abc import Iterator
from typing import Any

import httpx

FINISHED = ("succeeded", "failed", "canceled")


class ApiError(Exception):
    pass


class Client:
    def __init__(self, base_url: str, timeout: float = 30.0) -> None:
        self.http = httpx.Client(base_url=base_url.rstrip("/"), timeout=timeout)

    def _json(self, response: httpx.Response) -> Any:
        if response.is_error:
            raise ApiError(f"{response.status_code} from {response.request.url}: {response.text}")
        return response.json()

    def submit(self, spec: dict[str, Any]) -> dict[str, Any]:
        return self._json(self.http.post("/v1/jobs", json=spec))

    def job(self, job_id: str) -> dict[str, Any]:
        return self._json(self.http.get(f"/v1/jobs/{job_id}"))

    def download(self, url: str) -> bytes:
        response = self.http.get(url)
        if response.is_error:
            raise ApiError(f"{response.status_code} fetching {url}")
        return response.content

    def follow(self, job_id: str, poll_s: float = 0.2) -> Iterator[dict[str, Any]]:
        """Yield the job each time it is polled, until it ends."""
        while True:
            job = self.job(job_id)
            yield job
            if job["status"] in FINISHED:
                return
            time.sleep(poll_s)
