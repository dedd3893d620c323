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
