"""What the Serve proxy answers when no replica did: a 503 + Retry-After in the API's JSON shape.

With the Tagger as the HTTP ingress (one hop), a replica that dies under a request can no longer answer for
itself: the proxy would close the request with a bare 500. Serve loads this module's ``middlewares`` into its
proxy (RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH, set in the controller's environment by ``CONTROLLER_OPTIONS``;
the proxies inherit it).
"""

from __future__ import annotations

import json
import logging

from starlette.middleware import Middleware

logger = logging.getLogger("ray.serve")
CALLBACK = "jobs.serve_proxy:middlewares"
CONTROLLER_OPTIONS = {"runtime_env": {"env_vars": {"RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH": CALLBACK}}}
LOST = "unavailable: the model replica was lost; retry"


def middlewares() -> list[Middleware]:
    return [Middleware(AnswerForLostReplicas)]


def unavailable_body(reason: str) -> bytes:
    from landmark_core.predict import PhotoResult

    return json.dumps(PhotoResult(None, "failed", error=reason).__dict__).encode()


class AnswerForLostReplicas:
    """A pure ASGI middleware: an HTTP request the app behind the proxy ended without answering (its replica
    died) gets 503 + Retry-After with the API's error object, instead of the proxy's bare 500."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = False

        async def watch(message):
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, watch)
        except Exception as e:
            if started:
                raise
            logger.warning("no replica answered %s (%s): 503", scope.get("path"), type(e).__name__)
        if not started:
            body = unavailable_body(LOST)
            headers = [
                (b"content-type", b"application/json"),
                (b"retry-after", b"1"),
                (b"content-length", str(len(body)).encode()),
            ]
            await send({"type": "http.response.start", "status": 503, "headers": headers})
            await send({"type": "http.response.body", "body": body})
