"""The app: `landmark serve` / `python -m jobs.serve`, the model on Ray Serve with an upload page.

    HTTP (Serve proxy; jobs._serve_proxy answers for a replica that died) -> Tagger replicas, each the FastAPI
      ingress (auth, size and type checks, timeouts, the page) and the model: @serve.batch turns the requests
      of many clients into one call of landmark_core.predict.predict_bytes (the decode, Predictor and
      abstention of `landmark predict`); autoscaled MIN..MAX

A photo gets the JSON object `landmark predict --json` prints for it. `serve deploy serve_config.yaml` runs the
same application through ``build_app`` on a cluster.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import functools
import hashlib
import hmac
import logging
import math
import os
import re
import signal
import socket
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import ray
from fastapi import Depends, FastAPI, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, Field
from ray import serve
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.formparsers import MultiPartException, MultiPartParser

from jobs._cli import ConfigError, checks_config, run_cli
from landmark_core import storage
from landmark_core.artifact import ArtifactError, load as load_artifact
from landmark_core.onnx_runtime import ONNX_RUNTIMES, RUNTIMES, RuntimeChoiceError, check_runtime, resolve_runtime
from landmark_core.predict import PENDING, PhotoResult, predict_bytes
from landmark_core.preprocess import DEFAULT_MAX_PIXELS

APP_NAME = "landmark"
RAW_TYPES = ("image/", "application/octet-stream")
MAX_BATCH_FILES = 64
MAX_FORM_FIELDS = 16  # text fields of a multipart form (photos are file parts): a form of thousands is an attack
MAX_FIELD_BYTES = 1 << 20  # one text field
RETRY_AFTER_S = 1
RETRY = {"Retry-After": str(RETRY_AFTER_S)}
ORIGIN = re.compile(r"[a-z][a-z0-9+.-]*://[^/?#\s]+")
CORS_MAX_AGE_S = 600  # a browser caches a preflight's answer this long
PROXY_GRACE_S = 2.0


@dataclass(frozen=True)
class ServeConfig:
    model: str
    host: str = "127.0.0.1"
    port: int = 8000
    replicas: tuple[int, int] = (1, 1)
    gpus_per_replica: float = 0.0
    cpus_per_replica: float = 1.0
    max_batch_size: int = 16
    batch_wait_ms: float = 10.0
    runtime: str = "auto"  # landmark_core.onnx_runtime: auto = torch on a GPU replica, onnx-int8 on a CPU one
    k: int = 5
    token_file: str | None = None
    max_upload_mb: float = 25.0
    max_pixels: int = DEFAULT_MAX_PIXELS  # a photo over it is refused from its header (422 too_large)
    request_timeout_s: float = 30.0  # a request not answered by then gets 503 + Retry-After
    max_queued: int = 512  # requests waiting for a Tagger replica at the ingress; beyond: 503 + Retry-After
    s3_endpoint: str | None = None
    ray_address: str | None = None
    app_name: str = APP_NAME
    route_prefix: str = "/"
    allow_origins: tuple[str, ...] = ()  # web origins whose pages may call the API from a browser (CORS)

    def check(self) -> None:
        for flag, v in (
            ("-k", self.k),
            ("--max-batch-size", self.max_batch_size),
            ("--max-upload-mb", self.max_upload_mb),
            ("--max-pixels", self.max_pixels),
            ("--request-timeout", self.request_timeout_s),
            ("--cpus-per-replica", self.cpus_per_replica),
            ("--max-queued", self.max_queued),
        ):
            if v is None or not v > 0 or not math.isfinite(v):
                raise ConfigError(f"{flag} must be > 0, got {v}")
        if not 0 <= self.batch_wait_ms <= 10_000:
            raise ConfigError(f"--batch-wait-ms must be in [0, 10000], got {self.batch_wait_ms}")
        lo, hi = self.replicas
        if lo < 1 or hi < lo:
            raise ConfigError(f"--replicas must be MIN[,MAX] with 1 <= MIN <= MAX, got {lo},{hi}")
        if self.gpus_per_replica < 0:
            raise ConfigError(f"--gpus-per-replica must be >= 0, got {self.gpus_per_replica}")
        if not 0 < self.port < 65536:
            raise ConfigError(f"--port must be in 1..65535, got {self.port}")
        if not self.host:
            raise ConfigError("--host must not be empty")
        try:
            self.resolved_runtime()
        except RuntimeChoiceError as e:
            raise ConfigError(str(e)) from None
        if self.token_file is not None:
            self.token_sha256()
        for origin in self.allow_origins:
            check_origin(origin)
        try:
            storage.check_locations({"--model": self.model}, storage.S3Options(endpoint=self.s3_endpoint))
        except storage.StorageError as e:
            raise ConfigError(str(e)) from None

    def resolved_runtime(self) -> str:
        check_runtime(self.runtime)
        return resolve_runtime(self.runtime, "cuda" if self.gpus_per_replica else "cpu")

    def token_sha256(self) -> str | None:
        """The token's SHA-256: the only form of it that leaves this process (Serve records deployment args)."""
        if self.token_file is None:
            return None
        try:
            token = Path(self.token_file).read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as e:
            raise ConfigError(f"--token-file {self.token_file}: cannot read it ({type(e).__name__})") from None
        if not token:
            raise ConfigError(f"--token-file {self.token_file}: the file is empty")
        return hashlib.sha256(token.encode()).hexdigest()

    @classmethod
    def from_mapping(cls, args: dict) -> "ServeConfig":
        """A config from `serve deploy`'s ``args`` (strings as on the command line, or YAML values)."""
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(args) - known)
        if unknown:
            raise ConfigError(f"unknown serve args: {', '.join(unknown)} (known: {', '.join(sorted(known))})")
        if "model" not in args:
            raise ConfigError("serve args need 'model'")
        values = dict(args)
        if isinstance(values.get("replicas"), (str, int)):
            values["replicas"] = parse_min_max(str(values["replicas"]), "replicas")
        elif isinstance(values.get("replicas"), list):  # YAML [MIN, MAX]
            values["replicas"] = parse_min_max(",".join(map(str, values["replicas"])), "replicas")
        origins = values.get("allow_origins")
        if isinstance(origins, str):  # "https://a.example,https://b.example"
            values["allow_origins"] = tuple(o.strip() for o in origins.split(",") if o.strip())
        elif isinstance(origins, list):
            values["allow_origins"] = tuple(str(o) for o in origins)
        for name, f in cls.__dataclass_fields__.items():
            if name in values and values[name] is not None and f.type in ("int", "float"):
                values[name] = (int if f.type == "int" else float)(values[name])
        return cls(**values)


def check_origin(origin: str) -> None:
    """A CORS origin as a browser sends it: scheme://host[:port], no path or trailing slash (it would never
    match, silently), or * for any page."""
    if origin != "*" and not (ORIGIN.fullmatch(origin) and origin == origin.lower()):
        raise ConfigError(
            f"--allow-origin {origin!r}: must be * or scheme://host[:port] as a browser sends it, "
            "e.g. https://photos.example.com (lowercase, no path, no trailing slash)"
        )


def parse_min_max(text: str, flag: str) -> tuple[int, int]:
    try:
        parts = [int(x) for x in text.split(",")]
    except ValueError:
        raise ConfigError(f"--{flag} must be MIN[,MAX] integers, got {text!r}") from None
    if len(parts) not in (1, 2):
        raise ConfigError(f"--{flag} must be MIN[,MAX], got {text!r}")
    return parts[0], parts[-1]


# ---------------------------------------------------------------- the deployments


@serve.deployment(name="Tagger")
@serve.ingress()
class Tagger:
    """The HTTP API and the Predictor in one replica (one hop from the proxy): concurrent requests become one
    model call of up to max_batch_size through @serve.batch."""

    def __init__(
        self,
        model: str,
        *,
        runtime: str,
        k: int,
        threads: int,
        max_batch_size: int,
        batch_wait_s: float,
        s3_endpoint: str | None,
        token_sha256: str | None,
        max_upload_bytes: int,
        request_timeout_s: float,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        allow_origins: tuple[str, ...] = (),
    ):
        from landmark_core.predictor import Predictor

        self.predictor = Predictor(
            model, k=k, runtime=runtime, threads=threads, storage_options=storage.S3Options(endpoint=s3_endpoint)
        )
        self.tag.set_max_batch_size(max_batch_size)
        self.tag.set_batch_wait_timeout_s(batch_wait_s)
        self.token_sha256 = token_sha256
        self.max_upload_bytes, self.request_timeout_s = max_upload_bytes, request_timeout_s
        self.max_pixels = max_pixels
        self.allow_origins = tuple(allow_origins)

    def __serve_build_asgi_app__(self):
        return make_api(self)

    async def tag_all(self, files: list[tuple[str, bytes]]) -> list[dict]:
        """Each photo is its own batch call, so photos of one request batch with everyone else's; 503 +
        Retry-After when they are not answered within the request timeout."""
        try:
            return list(await asyncio.wait_for(asyncio.gather(*map(self.tag, files)), self.request_timeout_s))
        except asyncio.TimeoutError:
            raise HttpError(503, "unavailable: not answered within the request timeout", RETRY) from None

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.01)
    async def tag(self, items: list[tuple[str, bytes]]) -> list[dict]:
        # in a thread: decode and the model release the GIL, and the replica's event loop keeps batching
        return await asyncio.to_thread(self._tag_now, items)

    def _tag_now(self, items: list[tuple[str, bytes]]) -> list[dict]:
        results = [PhotoResult(name, PENDING) for name, _ in items]
        datas = [data for _, data in items]
        return [r.__dict__ for r in predict_bytes(results, datas, self.predictor, max_pixels=self.max_pixels)]

    def info(self) -> dict:
        p = self.predictor
        return {
            "model_id": p.model_id,
            "runtime": p.runtime,
            "k": p.k,
            "catalog": p.catalog.to_json(),
            "metrics": p.artifact.metrics,
            "abstain": {"method": p.method, "threshold": p.threshold, "stale_fit": p.stale_fit},
        }


class HttpError(Exception):
    """An answer other than 200: the status, the reason words of the tag job's failed rows, optional headers."""

    def __init__(self, status: int, reason: str, headers: dict | None = None):
        super().__init__(reason)
        self.status, self.reason, self.headers = status, reason, headers or {}


def error_body(reason: str, path: str | None = None) -> dict:
    """An error answer has the shape of a failed photo's result."""
    return PhotoResult(path, "failed", error=reason).__dict__


def status_for(result: dict) -> int:
    """A photo that did not decode: 400 for an empty body, 422 for the rest (not_an_image, truncated, ...)."""
    if result["status"] != "failed":
        return 200
    return 400 if str(result["error"]).startswith("empty") else 422


async def read_bounded(request: Request, limit: int):
    """The body as chunks, refusing (413) a declared or streamed size over ``limit`` before reading more."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise HttpError(413, f"too_large: body of {int(declared)} bytes exceeds the {limit} byte upload limit")
    seen = 0
    async for chunk in request.stream():
        seen += len(chunk)
        if seen > limit:
            raise HttpError(413, f"too_large: body exceeds the {limit} byte upload limit")
        yield chunk


async def uploaded_files(request: Request, limit: int, max_files: int) -> list[tuple[str, bytes]]:
    """(name, bytes) of every photo in the request: a raw image body, or the files of a multipart form."""
    ctype = request.headers.get("content-type", "")
    if ctype.lower().startswith("multipart/form-data"):
        parser = MultiPartParser(
            request.headers,
            read_bounded(request, limit),
            max_files=max_files,
            max_fields=MAX_FORM_FIELDS,
            max_part_size=MAX_FIELD_BYTES,
        )
        try:
            form = await parser.parse()
        except MultiPartException as e:
            raise multipart_error(request.url.path, e, max_files) from None
        files = [(v.filename or k, await v.read()) for k, v in form.multi_items() if hasattr(v, "read")]
        if not files:
            raise HttpError(
                400, "empty: the multipart form holds no file (a part with a filename; one without is a text field)"
            )
        return files
    if not ctype.lower().startswith(RAW_TYPES):
        raise HttpError(
            415,
            f"unsupported: content type {ctype or '(none)'!r}; send image/*, "
            "application/octet-stream or multipart/form-data",
        )
    name = request.query_params.get("name") or "upload"
    return [(name, b"".join([c async for c in read_bounded(request, limit)]))]


def multipart_error(path: str, e: MultiPartException, max_files: int) -> HttpError:
    """400 for a form the parser refused. A form over one of the route's limits is well formed, so it is told
    which limit, with its value (starlette says it only in the message's words); the rest is malformed."""
    said = str(e)
    if said.startswith("Too many files") and max_files == 1:
        return HttpError(
            400, f"too_many_files: {path} takes one photo; send several to /v1/tag/batch (at most {MAX_BATCH_FILES})"
        )
    if said.startswith("Too many files"):
        return HttpError(
            400, f"too_many_files: {path} takes at most {max_files} photos; split them over several requests"
        )
    if said.startswith("Too many fields"):
        return HttpError(
            400, f"too_many_fields: a form takes at most {MAX_FORM_FIELDS} text fields; send photos as file parts"
        )
    if said.startswith(("Field exceeded", "Part exceeded")):
        return HttpError(
            400, f"field_too_large: a form's text field is at most {MAX_FIELD_BYTES} bytes; send photos as file parts"
        )
    return HttpError(400, f"unsupported: malformed multipart form ({e})")


SWAGGER_ASSETS = {"swagger-ui-bundle.js": "text/javascript", "swagger-ui.css": "text/css"}


@functools.cache
def swagger_asset(name: str) -> bytes:
    """Swagger UI's files as the fastapi-offline package ships them (what /docs would otherwise fetch from a CDN)."""
    from importlib.resources import files

    return (files("fastapi_offline") / "static" / name).read_bytes()


class TagOut(BaseModel):
    name: str
    score: float
    lat: float | None = None
    lon: float | None = None


class ResultOut(BaseModel):
    """One photo's answer: the object `landmark predict --json` prints. Errors have this shape too."""

    path: str | None = Field(
        None,
        description="the upload's name: ?name=, or the form file's name; 'upload' for a raw body without ?name=; "
        "null on an error about the request itself",
    )
    status: Literal["tagged", "no_landmark", "failed"]
    error: str | None = Field(None, description="why, when failed: '<kind>: <reason>' (see the error statuses)")
    landmark: str | None = Field(None, description="the top landmark when tagged; null for no_landmark and failed")
    score: float | None = Field(
        None,
        description="the top landmark's score (for a model trained with --negatives, the probability that the tag "
        "is right); for no_landmark the best guess's, below the threshold; null when failed",
    )
    lat: float | None = Field(None, description="the landmark's location when tagged")
    lon: float | None = None
    tags: list[TagOut] | None = Field(None, description="the top-k landmarks, best first (not when failed)")
    exif_lat: float | None = Field(None, description="the photo's own GPS position from its EXIF, if any")
    exif_lon: float | None = None


_BINARY = {"type": "string", "format": "binary"}
PHOTO_BODY = {
    "required": True,
    "content": {
        "image/*": {"schema": _BINARY},
        "application/octet-stream": {"schema": _BINARY},
        "multipart/form-data": {
            "schema": {"type": "object", "properties": {"photo": _BINARY}, "required": ["photo"]},
        },
    },
}
PHOTOS_BODY = {
    "required": True,
    "content": {
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "properties": {"photos": {"type": "array", "items": _BINARY, "maxItems": MAX_BATCH_FILES}},
                "required": ["photos"],
            },
        },
    },
}


def _errors(*statuses: int) -> dict:
    """OpenAPI ``responses`` for these error statuses, each in the result's shape with status 'failed'."""
    said = {
        400: "empty (zero bytes, no file in the form), malformed form, too_many_files, too_many_fields, "
        "field_too_large",
        401: "unauthorized: no or wrong bearer token (a server started with --token-file); WWW-Authenticate: Bearer",
        413: "too_large: the request body is over --max-upload-mb (the whole body: a batch's photos together)",
        415: "unsupported: a content type other than image/*, application/octet-stream or multipart/form-data",
        422: "the photo does not decode: not_an_image, truncated, too_large (pixels), unsupported",
        503: "unavailable: not answered within --request-timeout (upload time included), the queue is full "
        "(--max-queued), or the replica died; Retry-After: 1",
    }
    return {code: {"model": ResultOut, "description": said[code]} for code in statuses}


def _allow_origins(api: FastAPI, origins: tuple[str, ...]) -> None:
    """CORS for the pages of ``origins`` (--allow-origin): their scripts may call the API and read its answers,
    sending the token in Authorization (a bearer token, not a cookie: no credentials mode). None given: no CORS
    headers, so browsers keep other sites' pages from reading answers; the upload page is same-origin anyway."""
    if origins:
        from starlette.middleware.cors import CORSMiddleware

        api.add_middleware(
            CORSMiddleware,
            allow_origins=list(origins),
            allow_methods=["GET", "HEAD", "POST"],
            allow_headers=["Authorization", "Content-Type"],
            max_age=CORS_MAX_AGE_S,
        )


def make_api(ingress: Tagger) -> FastAPI:
    """The HTTP API, built in each Tagger replica around its model and settings."""
    # docs and schema are ordinary routes here, so the token guards them like every route but /healthz
    # redirect_slashes off: /v1/tag/ is a 404 in the API's error shape, not an empty 307 (a POST's body is lost)
    api = FastAPI(
        title="landmark-tagger",
        version="1",
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
        redirect_slashes=False,
        description="Tag a photo with the landmark it shows, and where it was taken.",
    )
    _allow_origins(api, ingress.allow_origins)
    guarded = ingress.token_sha256 is not None
    authorize = _bearer_check(ingress.token_sha256) if guarded else _open
    auth_errors = (401,) if guarded else ()
    _add_error_handlers(api)
    _add_page_and_docs(api, ingress, authorize, auth_errors)
    _add_tag_routes(api, ingress, authorize, auth_errors)
    return api


def _add_error_handlers(api: FastAPI) -> None:
    """Every error in the API's one shape (``error_body``), the routing's own 404 and 405 included."""

    @api.exception_handler(HttpError)
    async def http_error(_request: Request, e: HttpError):
        return JSONResponse(error_body(e.reason), status_code=e.status, headers=e.headers)

    @api.exception_handler(StarletteHTTPException)
    async def routing_error(request: Request, e: StarletteHTTPException):
        """No such route (404) or method (405, with Allow): the API's error shape too, not FastAPI's {"detail"}."""
        reason = {404: "not_found", 405: "method_not_allowed"}.get(e.status_code, "unsupported")
        headers = dict(e.headers or {})
        if e.status_code == 405:  # Starlette names the first route's methods only (HEAD, where GET serves too)
            headers["Allow"] = ", ".join(_methods_of_path(request))
        return JSONResponse(
            error_body(f"{reason}: {request.method} {request.url.path}"), status_code=e.status_code, headers=headers
        )


def _methods_of_path(request: Request) -> list[str]:
    """Every method some route of the app serves at the request's path."""
    from starlette.routing import Match

    methods = set()
    for route in request.app.router.routes:
        if getattr(route, "methods", None) and route.matches(request.scope)[0] != Match.NONE:
            methods |= set(route.methods)
    return sorted(methods)


def _add_page_and_docs(api: FastAPI, ingress: Tagger, authorize, auth_errors: tuple) -> None:
    """/healthz, the upload page, /docs with its assets and schema, /v1/model."""
    from fastapi.openapi.docs import get_swagger_ui_html

    from jobs._serve_page import PAGE

    # HEAD too (load balancers and uptime checks often probe with it), kept out of the schema: one operation each
    @api.get("/healthz", responses=_errors(503))
    @api.head("/healthz", include_in_schema=False)
    async def healthz():
        """Up when a Tagger replica answers (no auth: for load balancers)."""
        return {"status": "ok", "model_id": ingress.predictor.model_id}

    @api.get("/", response_class=HTMLResponse, dependencies=[Depends(authorize)], responses=_errors(*auth_errors))
    @api.head("/", response_class=HTMLResponse, dependencies=[Depends(authorize)], include_in_schema=False)
    async def page():
        """The upload page: one self-contained HTML file (no external scripts, fonts or tiles)."""
        return HTMLResponse(PAGE)

    @api.get("/openapi.json", include_in_schema=False, dependencies=[Depends(authorize)])
    async def openapi():
        return api.openapi()

    @api.get("/docs", include_in_schema=False, dependencies=[Depends(authorize)])
    async def docs():
        # relative URLs, so that the page works under any route prefix; no CDN, no favicon from the internet
        return get_swagger_ui_html(
            openapi_url="openapi.json",
            title="landmark-tagger API",
            swagger_js_url="docs/swagger-ui-bundle.js",
            swagger_css_url="docs/swagger-ui.css",
            swagger_favicon_url="data:,",
        )

    @api.get("/docs/{name}", include_in_schema=False, dependencies=[Depends(authorize)])
    async def docs_asset(name: str):
        if name not in SWAGGER_ASSETS:
            raise HttpError(404, f"not found: /docs/{name}")
        return Response(swagger_asset(name), media_type=SWAGGER_ASSETS[name])

    @api.get("/v1/model", dependencies=[Depends(authorize)], responses=_errors(*auth_errors))
    async def model():
        """The model's id, its catalog of landmarks with their locations, and its metrics."""
        return ingress.info()


def _add_tag_routes(api: FastAPI, ingress: Tagger, authorize, auth_errors: tuple) -> None:
    """POST /v1/tag (one photo) and /v1/tag/batch (up to MAX_BATCH_FILES)."""

    @api.post(
        "/v1/tag",
        dependencies=[Depends(authorize)],
        response_model=ResultOut,
        responses=_errors(400, *auth_errors, 413, 415, 422, 503),
        openapi_extra={"requestBody": PHOTO_BODY},
    )
    async def tag(
        request: Request,
        name: str | None = Query(None, description="the photo's name in the answer, for a raw body"),
    ):
        """One photo, as the raw body (Content-Type image/* or application/octet-stream) or a multipart form with
        one file -> the `landmark predict --json` object for it."""
        files = await uploaded_files(request, ingress.max_upload_bytes, max_files=1)
        result = (await ingress.tag_all(files[:1]))[0]
        return JSONResponse(result, status_code=status_for(result))

    @api.post(
        "/v1/tag/batch",
        dependencies=[Depends(authorize)],
        response_model=list[ResultOut],
        responses=_errors(400, *auth_errors, 413, 415, 503),
        openapi_extra={"requestBody": PHOTOS_BODY},
    )
    async def tag_batch(request: Request):
        """Several photos (at most 64) as the files of a multipart form -> a list of `predict --json` objects, in
        order, 200 even when some photos failed (their objects say why). An error about the request itself
        (too large, too many files, ...) is one object, not a list."""
        files = await uploaded_files(request, ingress.max_upload_bytes, max_files=MAX_BATCH_FILES)
        return JSONResponse(await ingress.tag_all(files))


def _open() -> None:
    """No --token-file: every route is open (and the schema declares no security scheme)."""


def _bearer_check(token_sha256: str):
    bearer = HTTPBearer(auto_error=False, description="the token of the server's --token-file")

    def authorize(creds: HTTPAuthorizationCredentials | None = Depends(bearer)) -> None:
        given = hashlib.sha256(creds.credentials.encode()).hexdigest() if creds else ""
        if not hmac.compare_digest(given, token_sha256):
            raise HttpError(401, "unauthorized: send Authorization: Bearer <token>", {"WWW-Authenticate": "Bearer"})

    return authorize


def build_application(cfg: ServeConfig):
    """The Serve application for ``cfg`` (checked): the Tagger deployment, its own HTTP ingress."""
    lo, hi = cfg.replicas
    scale = (
        {"num_replicas": lo}
        if lo == hi
        else {
            "autoscaling_config": {
                "min_replicas": lo,
                "max_replicas": hi,
                "target_ongoing_requests": cfg.max_batch_size,
            }
        }
    )
    return Tagger.options(
        ray_actor_options={"num_cpus": cfg.cpus_per_replica, "num_gpus": cfg.gpus_per_replica},
        # room for a batch being filled while one runs (and for queued single calls when batches are of 1)
        max_ongoing_requests=max(2 * cfg.max_batch_size, 16),
        max_queued_requests=cfg.max_queued,
        # the proxy logs each HTTP request; a second line per request from the replica would only cost CPU
        health_check_period_s=2.0,
        logging_config={"enable_access_log": False},
        **scale,
    ).bind(
        cfg.model,
        runtime=cfg.resolved_runtime(),
        k=cfg.k,
        threads=max(1, int(cfg.cpus_per_replica)),
        max_batch_size=cfg.max_batch_size,
        batch_wait_s=cfg.batch_wait_ms / 1000.0,
        s3_endpoint=cfg.s3_endpoint,
        token_sha256=cfg.token_sha256(),
        max_upload_bytes=int(cfg.max_upload_mb * 1024 * 1024),
        request_timeout_s=cfg.request_timeout_s,
        max_pixels=cfg.max_pixels,
        allow_origins=cfg.allow_origins,
    )


def build_app(args: dict):
    """`serve deploy serve_config.yaml` / `serve run jobs.serve:build_app model=DIR`: the app from ``args``."""
    cfg = ServeConfig.from_mapping(args)
    cfg.check()
    prepare_model(cfg)
    return build_application(cfg)


def prepare_model(cfg: ServeConfig) -> None:
    """Load the artifact once before any replica starts (a bad --model fails here, naming it) and build the
    runtime's ONNX model into the machine's cache, so replicas on this node start without building it."""
    runtime = cfg.resolved_runtime()
    try:
        art = load_artifact(
            cfg.model,
            storage_options=storage.S3Options(endpoint=cfg.s3_endpoint),
            tensors="numpy" if runtime in ONNX_RUNTIMES else "torch",
        )
    except ArtifactError as e:
        raise ConfigError(f"--model: {e}") from None
    if runtime in ONNX_RUNTIMES:
        from landmark_core import onnx_runtime as rt

        rt.model_bytes(art, runtime)


# ---------------------------------------------------------------- driver


def joins_a_cluster(cfg: ServeConfig) -> bool:
    """Whether ``start`` joins a running Ray (--ray-address or $RAY_ADDRESS) rather than starting one."""
    return bool(cfg.ray_address or os.environ.get("RAY_ADDRESS"))


def check_port_free(cfg: ServeConfig) -> None:
    """Bind --host:--port as Serve's proxy will, and let go: a port another process listens on fails here in a
    moment, naming the flags, instead of after Ray's start in ~10 s of tracebacks. SO_REUSEADDR as the proxy
    sets it (Linux still refuses a port someone listens on): a port left in TIME_WAIT by a server that just
    stopped is free to the proxy, so it is not refused here; no SO_REUSEPORT, so another Serve's port is."""
    family = socket.AF_INET6 if ":" in cfg.host else socket.AF_INET  # as the proxy chooses it
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((cfg.host, cfg.port))
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                raise ConfigError(
                    f"--port {cfg.port}: already in use on --host {cfg.host}; stop what holds it or choose another"
                ) from None
            raise ConfigError(f"--host {cfg.host} --port {cfg.port}: cannot listen there ({e.strerror or e})") from None


def _own_serve_listens_on(cfg: ServeConfig) -> bool:
    """Whether Serve, started earlier by this process, has its proxy on --host:--port (Ray's client, not a public
    API: anything unexpected means no, and the port is checked)."""
    if not ray.is_initialized():
        return False
    try:
        from ray.serve.context import _get_global_client

        client = _get_global_client(raise_if_no_controller_running=False)
        http = client.http_config if client is not None else None
        return http is not None and (http.host, http.port) == (cfg.host, cfg.port)
    except Exception:
        return False


@checks_config
def start(cfg: ServeConfig) -> str:
    """Check ``cfg``, start Serve on its host/port (joining or starting Ray) and deploy; returns the base URL."""
    from jobs._ray import check_local_gpus

    check_local_gpus(cfg.ray_address, "--gpus-per-replica", cfg.gpus_per_replica)
    # joining: the port is the cluster's proxy's, maybe on another node, maybe held by its Serve already; and a
    # Serve this process started on it (bench's rounds) keeps its proxy: serve.start reuses it
    if not (joins_a_cluster(cfg) or _own_serve_listens_on(cfg)):
        check_port_free(cfg)
    prepare_model(cfg)
    from jobs import _serve_proxy as serve_proxy
    from jobs._ray import check_resources, init_ray

    init_ray(cfg.ray_address, worker_env=None)
    _SigtermAsCtrlC.reclaim()  # (ray.init put its own SIGTERM handlers in place of run's)
    check_resources(  # the replicas' ray_actor_options; MIN replicas must all start before serve.run returns
        cfg.ray_address,
        "serve",
        {"CPU": ("--cpus-per-replica", cfg.cpus_per_replica), "GPU": ("--gpus-per-replica", cfg.gpus_per_replica)},
        at_once=("--replicas", cfg.replicas[0]),
    )
    # the proxy's own deadline, a little after the replica's: a request no replica takes is answered too
    http = {"host": cfg.host, "port": cfg.port, "request_timeout_s": cfg.request_timeout_s + PROXY_GRACE_S}
    serve.start(http_options=http, controller_options=serve_proxy.CONTROLLER_OPTIONS)
    with _quiet_about_options_not_applied():
        serve.run(build_application(cfg), name=cfg.app_name, route_prefix=cfg.route_prefix)
    return f"http://{cfg.host}:{cfg.port}{cfg.route_prefix.rstrip('/')}"


class _OptionsNotAppliedFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "will not be applied" not in record.getMessage()


@contextlib.contextmanager
def _quiet_about_options_not_applied():
    """serve.run starts Serve itself, without options, and so, Serve being up (serve.start just started it, with
    ours), logs 'Connecting to existing Serve app ... New http_options/controller_options will not be applied':
    true of serve.run's own (it has none), read as if the proxy's middleware were missing. Dropped while serve.run
    runs; serve.start's own line, when it joins a Serve already running and ours are indeed not applied, stays."""
    serve_logger, quiet = logging.getLogger("ray.serve"), _OptionsNotAppliedFilter()
    serve_logger.addFilter(quiet)
    try:
        yield
    finally:
        serve_logger.removeFilter(quiet)


@checks_config
def run(cfg: ServeConfig) -> None:
    """Serve until interrupted (Ctrl-C or SIGTERM, also while starting), then shut Serve down."""
    ours = False  # a check that refused the config started nothing, and must not stop a Serve of this process
    with _SigtermAsCtrlC():  # `kill`, systemd, containers: shut down as Ctrl-C does
        try:
            url = start.after_check(cfg)
            ours = True
            safe = {k: v for k, v in asdict(cfg).items() if k != "token_file"}
            print(
                f"landmark serve: {url}/ (page), {url}/v1/tag, {url}/docs; config {safe}"
                f"{'; bearer token required' if cfg.token_file else ''}",
                flush=True,
            )
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            ours = ours or ray.is_initialized()  # interrupted while starting: what it started goes too
            print("landmark serve: interrupted; shutting down", file=sys.stderr, flush=True)
        finally:
            if ours:
                serve.shutdown()


def _interrupt(_signum, _frame):
    raise KeyboardInterrupt


class _SigtermAsCtrlC:
    """While in effect (``with``, in the main thread; elsewhere it does nothing): SIGTERM raises KeyboardInterrupt,
    so the server stops as on Ctrl-C: Serve shut down, then the local Ray with all its processes at exit.

    ray.init replaces the handler with Ray's own: a Python one that kills the local Ray's processes from inside the
    handler and exits 1, and Ray's C++ failure handler, which dumps a stack and aborts; either way
    ray::DashboardAgent and ray::RuntimeEnvAgent outlived the server. ``start`` calls ``reclaim`` after ray.init;
    on leaving, the handler in place before (Ray's, once Ray started, for a process that goes on) is restored."""

    active: "_SigtermAsCtrlC | None" = None

    def __enter__(self):
        self.previous = None
        if threading.current_thread() is threading.main_thread() and _SigtermAsCtrlC.active is None:
            self.previous = signal.signal(signal.SIGTERM, _interrupt)
            _SigtermAsCtrlC.active = self
        return self

    def __exit__(self, *_exc):
        if _SigtermAsCtrlC.active is self:
            _SigtermAsCtrlC.active = None
            signal.signal(signal.SIGTERM, signal.SIG_DFL if self.previous is None else self.previous)

    @staticmethod
    def reclaim() -> None:
        """Put the handler back after ray.init (signal.signal re-installs Python's C-level handler too), keeping
        Ray's Python handler to restore; nothing when no ``_SigtermAsCtrlC`` is in effect."""
        it = _SigtermAsCtrlC.active
        if it is not None and threading.current_thread() is threading.main_thread():
            displaced = signal.signal(signal.SIGTERM, _interrupt)
            if displaced is not _interrupt and displaced is not None:
                it.previous = displaced


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="model artifact directory or s3:// URI")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1, loopback only)")
    p.add_argument("--port", type=int, default=8000, help="port to listen on (default 8000)")
    p.add_argument("--replicas", default="1", help="Tagger replicas MIN[,MAX]; autoscaled between them (default 1)")
    p.add_argument("--gpus-per-replica", type=float, default=0.0, help="GPUs per replica (default 0: CPU replicas)")
    p.add_argument("--cpus-per-replica", type=float, default=1.0, help="CPUs (and model threads) per replica")
    p.add_argument("--max-batch-size", type=int, default=16, help="photos per model call (@serve.batch)")
    p.add_argument("--batch-wait-ms", type=float, default=10.0, help="how long a batch waits to fill (ms)")
    p.add_argument(
        "--runtime",
        choices=RUNTIMES,
        default="auto",
        help="model runtime (auto: torch on a GPU replica, onnx-int8 on a CPU one)",
    )
    p.add_argument(
        "-k", "--top-k", dest="k", type=int, default=5, help="landmarks per photo in each answer (default 5)"
    )
    p.add_argument(
        "--token-file", default=None, help="file holding a bearer token; every request but /healthz must then send it"
    )
    p.add_argument("--max-upload-mb", type=float, default=25.0, help="largest request body (default 25 MB)")
    p.add_argument(
        "--max-pixels",
        type=int,
        default=DEFAULT_MAX_PIXELS,
        help=f"refuse photos larger than this, from their header (default {DEFAULT_MAX_PIXELS:,}: a small PNG can "
        "declare that many; lower it to bound each request's decode time and memory)",
    )
    p.add_argument(
        "--request-timeout",
        type=float,
        default=30.0,
        help="seconds before an unanswered request gets 503 + Retry-After (default 30)",
    )
    p.add_argument(
        "--max-queued",
        type=int,
        default=512,
        help="requests queued for the replicas before new ones get 503 + Retry-After",
    )
    p.add_argument(
        "--allow-origin",
        dest="allow_origins",
        action="append",
        default=[],
        metavar="ORIGIN",
        help="a web origin (https://photos.example.com, or *) whose pages may call the API from a browser (CORS); "
        "repeatable; default: none",
    )
    p.add_argument("--s3-endpoint", default=None, help="S3-compatible endpoint, e.g. http://127.0.0.1:8333")
    p.add_argument("--ray-address", default=None, help="Ray cluster to join (default: $RAY_ADDRESS, else a local Ray)")


def config_from_args(ns: argparse.Namespace) -> ServeConfig:
    return ServeConfig(
        model=ns.model,
        host=ns.host,
        port=ns.port,
        replicas=parse_min_max(ns.replicas, "replicas"),
        gpus_per_replica=ns.gpus_per_replica,
        cpus_per_replica=ns.cpus_per_replica,
        max_batch_size=ns.max_batch_size,
        batch_wait_ms=ns.batch_wait_ms,
        runtime=ns.runtime,
        k=ns.k,
        token_file=ns.token_file,
        max_upload_mb=ns.max_upload_mb,
        max_pixels=ns.max_pixels,
        request_timeout_s=ns.request_timeout,
        max_queued=ns.max_queued,
        s3_endpoint=ns.s3_endpoint,
        ray_address=ns.ray_address,
        allow_origins=tuple(ns.allow_origins),
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="landmark serve", description=__doc__.split("\n")[0])
    add_arguments(p)
    return run_cli(p, argv, config=config_from_args, run=run)


if __name__ == "__main__":
    # `python -m jobs.serve` (as `ray job submit` starts it): run the module as `jobs.serve`, not as __main__, so
    # that the replicas, which unpickle the Tagger by its module's name, find it (they have no __main__ of ours)
    from jobs.serve import main as _main

    sys.exit(_main())
