"""A finished Ray Train run leaves no actor of its own behind in a driver that lives on (the bench, a retrain
loop): Ray Train's SIGINT handler kept its TrainController (and that one's DatasetManager) alive, ~0.6 GiB. And
the run polls its workers at `fit`'s interval, which decides how soon a finished run returns."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import cli_env

DRIVER = """
import signal, sys, time
from core.settings import load_settings
from training.jobs.common import fit
import ray._private.state as gcs  # the GCS's actor table: no dashboard needed (the CI profile runs without one)

def loop(config):
    import os

    with open(config["out"], "w") as f:  # what the worker was told: the driver's poll interval, propagated
        f.write(os.environ.get("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "unset"))

before = signal.getsignal(signal.SIGINT)
fit(load_settings(), "cleanup", loop, {"out": sys.argv[1]}, resume=False)
deadline = time.monotonic() + 30
while time.monotonic() < deadline:
    alive = {a["ActorClassName"] for a in gcs.actors(actor_state_name="ALIVE").values()}
    if not alive & {"TrainController", "DatasetManager"}:
        break
    time.sleep(0.5)
print("ALIVE", sorted(alive))
print("HANDLER", signal.getsignal(signal.SIGINT) is before)
"""


@pytest.mark.slow
def test_a_finished_run_leaves_no_controller_alive(tmp_path: Path):
    seen = tmp_path / "poll_interval"
    res = subprocess.run([sys.executable, "-c", DRIVER, str(seen)], env=cli_env(tmp_path, RECSYS_TRAIN_WORKERS="1"),
                         capture_output=True, text=True, timeout=300, cwd=Path(__file__).parents[2])
    assert res.returncode == 0, res.stderr[-2000:]
    lines = dict(ln.split(" ", 1) for ln in res.stdout.splitlines() if ln.startswith(("ALIVE", "HANDLER")))
    assert "TrainController" not in lines["ALIVE"] and "DatasetManager" not in lines["ALIVE"], lines["ALIVE"]
    assert lines["HANDLER"] == "True"  # the driver's own Ctrl-C behaviour is back
    from training.jobs.common import TRAIN_POLL_S

    assert seen.read_text() == TRAIN_POLL_S  # Ray Train polled its workers at `fit`'s interval, not its 2 s default
