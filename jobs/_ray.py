"""Joining or starting Ray, the same way for every job."""

from __future__ import annotations

import os

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

    if not ray.is_initialized():
        ray.init(
            address=address or os.environ.get("RAY_ADDRESS") or "local",
            **({"runtime_env": {"env_vars": worker_env}} if worker_env else {}),
        )
