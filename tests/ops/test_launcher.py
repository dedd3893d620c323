"""What the launcher hands to replicas and to Ray, without starting either."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.errors import ConfigError
from core.settings import load_settings
from ops.launcher import ray_env, resolved_settings_file


def test_replicas_get_one_settings_file_with_absolute_paths(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    s = load_settings(environ={"RECSYS_HOME": "rel-home", "RECSYS_SERVE_HTTP_PORT": "28123"})
    path = resolved_settings_file(s)
    loaded = load_settings(environ={"RECSYS_SETTINGS_FILE": str(path)})
    assert loaded.serve_http_port == 28123
    assert loaded.home == (tmp_path / "rel-home").resolve() and loaded.home.is_absolute()
    assert loaded.model_repo == (tmp_path / "rel-home" / "model_repository").resolve()
    assert loaded.tracking_uri == s.tracking_uri and loaded.tracking_uri.startswith("sqlite:////")
    assert all(Path(getattr(loaded, k)).is_absolute() for k in ("feature_repo", "triton_venv", "promotion_policy"))


def test_ray_head_env_drops_stray_recsys_variables_and_sets_the_fast_mode(monkeypatch):
    monkeypatch.setenv("RECSYS_HOME", "relative/home")
    env = ray_env(load_settings(environ={}))
    assert not any(k.startswith("RECSYS_") for k in env)
    assert env["RAY_AUTH_MODE"] == "disabled"
    assert env["RAY_SERVE_THROUGHPUT_OPTIMIZED"] == "1" and env["RAY_SERVE_ENABLE_HA_PROXY"] == "1"
    slow = ray_env(load_settings(environ={"RECSYS_SERVE_THROUGHPUT_OPTIMIZED": "false"}))
    assert "RAY_SERVE_THROUGHPUT_OPTIMIZED" not in slow


def test_the_ray_head_inherits_no_directory_the_launching_process_owns():
    """Importing feast (the demo and the bench do, before `launcher.up`) creates a temp dir for prometheus_client,
    exports it, and deletes it at exit; replicas started from an environment naming it die at start once the
    launching process is gone. A fresh process, as a newcomer's shell would run it."""
    import os
    import subprocess
    import sys

    code = ("import os, json, feast\n"
            "from core.settings import load_settings\nfrom ops.launcher import ray_env\n"
            "env = ray_env(load_settings(environ={}))\n"
            "print(json.dumps([os.environ.get('PROMETHEUS_MULTIPROC_DIR'), "
            "[k for k, v in env.items() if 'feast_metrics_' in v]]))")
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("PROMETHEUS_", "RECSYS_"))}
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=clean, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    import json

    owned, leaked = json.loads(res.stdout.strip().splitlines()[-1])
    assert owned and "feast_metrics_" in owned  # what the import did in the launching process
    assert leaked == []


def test_a_restarted_triton_keeps_the_last_runs_logs(tmp_path: Path) -> None:
    from ops.triton_server import rotate_log

    log = tmp_path / "tritonserver.log"
    for run in range(5):
        rotate_log(log, keep=3)
        log.write_text(f"run {run}")
    assert log.read_text() == "run 4"
    assert [(tmp_path / f"tritonserver.log.{n}").read_text() for n in (1, 2, 3)] == ["run 3", "run 2", "run 1"]
    assert not (tmp_path / "tritonserver.log.4").exists()


def test_the_haproxy_wrapper_moves_serves_listeners_to_loopback_and_closes_the_admin_socket(tmp_path: Path) -> None:
    """The config lines as Serve renders them (ray/serve/_private/haproxy_templates.py), through the wrapper."""
    import subprocess

    from ops.launcher import haproxy_wrapper

    wrapper = haproxy_wrapper(tmp_path)
    cfg = tmp_path / "haproxy.cfg"
    cfg.write_text("global\n    stats socket /s/admin.sock mode 666 level admin expose-fd listeners\n"
                   "frontend prometheus\n    bind :9101\nfrontend http_frontend\n    bind 127.0.0.1:8000\n"
                   "listen stats\n  bind *:8404\n")
    res = subprocess.run([str(wrapper), "-c", "-f", str(cfg)], capture_output=True, text=True, timeout=60)
    text = cfg.read_text()
    assert "bind 127.0.0.1:9101" in text and "bind 127.0.0.1:8404" in text and "bind 127.0.0.1:8000" in text
    assert "mode 600" in text and "mode 666" not in text
    assert res.returncode == 0 and "Configuration file is valid" in res.stdout  # the real binary checked it


def test_haproxys_socket_paths_fit_its_limit_however_deep_the_home(tmp_path: Path, monkeypatch) -> None:
    """HAProxy refuses a unix socket path over 97 characters; Serve adds /<56-char node id>/ to ours."""
    from ops.launcher import haproxy_dir

    deep = tmp_path / ("d" * 60) / ("e" * 60) / "home"
    monkeypatch.setenv("RECSYS_HOME", str(deep))
    root = haproxy_dir(load_settings())
    assert len(f"{root}/{'n' * 56}/metrics.sock") <= 97
    assert root.stat().st_mode & 0o777 == 0o700
    monkeypatch.setenv("RECSYS_HOME", str(tmp_path / "other"))
    assert haproxy_dir(load_settings()) != root  # one per home: two stacks never share HAProxy's files


def test_down_ends_a_stray_haproxy_of_its_home_and_no_other(tmp_path: Path, monkeypatch) -> None:
    """An HAProxy left on this home's files (its manager killed without `serve.shutdown`) is ended; one on another
    home's files keeps running. Stand-ins: a Python named `haproxy` with `-f <dir>/<node>/haproxy.cfg`, as Serve
    starts it."""
    import subprocess
    import sys

    from ops.launcher import haproxy_dir, stop_stray_haproxy

    fake = tmp_path / "bin" / "haproxy"
    fake.parent.mkdir()
    fake.symlink_to(sys.executable)
    procs = {}
    for home in ("mine", "theirs"):
        monkeypatch.setenv("RECSYS_HOME", str(tmp_path / home))
        cfg = haproxy_dir(load_settings()) / ("n" * 56) / "haproxy.cfg"
        procs[home] = subprocess.Popen([str(fake), "-c", "import time; time.sleep(120)", "-db", "-f", str(cfg)])
    try:
        monkeypatch.setenv("RECSYS_HOME", str(tmp_path / "mine"))
        assert stop_stray_haproxy(load_settings()) == 1
        assert procs["mine"].wait(timeout=10) is not None
        assert procs["theirs"].poll() is None
        assert stop_stray_haproxy(load_settings()) == 0  # nothing left to end: a second `down` is a no-op
    finally:
        for p in procs.values():
            p.kill()
            p.wait()


def _empty_wheel(tmp_path: Path):
    """The wheel's layout of the server's files, empty: enough for `command` to build its arguments."""
    from ops.triton_server import TritonInstall

    wheel = TritonInstall(python=tmp_path / "venv/bin/python", package=tmp_path / "site/pytriton",
                          python_version="3.11", libpython_dir=str(tmp_path))
    for part in ("backends/python/libtriton_python.so", "backends/python/triton_python_backend_utils.py",
                 "python_backend_stubs/3.11/triton_python_backend_stub"):
        (wheel.server_dir / part).parent.mkdir(parents=True, exist_ok=True)
        (wheel.server_dir / part).touch()
    return wheel


def test_the_local_triton_loads_only_what_the_graph_calls_over_the_network(tmp_path: Path) -> None:
    """The ranker; not the user encoder, which the Recall replica runs in-process (a stub process no request
    reaches). Every model a loaded config names must be one the ranking client calls."""
    from ops.triton_server import command
    from serving.triton_client import RankerClient

    s = load_settings(environ={"RECSYS_HOME": str(tmp_path / "home")})
    wheel = _empty_wheel(tmp_path)
    loaded = [a.split("=", 1)[1] for a in command(s, wheel) if a.startswith("--load-model=")]
    assert loaded == [RankerClient("127.0.0.1:1").model]


@pytest.mark.parametrize(("mb", "flags"), [(16, ["--cache-config=local,size=16777216"]), (0, [])])
def test_the_local_triton_starts_with_the_response_cache_the_setting_sizes(tmp_path: Path, mb: int,
                                                                          flags: list[str]) -> None:
    from ops.triton_server import command

    s = load_settings(environ={"RECSYS_HOME": str(tmp_path / "home"), "RECSYS_TRITON_CACHE_MB": str(mb)})
    wheel = _empty_wheel(tmp_path)
    assert [a for a in command(s, wheel) if a.startswith("--cache-config")] == flags
    with pytest.raises(ConfigError, match="triton_cache_mb must be ≥ 0"):
        command(s.model_copy(update={"triton_cache_mb": -1}), wheel)
