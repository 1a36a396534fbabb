"""The submission API. Start it with `diffq api`."""

import gc
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, Request, Response, status
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from sqlalchemy.exc import DataError, InterfaceError, OperationalError
from starlette.exceptions import HTTPException as StarletteHTTPException
from swagger_ui_bundle import swagger_ui_path

from api.body_limit import BodyLimit
from api.routes import batches, events, files, jobs, me, metrics, models, schedulers, schedules, uploads
from core.config import get_settings
from core.errors import first_line

DOCS_ASSETS = "/docs-assets"
logger = logging.getLogger("diffq.api")


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    # What the app has made by now (its modules, routes and schemas, ~150,000 objects) lives as long as
    # the process: moved out of the collector's sight, it is no longer scanned by every full collection.
    # A 10,000-job batch sets off a few of those; each scanned it all (0.1-0.4 s a batch on 2 cores).
    gc.collect()
    gc.freeze()
    if not get_settings().auth:
        logger.warning(
            "AUTH IS OFF (DIFFQ_AUTH=false): every request acts as the 'default' owner with admin rights; "
            "anyone who can reach this API can read, cancel and submit every job"
        )
    yield


app = FastAPI(
    title="diffq",
    summary="A job queue for diffusion models: submit generation and training jobs, watch them run, "
    "fetch images and models.",
    docs_url=None,  # served below from the package's own Swagger UI files, so that it works offline
    lifespan=lifespan,
)
app.add_middleware(BodyLimit)
app.include_router(jobs.router)
app.include_router(files.router)
app.include_router(uploads.router)
app.include_router(batches.router)
app.include_router(schedulers.router)
app.include_router(metrics.router)
app.include_router(models.router)
app.include_router(schedules.router)
app.include_router(me.router)
app.include_router(events.router)
app.mount(DOCS_ASSETS, StaticFiles(directory=swagger_ui_path), name="docs-assets")
# The dashboard: static files, plain JavaScript that calls this API with the user's key.
app.mount("/ui", StaticFiles(directory=Path(__file__).parent / "ui", html=True), name="ui")


def _printable(value: object) -> str | int:
    """`value` as JSON can always carry it: text without lone surrogates, cut to a readable length."""
    if isinstance(value, int):
        return value
    text = str(value).encode("utf-8", "replace").decode("utf-8")
    return text if len(text) <= 300 else text[:300] + "…"


# The types pydantic gives a body that is not a JSON object or array where one was expected.
NOT_AN_OBJECT = {"model_attributes_type", "dict_type", "list_type", "model_type"}


def _message(request: Request, item: dict) -> str:
    """What to fix for one validation error: pydantic's message, or for a body that did not parse as
    JSON (`json_invalid`) or was not sent as JSON at all (no `content-type: application/json`) one that
    says so."""
    loc = tuple(item.get("loc", ()))
    if item.get("type") == "json_invalid":
        where = f" at character {loc[1]}" if len(loc) > 1 else ""
        return f"the body is not valid JSON{where}: {(item.get('ctx') or {}).get('error', 'decode error')}"
    content_type = request.headers.get("content-type")
    if loc == ("body",) and item.get("type") in NOT_AN_OBJECT and not _is_json(content_type):
        return (
            "send the body as JSON with the header content-type: application/json (this request's "
            f"content-type: {content_type or 'none'})"
        )
    return str(item.get("msg", "")).removeprefix("Value error, ")


def _is_json(content_type: str | None) -> bool:
    media = (content_type or "").split(";")[0].strip().lower()
    return media == "application/json" or (media.startswith("application/") and media.endswith("+json"))


@app.exception_handler(RequestValidationError)
def invalid_request(request: Request, error: RequestValidationError) -> JSONResponse:
    """422 with each error's location, message and type. Unlike FastAPI's own handler it does not echo
    the input back: an `inf`, a lone surrogate or a 60 MB prompt in the request made that answer a 500
    or as large as the request (found by a new user's bad input)."""
    detail = [
        {
            "loc": [_printable(part) for part in item.get("loc", ())],
            "msg": _printable(_message(request, item)),
            "type": _printable(item.get("type", "value_error")),
        }
        for item in error.errors()
    ]
    return JSONResponse(status_code=status.HTTP_422_UNPROCESSABLE_CONTENT, content={"detail": detail})


# FastAPI's answer to a body it could not read, whatever the reason (it keeps the reason as the cause).
UNPARSED_BODY = "There was an error parsing the body"


@app.exception_handler(StarletteHTTPException)
async def http_error(request: Request, error: StarletteHTTPException) -> Response:
    """FastAPI's own answer, except for a body it could not read, whose 400 says why: not UTF-8 (where),
    nested deeper than the JSON parser goes, or a malformed multipart form."""
    if error.status_code == status.HTTP_400_BAD_REQUEST and error.detail == UNPARSED_BODY:
        return JSONResponse(
            status_code=400, content={"detail": _printable(_unparsed_reason(error.__cause__))}
        )
    return await http_exception_handler(request, error)


def _unparsed_reason(cause: BaseException | None) -> str:
    if isinstance(cause, UnicodeDecodeError):
        byte = cause.object[cause.start : cause.start + 1].hex()
        return (
            f"the body is not valid {cause.encoding.upper()}: byte 0x{byte} at position {cause.start} "
            f"({cause.reason}); send JSON encoded as UTF-8"
        )
    if isinstance(cause, RecursionError):
        return (
            "the JSON body nests arrays or objects too deeply for the parser (about 1000 levels); "
            "send a flatter body"
        )
    reason = first_line(cause) if cause is not None else "unknown"
    return f"the body could not be read ({reason}); send JSON with content-type: application/json"


@app.exception_handler(DataError)
def refused_by_the_database(request: Request, error: DataError) -> JSONResponse:
    """A value the database can't store or compare (Postgres refuses NUL characters in text and
    numbers beyond its columns' range) is the request's to fix, wherever it was sent: a 422, not a 500.
    Found by the API fuzzer (a model named "\\u0000"). The routes' parameters carry their columns'
    bounds, so that their own 422 names them; this is the net under them."""
    reason = first_line(error.orig or error)
    message = f"the request holds a value the database can't use ({reason}); {_data_fix(reason)}"
    detail = [{"loc": ["request"], "msg": message, "type": "value_error"}]
    return JSONResponse(status_code=status.HTTP_422_UNPROCESSABLE_CONTENT, content={"detail": detail})


# Postgres's word for an integer type in "... out of range", and that type's range.
INTEGER_RANGES = {
    "smallint": "16 bits (-32768 to 32767)",
    "bigint": "64 bits (-9223372036854775808 to 9223372036854775807)",
    "integer": "32 bits (-2147483648 to 2147483647)",
}


def _data_fix(reason: str) -> str:
    """What to change for the database's `reason`: the range of the integer type it names, if any."""
    lowered = reason.lower()
    if "out of range" in lowered:
        for name, bounds in INTEGER_RANGES.items():  # "bigint" and "smallint" before "integer"
            if name in lowered:
                return f"keep that integer within {bounds}"
    if "nul" in lowered or "0x00" in lowered:
        return "remove NUL characters (\\u0000) from text"
    return "remove NUL characters (\\u0000) from text and keep integers within their fields' bounds"


# Seconds a client is asked to wait before trying again while the database is unreachable.
RETRY_AFTER_S = 5


@app.exception_handler(OperationalError)
@app.exception_handler(InterfaceError)
def database_unavailable(request: Request, error: Exception) -> JSONResponse:
    """The database can't be reached (restarting, failing over, a network fault): a 503 with
    `Retry-After`, not a 500. Nothing needs restarting: the next request's connection is checked first
    (`pool_pre_ping`), so the API answers again as soon as the database does."""
    logger.warning(
        "%s %s: the database is unreachable (%s)", request.method, request.url.path, first_line(error)
    )
    return JSONResponse(
        status_code=status.HTTP_503_SERVICE_UNAVAILABLE,
        headers={"Retry-After": str(RETRY_AFTER_S)},
        content={"detail": f"the database is unreachable; try again in {RETRY_AFTER_S} s"},
    )


@app.get("/docs", include_in_schema=False)
def swagger_ui() -> HTMLResponse:
    return get_swagger_ui_html(
        openapi_url=app.openapi_url or "/openapi.json",
        title=f"{app.title} - Swagger UI",
        oauth2_redirect_url=app.swagger_ui_oauth2_redirect_url,
        swagger_js_url=f"{DOCS_ASSETS}/swagger-ui-bundle.js",
        swagger_css_url=f"{DOCS_ASSETS}/swagger-ui.css",
        swagger_favicon_url=f"{DOCS_ASSETS}/favicon-32x32.png",
    )


@app.get(app.swagger_ui_oauth2_redirect_url or "/docs/oauth2-redirect", include_in_schema=False)
def swagger_ui_redirect() -> HTMLResponse:
    return get_swagger_ui_oauth2_redirect_html()


@app.get("/healthz", tags=["health"])
def healthz() -> dict[str, str]:
    return {"status": "ok"}
