"""Shared fixtures: a synthetic data set prepared once per session through the real CLI (Feast included)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

RECSYS = str(Path(sys.executable).parent / "recsys")


def cli_env(home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RECSYS_")}
    env.update({"RECSYS_HOME": str(home), "RECSYS_PROFILE": "ci", "RECSYS_RAY_DASHBOARD": "false", **extra})
    return env


def run_cli(home: Path, *args: str, timeout: float = 600, **extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([RECSYS, *args], env=cli_env(home, **extra), capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture(scope="session")
def feature_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A home with synthetic data and a materialized Feast store (shared, treat as read-only)."""
    home = tmp_path_factory.mktemp("features_home")
    for args in (("data", "--synthetic"), ("features",)):
        res = run_cli(home, *args)
        assert res.returncode == 0, res.stderr[-2000:]
    return home


@pytest.fixture
def use_home(monkeypatch: pytest.MonkeyPatch):
    """Point in-process settings (and the Feast definitions module) at a home."""

    def _use(home: Path) -> None:
        for k in [k for k in os.environ if k.startswith("RECSYS_")]:
            monkeypatch.delenv(k)
        monkeypatch.setenv("RECSYS_HOME", str(home))
        monkeypatch.setenv("RECSYS_PROFILE", "ci")
        monkeypatch.setenv("RECSYS_RAY_DASHBOARD", "false")

    return _use
