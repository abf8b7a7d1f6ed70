"""Joining or starting Ray, the same way for every job."""

from __future__ import annotations

import os

# Credentials are deliberately NOT put in the runtime_env: Ray records runtime_envs in its state and logs.
# Workers of a local Ray inherit the driver's environment; cluster nodes get theirs from the IAM instance profile.
WORKER_ENV = {"RAY_TRAIN_ENABLE_PRINT_PATCH": "0"}  # our per-epoch line printed once, not twice


def init_ray(address: str | None) -> None:
    """Join the cluster ``ray job submit`` set in RAY_ADDRESS (or --ray-address); else start a local Ray."""
    import ray

    if not ray.is_initialized():
        ray.init(address=address or os.environ.get("RAY_ADDRESS") or "local",
                 runtime_env={"env_vars": WORKER_ENV})
