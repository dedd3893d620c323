"""The Feast feature-server read path (`feature_read: server`): a real `feast serve` over the test store answers
what the SDK answers, and feedback pushes through it reach the online store."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import cli_env

PORT = 26566
FEAST = str(Path(sys.executable).parent / "feast")
REPO = Path(__file__).resolve().parents[2] / "feature_repo"


@pytest.fixture(scope="module")
def server_home(feature_home: Path, tmp_path_factory: pytest.TempPathFactory):
    home = tmp_path_factory.mktemp("fs") / "home"
    shutil.copytree(feature_home, home)
    env = {k: v for k, v in os.environ.items() if not k.startswith("RECSYS_")}
    env.update({"RECSYS_HOME": str(home), "RECSYS_PROFILE": "ci", "RECSYS_FEAST_DIR": str(home / "features")})
    proc = subprocess.Popen([FEAST, "-c", str(REPO), "serve", "-h", "127.0.0.1", "-p", str(PORT), "--no-access-log"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{PORT}/health", timeout=2):
                    break
            except OSError:
                time.sleep(0.5)
        else:
            pytest.fail("feast serve did not become healthy in 120 s")
        yield home
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(30)


def readers(home: Path, use_home):
    use_home(home)
    from core.settings import load_settings
    from serving.features import FeatureReader

    s = load_settings()
    server = s.model_copy(update={"feature_read": "server", "feature_server_url": f"http://127.0.0.1:{PORT}"})
    return s, server, FeatureReader(s), FeatureReader(server)


def test_server_reads_equal_sdk_reads(server_home, use_home):
    _, _, sdk, http = readers(server_home, use_home)
    users = [1, 2, 3, 5, 8, 10**7]  # the last one is unknown
    for u in users:
        assert http.user(u) == sdk.user(u)
    assert not http.user(10**7).known and sdk.user(1).known
    assert http.rows(users) == sdk.rows(users)  # several users in one request, as coalesced reads send them
    assert [http.profile(u, r) for u, r in zip(users, http.rows(users), strict=True)] == [sdk.user(u) for u in users]
    ids = [1, 2, 3, 10**7]
    a, b = sdk.items(ids), http.items(ids)
    assert a.title == b.title and a.genres == b.genres and list(a.found) == list(b.found) == [True] * 3 + [False]
    assert np.array_equal(a.year, b.year) and np.array_equal(a.popularity, b.popularity)
    assert np.allclose(a.content, b.content) and np.abs(a.content).sum() > 0


def test_feedback_pushes_through_the_server_reach_the_store(server_home, use_home):
    s, server, sdk, _ = readers(server_home, use_home)
    from core.events import FeedbackEvent
    from serving.feedback import FeedbackWriter

    before = sdk.user(2)
    item = next(i for i in range(1, 100) if i not in before.recent_items)
    out = FeedbackWriter(server).record([FeedbackEvent(user_id=2, item_id=item, event_type="click",
                                                       event_id="via-server")])
    assert out["pushed"] is True, out
    after = sdk.user(2)
    assert after.recent_items == [*before.recent_items, item][-s.sequence_length:]
    assert after.n_interactions == before.n_interactions + 1


def test_an_unreachable_server_is_one_readable_error(use_home, feature_home):
    use_home(feature_home)
    from core.settings import load_settings
    from serving.feature_server import FeatureServerError
    from serving.features import FeatureReader

    s = load_settings().model_copy(update={"feature_read": "server", "feature_server_url": "http://127.0.0.1:1"})
    with pytest.raises(FeatureServerError, match=r"no feature server at http://127\.0\.0\.1:1 "):
        FeatureReader(s).user(1)


def test_a_replica_reading_through_the_sdk_does_not_carry_torch(feature_home: Path) -> None:
    """Feast imports torch as it is imported, its file offline store dask and scipy as its config is validated, and
    six online stores' modules (faiss among them) at the first read; serving's reads use none of them
    (`defer_feast_torch`, `core.feature_store`): a fresh process reads users and items through the SDK without
    them loaded, Feast still gets torch if it ever asks, and the offline store is still the file one."""
    code = ("import sys\nfrom core.settings import load_settings\nfrom serving.features import FeatureReader\n"
            "r = FeatureReader(load_settings())\nu, items = r.user(3), r.items([1, 2])\n"
            "assert u.known and items.found.all(), (u, items.found)\n"
            "loaded = [m for m in ('torch', 'dask', 'scipy', 'faiss') if m in sys.modules]\n"
            "assert not loaded, loaded\n"
            "from feast.torch_wrapper import get_torch\nassert get_torch().tensor([1.0]).sum() == 1.0\n"
            "assert type(r.store.config.offline_store).__name__ == 'DaskOfflineStoreConfig'\nprint('ok')")
    env = cli_env(feature_home)
    res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0 and res.stdout.strip().endswith("ok"), res.stderr[-2000:]
