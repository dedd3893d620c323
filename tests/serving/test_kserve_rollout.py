"""Cluster rollout of a ranker version: the published repository and the InferenceService patch.

The registry, the artifact store and the `kubernetes` client are the real ones. No Kubernetes API server can
run on these machines, so the client talks to a local HTTP endpoint that records each request and answers the
way the API server does (the object on GET, the patched object on PATCH, 403/404 Status bodies).
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import pytest

from recsys.errors import ConfigError
from recsys.settings import load_settings
from serving.kserve import RolloutError, inference_service_patch, rollout_ranker

CFG = {"genres": ["Action", "Drama"], "max_len": 5, "content_dim": 4, "d_model": 8}


@pytest.fixture
def registered(tmp_path: Path):
    """A home whose MLflow registry holds recsys-ranker v1 with the artifacts an export reads."""
    import mlflow

    s = load_settings(environ={"RECSYS_HOME": str(tmp_path / "home"), "RECSYS_PROFILE": "ci",
                               "RECSYS_KSERVE_INFERENCE_SERVICE": "recsys-ranker",
                               "RECSYS_KSERVE_NAMESPACE": "recsys",
                               "RECSYS_KSERVE_PUBLISH_URI": (tmp_path / "bucket" / "rankers").as_uri()})
    from training.registry import client
    from training.tracking import RANKER_MODEL, setup_mlflow

    setup_mlflow(s)
    art = tmp_path / "art"
    art.mkdir()
    (art / "config.json").write_text(json.dumps(CFG))
    (art / "ranker.onnx").write_bytes(b"onnx-bytes")
    with mlflow.start_run() as run:
        mlflow.log_artifacts(str(art), artifact_path="artifacts")
    c = client(s)
    c.create_registered_model(RANKER_MODEL)
    c.create_model_version(RANKER_MODEL, f"runs:/{run.info.run_id}/artifacts", run.info.run_id)
    return s


class _Api(BaseHTTPRequestHandler):
    requests: ClassVar[list[dict]] = []
    status = 200

    def _answer(self, body: dict) -> None:
        out = json.dumps(body).encode()
        self.send_response(self.status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    def do_GET(self):
        self.requests.append({"method": "GET", "path": self.path})
        if self.status != 200:
            return self._answer({"kind": "Status", "code": self.status, "reason": "Forbidden"})
        self._answer({"spec": {"predictor": {"model": {"storageUri": "s3://recsys/rankers/ranker-v0"}}}})

    def do_PATCH(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.requests.append({"method": "PATCH", "path": self.path, "type": self.headers["Content-Type"],
                              "body": body})
        self._answer(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def api():
    from kubernetes import client

    _Api.requests, _Api.status = [], 200
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Api)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    conf = client.Configuration(host=f"http://127.0.0.1:{server.server_address[1]}")
    yield client.CustomObjectsApi(client.ApiClient(conf))
    server.shutdown()


def test_rollout_publishes_exactly_that_version_and_patches_storage_uri(registered, api) -> None:
    r = rollout_ranker(registered, "1", canary_percent=10, api=api)
    repo = Path(r.storage_uri.removeprefix("file://"))
    assert r.storage_uri.endswith("/rankers/ranker-v1") and r.applied and r.previous_uri.endswith("ranker-v0")
    assert (repo / "ranker" / "1" / "model.onnx").read_bytes() == b"onnx-bytes"
    pbtxt = (repo / "ranker" / "config.pbtxt").read_text()
    assert 'platform: "onnxruntime_onnx"' in pbtxt and "versions: [ 1 ]" in pbtxt  # the cluster's Triton form
    get, patch = _Api.requests
    path = "/apis/serving.kserve.io/v1beta1/namespaces/recsys/inferenceservices/recsys-ranker"
    assert get == {"method": "GET", "path": path}
    assert patch["path"] == path and patch["type"] == "application/merge-patch+json"
    assert patch["body"] == {"spec": {"predictor": {"model": {"storageUri": r.storage_uri},
                                                     "canaryTrafficPercent": 10}}}


def test_dry_run_changes_nothing(registered, api) -> None:
    r = rollout_ranker(registered, "1", dry_run=True, api=api)
    assert not r.applied and r.previous_uri is None and _Api.requests == []
    assert not Path(r.storage_uri.removeprefix("file://")).exists()
    assert r.patch == inference_service_patch(r.storage_uri, None)


def test_a_refusal_is_one_readable_line(registered, api) -> None:
    _Api.status = 403
    with pytest.raises(RolloutError, match=r"refused \(403\).*may not get/patch InferenceService 'recsys-ranker'"):
        rollout_ranker(registered, "1", api=api)
    assert [r["method"] for r in _Api.requests] == ["GET"]  # nothing patched after a refused read


def test_bad_canary_and_missing_settings_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="0-100"):
        inference_service_patch("s3://b/r", 120)
    s = load_settings(environ={"RECSYS_HOME": str(tmp_path), "RECSYS_PROFILE": "ci"})
    with pytest.raises(ConfigError, match="kserve_inference_service and kserve_publish_uri"):
        rollout_ranker(s, "1", dry_run=True)


def _env(s, tmp_path: Path) -> dict[str, str]:
    from tests.conftest import cli_env

    return cli_env(s.home, RECSYS_KSERVE_INFERENCE_SERVICE="recsys-ranker", RECSYS_KSERVE_NAMESPACE="recsys",
                   RECSYS_KSERVE_PUBLISH_URI=s.kserve_publish_uri, KUBECONFIG=str(tmp_path / "no-kubeconfig"),
                   HOME=str(tmp_path))


def test_cli_dry_run_prints_the_patch_and_no_credentials_is_one_line(registered, tmp_path: Path) -> None:
    import subprocess

    from tests.conftest import RECSYS

    env = _env(registered, tmp_path)
    dry = subprocess.run([RECSYS, "rollout", "--version", "1", "--canary", "25", "--dry-run"], env=env,
                         capture_output=True, text=True, timeout=120)
    assert dry.returncode == 0, dry.stderr[-2000:]
    patch = json.loads(dry.stdout.strip().splitlines()[-1])
    assert patch["spec"]["predictor"]["canaryTrafficPercent"] == 25
    assert patch["spec"]["predictor"]["model"]["storageUri"].endswith("/rankers/ranker-v1")
    real = subprocess.run([RECSYS, "rollout", "--version", "1"], env=env, capture_output=True, text=True,
                          timeout=120)
    assert real.returncode != 0 and "Traceback" not in real.stderr
    last = real.stderr.strip().splitlines()[-1]
    assert last.startswith("error:") and "no Kubernetes credentials" in last
    assert not (Path(registered.kserve_publish_uri.removeprefix("file://")) / "ranker-v1").exists()
