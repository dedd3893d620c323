"""The local `tritonserver` process: start, health-check, stop (`recsys triton up|down|status`).

The binary, its libraries and the python backend come from the `nvidia-pytriton` wheel installed in its
own virtualenv (`triton_venv`, numpy < 2: numpy 2 silently corrupts tensors in the 24.10 python stub).
Three fixes make the standalone server work (../shared/triton/README.md): the backend stub placed where
the backend looks (a private backends dir of symlinks, so site-packages stays untouched), `PATH` to the
venv so model.py finds its numpy/onnxruntime, and `LD_LIBRARY_PATH` to the venv's libpython.
In a cluster none of this runs: KServe's Triton runtime serves the ranker's published repository.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.artifacts import CONFIG_PBTXT
from core.errors import ConfigError, MissingStepError, RecsysError
from core.http_json import HttpError, answers, request_json
from core.names import RANKER
from core.settings import Settings

# What the graph calls over the network, as in the cluster (ops/kserve.py publishes the ranker alone). The
# repository also holds the user encoder because the Recall replica (and `recommend --batch`) loads its model.onnx
# and runs it in-process, where the user's history already is; loaded here it was a python-backend stub (~70 MB)
# that no request reached and that a live retrain never reloaded (ops/rollout.py swaps the ranker).
MODELS = (RANKER,)


class TritonError(RecsysError):
    """The local Triton server could not be started, reached or stopped."""


@dataclass(frozen=True)
class TritonInstall:
    """Where the wheel put the server; found from the venv's interpreter, never from fixed paths."""

    python: Path
    package: Path  # site-packages/pytriton
    python_version: str  # "3.11"
    libpython_dir: str

    @property
    def server_dir(self) -> Path:
        return self.package / "tritonserver"

    @property
    def binary(self) -> Path:
        return self.server_dir / "bin" / "tritonserver"

    @property
    def libs(self) -> Path:
        return self.package.parent / "nvidia_pytriton.libs"


def find_install(settings: Settings) -> TritonInstall:
    python = settings.triton_venv / "bin" / "python"
    if not python.exists():
        raise MissingStepError(f"no Triton virtualenv at {settings.triton_venv}: run `make install` first")
    probe = ("import importlib.util as u, sys, sysconfig, json; s = u.find_spec('pytriton'); "
             "print(json.dumps({'pkg': s and s.submodule_search_locations[0], "
             "'ver': f'{sys.version_info[0]}.{sys.version_info[1]}', 'lib': sysconfig.get_config_var('LIBDIR')}))")
    out = subprocess.run([str(python), "-c", probe], capture_output=True, text=True, timeout=60)
    if out.returncode != 0:
        raise TritonError(f"cannot run {python}: {out.stderr.strip().splitlines()[-1:]}")
    info = json.loads(out.stdout)
    if not info["pkg"]:
        raise MissingStepError(f"nvidia-pytriton is not installed in {settings.triton_venv}: run `make install`")
    install = TritonInstall(python, Path(info["pkg"]), info["ver"], info["lib"])
    if not install.binary.exists():
        raise TritonError(f"the pytriton wheel has no server binary at {install.binary}")
    return install


def state_dir(settings: Settings) -> Path:
    return (settings.home / "triton").resolve()


def backend_dir(settings: Settings, install: TritonInstall) -> Path:
    """A private backends dir: python/ holds symlinks to the wheel's backend and the matching stub."""
    root = state_dir(settings) / "backends"
    py = root / "python"
    py.mkdir(parents=True, exist_ok=True)
    src = install.server_dir / "backends" / "python"
    stub = install.server_dir / "python_backend_stubs" / install.python_version / "triton_python_backend_stub"
    if not stub.exists():
        raise TritonError(f"the pytriton wheel has no python backend stub for Python {install.python_version}")
    for target, name in ((src / "libtriton_python.so", "libtriton_python.so"),
                         (src / "triton_python_backend_utils.py", "triton_python_backend_utils.py"),
                         (stub, "triton_python_backend_stub")):
        link = py / name
        if link.is_symlink() and link.resolve() == target.resolve():
            continue
        link.unlink(missing_ok=True)
        link.symlink_to(target)
    return root


def _env(install: TritonInstall) -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{install.python.parent}:{env.get('PATH', '')}"
    libs = [install.libpython_dir, str(install.libs)]
    if env.get("LD_LIBRARY_PATH"):
        libs.append(env["LD_LIBRARY_PATH"])
    env["LD_LIBRARY_PATH"] = ":".join(libs)
    env.setdefault("RECSYS_ORT_THREADS", "1")
    return env


def command(settings: Settings, install: TritonInstall) -> list[str]:
    host = settings.triton_host
    return [
        str(install.binary),
        f"--model-repository={settings.model_repo.resolve()}",
        f"--backend-directory={backend_dir(settings, install)}",
        f"--cache-directory={install.server_dir / 'caches'}",
        "--model-control-mode=explicit",
        *[f"--load-model={m}" for m in MODELS],
        f"--http-address={host}", f"--http-port={settings.triton_http_port}",
        f"--grpc-address={host}", f"--grpc-port={settings.triton_grpc_port}",
        f"--metrics-address={host}", f"--metrics-port={settings.triton_metrics_port}",
        "--disable-auto-complete-config",  # config.pbtxt is complete; saves a stub start per load
        "--exit-timeout-secs=5",
        *cache_flags(settings.triton_cache_mb),
    ]


def cache_flags(mb: int) -> list[str]:
    """The local response cache the ranker's config.pbtxt asks for (`training.export`). Triton caches only when the
    model enables it *and* the server was started with a cache (src/dynamic_batch_scheduler.cc, the scheduler's
    constructor, in triton-inference-server/core; src/tritonserver.cc: no --cache-config, no cache), so 0 leaves
    the flag out and every request runs the model."""
    if mb < 0:
        raise ConfigError(f"triton_cache_mb must be ≥ 0 (0: no response cache), got {mb}")
    return [f"--cache-config=local,size={mb * 2**20}"] if mb > 0 else []


def cache_counts(settings: Settings, name: str) -> dict[str, int]:
    """{"hits", "misses", "executions"} of `name`'s response cache, summed over its loaded versions: a hit is
    answered without running the model; with no cache both counts stay 0 and every request is an execution."""
    stats = _http(settings, f"/v2/models/{name}/stats", timeout=10).get("model_stats", [])
    out = {"hits": 0, "misses": 0, "executions": 0}
    for row in stats:
        inference = row.get("inference_stats", {})
        out["hits"] += int(inference.get("cache_hit", {}).get("count", 0))
        out["misses"] += int(inference.get("cache_miss", {}).get("count", 0))
        out["executions"] += int(row.get("execution_count", 0))
    return out


def _pid_file(settings: Settings) -> Path:
    return state_dir(settings) / "tritonserver.pid"


def log_file(settings: Settings) -> Path:
    return state_dir(settings) / "tritonserver.log"


KEPT_LOGS = 3  # tritonserver.log.1 … .3: the logs of earlier runs (a crash's log survives the restart after it)


def rotate_log(path: Path, keep: int = KEPT_LOGS) -> None:
    """Move the last run's log aside (.1, older ones up to .`keep`) instead of truncating it."""
    if not path.exists():
        return
    for n in range(keep - 1, 0, -1):
        older = path.with_name(f"{path.name}.{n}")
        if older.exists():
            older.replace(path.with_name(f"{path.name}.{n + 1}"))
    path.replace(path.with_name(f"{path.name}.1"))


def running_pid(settings: Settings) -> int | None:
    """The pid of the server this project started, if it is still alive."""
    path = _pid_file(settings)
    if not path.exists():
        return None
    pid = int(path.read_text().strip() or 0)
    if pid <= 0 or not _alive(pid):  # a killed server can linger as a zombie until its new parent reaps it
        path.unlink(missing_ok=True)
        return None
    return pid


def ready(settings: Settings, timeout: float = 1.0) -> bool:
    """Triton's own readiness: server up and every loaded model ready."""
    return answers(f"http://{settings.triton_http_url}/v2/health/ready", timeout)


def model_states(settings: Settings) -> dict[str, str]:
    """{model: "READY" | "UNAVAILABLE" | …} from the repository index (latest version per model)."""
    try:
        rows = _http(settings, "/v2/repository/index", {}, timeout=2)
    except TritonError:
        return {}
    return {row["name"]: row.get("state", "") for row in rows}


def _http(settings: Settings, path: str, body: dict | None = None, timeout: float = 120.0) -> Any:
    """GET (no body) or POST one Triton HTTP endpoint; any failure is a one-line TritonError."""
    try:
        return request_json(f"http://{settings.triton_http_url}{path}", body, timeout)
    except HttpError as e:
        if e.status:
            raise TritonError(f"triton {path}: {e.message}") from None
        raise TritonError(f"triton at {settings.triton_http_url} unreachable: {e.message}") from None


def load_model(settings: Settings, name: str) -> None:
    """(Re)load `name` from its config.pbtxt (explicit model control). Triton keeps serving the loaded versions
    until the new set is ready, and finishes in-flight requests of a version before unloading it."""
    _http(settings, f"/v2/repository/models/{name}/load", {})


def unload_model(settings: Settings, name: str, wait_s: float = 0.0) -> None:
    """Unload `name`; with `wait_s`, return once Triton no longer lists it as loaded or unloading (the unload call
    answers before a python-backend stub has exited, so its process would still be measured)."""
    _http(settings, f"/v2/repository/models/{name}/unload", {})
    deadline = time.monotonic() + wait_s
    while model_states(settings).get(name) in {"READY", "UNLOADING"} and time.monotonic() < deadline:
        time.sleep(0.2)


def loaded_versions(settings: Settings, name: str) -> list[str]:
    rows = _http(settings, "/v2/repository/index", {"ready": True})
    return sorted((r["version"] for r in rows if r["name"] == name and r.get("state") == "READY"), key=int)


def _last_lines(path: Path, n: int = 3) -> str:
    if not path.exists():
        return ""
    lines = [ln for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    return " | ".join(lines[-n:])


def up(settings: Settings) -> int:
    """Start tritonserver on the exported repository (no-op if ours is running); returns its pid."""
    repo = settings.model_repo
    missing = [m for m in MODELS if not (repo / m / CONFIG_PBTXT).exists()]
    if missing:
        raise MissingStepError(f"no {', '.join(missing)} in the model repository {repo}: run `recsys export` first")
    pid = running_pid(settings)
    if pid is not None:
        _wait_ready(settings, pid, settings.triton_start_timeout_s)
        return pid
    if ready(settings):
        raise TritonError(f"another server already answers on {settings.triton_http_url}: stop it or change "
                          "RECSYS_TRITON_HTTP_PORT")
    install = find_install(settings)
    state_dir(settings).mkdir(parents=True, exist_ok=True)
    rotate_log(log_file(settings))
    log = log_file(settings).open("wb")
    proc = subprocess.Popen(command(settings, install), env=_env(install), stdout=log, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, start_new_session=True)
    _pid_file(settings).write_text(str(proc.pid))
    _wait_ready(settings, proc.pid, settings.triton_start_timeout_s, proc)
    return proc.pid


def _wait_ready(settings: Settings, pid: int, timeout: float, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ready(settings):
            return
        if (proc is not None and proc.poll() is not None) or running_pid(settings) is None:
            _pid_file(settings).unlink(missing_ok=True)
            raise TritonError(f"tritonserver exited during start-up: {_last_lines(log_file(settings))}")
        time.sleep(0.2)
    down(settings)
    raise TritonError(f"tritonserver not ready after {timeout:.0f} s (log: {log_file(settings)}): "
                      f"{_last_lines(log_file(settings))}")


def down(settings: Settings, timeout: float = 15.0) -> bool:
    """SIGTERM, then SIGKILL after `timeout`; returns whether a server was running."""
    pid = running_pid(settings)
    if pid is None:
        return False
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGTERM)  # the group: the python-backend stubs go with the server
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and _alive(pid):
        time.sleep(0.1)
    if _alive(pid):
        os.killpg(pid, signal.SIGKILL)
    _pid_file(settings).unlink(missing_ok=True)
    return True


def _alive(pid: int) -> bool:
    try:
        waited, _ = os.waitpid(pid, os.WNOHANG)  # reap it if it is our child
        if waited == pid:
            return False
    except ChildProcessError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (exited, not reaped by its parent) still answers kill(0): read its state.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


@dataclass
class TritonStatus:
    pid: int | None
    ready: bool
    models: dict[str, str]
    url: str


def status(settings: Settings) -> TritonStatus:
    return TritonStatus(running_pid(settings), ready(settings), model_states(settings), settings.triton_grpc_url)
