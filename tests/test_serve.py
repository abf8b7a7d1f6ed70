"""`landmark serve`: the app on a real Ray Serve on loopback, the API on good and bad photos, token auth, the
upload page in headless Chromium, a request timeout, and a replica killed under load."""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import requests
from PIL import Image

from jobs import _serve_proxy as serve_proxy, serve as srv
from landmark_core import artifact as artifact_mod
from landmark_core.predict import PhotoResult, predict_paths
from landmark_core.predictor import Predictor
from landmark_core.preprocess import EvalPreset
from tests.browser import CHROMIUM, FLAGS, chromium_env, require_chromium
from tests.cli_asserts import assert_error_names

RUNTIME = "onnx-int8"  # the CPU default (`--runtime auto` on a CPU): the same ONNX model in the test and the app


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def model_dir(make_tiny_artifact, tmp_path_factory) -> str:
    """The tiny scratch CNN with a confident head (varied top-1s) at a small input size: cheap replicas."""
    art = make_tiny_artifact(head_scale=40.0, preset=EvalPreset(64, 73), abstain={"method": "msp", "threshold": 0.6})
    dest = tmp_path_factory.mktemp("serve_model") / "model"
    artifact_mod.save(art, str(dest))
    return str(dest)


@pytest.fixture(scope="module")
def token(tmp_path_factory) -> tuple[str, str]:
    value = "tok-" + secrets.token_hex(16)
    path = tmp_path_factory.mktemp("serve_token") / "token"
    path.write_text(value + "\n")
    return value, str(path)


@pytest.fixture(scope="module")
def sites(tmp_path_factory):
    """Two static web sites on loopback serving one folder: the first is the origin the app allows (CORS), the
    second (another port, so another origin) is not. Yields (folder, first's URL, second's URL)."""
    import functools
    from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

    folder = tmp_path_factory.mktemp("site")

    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, *_args):
            pass

    servers = [ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(folder))) for _ in "ab"]
    for server in servers:
        threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield folder, *(f"http://127.0.0.1:{server.server_address[1]}" for server in servers)
    finally:
        for server in servers:
            server.shutdown()
            server.server_close()


@pytest.fixture(scope="module")
def app(ray_local, model_dir, token, sites):
    """The app with a token, 2 Tagger replicas, a 1 MB upload limit, the first of ``sites`` allowed to call it
    from a browser; Serve shut down after the module."""
    from ray import serve

    cfg = srv.ServeConfig(
        model=model_dir,
        port=free_port(),
        replicas=(2, 2),
        cpus_per_replica=0.5,
        max_batch_size=8,
        batch_wait_ms=5,
        runtime=RUNTIME,
        token_file=token[1],
        max_upload_mb=1.0,
        request_timeout_s=20,
        allow_origins=(sites[1],),
    )
    url = srv.start(cfg)
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {token[0]}"
    try:
        yield {"url": url, "cfg": cfg, "s": session}
    finally:
        serve.shutdown()


@pytest.fixture(scope="module")
def expected(model_dir, synthetic_data, bad_corpus) -> dict:
    """What `landmark predict --json` says for each synthetic photo and each file of the bad corpus."""
    bad_dir, _ = bad_corpus
    paths = synthetic_data["files"] + sorted(str(p) for p in bad_dir.iterdir())
    pred = Predictor(model_dir, k=5, runtime=RUNTIME, threads=1)
    return {p: r.__dict__ for p, r in zip(paths, predict_paths(paths, pred))}


def same_answer(got: dict, want: dict) -> bool:
    """Equal but for the path (the upload's name) and float rounding across processes."""

    def strip(d):
        return {k: v for k, v in d.items() if k not in ("path", "score", "tags")}

    if strip(got) != strip(want) or (got["score"] is None) != (want["score"] is None):
        return False
    if got["score"] is not None and abs(got["score"] - want["score"]) > 1e-5:
        return False
    gt, wt = got["tags"] or [], want["tags"] or []
    return [t["name"] for t in gt] == [t["name"] for t in wt] and all(
        abs(a["score"] - b["score"]) <= 1e-5 for a, b in zip(gt, wt)
    )


def post_photo(app, path: str, ctype: str = "image/jpeg") -> requests.Response:
    return app["s"].post(
        f"{app['url']}/v1/tag",
        data=Path(path).read_bytes(),
        params={"name": Path(path).name},
        headers={"Content-Type": ctype},
        timeout=30,
    )


# ---------------------------------------------------------------------------------------------- the API


@pytest.mark.slow
def test_good_and_bad_photos_answer_as_predict_does(app, expected, bad_corpus):
    _, kinds = bad_corpus
    for path, want in expected.items():
        r = post_photo(app, path)
        got = r.json()
        assert got["path"] == Path(path).name
        assert same_answer(got, want), (path, got, want)
        kind = kinds.get(Path(path).name)
        if kind is None:
            assert r.status_code == 200 and got["status"] in ("tagged", "no_landmark"), (path, got)
        else:  # the reason words of the tag job's failed rows ("decode: <kind>: ..."), and the replica stays up
            assert r.status_code == (400 if kind == "empty" else 422) and got["status"] == "failed"
            assert got["error"].startswith(f"{kind}:"), got
            assert post_photo(app, expected_good(expected)).status_code == 200
    statuses = {w["status"] for w in expected.values()}
    assert {"tagged", "failed"} <= statuses  # the corpus exercises both paths


def expected_good(expected: dict) -> str:
    return next(p for p, w in expected.items() if w["status"] == "tagged")


@pytest.mark.slow
def test_multipart_single_and_batch(app, expected):
    good = [p for p, w in expected.items() if w["status"] != "failed"][:3]
    bad = next(p for p, w in expected.items() if w["status"] == "failed")
    with open(good[0], "rb") as f:
        r = app["s"].post(f"{app['url']}/v1/tag", files={"photo": ("one.jpg", f, "image/jpeg")}, timeout=30)
    assert r.status_code == 200 and r.json()["path"] == "one.jpg" and same_answer(r.json(), expected[good[0]])
    files = [("photos", (Path(p).name, Path(p).read_bytes(), "image/jpeg")) for p in [*good, bad]]
    r = app["s"].post(f"{app['url']}/v1/tag/batch", files=files, timeout=30)
    assert r.status_code == 200
    rows = r.json()
    assert [row["path"] for row in rows] == [Path(p).name for p in [*good, bad]]
    assert all(same_answer(row, expected[p]) for row, p in zip(rows, [*good, bad]))
    r = app["s"].post(f"{app['url']}/v1/tag", files={"note": (None, "no file here")}, timeout=30)
    assert r.status_code == 400 and r.json()["error"].startswith("empty:")


@pytest.mark.slow
def test_oversize_and_wrong_type_are_refused_and_the_app_goes_on(app, expected):
    good = expected_good(expected)
    big = os.urandom(int(1.5 * 1024 * 1024))
    for body in (big, iter([big[:600_000], big[600_000:]])):  # declared length, then chunked (no length)
        r = app["s"].post(f"{app['url']}/v1/tag", data=body, headers={"Content-Type": "image/jpeg"}, timeout=30)
        assert r.status_code == 413 and r.json()["status"] == "failed"
        assert r.json()["error"].startswith("too_large:")
        assert post_photo(app, good).status_code == 200
    r = post_photo(app, good, ctype="text/plain")
    assert r.status_code == 415 and r.json()["error"].startswith("unsupported:")
    r = app["s"].post(f"{app['url']}/v1/tag", data=Path(good).read_bytes(), timeout=30)  # no type at all
    assert r.status_code == 415
    assert same_answer(post_photo(app, good).json(), expected[good])


@pytest.mark.slow
def test_model_health_and_docs(app, model_dir):
    art = artifact_mod.load(model_dir, tensors="numpy")
    info = app["s"].get(f"{app['url']}/v1/model", timeout=30).json()
    assert info["model_id"] == art.model_id and info["runtime"] == RUNTIME
    names = [lm["name"] for lm in info["catalog"]["landmarks"]]
    assert names == art.catalog.names and all("lat" in lm and "lon" in lm for lm in info["catalog"]["landmarks"])
    assert info["metrics"] == art.metrics
    assert info["abstain"] == {"method": "msp", "threshold": 0.6, "stale_fit": None}  # (msp: no runtime fit)
    h = requests.get(f"{app['url']}/healthz", timeout=30)  # no token needed
    assert h.status_code == 200 and h.json() == {"status": "ok", "model_id": art.model_id}
    spec = app["s"].get(f"{app['url']}/openapi.json", timeout=30).json()
    assert {"/v1/tag", "/v1/tag/batch", "/v1/model", "/healthz"} <= set(spec["paths"])
    docs = app["s"].get(f"{app['url']}/docs", timeout=30)
    assert docs.status_code == 200
    # air-gapped: Swagger UI's script and stylesheet come from the app itself, no CDN
    refs = re.findall(r'(?:src|href|url:)\s*=?\s*["\']([^"\']+)["\']', docs.text)
    assert {"docs/swagger-ui-bundle.js", "docs/swagger-ui.css", "openapi.json"} <= set(refs), refs
    assert not [r for r in refs if r.startswith(("http:", "https:", "//"))], refs
    for name, kind in (("swagger-ui-bundle.js", "javascript"), ("swagger-ui.css", "css")):
        asset = app["s"].get(f"{app['url']}/docs/{name}", timeout=30)
        assert asset.status_code == 200 and kind in asset.headers["content-type"] and len(asset.content) > 100_000
    assert app["s"].get(f"{app['url']}/docs/other.js", timeout=30).status_code == 404
    # HEAD, as load balancers probe: the health check without a token, the page with one
    assert requests.head(f"{app['url']}/healthz", timeout=30).status_code == 200
    assert app["s"].head(f"{app['url']}/", timeout=30).status_code == 200
    # no such route or method: the API's error shape (FastAPI's default is {"detail": ...})
    r = app["s"].get(f"{app['url']}/v1/nope", timeout=30)
    assert r.status_code == 404 and r.json() == srv.error_body("not_found: GET /v1/nope"), r.text
    r = app["s"].delete(f"{app['url']}/v1/tag", timeout=30)
    assert r.status_code == 405 and r.json() == srv.error_body("method_not_allowed: DELETE /v1/tag"), r.text
    assert r.headers["Allow"] == "POST"


def _guarded_routes() -> list[tuple[str, str, str]]:
    """Every route of the API as it is built, but /healthz: a route added later is checked without listing it here.
    (method, path with a path parameter filled with a real value, the route as the proxy's access log names it)."""
    import types

    from fastapi.routing import APIRoute

    api = srv.make_api(types.SimpleNamespace(allow_origins=(), token_sha256="x"))
    fill = {"{name}": next(iter(srv.SWAGGER_ASSETS))}
    out = []
    for r in api.routes:
        if isinstance(r, APIRoute) and r.path != "/healthz":
            path = r.path
            for param, value in fill.items():
                path = path.replace(param, value)
            assert "{" not in path, f"{r.path}: give its parameter a value in _guarded_routes"
            out += [(m.lower(), path, r.path) for m in sorted(r.methods)]
    return sorted(out)


@pytest.mark.slow
def test_token_is_required_and_never_logged(app, expected, token, ray_local):
    good = expected_good(expected)
    url = app["url"]
    routes = _guarded_routes()
    assert ("get", "/docs/swagger-ui-bundle.js", "/docs/{name}") in routes  # (the listing works)
    for method, path, _ in routes:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": token[0]}):
            r = getattr(requests, method)(
                url + path,
                headers=headers,
                timeout=30,
                **({"data": Path(good).read_bytes()} if method == "post" else {}),
            )
            assert r.status_code == 401 and r.headers["WWW-Authenticate"] == "Bearer", (path, headers, r.status_code)
            assert method == "head" or r.json()["error"].startswith("unauthorized")  # (a HEAD answer has no body)
    assert post_photo(app, good).status_code == 200
    session_dir = Path(ray_local._private.worker._global_node.get_session_dir_path())
    # positive control: the proxy's access log has a line for each refused request above (the ones that carried a
    # token), so a search that finds those lines but not the token tells absence from not looking
    logged = {f"{method.upper()} {route} 401".encode() for method, _, route in routes}

    def search() -> tuple[list[Path], list[Path], set[bytes]]:
        searched, leaks, found = [], [], set()
        for p in session_dir.rglob("*"):
            if p.is_file() and p.stat().st_size < 50_000_000:
                data = p.read_bytes()
                searched.append(p)
                if token[0].encode() in data:
                    leaks.append(p)
                found |= {line for line in logged if line in data}
        return searched, leaks, found

    deadline = time.monotonic() + 30  # the access log is written by the proxy process: give it time to land
    searched, leaks, found = search()
    while found != logged and time.monotonic() < deadline:
        time.sleep(1)
        searched, leaks, found = search()
    names = [p.name for p in searched]
    assert len(searched) >= 20, names
    assert any(n.startswith("proxy_") for n in names) and any(n.startswith("replica_") for n in names), names
    assert found == logged, f"access-log lines not found in the {len(searched)} files searched: {logged - found}"
    assert leaks == []


def test_config_errors_name_the_flag(model_dir, tmp_path, capsys):
    empty = tmp_path / "empty-token"
    empty.write_text("\n")
    for argv, flag in (
        (["--replicas", "3,1"], "--replicas"),
        (["--max-batch-size", "0"], "--max-batch-size"),
        (["--token-file", str(tmp_path / "missing")], "--token-file"),
        (["--token-file", str(empty)], "--token-file"),
        (["--port", "70000"], "--port"),
        (["--max-upload-mb", "-1"], "--max-upload-mb"),
        (["--max-pixels", "0"], "--max-pixels"),
        (["--replicas", "a"], "--replicas"),
    ):
        with pytest.raises(SystemExit) as e:
            srv.main(["--model", model_dir, *argv])
        assert e.value.code == 2, argv
        assert_error_names(capsys.readouterr().err, flag)
    with pytest.raises(srv.ConfigError, match="--model"):
        srv.prepare_model(srv.ServeConfig(model=str(tmp_path / "no-model")))


def _bound_elsewhere(host: str = "127.0.0.1") -> socket.socket:
    """A listening socket on a free port of ``host`` (what another server would hold)."""
    held = socket.socket()
    held.bind((host, 0))
    held.listen()
    return held


@pytest.mark.slow  # the app fixture deploys Serve (the check itself runs before any Ray)
def test_a_port_in_use_fails_fast_naming_it_before_ray_starts(app, model_dir, monkeypatch, capsys):
    """--port already held on --host: one error line naming both, exit 2, in well under a second, and neither
    Ray nor the model is touched (Serve would take ~10 s of tracebacks to say so); nor is a Serve this process
    runs already (``app``): the refused command stops nothing it did not start."""
    from jobs import _ray

    def must_not_run(*_a, **_k):
        raise AssertionError("started before the port was checked")

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setattr(_ray, "init_ray", must_not_run)
    monkeypatch.setattr(srv, "prepare_model", must_not_run)
    with _bound_elsewhere() as held:
        port = held.getsockname()[1]
        t0 = time.monotonic()
        code = srv.main(["--model", model_dir, "--port", str(port)])
        took = time.monotonic() - t0
    err = capsys.readouterr().err
    assert code == 2 and took < 2, (code, took, err)
    assert_error_names(err, f"--port {port}", "--host 127.0.0.1", "in use")
    assert len(err.splitlines()) == 1
    assert requests.get(f"{app['url']}/healthz", timeout=30).status_code == 200


def test_the_port_check_is_skipped_when_joining_a_cluster(model_dir, monkeypatch):
    """With --ray-address (or RAY_ADDRESS) the port belongs to that cluster's Serve proxy, which may hold it
    already (a second app on the same Serve) or run on another node: no local pre-check then."""
    from jobs import _ray

    class Joined(Exception):
        pass

    def joined(*_a, **_k):
        raise Joined

    monkeypatch.setattr(_ray, "init_ray", joined)
    monkeypatch.setattr(srv, "prepare_model", lambda cfg: None)
    with _bound_elsewhere() as held:
        port = held.getsockname()[1]
        with pytest.raises(Joined):
            srv.start(srv.ServeConfig(model=model_dir, port=port, ray_address="ray://head:10001"))
        monkeypatch.setenv("RAY_ADDRESS", "auto")
        with pytest.raises(Joined):
            srv.start(srv.ServeConfig(model=model_dir, port=port))


def test_the_port_check_accepts_a_port_a_stopped_server_left_in_time_wait():
    """Serve's proxy binds with SO_REUSEADDR, so a port whose last server just stopped (its connections in
    TIME_WAIT) is free to it: the pre-check must not refuse it."""
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn and Serve's proxy do
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]
    client = socket.create_connection(("127.0.0.1", port))
    served, _ = listener.accept()
    served.close()  # the server closes first: its side of the connection stays in TIME_WAIT
    time.sleep(0.1)
    client.close()
    listener.close()
    time.sleep(0.2)
    with socket.socket() as plain, pytest.raises(OSError):  # the control: a plain bind is refused
        plain.bind(("127.0.0.1", port))
    srv.check_port_free(srv.ServeConfig(model="m", port=port))


def _asgi(api, method: str, path: str, headers: dict, body: bytes = b"") -> tuple[int, dict, bytes]:
    """One request straight to the ASGI app (no server, no Ray): the status, the headers and the body."""
    import asyncio

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
        "server": ("t", 80),
        "client": ("c", 1),
    }
    bodies = [{"type": "http.request", "body": body, "more_body": False}]
    sent = []

    async def receive():
        return bodies.pop(0) if bodies else {"type": "http.disconnect"}

    async def send(message):
        sent.append(message)

    asyncio.run(api(scope, receive, send))
    answer = {k.decode().lower(): v.decode() for k, v in sent[0].get("headers", [])}
    return sent[0]["status"], answer, b"".join(m.get("body", b"") for m in sent[1:])


def _post_multipart(api, path: str, files: list) -> tuple[int, dict]:
    """POST a multipart form straight to the ASGI app: the status and the JSON body."""
    req = requests.Request("POST", "http://t" + path, files=files).prepare()
    status, _headers, body = _asgi(api, "POST", path, dict(req.headers), req.body)
    return status, json.loads(body)


def test_allow_origin_lets_those_pages_call_the_api_and_read_its_answers_errors_included():
    """--allow-origin: a browser's preflight from that origin is answered with CORS headers (Authorization may be
    sent), and so is an error answer (a page can read why: 401 here); another origin's preflight is refused, and
    without the flag no answer carries CORS headers. Origins a browser would never send are refused by name."""
    import types

    page = "https://photos.example.com"
    api = srv.make_api(types.SimpleNamespace(allow_origins=(page,), token_sha256="x", max_upload_bytes=10**7))
    preflight = {
        "origin": page,
        "access-control-request-method": "POST",
        "access-control-request-headers": "authorization",
    }
    status, headers, _ = _asgi(api, "OPTIONS", "/v1/tag", preflight)
    assert status == 200 and headers["access-control-allow-origin"] == page, headers
    assert "authorization" in headers["access-control-allow-headers"].lower()
    assert "POST" in headers["access-control-allow-methods"]
    status, headers, body = _asgi(api, "POST", "/v1/tag", {"origin": page, "content-type": "image/jpeg"}, b"x")
    assert status == 401 and headers["access-control-allow-origin"] == page, headers
    assert json.loads(body)["error"].startswith("unauthorized"), body
    status, headers, _ = _asgi(api, "OPTIONS", "/v1/tag", {**preflight, "origin": "https://evil.example"})
    assert status == 400 and "access-control-allow-origin" not in headers, headers
    closed = srv.make_api(types.SimpleNamespace(allow_origins=(), token_sha256="x", max_upload_bytes=10**7))
    status, headers, _ = _asgi(closed, "POST", "/v1/tag", {"origin": page, "content-type": "image/jpeg"}, b"x")
    assert status == 401 and "access-control-allow-origin" not in headers, headers

    parser = argparse.ArgumentParser()
    srv.add_arguments(parser)
    cfg = srv.config_from_args(parser.parse_args(["--model", "m", "--allow-origin", page, "--allow-origin", "*"]))
    assert cfg.allow_origins == (page, "*")
    assert srv.build_application(cfg)._bound_deployment.init_kwargs["allow_origins"] == (page, "*")
    assert srv.ServeConfig.from_mapping(
        {"model": "m", "allow_origins": f"{page}, http://localhost:3000"}
    ).allow_origins == (
        page,
        "http://localhost:3000",
    )
    for bad in ("https://photos.example.com/", "photos.example.com", "https://Photos.example.com", "https://a.b/x"):
        with pytest.raises(srv.ConfigError, match="--allow-origin"):
            srv.check_origin(bad)
    with pytest.raises(srv.ConfigError, match="--allow-origin 'https://a.b/'"):
        srv.ServeConfig(model="m", allow_origins=("https://a.b/",)).check()


def test_the_schema_describes_the_requests_answers_and_errors_a_client_generator_needs():
    """/openapi.json as a client generator reads it: each route's request body (raw photo or multipart), its answer's
    fields, its error statuses in the same shape; one operationId per operation (GET and HEAD routes made two
    alike); a security scheme only when the server has a token."""
    import types

    open_api = srv.make_api(types.SimpleNamespace(allow_origins=(), token_sha256=None)).openapi()
    ids = [op["operationId"] for path in open_api["paths"].values() for op in path.values()]
    assert len(ids) == len(set(ids)), ids
    tag = open_api["paths"]["/v1/tag"]["post"]
    assert set(tag["requestBody"]["content"]) == {"image/*", "application/octet-stream", "multipart/form-data"}
    assert [p["name"] for p in tag["parameters"]] == ["name"]
    result = open_api["components"]["schemas"]["ResultOut"]
    assert set(result["properties"]) == set(srv.error_body("x")) == set(PhotoResult("p", "tagged").__dict__)
    assert result["properties"]["status"]["enum"] == ["tagged", "no_landmark", "failed"]
    ok = tag["responses"]["200"]["content"]["application/json"]["schema"]
    assert ok == {"$ref": "#/components/schemas/ResultOut"}
    assert {"400", "413", "415", "422", "503"} <= set(tag["responses"]) and "401" not in tag["responses"]
    assert tag["responses"]["422"]["content"]["application/json"]["schema"] == ok
    batch = open_api["paths"]["/v1/tag/batch"]["post"]
    assert batch["responses"]["200"]["content"]["application/json"]["schema"]["items"] == ok
    assert "422" not in batch["responses"]  # a photo that does not decode fails inside the list
    photos = batch["requestBody"]["content"]["multipart/form-data"]["schema"]["properties"]["photos"]
    assert photos["maxItems"] == srv.MAX_BATCH_FILES
    assert "securitySchemes" not in open_api.get("components", {}) and "security" not in tag
    guarded = srv.make_api(types.SimpleNamespace(allow_origins=(), token_sha256="x")).openapi()
    assert guarded["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
    assert guarded["paths"]["/v1/tag"]["post"]["security"] == [{"HTTPBearer": []}]
    assert "401" in guarded["paths"]["/v1/tag"]["post"]["responses"]


def test_a_trailing_slash_is_a_404_in_the_api_shape_not_an_empty_redirect():
    import types

    api = srv.make_api(types.SimpleNamespace(allow_origins=(), token_sha256=None, max_upload_bytes=10**7))
    status, body = _post_multipart(api, "/v1/tag/", [("photo", ("a.jpg", b"x", "image/jpeg"))])
    assert status == 404 and body == srv.error_body("not_found: POST /v1/tag/"), body


def test_a_form_part_without_a_filename_is_said_to_be_a_text_field():
    import types

    api = srv.make_api(types.SimpleNamespace(allow_origins=(), token_sha256=None, max_upload_bytes=10**7))
    status, body = _post_multipart(api, "/v1/tag", [("photo", (None, "not a file"))])
    assert status == 400 and body["error"].startswith("empty: the multipart form holds no file"), body
    assert "one without is a text field" in body["error"], body


def test_max_pixels_bounds_the_photos_a_request_may_ask_to_decode(tiny_artifact):
    """--max-pixels: a small file may declare a huge image (a PNG of 8000x8000 is 200 KB), and decoding it costs
    a replica seconds and hundreds of MB; over the bound it is refused from its header, 422 too_large."""
    import io

    from landmark_core.predict import PENDING, predict_bytes

    buf = io.BytesIO()
    Image.new("RGB", (400, 300), (90, 120, 200)).save(buf, format="PNG")
    photo = buf.getvalue()
    predictor = Predictor(tiny_artifact.path, k=1)
    small = predict_bytes([PhotoResult("a.png", PENDING)], [photo], predictor, max_pixels=100_000)[0]
    assert small.status == "failed" and small.error.startswith("too_large: 400x300"), small.error
    assert srv.status_for(small.__dict__) == 422
    fits = predict_bytes([PhotoResult("a.png", PENDING)], [photo], predictor, max_pixels=120_000)[0]
    assert fits.status != "failed", fits.error
    parser = argparse.ArgumentParser()
    srv.add_arguments(parser)
    cfg = srv.config_from_args(parser.parse_args(["--model", "m", "--max-pixels", "2000000"]))
    assert cfg.max_pixels == 2_000_000
    assert srv.build_application(cfg)._bound_deployment.init_kwargs["max_pixels"] == 2_000_000


def test_too_many_files_says_so_and_names_the_limit():
    """Two files to /v1/tag, more than MAX_BATCH_FILES to /v1/tag/batch, more than MAX_FORM_FIELDS text fields or
    a text field over MAX_FIELD_BYTES: 400 in the API's error shape with the reason and the limit (not
    "malformed"), before any photo reaches the model."""
    import types

    async def tag_all(files):
        raise AssertionError("the model was called")

    api = srv.make_api(
        types.SimpleNamespace(allow_origins=(), token_sha256=None, max_upload_bytes=10**7, tag_all=tag_all)
    )
    two = [("p", (f"{i}.jpg", b"x", "image/jpeg")) for i in range(2)]
    status, body = _post_multipart(api, "/v1/tag", two)
    assert status == 400 and body["status"] == "failed", body
    assert body["error"].startswith("too_many_files:") and "malformed" not in body["error"], body
    assert "/v1/tag/batch" in body["error"] and str(srv.MAX_BATCH_FILES) in body["error"], body
    many = [("p", (f"{i}.jpg", b"x", "image/jpeg")) for i in range(srv.MAX_BATCH_FILES + 1)]
    status, body = _post_multipart(api, "/v1/tag/batch", many)
    assert status == 400 and body["error"].startswith("too_many_files:"), body
    assert f"at most {srv.MAX_BATCH_FILES}" in body["error"] and "malformed" not in body["error"], body
    assert set(body) == set(srv.error_body("x"))
    photo = [("p", ("0.jpg", b"x", "image/jpeg"))]
    fields = [(f"f{i}", (None, "v")) for i in range(srv.MAX_FORM_FIELDS + 1)]
    status, body = _post_multipart(api, "/v1/tag/batch", fields + photo)
    assert status == 400 and body["error"].startswith("too_many_fields:"), body
    assert f"at most {srv.MAX_FORM_FIELDS}" in body["error"], body
    status, body = _post_multipart(api, "/v1/tag", [("note", (None, "v" * (srv.MAX_FIELD_BYTES + 1)))] + photo)
    assert status == 400 and body["error"].startswith("field_too_large:"), body
    assert str(srv.MAX_FIELD_BYTES) in body["error"], body


def _serve_process(model_dir, port: int, *flags: str, until):
    """`python -m jobs.serve` (as `ray job submit` starts it) in its own session with a local Ray: (process, the
    lines it printed so far, an Event set at the first line for which ``until(line)`` holds)."""
    import signal

    cmd = [sys.executable, "-m", "jobs.serve", "--model", model_dir, "--port", str(port), *flags]
    proc = subprocess.Popen(
        cmd,
        cwd=Path(__file__).resolve().parents[1],
        env={**os.environ, "RAY_ADDRESS": "local"},
        start_new_session=True,
        # as a terminal's foreground job gets it: a shell runs a background job (`make test &`) with SIGINT
        # ignored, which its children inherit, and Python then installs no Ctrl-C handler
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines, seen = [], threading.Event()

    def watch():
        for line in proc.stdout:
            lines.append(line)
            if until(line):
                seen.set()

    threading.Thread(target=watch, daemon=True).start()
    return proc, lines, seen


@pytest.mark.slow
def test_ctrl_c_while_starting_shuts_down_without_a_traceback(model_dir):
    """Ctrl-C (SIGINT to the terminal's process group) while Serve deploys, before the ready line: one line, no
    traceback, exit 0, and every process the server started gone."""
    import signal

    from tests.procs import live_in_session

    proc, lines, deploying = _serve_process(
        model_dir, free_port(), until=lambda line: "Deploying new app" in line or "Adding 1 replica" in line
    )
    try:
        assert deploying.wait(120), "".join(lines)[-3000:]
        os.killpg(proc.pid, signal.SIGINT)
        try:
            code = proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            pytest.fail(f"still running 120 s after Ctrl-C; it printed:\n{''.join(lines)[-5000:]}")
        time.sleep(0.5)  # (the watcher reads the last lines)
        out = "".join(lines)
        assert code == 0, out[-3000:]
        assert "landmark serve: interrupted; shutting down" in out and "Traceback" not in out, out[-3000:]
        assert "landmark serve: http" not in out  # (the interrupt came before the ready line)
        deadline = time.monotonic() + 60
        while live_in_session(proc.pid) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert not live_in_session(proc.pid), "the server's processes outlived it"
    finally:
        for pid in live_in_session(proc.pid):  # a failed run leaves nothing running for the tests after it
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass


@pytest.mark.slow
def test_sigterm_to_a_serving_server_shuts_down_as_ctrl_c_does(model_dir):
    """SIGTERM to the server process alone (as systemd or a supervisor sends it) once it answers: the one line Ctrl-C
    prints, no traceback, exit 0, and no process of its Ray left (Ray's own SIGTERM handler, which ray.init
    installs, exited 1 and left ray::DashboardAgent and ray::RuntimeEnvAgent running, re-parented to init). The
    output does not say Serve's options "will not be applied": they were, by the serve.start before serve.run."""
    import signal

    from tests.procs import live_in_session

    port = free_port()
    proc, lines, ready = _serve_process(
        model_dir, port, "--runtime", RUNTIME, until=lambda line: line.startswith("landmark serve: http")
    )
    try:
        assert ready.wait(180), "".join(lines)[-3000:]
        assert requests.get(f"http://127.0.0.1:{port}/healthz", timeout=30).status_code == 200
        ray_procs = [p for p in live_in_session(proc.pid) if p != proc.pid]
        assert ray_procs, "no Ray process found in the server's session"
        proc.send_signal(signal.SIGTERM)  # the server process only, not its group
        code = proc.wait(timeout=120)
        time.sleep(0.5)  # (the watcher reads the last lines)
        out = "".join(lines)
        assert code == 0, out[-3000:]
        assert out.count("landmark serve: interrupted; shutting down") == 1 and "Traceback" not in out, out[-3000:]
        assert "will not be applied" not in out, out[-3000:]
        deadline = time.monotonic() + 60
        while live_in_session(proc.pid) and time.monotonic() < deadline:
            time.sleep(0.5)
        left = {p: _cmdline(p) for p in live_in_session(proc.pid)}
        assert not left, f"the server's Ray processes outlived it: {left}"
    finally:
        for pid in live_in_session(proc.pid):  # a failed run leaves nothing running either
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")[:120]
    except OSError:
        return "?"


def test_serve_config_file_builds_the_app_it_describes(model_dir, tmp_path):
    """serve_config.yaml validates as `serve deploy` reads it, and its args build the Tagger deployment they name:
    the autoscaling range, the replica's CPUs, the batch and upload limits; only the token's SHA-256 is bound."""
    import hashlib

    import yaml
    from ray.serve.schema import ServeDeploySchema

    doc = yaml.safe_load((Path(__file__).resolve().parents[1] / "serve_config.yaml").read_text())
    ServeDeploySchema.model_validate(doc)  # the file `serve deploy` takes
    assert doc["controller_options"] == serve_proxy.CONTROLLER_OPTIONS  # the proxies' answer for a lost replica
    (app_doc,) = doc["applications"]
    assert app_doc["import_path"] == "jobs.serve:build_app"
    token = tmp_path / "serve-token"
    token.write_text("s3cr3t-token\n")
    # this machine has no GPU, and the example model is the test's
    args = {**app_doc["args"], "model": model_dir, "token_file": str(token), "gpus_per_replica": 0, "runtime": RUNTIME}
    deployment = srv.build_app(args)._bound_deployment
    want = app_doc["args"]
    lo, hi = (int(n) for n in want["replicas"].split(","))
    scale = deployment._deployment_config.autoscaling_config
    assert (deployment.name, scale.min_replicas, scale.max_replicas) == ("Tagger", lo, hi)
    assert deployment.ray_actor_options["num_cpus"] == want["cpus_per_replica"]
    assert deployment.max_ongoing_requests == 2 * want["max_batch_size"]
    bound = deployment.init_kwargs
    assert (bound["max_batch_size"], bound["batch_wait_s"]) == (want["max_batch_size"], want["batch_wait_ms"] / 1000)
    assert bound["max_upload_bytes"] == want["max_upload_mb"] * 1024 * 1024
    assert bound["request_timeout_s"] == want["request_timeout_s"] and bound["threads"] == want["cpus_per_replica"]
    assert deployment.init_args == (model_dir,) and bound["runtime"] == RUNTIME
    assert bound["token_sha256"] == hashlib.sha256(b"s3cr3t-token").hexdigest()
    assert bound["allow_origins"] == tuple(want["allow_origins"])
    assert "s3cr3t" not in repr((deployment.init_args, bound, deployment.ray_actor_options))


def test_the_proxy_answers_503_for_a_request_its_replica_never_answered():
    """jobs._serve_proxy's middleware, as the proxy runs it: an app that ends (or fails, as a dead replica's
    call does) without a response, the proxy's plain 503 or 408, or its plain 404 on one of the app's routes
    (the app not routed yet), gives 503 + Retry-After and the API's error object; the app's answers pass
    through."""
    import asyncio

    from ray.exceptions import RayActorError

    async def died(scope, receive, send):
        raise RayActorError()

    async def ended(scope, receive, send):
        return None

    async def answered(scope, receive, send):
        await send({"type": "http.response.start", "status": 422, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    def run(app, path: str = "/v1/tag") -> list[dict]:
        sent = []

        async def send(message):
            sent.append(message)

        (mw,) = serve_proxy.middlewares()
        asyncio.run(mw.cls(app)({"type": "http", "path": path}, None, send))
        return sent

    for app in (died, ended):
        start, body = run(app)
        assert start["status"] == 503 and (b"retry-after", b"1") in start["headers"]
        assert json.loads(body["body"]) == srv.error_body(serve_proxy.LOST)
    assert [m.get("status") for m in run(answered)] == [422, None]

    async def queue_full(scope, receive, send):  # the proxy's own answer past --max-queued
        await send({"type": "http.response.start", "status": 503, "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": b"Request dropped due to backpressure."})

    start, body = run(queue_full)
    assert start["status"] == 503 and (b"retry-after", b"1") in start["headers"]
    assert json.loads(body["body"])["error"] == "unavailable: Request dropped due to backpressure."

    async def proxy_timeout(scope, receive, send):  # the proxy's fallback deadline (no replica took it)
        await send({"type": "http.response.start", "status": 408, "headers": [[b"content-type", b"text/plain"]]})
        await send({"type": "http.response.body", "body": b"Request r timed out after 22.0s."})

    start, body = run(proxy_timeout)
    assert start["status"] == 503 and json.loads(body["body"])["error"].startswith("unavailable: Request r timed")

    async def not_deployed_yet(scope, receive, send):  # the proxy before the app is routed (Ray 2.60's words)
        from ray.serve._private.http_util import convert_object_to_asgi_messages

        for m in convert_object_to_asgi_messages(f"Path '{scope['path']}' not found.", status_code=404):
            await send(m)

    for path in ("/", "/healthz", "/v1/tag", "/landmark/v1/model"):
        start, body = run(not_deployed_yet, path)
        assert start["status"] == 503 and (b"retry-after", b"1") in start["headers"], path
        assert json.loads(body["body"])["error"] == serve_proxy.NOT_SERVING.format(path=path)
    start, body = run(not_deployed_yet, "/no/such/route")  # not the app's: the proxy's 404 stands
    assert start["status"] == 404 and body["body"].startswith(b"Path '/no/such/route' not found")


# ---------------------------------------------------------------------------------------------- time-outs


@pytest.mark.slow
def test_a_request_not_served_in_time_gets_503_with_retry_after(app, model_dir, expected):
    """An app whose batches wait 10 s to fill, with a 1 s request timeout: 503 + Retry-After, no hang."""
    from ray import serve

    cfg = srv.ServeConfig(
        model=model_dir,
        replicas=(1, 1),
        cpus_per_replica=0.25,
        max_batch_size=64,
        batch_wait_ms=10_000,
        runtime=RUNTIME,
        request_timeout_s=1.0,
    )
    serve.run(srv.build_application(cfg), name="slow", route_prefix="/slow")
    try:
        base = app["url"].rsplit("/", 0)[0] + "/slow"
        t0 = time.monotonic()
        r = requests.post(
            f"{base}/v1/tag",
            data=Path(expected_good(expected)).read_bytes(),
            headers={"Content-Type": "image/jpeg"},
            timeout=30,
        )
        took = time.monotonic() - t0
        assert r.status_code == 503 and r.headers["Retry-After"] == "1", r.text
        assert r.json()["error"].startswith("unavailable:") and took < 5
    finally:
        serve.delete("slow")


@pytest.mark.slow
def test_a_full_queue_is_answered_503_with_retry_after(app, model_dir, tmp_path):
    """`--max-queued` end to end: one replica holding its 16 requests (each a 12 MP PNG, about 0.3 s to decode),
    a queue of 1, and 40 requests at once: the rest are answered at once by the proxy, 503 + Retry-After in the
    API's JSON shape; every other answer is the photo's, and the app answers normally after."""
    import concurrent.futures

    from PIL import Image
    from ray import serve

    ramp = (np.add.outer(np.arange(3000), np.arange(4000)) % 256).astype(np.uint8)
    slow = tmp_path / "slow.png"
    Image.fromarray(np.stack([ramp] * 3, axis=-1)).save(slow)
    body = slow.read_bytes()
    cfg = srv.ServeConfig(
        model=model_dir, replicas=(1, 1), cpus_per_replica=0.25, max_batch_size=1, runtime=RUNTIME, max_queued=1
    )
    serve.run(srv.build_application(cfg), name="full", route_prefix="/full")
    url = app["url"].rstrip("/") + "/full/v1/tag"
    try:

        def post(_):
            return requests.post(url, data=body, headers={"Content-Type": "image/png"}, timeout=120)

        with concurrent.futures.ThreadPoolExecutor(40) as pool:
            answers = list(pool.map(post, range(40)))
        full = [r for r in answers if r.status_code == 503]
        done = [r for r in answers if r.status_code == 200]
        assert len(full) + len(done) == 40, [(r.status_code, r.text[:200]) for r in answers]
        assert full and done, f"{len(full)} refused, {len(done)} answered: the queue never filled"
        assert all(r.headers.get("Retry-After") == "1" and is_unavailable_answer(r) for r in full), full[0].text
        assert all(r.json()["status"] in ("tagged", "no_landmark") for r in done), done[0].text
        print(f"queue full: {len(full)} of 40 answered 503 at once, {len(done)} tagged; e.g. {full[0].json()['error']}")
        assert post(0).status_code == 200  # and after the burst, the app takes requests again
    finally:
        serve.delete("full")


@pytest.mark.slow
def test_an_upload_that_stalls_is_answered_503_at_the_proxys_deadline(app):
    """The proxy's own deadline end to end (`--request-timeout` + 2 s, 22 s in this module): a client that sends
    its headers and the start of a photo, then nothing more, gets 503 + Retry-After in the API's JSON shape when
    the deadline passes, neither a connection left hanging nor the proxy's plain-text 408."""
    from urllib.parse import urlsplit

    url = urlsplit(app["url"])
    deadline = app["cfg"].request_timeout_s + srv.PROXY_GRACE_S
    head = (
        f"POST {url.path.rstrip('/')}/v1/tag HTTP/1.1\r\nHost: {url.netloc}\r\n"
        f"Authorization: {app['s'].headers['Authorization']}\r\nContent-Type: image/jpeg\r\n"
        "Content-Length: 100000\r\nConnection: close\r\n\r\n"
    )
    with socket.create_connection((url.hostname, url.port), timeout=deadline + 30) as sock:
        t0 = time.monotonic()
        sock.sendall(head.encode() + b"\xff\xd8\xff\xe0" + bytes(996))  # 1 KB of the promised 100 KB
        raw = b""
        while chunk := sock.recv(65536):
            raw += chunk
        took = time.monotonic() - t0
    status, _, rest = raw.partition(b"\r\n")
    headers, _, body = rest.partition(b"\r\n\r\n")
    fields = dict(line.split(b": ", 1) for line in headers.lower().split(b"\r\n"))
    assert status.split()[1] == b"503", raw[:400]
    assert fields[b"retry-after"] == b"1" and fields[b"content-type"].startswith(b"application/json"), headers
    answer = json.loads(body)
    assert answer["status"] == "failed" and answer["error"].startswith("unavailable: "), answer
    assert deadline - 1 <= took <= deadline + 10, f"answered after {took:.1f} s; the deadline is {deadline} s"
    print(f"stalled upload: 503 after {took:.1f} s: {answer['error']}")


# ---------------------------------------------------------------------------------------------- the page


def cdp_browser(tmp_path: Path, env: dict):
    """Headless Chromium with a DevTools port; returns (process, the DevTools websocket URL of its page)."""
    profile = tmp_path / "chromium-profile"
    proc = subprocess.Popen(
        [
            str(CHROMIUM),
            *FLAGS,
            f"--user-data-dir={profile}",
            "--remote-debugging-port=0",
            "--window-size=1200,900",
            "about:blank",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    port_file = profile / "DevToolsActivePort"
    for _ in range(200):
        if port_file.exists() and port_file.read_text().strip():
            break
        time.sleep(0.1)
    port = int(port_file.read_text().split()[0])
    targets = requests.get(f"http://127.0.0.1:{port}/json/list", timeout=10).json()
    page = next(t for t in targets if t["type"] == "page")
    return proc, page["webSocketDebuggerUrl"]


@contextlib.contextmanager
def chromium_page(tmp_path: Path):
    """A Cdp session on a fresh headless Chromium's page; the browser killed and its profile removed after."""
    from websockets.sync.client import connect

    with chromium_env() as env:
        proc, ws_url = cdp_browser(tmp_path, env)
        try:
            with connect(ws_url, max_size=None, open_timeout=10) as ws:
                yield Cdp(ws)
        finally:
            proc.kill()
            proc.wait(timeout=30)
            shutil.rmtree(tmp_path / "chromium-profile", ignore_errors=True)


class Cdp:
    def __init__(self, ws):
        self.ws, self.n, self.events = ws, 0, []

    def __call__(self, method: str, **params):
        self.n += 1
        self.ws.send(json.dumps({"id": self.n, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv(timeout=30))
            if msg.get("id") == self.n:
                assert "error" not in msg, msg
                return msg["result"]
            self.events.append(msg)

    def js(self, expr: str):
        return self("Runtime.evaluate", expression=expr, returnByValue=True)["result"].get("value")


def drive_page(cdp: Cdp, app, token, photo: str, abstained: str, tmp_path: Path, failed: str):
    """Open the page with the token header, choose ``photo`` in its file input, wait for the answer, read it
    (and before it, the answers for ``abstained`` and for ``failed``: headline, GPS line, whether the preview shows)."""
    cdp("Network.enable")
    cdp("Network.setExtraHTTPHeaders", headers={"Authorization": f"Bearer {token[0]}"})
    cdp("Page.enable")
    cdp("Page.navigate", url=app["url"] + "/")
    for _ in range(100):
        if cdp.js("document.readyState") == "complete" and cdp.js("!!document.getElementById('file')"):
            break
        time.sleep(0.1)
    choose_and_wait(cdp, failed)  # a file that is no photo: its reason, no GPS line, no broken preview
    time.sleep(0.5)  # (the preview's error event)
    bad = cdp.js(
        "[document.getElementById('headline').textContent, document.getElementById('exif').textContent,"
        " getComputedStyle(document.getElementById('preview')).display]"
    )
    choose_and_wait(cdp, abstained)  # a photo the model abstains on: the page says so
    no_landmark = cdp.js("document.getElementById('headline').textContent")
    choose_and_wait(cdp, photo)
    headline = cdp.js("document.getElementById('headline').textContent")
    rows = cdp.js("[...document.querySelectorAll('#tags tr')].map(r => r.cells[0].textContent)")
    exif = cdp.js("document.getElementById('exif').textContent")
    markers = cdp.js("document.querySelectorAll('#markers circle').length")
    cdp("Runtime.evaluate", expression="document.getElementById('preview').decode()", awaitPromise=True)
    shot = tmp_path / "serve-page.png"
    shot.write_bytes(base64.b64decode(cdp("Page.captureScreenshot", format="png")["data"]))
    urls = [e["params"]["request"]["url"] for e in cdp.events if e.get("method") == "Network.requestWillBeSent"]
    return urls, headline, rows, exif, markers, shot, no_landmark, bad


def choose_and_wait(cdp: Cdp, photo: str) -> None:
    """Choose ``photo`` in the page's file input (as a user would) and wait until its answer is shown."""
    cdp.js("document.getElementById('result').dataset.state = 'idle'")
    doc = cdp("DOM.getDocument")
    node = cdp("DOM.querySelector", nodeId=doc["root"]["nodeId"], selector="#file")
    cdp("DOM.setFileInputFiles", nodeId=node["nodeId"], files=[photo])
    for _ in range(300):
        if cdp.js("document.getElementById('result').dataset.state") == "done":
            return
        time.sleep(0.1)
    raise AssertionError(f"the page showed no answer for {photo}")


@pytest.mark.slow
def test_upload_page_in_headless_chromium(app, expected, token, tmp_path):
    require_chromium()
    photo = next(p for p, w in expected.items() if w["status"] == "tagged" and w["exif_lat"] is not None)
    want = expected[photo]
    abstained = next((p for p, w in expected.items() if w["status"] == "no_landmark"), None)
    assert abstained, "the synthetic photos should include one the model abstains on (msp threshold 0.6)"
    failed = next(p for p, w in expected.items() if w["status"] == "failed" and "not_an_image" in w["error"])
    with chromium_page(tmp_path) as cdp:
        urls, headline, rows, exif, markers, shot, no_landmark, bad = drive_page(
            cdp, app, token, photo, abstained, tmp_path, failed
        )
    assert headline.startswith(want["landmark"] + " ("), headline
    assert no_landmark.startswith("no landmark"), no_landmark
    assert bad[0].startswith("failed: not_an_image") and bad[1:] == ["", "none"], bad
    assert rows == [t["name"] for t in want["tags"]]
    assert f"{want['exif_lat']:.5f}" in exif and markers == 2  # the landmark and the photo's own GPS
    # nothing but the app itself (and the photo's blob: URL) was requested: the page works air-gapped
    assert urls and all(u.startswith((app["url"], "blob:", "data:")) for u in urls), urls
    with Image.open(shot) as im:
        assert im.size[0] >= 800
        px = np.asarray(im.convert("RGB"), dtype=np.float32)
    assert px.std() > 20 and len(np.unique(px.reshape(-1, 3), axis=0)) > 500, "screenshot looks blank"
    print(f"screenshot: {shot}")


CALL_API = """(async () => {
  const photo = await (await fetch('/photo.jpg')).blob();
  const call = async (headers) => {
    try {
      const r = await fetch('%(api)s/v1/tag?name=photo.jpg', {method: 'POST', body: photo, headers});
      return [r.status, await r.json()];
    } catch (e) { return ['blocked', String(e)]; }
  };
  return [await call({'Authorization': 'Bearer %(token)s', 'Content-Type': 'image/jpeg'}),
          await call({'Content-Type': 'image/jpeg'})];
})()"""


@pytest.mark.slow
def test_a_page_of_an_allowed_origin_calls_the_api_from_headless_chromium(app, expected, token, sites, tmp_path):
    """--allow-origin end to end: a page on the allowed site POSTs a photo with the bearer token and reads the
    same answer as `predict`, and reads a 401's reason; the same page on another origin cannot read either (the
    browser blocks it, as it does for every site by default)."""
    require_chromium()
    folder, allowed, other = sites
    photo = next(p for p, w in expected.items() if w["status"] == "tagged")
    shutil.copyfile(photo, folder / "photo.jpg")
    (folder / "caller.html").write_text("<!DOCTYPE html><title>caller</title><p>a photo service's page</p>")
    answers = {}
    with chromium_page(tmp_path) as cdp:
        cdp("Page.enable")
        for site in (allowed, other):
            cdp("Page.navigate", url=f"{site}/caller.html")
            for _ in range(100):
                if cdp.js("document.readyState") == "complete" and cdp.js("document.title") == "caller":
                    break
                time.sleep(0.1)
            script = CALL_API % {"api": app["url"], "token": token[0]}
            got = cdp("Runtime.evaluate", expression=script, awaitPromise=True, returnByValue=True)
            answers[site] = got["result"]["value"]
    (status, body), (denied, reason) = answers[allowed]
    assert status == 200 and same_answer(body, expected[photo]), answers[allowed]
    assert denied == 401 and reason["error"].startswith("unauthorized"), reason
    assert [a[0] for a in answers[other]] == ["blocked", "blocked"], answers[other]


@pytest.mark.slow
def test_api_docs_render_in_headless_chromium_air_gapped(app, token, tmp_path):
    """/docs draws Swagger UI from the app's own files: the operations are listed, nothing else is fetched."""
    require_chromium()
    with chromium_page(tmp_path) as cdp:
        cdp("Network.enable")
        cdp("Network.setExtraHTTPHeaders", headers={"Authorization": f"Bearer {token[0]}"})
        cdp("Page.enable")
        cdp("Page.navigate", url=app["url"] + "/docs")
        paths = []
        for _ in range(200):
            paths = cdp.js("[...document.querySelectorAll('.opblock-summary-path')].map(e => e.textContent)")
            if paths:
                break
            time.sleep(0.1)
        shown = cdp.js("document.body.innerText.slice(0, 300)")
        urls = [e["params"]["request"]["url"] for e in cdp.events if e.get("method") == "Network.requestWillBeSent"]
    assert {"/v1/tag", "/v1/tag/batch", "/v1/model", "/healthz"} <= {p.replace("\u200b", "") for p in paths}, (
        shown,
        urls,
    )
    assert urls and all(u.startswith((app["url"], "data:")) for u in urls), urls


# ---------------------------------------------------------------------------------------------- a replica killed


def is_unavailable_answer(r: requests.Response) -> bool:
    """The API's JSON error object (a failed photo's result, no path) with an ``unavailable:`` reason, as the app
    (jobs/serve.py error_body) and the proxy's middleware (jobs/_serve_proxy.py) answer a 503."""
    if not r.headers.get("content-type", "").startswith("application/json"):
        return False
    try:
        body = r.json()
    except ValueError:
        return False
    return (
        isinstance(body, dict)
        and isinstance(body.get("error"), str)
        and body["error"].startswith("unavailable:")
        and body == srv.error_body(body["error"])
    )


@pytest.mark.slow
def test_replica_killed_under_load(app, expected):
    """Clients keep posting photos while a Tagger replica is killed: every answer is right or a 503 with
    Retry-After and the API's JSON error object, never a wrong answer or another status, and the app has both
    replicas again after."""
    import ray
    from ray import serve

    photos = [p for p, w in expected.items() if w["status"] != "failed"]
    stop, lock = threading.Event(), threading.Lock()
    seen = {"ok": 0, "503": 0, "wrong": [], "other": []}

    def client(i: int):
        s = requests.Session()
        s.headers.update(app["s"].headers)
        j = i
        while not stop.is_set():
            p = photos[j % len(photos)]
            j += 1
            try:
                r = post_photo({"s": s, "url": app["url"]}, p)
            except requests.RequestException as e:
                with lock:
                    seen["other"].append(repr(e))
                continue
            with lock:
                if r.status_code == 200:
                    seen["ok"] += 1
                    if not same_answer(r.json(), expected[p]):
                        seen["wrong"].append((p, r.json()))
                elif r.status_code == 503 and r.headers.get("Retry-After") and is_unavailable_answer(r):
                    seen["503"] += 1
                else:
                    seen["other"].append((r.status_code, r.text[:200]))

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(6)]
    for t in threads:
        t.start()
    time.sleep(2)
    names = [
        a["name"]
        for a in ray.util.list_named_actors(all_namespaces=True)
        if "Tagger" in a["name"] and "landmark" in a["name"]
    ]
    assert len(names) == 2, names
    before = seen["ok"]
    ray.kill(ray.get_actor(names[0], namespace="serve"), no_restart=True)
    time.sleep(4)
    stop.set()
    for t in threads:
        t.join(timeout=60)
    logs = Path(ray._private.worker._global_node.get_session_dir_path()) / "logs" / "serve"
    rerouted = sum(p.read_text(errors="replace").count("because it has died") for p in logs.glob("proxy_*"))
    print(
        f"replica killed under load: {seen['ok']} right answers ({before} before the kill), "
        f"{seen['503']} answered 503 + Retry-After, {len(seen['wrong'])} wrong; the router saw the dead replica "
        f"{rerouted} times"
    )
    assert seen["wrong"] == [] and seen["other"] == [], seen
    assert seen["ok"] > before > 0
    deadline = time.monotonic() + 60  # the controller replaces the replica
    while time.monotonic() < deadline:
        reps = serve.status().applications["landmark"].deployments["Tagger"].replica_states
        if reps.get("RUNNING") == 2:
            break
        time.sleep(0.5)
    assert reps.get("RUNNING") == 2, reps
    p = photos[0]
    assert same_answer(post_photo(app, p).json(), expected[p])


def test_a_method_a_path_does_not_serve_is_answered_with_every_method_it_does():
    """405's Allow named only the first route's methods: DELETE /healthz said `allow: HEAD` though GET serves."""
    import types

    api = srv.make_api(types.SimpleNamespace(allow_origins=(), token_sha256="x", max_upload_bytes=10**7))
    for method, path, allow in (
        ("DELETE", "/healthz", "GET, HEAD"),
        ("POST", "/", "GET, HEAD"),
        ("DELETE", "/v1/tag", "POST"),
    ):
        status, headers, body = _asgi(api, method, path, {})
        assert status == 405 and headers["allow"] == allow, (method, path, headers)
        assert json.loads(body) == srv.error_body(f"method_not_allowed: {method} {path}")
