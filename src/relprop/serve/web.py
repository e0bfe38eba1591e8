"""What the image page and the text page of ``relprop serve`` share: refusals in words, the
request-size limit, the error handlers, the static files."""
from __future__ import annotations

import math
from pathlib import Path

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles

STATIC = Path(__file__).with_name("static")
TOP = 5  # predictions shown


def number(value) -> float | None:
    """A JSON number; None for NaN or Inf, which JSON cannot hold."""
    value = float(value)
    return value if math.isfinite(value) else None


def web_app(page: str, limit: int, refusal: str) -> FastAPI:
    """The app with the page ``static/PAGE`` at ``/``, the static files, requests over ``limit``
    bytes refused with ``refusal``, and every error answered in words. No Swagger page: it loads
    its scripts from a CDN; the schema itself is served."""
    app = FastAPI(title="relprop", docs_url=None, redoc_url=None,
                  openapi_url="/api/openapi.json")
    app.add_middleware(BodyLimit, limit=limit, refusal=refusal)
    error_handlers(app)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/", include_in_schema=False)
    def index():
        return FileResponse(STATIC / page)
    return app


class Refused(HTTPException):
    """A request refused, with its reason in words as ``{"detail": ...}`` (400 unless said)."""

    def __init__(self, detail: str, status_code: int = 400):
        super().__init__(status_code, detail)


class BodyLimit:
    """Refuse a request body over ``limit`` bytes with 413 before the app parses it, whether
    the client declares its length or streams it in chunks."""

    def __init__(self, app, limit: int, refusal: str):
        self.app, self.limit, self.refusal = app, limit, refusal

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.limit):
            return await self._refuse(scope, receive, send)
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.limit:
                return await self._refuse(scope, receive, send)
            if not message.get("more_body"):
                break
        body, replayed = b"".join(chunks), False

        async def replay():
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}
        await self.app(scope, replay, send)

    async def _refuse(self, scope, receive, send):
        await JSONResponse({"detail": self.refusal}, 413)(scope, receive, send)


def error_handlers(app: FastAPI) -> None:
    """Every error as ``{"detail": words}``: no traceback reaches the page, and the server
    keeps running (Starlette passes an unexpected error on to uvicorn, which logs its
    traceback)."""

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError):
        problems = "; ".join(_field_problem(err) for err in exc.errors())
        return JSONResponse({"detail": f"bad request: {problems}"}, 400)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception):
        return JSONResponse({"detail": f"internal error ({type(exc).__name__}: {exc}); the "
                                       "server keeps running"}, 500)


def _field_problem(error: dict) -> str:
    field = ".".join(str(p) for p in error["loc"][1:]) or "request"
    if field == "image":  # pydantic's words would name Python classes
        return "the form field 'image' must be a file (the picture), not text"
    return f"{field}: {error['msg']}"
