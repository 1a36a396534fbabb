"""A small HTTP client for the API, used by the `diffq` commands and the quickstart."""

import json
import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
from httpx_sse import SSEError, connect_sse

FINISHED = ("succeeded", "failed", "canceled")


class CliError(Exception):
    """An expected error: `diffq` prints its message (one or two lines that say what to do) and exits 1."""


class NoStream(Exception):
    """The API serves no event stream here (an older API): the caller polls instead."""


class ApiError(CliError):
    def __init__(self, message: str, status_code: int | None = None) -> None:
        super().__init__(message)
        self.status_code = status_code


def error_message(response: httpx.Response) -> str:
    """The API's answer as lines a person reads: its `detail`, a 422's per field."""
    try:
        detail = response.json().get("detail")
    except ValueError:
        detail = None
    if isinstance(detail, list):
        lines = []
        for item in detail:
            if not isinstance(item, dict):
                lines.append(f"  {item}")
                continue
            loc = [str(part) for part in item.get("loc", []) if part not in ("body", "query", "path")]
            where = ".".join(loc)
            lines.append(f"  {where}: {item.get('msg')}" if where else f"  {item.get('msg')}")
        return f"{response.status_code} {response.reason_phrase}:\n" + "\n".join(lines)
    if detail is None:
        detail = response.text.strip() or response.reason_phrase
    return f"{response.status_code} {response.reason_phrase}: {detail}"


def check_id(value: str, what: str = "job") -> str:
    """`value` if it is a UUID, else a CliError naming what a valid id looks like."""
    try:
        return str(uuid.UUID(value))
    except ValueError:
        raise CliError(
            f"{value!r} is not a {what} id; ids are UUIDs like 3f2b8c1e-7d4a-4f0e-9a61-2c5d8e9b0a17 "
            "(`diffq jobs` lists them)"
        ) from None


class Client:
    """The API at `base_url`, with the API key `api_key` (default: the DIFFQ_API_KEY environment
    variable) sent as `Authorization: Bearer` to the API only, never to presigned storage URLs."""

    def __init__(self, base_url: str, timeout: float = 30.0, api_key: str | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        key = os.environ.get("DIFFQ_API_KEY", "") if api_key is None else api_key
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self.http = httpx.Client(base_url=self.base_url, timeout=timeout, headers=headers)
        self.storage_http = httpx.Client(timeout=timeout)

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """Send a request; a connection failure is an ApiError that says how to reach the API."""
        try:
            return self.http.request(method, path, **kwargs)
        except httpx.TransportError as error:
            raise ApiError(
                f"can't reach the diffq API at {self.base_url} ({error or type(error).__name__}); "
                "start it with `diffq api`, or point DIFFQ_PUBLIC_URL or --api-url at it"
            ) from None

    def _json(self, response: httpx.Response) -> Any:
        if response.is_error:
            raise ApiError(error_message(response), response.status_code)
        return response.json()

    def submit(self, spec: dict[str, Any]) -> dict[str, Any]:
        return self._json(self.request("POST", "/v1/jobs", json=spec))

    def job(self, job_id: str) -> dict[str, Any]:
        return self._json(self.request("GET", f"/v1/jobs/{job_id}"))

    def jobs(self, **filters: Any) -> dict[str, Any]:
        params = {key: value for key, value in filters.items() if value is not None}
        return self._json(self.request("GET", "/v1/jobs", params=params))

    def cancel(self, job_id: str) -> dict[str, Any]:
        return self._json(self.request("POST", f"/v1/jobs/{job_id}/cancel"))

    def upload(self, path: Path) -> dict[str, Any]:
        try:
            file = path.open("rb")
        except OSError as error:
            raise CliError(f"can't read {path}: {error.strerror or error}") from None
        with file:
            return self._json(self.request("POST", "/v1/uploads", files={"file": (path.name, file)}))

    def submit_batch(self, body: dict[str, Any]) -> dict[str, Any]:
        return self._json(self.request("POST", "/v1/batches", json=body))

    def submit_batch_jsonl(self, path: Path, **defaults: str | None) -> dict[str, Any]:
        fields = {key: value for key, value in defaults.items() if value is not None}
        try:
            file = path.open("rb")
        except OSError as error:
            raise CliError(f"can't read {path}: {error.strerror or error}") from None
        with file:
            upload = {"file": (path.name, file, "application/jsonl")}
            response = self.request("POST", "/v1/batches/jsonl", files=upload, data=fields)
        return self._json(response)

    def batch(self, batch_id: str) -> dict[str, Any]:
        return self._json(self.request("GET", f"/v1/batches/{batch_id}"))

    def job_or_batch(self, item_id: str) -> tuple[str, dict[str, Any]]:
        """("job", the job) or ("batch", the batch) the id names; a CliError if it names neither."""
        item_id = check_id(item_id, "job or batch")
        for kind, get in (("job", self.job), ("batch", self.batch)):
            try:
                return kind, get(item_id)
            except ApiError as error:
                if error.status_code != 404:
                    raise
        raise CliError(f"no job or batch with id {item_id} (`diffq jobs` lists the jobs)")

    def cancel_batch(self, batch_id: str) -> dict[str, Any]:
        return self._json(self.request("POST", f"/v1/batches/{batch_id}/cancel"))

    def manifest(self, batch_id: str) -> dict[str, Any]:
        return self._json(self.request("GET", f"/v1/batches/{batch_id}/manifest.json"))

    def manifest_csv(self, batch_id: str) -> str:
        response = self.request("GET", f"/v1/batches/{batch_id}/manifest.csv")
        if response.is_error:
            raise ApiError(error_message(response), response.status_code)
        return response.text

    def download(self, url: str) -> bytes:
        """An output's bytes: from the API (local storage, with the key) or a presigned URL (without)."""
        if url.startswith(("http://", "https://")) and not url.startswith(self.base_url + "/"):
            try:
                response = self.storage_http.get(url)
            except httpx.TransportError as error:
                raise ApiError(f"can't fetch {url} ({error or type(error).__name__})") from None
        else:
            response = self.request("GET", url)
        if response.is_error:
            raise ApiError(f"{response.status_code} fetching {url}", response.status_code)
        return response.content

    def events(self, path: str, reconnects: int = 5) -> Iterator[tuple[str, dict[str, Any]]]:
        """(event, data) of a Server-Sent Events stream until the server ends it. A dropped connection is
        resumed with `Last-Event-ID`, so no event is lost or repeated; NoStream when the API has no such
        stream or it fails before its first event."""
        last_id: str | None = None
        failures = 0
        while True:
            headers = {"Last-Event-ID": last_id} if last_id else {}
            try:
                with connect_sse(self.http, "GET", path, headers=headers, timeout=None) as source:
                    if source.response.is_error or "text/event-stream" not in source.response.headers.get(
                        "content-type", ""
                    ):
                        raise NoStream(f"{source.response.status_code} for {path}")
                    for sse in source.iter_sse():
                        if sse.id:
                            last_id = sse.id
                        failures = 0
                        if not sse.data.strip():  # a keep-alive ping: nothing to read
                            continue
                        yield sse.event, json.loads(sse.data)
                return
            except (httpx.TransportError, SSEError) as error:
                failures += 1
                if last_id is None and failures == 1 or failures > reconnects:
                    raise NoStream(str(error) or type(error).__name__) from None
                time.sleep(min(2.0, 0.2 * failures))

    def follow(self, job_id: str, poll_s: float = 0.2) -> Iterator[dict[str, Any]]:
        """Yield the job each time it is polled, until it ends."""
        while True:
            job = self.job(job_id)
            yield job
            if job["status"] in FINISHED:
                return
            time.sleep(poll_s)
