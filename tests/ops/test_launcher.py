"""What the launcher hands to replicas and to Ray, without starting either."""

from __future__ import annotations

from pathlib import Path

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
