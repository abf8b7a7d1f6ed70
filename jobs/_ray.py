"""Joining or starting Ray, the same way for every job."""

from __future__ import annotations

import os
import socket

from jobs._cli import ConfigError

# Credentials are deliberately NOT put in the runtime_env: Ray records runtime_envs in its state and logs.
# Workers of a local Ray inherit the driver's environment; cluster nodes get theirs from the IAM instance profile.
WORKER_ENV = {"RAY_TRAIN_ENABLE_PRINT_PATCH": "0"}  # our per-epoch line printed once, not twice


def init_ray(address: str | None, *, worker_env: dict | None = WORKER_ENV) -> None:
    """Join the cluster ``ray job submit`` set in RAY_ADDRESS (or --ray-address); else start a local Ray.

    ``worker_env``: environment variables for this job's workers (a job-level runtime_env); ``None`` for a job
    that needs none (the tag job): a local Ray then runs its tasks in the worker processes ``ray.init`` started,
    where a runtime_env would make it start new ones first.
    """
    import ray

    check_address(address)
    if not ray.is_initialized():
        ray.init(
            address=_address(address),
            **({"runtime_env": {"env_vars": worker_env}} if worker_env else {}),
        )


def _address(address: str | None) -> str:
    """The address init_ray joins: --ray-address, else $RAY_ADDRESS, else "local" (a Ray this process starts)."""
    return address or os.environ.get("RAY_ADDRESS") or "local"


def check_address(address: str | None) -> None:
    """A ``host:port`` or ``ray://host:port`` cluster address must take a TCP connection within 2 s: Ray itself
    retries a dead address for over a minute before it fails. ``auto``, ``local`` and the unparsable are Ray's."""
    where = _address(address)
    host, _, port = where.removeprefix("ray://").rpartition(":")
    if where in ("auto", "local") or "://" in host or not host or not port.isdigit():
        return
    flag = f"--ray-address {where}" if address else f"$RAY_ADDRESS {where} (the default of --ray-address)"
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=2).close()
    except OSError as e:  # refused, timed out, unknown host, no route
        why = "no answer in 2 s" if isinstance(e, TimeoutError) else e.strerror or type(e).__name__
        raise ConfigError(f"{flag}: no Ray cluster answers there ({why}); is it up, and is the port right?") from None


def check_local_gpus(address: str | None, flag: str, amount: float) -> None:
    """Before any work: GPUs asked of a local Ray (no --ray-address, none started by this process yet) on a machine
    with no GPU are one error line naming the flag now, not after the job's inputs and Ray's start (check_resources
    says the rest, fractions and counts, once Ray is up)."""
    if amount <= 0 or _address(address) != "local":
        return
    import ray

    if ray.is_initialized():
        return
    import torch  # (a job asking for GPUs runs torch there)

    if torch.cuda.device_count() == 0:
        raise ConfigError(
            f"{flag} {amount:g}: this machine has no GPU, and with no --ray-address the job starts a local Ray on it"
        )


def check_resources(
    address: str | None,
    job: str,
    per_bundle: dict[str, tuple[str, float]],
    *,
    at_once: tuple[str, int] = ("", 1),
) -> None:
    """After init_ray: can the cluster ever give what the job asks for? ``per_bundle``: {resource: (flag, amount)}
    of one worker/actor/replica, which must fit on one node; ``at_once``: (flag, count) of bundles that must all run
    together. Ray would wait forever for what no node has; a local Ray (no --ray-address) cannot grow, so that is a
    ConfigError naming the flag, while a joined cluster may autoscale: one warning line, and the job goes on."""
    import ray

    problem = _shortfall(per_bundle, at_once, ray.cluster_resources(), _largest_node())
    if problem is None:
        return
    if _address(address) == "local":
        raise ConfigError(problem)
    print(f"[{job}] warning: {problem}; going on: the cluster may add nodes (autoscaling)", flush=True)


def _largest_node() -> dict[str, float]:
    """Each resource's most on any one live node (one bundle runs on one node)."""
    import ray

    most: dict[str, float] = {}
    for node in ray.nodes():
        if not node.get("Alive"):
            continue
        for k, v in (node.get("Resources") or {}).items():
            most[k] = max(most.get(k, 0.0), v)
    return most


def _shortfall(per_bundle, at_once, cluster: dict, node: dict) -> str | None:
    """The first thing asked for that the cluster lacks, as the error's text; None when it all fits."""
    have = ", ".join(f"{k} {cluster[k]:g}" for k in ("CPU", "GPU") if cluster.get(k)) or "no CPU or GPU"
    count_flag, count = at_once
    for res, (flag, amount) in per_bundle.items():
        if not amount:
            continue
        if not cluster.get(res):
            return f"{flag} {amount:g}: this Ray cluster has no {res} ({have})"
        if amount > node.get(res, 0) + 1e-9:  # (fractions: 3 x 0.1 is 0.30000000000000004)
            return f"{flag} {amount:g}: no node of this Ray cluster has {amount:g} {res} ({have})"
        if count * amount > cluster[res] + 1e-9:
            return (
                f"{count_flag} {count} x {flag} {amount:g} = {count * amount:g} {res} at once: "
                f"this Ray cluster has {have}"
            )
    return None
