"""A cap on request bodies: one over DIFFQ_MAX_UPLOAD_BYTES is refused with 413 before the app reads it.

FastAPI reads a JSON (or form-encoded) body whole and then parses it: a 200 MB batch cost 2.8 s and
770 MB of the API's memory before its 422 (found by a new user). A body that declares its length is
judged by its `Content-Length` and not read at all; one sent without (chunked) is counted as it arrives
and refused once past the limit, so at most the limit is held. Multipart uploads are left to their
routes (api/routes/uploads.py `read_upload`): Starlette spools their files to disk, and their limit
allows for the form's framing.
"""

from starlette import status
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from core.config import get_settings


def too_large_message(size: str, limit: int) -> str:
    """The 413's text for a body of `size` ("209715200", "over 20971520") past `limit` bytes."""
    return (
        f"the body is {size} bytes; the limit is {limit} (DIFFQ_MAX_UPLOAD_BYTES); send a smaller one: "
        "split a large batch into several, or sweep a template"
    )


class BodyLimit:
    """ASGI middleware: 413, in the API's `{"detail": ...}` shape, for a non-multipart request body of
    more than `settings.max_upload_bytes` bytes."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        content_type = headers.get(b"content-type", b"").split(b";")[0].strip().lower()
        if content_type == b"multipart/form-data":
            await self.app(scope, receive, send)
            return
        limit = get_settings().max_upload_bytes
        declared = headers.get(b"content-length")
        if declared is not None:
            # The server delivers no more than the declared length.
            if declared.isdigit() and int(declared) > limit:
                await _refuse(scope, receive, send, too_large_message(declared.decode(), limit))
                return
            await self.app(scope, receive, send)
            return
        if b"transfer-encoding" not in headers:  # no body at all
            await self.app(scope, receive, send)
            return
        messages = await _read_up_to(receive, limit)
        if messages is None:
            await _refuse(scope, receive, send, too_large_message(f"over {limit}", limit))
            return
        await self.app(scope, _replay(messages, receive), send)


async def _read_up_to(receive: Receive, limit: int) -> list[Message] | None:
    """The request's body messages as they came, or None once they hold more than `limit` bytes."""
    messages: list[Message] = []
    size = 0
    while True:
        message = await receive()
        messages.append(message)
        if message["type"] != "http.request":  # the client went away: the app sees that too
            return messages
        size += len(message.get("body", b""))
        if size > limit:
            return None
        if not message.get("more_body", False):
            return messages


def _replay(messages: list[Message], receive: Receive) -> Receive:
    """`receive` that gives `messages` first, then what the server sends (a disconnect)."""

    async def replayed() -> Message:
        return messages.pop(0) if messages else await receive()

    return replayed


async def _refuse(scope: Scope, receive: Receive, send: Send, detail: str) -> None:
    response = JSONResponse({"detail": detail}, status_code=status.HTTP_413_CONTENT_TOO_LARGE)
    await response(scope, receive, send)
