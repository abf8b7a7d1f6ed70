"""`landmark bench serve`: the app over HTTP on loopback against the Predictor in-process, on the same photos.

  (p) in-process: landmark_core.predict.predict_bytes (decode + Predictor) over the photos in batches of
      --max-batch-size, in this process, for --seconds; the faster of 1 and one-per-core model threads
  (s) the app (`landmark serve`, started here on a free loopback port): closed-loop HTTP clients (each sends its
      next photo when the last answer arrives) for --seconds per client count, with batching (@serve.batch up to
      --max-batch-size) and without (batches of 1); requests/s, p50/p95/p99 latency, errors (non-200 answers)
  (l) with --load N: N mixed requests (photos, the bad-file corpus, bodies over --max-upload-mb, a wrong content
      type) from 16 clients; every answer's status checked against what it must be, and the replicas counted
      before and after
ratio = (s) requests/s at the largest client count, batched / (p) photos/s: the median of --rounds pairs measured
back to back (the machine's load drifts); ratio_table uses the table's (s) and the mean of (p) before and after.
The clients share the machine's cores with the app (loopback), as the in-process loop does not.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np

from landmark_core.datasets import list_files
from landmark_core.predictor import default_threads


def _say(text: str) -> None:
    print(f"[bench serve] {text}", flush=True)


def bench_inprocess(predictors: dict, photos: list[bytes], batch_size: int, seconds: float) -> tuple[float, int]:
    """(photos/s, model threads) of the faster of the predictors ({threads: Predictor}), each for ``seconds``."""
    return max((_inprocess_rate(p, photos, batch_size, seconds), t) for t, p in predictors.items())


def _inprocess_rate(predictor, photos: list[bytes], batch_size: int, seconds: float) -> float:
    from landmark_core.predict import PENDING, PhotoResult, predict_bytes

    def one(batch):
        predict_bytes([PhotoResult("p", PENDING) for _ in batch], batch, predictor)

    one(photos[:2])  # warm-up
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        s = n % len(photos)
        batch = (photos[s:] + photos)[:batch_size]
        one(batch)
        n += len(batch)
    return n / (time.perf_counter() - t0)


async def closed_loop(url: str, requests_: list[tuple[bytes, str]], clients: int, seconds: float, check=None) -> dict:
    """``clients`` concurrent clients, each posting its next request when its last answer came, for ``seconds``
    (or, with ``check``, each request of the list once); latency per request, non-200 (or failed ``check``)
    answers counted as errors."""
    import aiohttp

    lat, statuses, bad = [], Counter(), []
    nxt = iter(range(len(requests_))) if check else None
    stop = time.perf_counter() + seconds
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=clients), timeout=timeout) as s:

        async def client(i: int):
            j = i
            while True:
                if check:
                    idx = next(nxt, None)
                    if idx is None:
                        return
                elif time.perf_counter() >= stop:
                    return
                else:
                    idx, j = j % len(requests_), j + clients
                body, ctype = requests_[idx]
                t0 = time.perf_counter()
                try:
                    async with s.post(url, data=body, headers={"Content-Type": ctype}) as r:
                        payload, status = await r.read(), r.status
                except aiohttp.ClientError as e:
                    payload, status = repr(e).encode(), -1
                lat.append(time.perf_counter() - t0)
                statuses[status] += 1
                if not (check(idx, status, payload) if check else status == 200):
                    bad.append((idx, status, payload[:200]))

        t0 = time.perf_counter()
        await asyncio.gather(*(client(i) for i in range(clients)))
        elapsed = time.perf_counter() - t0
    ms = np.array(lat) * 1000
    return {
        "clients": clients,
        "requests": len(lat),
        "rps": round(len(lat) / elapsed, 1),
        "p50_ms": round(float(np.percentile(ms, 50)), 1),
        "p95_ms": round(float(np.percentile(ms, 95)), 1),
        "p99_ms": round(float(np.percentile(ms, 99)), 1),
        "errors": len(bad),
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
        "bad": bad[:5],
    }


def paired_ratio(predictors: dict, photos: list[bytes], url: str, reqs, clients: int, ns) -> dict:
    """(s)/(p) measured back to back ``ns.rounds`` times (``ns.seconds`` / 2 each): a machine whose load drifts
    (other jobs) moves both halves of a pair alike. The median pair is the ratio."""
    pairs = []
    for _ in range(ns.rounds):
        p, _t = bench_inprocess(predictors, photos, ns.max_batch_size, ns.seconds / 2)
        s = asyncio.run(closed_loop(url, reqs, clients, ns.seconds / 2))
        pairs.append((round(s["rps"], 1), round(p, 1), round(s["rps"] / p, 3)))
    return {"pairs": pairs, "ratio": float(np.median([r for _, _, r in pairs]))}


def tagger_replicas(app_name: str) -> list[str]:
    import ray

    return sorted(
        a["name"]
        for a in ray.util.list_named_actors(all_namespaces=True)
        if "Tagger" in a["name"] and app_name in a["name"]
    )


def mixed_requests(photos: list[bytes], expected: list[dict], limit: int, n: int, tmp: str):
    """n requests cycling photos, the bad-file corpus, an oversize body and a wrong content type, with the
    status each must get (and, for photos, the answer)."""
    import json

    from landmark_core.synthetic import write_bad_corpus

    kinds = write_bad_corpus(tmp)
    bad = [
        ((Path(tmp) / name).read_bytes(), 200 if kind is None else (400 if kind == "empty" else 422))
        for name, kind in sorted(kinds.items())
    ]
    oversize = os.urandom(limit + 1024)
    reqs, want = [], []
    for i in range(n):
        r = i % 20
        if r < 13:
            k = i % len(photos)
            reqs.append((photos[k], "image/jpeg"))
            want.append((200, expected[k]))
        elif r < 18:
            data, status = bad[i % len(bad)]
            reqs.append((data, "application/octet-stream"))
            want.append((status, None))
        elif r == 18:
            reqs.append((oversize, "image/jpeg"))
            want.append((413, None))
        else:
            reqs.append((photos[i % len(photos)], "text/plain"))
            want.append((415, None))

    def check(j: int, status: int, payload: bytes) -> bool:
        st, ans = want[j]
        if status != st:
            return False
        if ans is None:
            return True
        got = json.loads(payload)
        return got["status"] == ans["status"] and got["landmark"] == ans["landmark"]

    return reqs, check


def load_test(url: str, photos: list[bytes], expected: list[dict], ns, app_name: str) -> dict:
    """(l): ns.load mixed requests from 16 clients, each answer's status (and a photo's tag) checked; the Tagger
    replicas named before and after."""
    before = tagger_replicas(app_name)
    with tempfile.TemporaryDirectory() as tmp:
        mixed, check = mixed_requests(photos, expected, int(ns.max_upload_mb * 1024 * 1024), ns.load, tmp)
        r = asyncio.run(closed_loop(url, mixed, 16, 0, check=check))
    after = tagger_replicas(app_name)
    r.update(replicas_before=len(before), replicas_after=len(after), replicas_same=before == after)
    _say(
        f"(l) {r['requests']} mixed requests: statuses {r['statuses']}, wrong {r['errors']} "
        f"{r['bad'][:2] or ''}, {r['rps']} req/s, replicas {len(before)} -> {len(after)} (same: {before == after})"
    )
    return r


def run_serve_bench(ns) -> dict:
    from ray import serve

    from jobs import serve as srv
    from landmark_core.predict import PENDING, PhotoResult, predict_bytes
    from landmark_core.predictor import Predictor

    paths = list_files(ns.images)
    if not paths:
        raise SystemExit(f"landmark bench serve: error: --images {ns.images}: no photos")
    photos = [Path(p).read_bytes() for p in paths]
    _say(f"{len(photos)} photos from {ns.images}, model {ns.model}")
    port = ns.port or _free_port()
    base = srv.ServeConfig(
        model=ns.model,
        port=port,
        replicas=srv.parse_min_max(ns.replicas or str(default_threads()), "replicas"),
        cpus_per_replica=ns.cpus_per_replica,
        max_batch_size=ns.max_batch_size,
        batch_wait_ms=ns.batch_wait_ms,
        runtime=ns.runtime,
        max_upload_mb=ns.max_upload_mb,
    )
    base.check()
    srv.prepare_model(base)
    cores = default_threads()
    predictors = {t: Predictor(ns.model, runtime=base.resolved_runtime(), threads=t) for t in sorted({1, cores})}
    predictor = predictors[1]
    expected = [r.__dict__ for r in predict_bytes([PhotoResult("p", PENDING) for _ in photos], photos, predictor)]
    out = {"photos": len(photos), "seconds": ns.seconds, "runtime": predictor.runtime}
    first, threads = bench_inprocess(predictors, photos, ns.max_batch_size, ns.seconds)
    _say(
        f"(p) in-process predict_bytes, batch {ns.max_batch_size}: {first:.1f} photos/s (best of 1 and {cores} "
        f"model threads: {threads})"
    )
    reqs = [(p, "image/jpeg") for p in photos]
    try:
        for label, batch in (("batched", ns.max_batch_size), ("unbatched", 1)):
            cfg = srv.ServeConfig(**{**base.__dict__, "max_batch_size": batch})
            url = srv.start(cfg) + "/v1/tag"
            asyncio.run(closed_loop(url, reqs, 4, 2.0))  # warm-up: replicas loaded, connections open
            for c in ns.clients:
                r = asyncio.run(closed_loop(url, reqs, c, ns.seconds))
                out[f"{label}_{c}"] = r
                _say(
                    f"(s) {label} (max batch {batch}), {c} clients: {r['rps']} req/s, p50 {r['p50_ms']} "
                    f"p95 {r['p95_ms']} p99 {r['p99_ms']} ms, errors {r['errors']} {r['bad'][:1] or ''}"
                )
        # (p) again after (s): on a shared machine the load drifts; the table's ratios use the mean of both
        last, threads = bench_inprocess(predictors, photos, ns.max_batch_size, ns.seconds)
        out["inprocess_ips_before"], out["inprocess_ips_after"] = round(first, 1), round(last, 1)
        out["inprocess_ips"] = round((first + last) / 2, 1)
        _say(f"(p) again: {last:.1f} photos/s ({threads} threads); mean {out['inprocess_ips']}")
        top = max(ns.clients)
        out["ratio_table"] = round(out[f"batched_{top}"]["rps"] / out["inprocess_ips"], 3)
        out["ratio_unbatched"] = round(out[f"unbatched_{top}"]["rps"] / out["inprocess_ips"], 3)
        url = srv.start(base) + "/v1/tag"  # batched again, for the paired rounds and the load test
        asyncio.run(closed_loop(url, reqs, 4, 1.0))
        out.update(paired_ratio(predictors, photos, url, reqs, top, ns))
        _say(
            f"ratio (s, {top} clients, batched) / (p), median of {ns.rounds} back-to-back pairs: {out['ratio']} "
            f"{out['pairs']}; from the table: {out['ratio_table']}, unbatched {out['ratio_unbatched']}"
        )
        if ns.load:
            out["load"] = load_test(url, photos, expected, ns, base.app_name)
    finally:
        serve.shutdown()
    for v in out.values():
        if isinstance(v, dict):
            v.pop("bad", None)
    return out


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def add_arguments(p) -> None:
    p.add_argument("--model", required=True, help="model artifact")
    p.add_argument("--images", required=True, help="a folder of photos (recursive)")
    p.add_argument(
        "--clients",
        type=lambda s: [int(x) for x in s.split(",")],
        default=[1, 4, 16],
        help="closed-loop client counts (default 1,4,16)",
    )
    p.add_argument("--seconds", type=float, default=30.0, help="seconds per measurement (default 30)")
    p.add_argument(
        "--max-batch-size",
        type=int,
        default=16,
        help="the app's max batch in the batched runs, and (p)'s batch (default 16)",
    )
    p.add_argument("--batch-wait-ms", type=float, default=10.0, help="how long a batch waits to fill (ms, default 10)")
    p.add_argument(
        "--replicas",
        default=None,
        help="Tagger replicas MIN[,MAX] (as `landmark serve`; default one per core, as (p) gets every core)",
    )
    p.add_argument(
        "--cpus-per-replica", type=float, default=1.0, help="CPUs (and model threads) per replica (default 1)"
    )
    p.add_argument(
        "--runtime", default="auto", help="model runtime: torch, onnx, onnx-int8, auto (as `landmark serve`)"
    )
    p.add_argument(
        "--max-upload-mb",
        type=float,
        default=2.0,
        help="the app's upload limit here (small: the load test's oversize bodies are just over it)",
    )
    p.add_argument("--rounds", type=int, default=3, help="back-to-back (p)/(s) pairs for the ratio (default 3)")
    p.add_argument("--load", type=int, default=0, help="also N mixed requests (good, bad, oversize, wrong type)")
    p.add_argument("--port", type=int, default=0, help="loopback port (default: a free one)")
    p.add_argument("--json", action="store_true", help="last line: a JSON object of the results")


def check_arguments(p, ns) -> None:
    if not Path(ns.images).is_dir():
        p.error(f"--images {ns.images}: no such directory")
    if not ns.clients or min(ns.clients) < 1:
        p.error(f"--clients must be positive integers, got {ns.clients}")
    if ns.seconds <= 0 or ns.load < 0 or ns.rounds < 1:
        p.error("--seconds must be > 0, --rounds >= 1 and --load >= 0")
