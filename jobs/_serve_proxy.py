"""What the Serve proxy answers when no replica did: 503 + Retry-After in the API's JSON shape.

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
CALLBACK = "jobs._serve_proxy:middlewares"
CONTROLLER_OPTIONS = {"runtime_env": {"env_vars": {"RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH": CALLBACK}}}
LOST = "unavailable: the model replica was lost; retry"


def middlewares() -> list[Middleware]:
    return [Middleware(AnswerForLostReplicas)]


def unavailable_body(reason: str) -> bytes:
    from landmark_core.predict import PhotoResult

    return json.dumps(PhotoResult(None, "failed", error=reason).__dict__).encode()


class AnswerForLostReplicas:
    """A pure ASGI middleware around the proxy: an HTTP request the app ended without answering (its replica
    died) gets 503 + Retry-After with the API's error object instead of the proxy's bare 500; the proxy's own
    plain-text 503 (more than --max-queued requests waiting, no replica) and 408 (its fallback timeout) get
    the same shape, their reason kept."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started, held = False, None

        async def watch(message):
            nonlocal started, held
            if message["type"] == "http.response.start":
                started = True
                if message["status"] in (408, 503) and not _is_json(message):
                    held = message  # the proxy's own answer: rewritten when its body comes
                    return
            elif held is not None and message["type"] == "http.response.body":
                text = message.get("body", b"").decode("utf-8", "replace").strip()
                await _send_unavailable(send, f"unavailable: {text or 'no replica could take the request'}")
                return
            await send(message)

        try:
            await self.app(scope, receive, watch)
        except Exception as e:
            if started:
                raise
            logger.warning("no replica answered %s (%s): 503", scope.get("path"), type(e).__name__)
        if not started:
            await _send_unavailable(send, LOST)


def _is_json(start: dict) -> bool:
    return any(k.lower() == b"content-type" and v.startswith(b"application/json") for k, v in start["headers"])


async def _send_unavailable(send, reason: str) -> None:
    body = unavailable_body(reason)
    headers = [
        (b"content-type", b"application/json"),
        (b"retry-after", b"1"),
        (b"content-length", str(len(body)).encode()),
    ]
    await send({"type": "http.response.start", "status": 503, "headers": headers})
    await send({"type": "http.response.body", "body": body})
