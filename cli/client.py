"""A small HTTP client for the API, used by `diffq submit`, `diffq watch` and the quickstart."""

import time
from collections.abc import Iterator
from pathlib import Path
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

    def cancel(self, job_id: str) -> dict[str, Any]:
        return self._json(self.http.post(f"/v1/jobs/{job_id}/cancel"))

    def upload(self, path: Path) -> dict[str, Any]:
        with path.open("rb") as file:
            return self._json(self.http.post("/v1/uploads", files={"file": (path.name, file)}))

    def submit_batch(self, body: dict[str, Any]) -> dict[str, Any]:
        return self._json(self.http.post("/v1/batches", json=body))

    def submit_batch_jsonl(self, path: Path, **defaults: str | None) -> dict[str, Any]:
        fields = {key: value for key, value in defaults.items() if value is not None}
        with path.open("rb") as file:
            response = self.http.post(
                "/v1/batches/jsonl", files={"file": (path.name, file, "application/jsonl")}, data=fields
            )
        return self._json(response)

    def batch(self, batch_id: str) -> dict[str, Any]:
        return self._json(self.http.get(f"/v1/batches/{batch_id}"))

    def cancel_batch(self, batch_id: str) -> dict[str, Any]:
        return self._json(self.http.post(f"/v1/batches/{batch_id}/cancel"))

    def manifest(self, batch_id: str) -> dict[str, Any]:
        return self._json(self.http.get(f"/v1/batches/{batch_id}/manifest.json"))

    def manifest_csv(self, batch_id: str) -> str:
        response = self.http.get(f"/v1/batches/{batch_id}/manifest.csv")
        if response.is_error:
            raise ApiError(f"{response.status_code} from {response.request.url}: {response.text}")
        return response.text

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
