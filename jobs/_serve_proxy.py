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
# The app's routes (jobs/serve.py make_api): the proxy's plain 404 for one of them means no app serves it yet
APP_ROUTES = ("/healthz", "/v1/model", "/v1/tag", "/v1/tag/batch", "/docs", "/openapi.json")
NOT_SERVING = "unavailable: the app does not serve {path} yet (starting, or deployed at another route prefix); retry"


def middlewares() -> list[Middleware]:
    return [Middleware(AnswerForLostReplicas)]


def unavailable_body(reason: str) -> bytes:
    from landmark_core.predict import PhotoResult

    return json.dumps(PhotoResult(None, "failed", error=reason).__dict__).encode()


class AnswerForLostReplicas:
    """A pure ASGI middleware around the proxy: an HTTP request the app ended without answering (its replica
    died) gets 503 + Retry-After with the API's error object instead of the proxy's bare 500; the proxy's own
    plain-text 503 (more than --max-queued requests waiting, no replica) and 408 (its fallback timeout) get
    the same shape, their reason kept; so does its plain 404 for one of the app's routes, which comes while the
    app deploys (a health check polling /healthz from the start saw "not found")."""

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
                if _is_the_proxys_own(message, scope.get("path", "")):
                    held = message  # rewritten when its body comes
                    return
            elif held is not None and message["type"] == "http.response.body":
                text = message.get("body", b"").decode("utf-8", "replace").strip()
                if held["status"] == 404:
                    await _send_unavailable(send, NOT_SERVING.format(path=scope.get("path")))
                else:
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


def _is_the_proxys_own(start: dict, path: str) -> bool:
    """The proxy's plain-text answers (the app's own are JSON or the page): 408, 503, and 404 on an app route."""
    if _is_json(start):
        return False
    on_app_route = path == "/" or any(path.endswith(r) for r in APP_ROUTES)  # the page; routes under any prefix
    return start["status"] in (408, 503) or (start["status"] == 404 and on_app_route)


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
