"""Connect to Ray: the KubeRay cluster when `ray_address` is set; else the local serving head if one is up
(`recsys serve`: retraining then shows in the same dashboard, beside the graph); else an embedded cluster."""

from __future__ import annotations

import os

from core.errors import ConfigError
from core.settings import Settings


def ensure_ray(settings: Settings) -> None:
    import ray

    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # Ray ≥ 2.5x token auth: off for the embedded cluster
    os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")
    from core.endpoints import connect, loopback_ray

    if connect(settings):  # the configured cluster, or the local serving head when one is listening
        return
    if settings.ray_address:
        raise ConfigError(f"no Ray cluster answers at ray_address={settings.ray_address}")
    loopback_ray()  # the embedded cluster listens on 127.0.0.1 only
    ray.init(
        address="local",  # never attach to some other Ray on this machine by accident
        num_cpus=settings.ray_num_cpus,
        _node_ip_address="127.0.0.1",
        include_dashboard=settings.ray_dashboard,
        dashboard_host="127.0.0.1",
        log_to_driver=False,
        configure_logging=False,
    )


def worker_resources(settings: Settings) -> dict[str, float]:
    """Each worker's CPU share of the local cluster (GPU workers take one GPU and one CPU)."""
    if settings.use_gpu:
        return {"CPU": 1}
    return {"CPU": max(1, settings.ray_num_cpus // max(1, settings.train_workers))}
