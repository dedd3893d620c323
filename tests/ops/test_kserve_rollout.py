"""Cluster rollout of a ranker version: the published repository, the InferenceService patch, the wait for
Ready and the graph's route switch, in that order.

The registry, the artifact store and the `kubernetes` client are the real ones. No Kubernetes API server can
run on these machines, so the client talks to a local HTTP endpoint that keeps the two objects, records each
request and answers the way the API server does (the object on GET, the merged object with a new generation on
PATCH, 403/404 Status bodies); KServe's controller is played by a status that turns Ready after N reads.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import pytest
import yaml

from core.artifacts import Route
from core.errors import ConfigError
from core.settings import load_settings
from ops.kserve import (
    RolloutError,
    _ready,
    inference_service_patch,
    live_uri,
    planned_route,
    publish_live,
    rollout_ranker,
)

CFG = {"genres": ["Action", "Drama"], "max_len": 5, "content_dim": 4, "d_model": 8}
ISVC = "/apis/serving.kserve.io/v1beta1/namespaces/recsys/inferenceservices/recsys-ranker"
RAYSERVICE = "/apis/ray.io/v1/namespaces/recsys/rayservices/recsys-serve"
SERVE_CONFIG = {"applications": [{"name": "recsys", "import_path": "serving.app:app", "deployments": [
    {"name": "Recall", "num_replicas": 1},
    {"name": "Ingress", "num_replicas": 2, "user_config": {"champion": "1", "challenger": None, "percent": 0.0}}]}]}


@pytest.fixture
def registered(tmp_path: Path):
    """A home whose MLflow registry holds recsys-ranker v1, v2 (same inputs) and v3 (other genres)."""
    import mlflow

    s = load_settings(environ={"RECSYS_HOME": str(tmp_path / "home"), "RECSYS_PROFILE": "ci",
                               "RECSYS_KSERVE_INFERENCE_SERVICE": "recsys-ranker",
                               "RECSYS_KSERVE_NAMESPACE": "recsys", "RECSYS_KSERVE_RAYSERVICE": "recsys-serve",
                               "RECSYS_KSERVE_READY_TIMEOUT_S": "5",
                               "RECSYS_KSERVE_PUBLISH_URI": (tmp_path / "bucket" / "rankers").as_uri()})
    from core.names import RANKER_MODEL
    from training.registry import client
    from training.tracking import setup_mlflow

    setup_mlflow(s)
    c = client(s)
    c.create_registered_model(RANKER_MODEL)
    for v, cfg in (("1", CFG), ("2", CFG), ("3", {**CFG, "genres": ["Action"]})):
        art = tmp_path / f"art{v}"
        art.mkdir()
        (art / "config.json").write_text(json.dumps(cfg))
        (art / "ranker.onnx").write_bytes(f"onnx-v{v}".encode())
        with mlflow.start_run() as run:
            mlflow.log_artifacts(str(art), artifact_path="artifacts")
        c.create_model_version(RANKER_MODEL, f"runs:/{run.info.run_id}/artifacts", run.info.run_id)
    return s


def _merge(target: dict, patch: dict) -> dict:
    for k, v in patch.items():
        target[k] = _merge(dict(target.get(k) or {}), v) if isinstance(v, dict) else v
    return target


class _Api(BaseHTTPRequestHandler):
    requests: ClassVar[list[dict]] = []
    objects: ClassVar[dict[str, dict]] = {}
    status = 200
    ready_after = 1  # GETs of the InferenceService after a patch until KServe reports Ready for it
    not_ready_message = "RevisionFailed: container failed to pull"
    reads_since_patch = 0

    @classmethod
    def reset(cls) -> None:
        cls.requests, cls.status, cls.ready_after, cls.reads_since_patch = [], 200, 1, 0
        cls.objects = {
            ISVC: {"metadata": {"generation": 4},
                   "spec": {"predictor": {"model": {"storageUri": "s3://recsys/rankers/ranker-v1"}}},
                   "status": {"observedGeneration": 4, "conditions": [{"type": "Ready", "status": "True"}]}},
            RAYSERVICE: {"metadata": {"generation": 7}, "spec": {"serveConfigV2": yaml.safe_dump(SERVE_CONFIG)}},
        }

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
        obj = self.objects[self.path]
        if self.path == ISVC:
            type(self).reads_since_patch += 1
            if self.reads_since_patch >= self.ready_after:  # the controller caught up with the spec
                obj["status"] = {"observedGeneration": obj["metadata"]["generation"],
                                 "conditions": [{"type": "Ready", "status": "True"}]}
        self._answer(obj)

    def do_PATCH(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.requests.append({"method": "PATCH", "path": self.path, "type": self.headers["Content-Type"],
                              "body": body})
        obj = _merge(self.objects[self.path], body)
        obj["metadata"]["generation"] += 1
        if self.path == ISVC:
            type(self).reads_since_patch = 0
            obj["status"] = {"observedGeneration": obj["metadata"]["generation"],
                             "conditions": [{"type": "Ready", "status": "False", "message": self.not_ready_message}]}
        self._answer(obj)

    def log_message(self, *args):
        pass


@pytest.fixture
def api():
    from kubernetes import client

    _Api.reset()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Api)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    conf = client.Configuration(host=f"http://127.0.0.1:{server.server_address[1]}")
    yield client.CustomObjectsApi(client.ApiClient(conf))
    server.shutdown()


def _graph_route() -> dict:
    config = yaml.safe_load(_Api.objects[RAYSERVICE]["spec"]["serveConfigV2"])
    (ranking,) = [d for d in config["applications"][0]["deployments"] if d["name"] == "Ingress"]
    return ranking


def test_rollout_serves_both_versions_then_switches_the_graph_after_ready(registered, api) -> None:
    _Api.ready_after = 3
    r = rollout_ranker(registered, "2", api=api, poll_s=0.01)
    repo = Path(r.storage_uri.removeprefix("file://"))
    assert r.storage_uri.endswith("/rankers/ranker-v2") and r.applied and r.previous_uri.endswith("ranker-v1")
    # The new repository serves the graph's current version and the new one, in the cluster's Triton form.
    assert r.versions == ["1", "2"]
    assert (repo / "ranker" / "1" / "model.onnx").read_bytes() == b"onnx-v1"
    assert (repo / "ranker" / "2" / "model.onnx").read_bytes() == b"onnx-v2"
    pbtxt = (repo / "ranker" / "config.pbtxt").read_text()
    assert 'platform: "onnxruntime_onnx"' in pbtxt and "versions: [ 1, 2 ]" in pbtxt
    assert json.loads((repo / "ranker" / "recsys.json").read_text())["version"] == "2"
    # After Ready, the chart's storageUri (live) holds the same repository: a `helm upgrade` keeps serving v2.
    live = Path(live_uri(registered.kserve_publish_uri).removeprefix("file://"))
    assert (live / "ranker" / "config.pbtxt").read_text() == pbtxt
    assert json.loads((live / "ranker" / "recsys.json").read_text())["version"] == "2"
    # Order: read the graph and the InferenceService, patch it, poll until Ready, only then patch the graph.
    calls = [(x["method"], x["path"]) for x in _Api.requests]
    assert calls == [("GET", RAYSERVICE), ("GET", ISVC), ("PATCH", ISVC), ("GET", ISVC), ("GET", ISVC),
                     ("GET", ISVC), ("PATCH", RAYSERVICE)]
    isvc_patch = _Api.requests[2]
    assert isvc_patch["type"] == "application/merge-patch+json"
    assert isvc_patch["body"] == {"spec": {"predictor": {"model": {"storageUri": r.storage_uri}}}}
    # The graph now routes every user to v2; the rest of its Serve config is untouched.
    assert _graph_route() == {"name": "Ingress", "num_replicas": 2,
                              "user_config": {"champion": "2", "challenger": None, "percent": 0.0}}
    config = yaml.safe_load(_Api.objects[RAYSERVICE]["spec"]["serveConfigV2"])
    assert config["applications"][0]["deployments"][0] == {"name": "Recall", "num_replicas": 1}
    assert r.route_before["champion"] == "1" and r.route_after["champion"] == "2"
    # Replicas read each routed version's inputs from the shared repository; a later start routes to v2.
    assert json.loads((registered.model_repo / "ranker" / "2" / "recsys.json").read_text())["config"] == CFG
    assert json.loads((registered.model_repo / "ranker" / "recsys.json").read_text())["version"] == "2"


def test_canary_is_the_graphs_per_user_share_beside_the_current_champion(registered, api) -> None:
    _Api.objects[ISVC]["spec"]["predictor"]["canaryTrafficPercent"] = 20  # Serverless, left from a chart value
    r = rollout_ranker(registered, "2", canary_percent=10, api=api, poll_s=0.01)
    assert r.versions == ["1", "2"]
    assert _graph_route()["user_config"] == {"champion": "1", "challenger": "2", "percent": 10.0}
    # KServe's own revision split would send requests pinned to v2 to the old predictor: it goes to 100.
    assert r.patch["spec"]["predictor"]["canaryTrafficPercent"] == 100


def test_a_retrain_moves_recall_to_its_retrieval_version_in_the_same_graph_patch(registered, api) -> None:
    """`recsys retrain` in a cluster (ops.pipeline.go_live) passes the retrieval version it exported: one
    RayService patch after Ready sets the Ingress route and Recall's user_config, nothing else changes."""
    r = rollout_ranker(registered, "2", api=api, poll_s=0.01, retrieval="7")
    assert r.retrieval == "7" and [x["method"] for x in _Api.requests].count("PATCH") == 2
    config = yaml.safe_load(_Api.objects[RAYSERVICE]["spec"]["serveConfigV2"])
    recall, ranking = config["applications"][0]["deployments"]
    assert recall == {"name": "Recall", "num_replicas": 1, "user_config": {"retrieval": "7"}}
    assert ranking["user_config"]["champion"] == "2" and ranking["num_replicas"] == 2


def test_a_predictor_that_never_gets_ready_leaves_the_graph_on_its_route(registered, api) -> None:
    _Api.ready_after = 10_000
    s = registered.model_copy(update={"kserve_ready_timeout_s": 0.3})
    with pytest.raises(RolloutError, match=r"not Ready 0 s after the patch \(RevisionFailed: container failed"):
        rollout_ranker(s, "2", api=api, poll_s=0.05)
    assert ("PATCH", RAYSERVICE) not in [(x["method"], x["path"]) for x in _Api.requests]
    assert _graph_route()["user_config"]["champion"] == "1"


def test_a_ready_left_over_from_the_previous_spec_does_not_count() -> None:
    ready = {"type": "Ready", "status": "True"}
    assert _ready({"status": {"observedGeneration": 4, "conditions": [ready]}}, 5) == (
        False, "KServe has not yet seen generation 5 (observed 4)")
    assert _ready({"status": {"observedGeneration": 5, "conditions": [ready]}}, 5) == (True, "")
    assert _ready({"status": {}}, 5) == (False, "no Ready condition yet")


def test_a_canary_with_other_inputs_is_refused_before_anything_is_published(registered, api) -> None:
    with pytest.raises(ConfigError, match="ranker v3 cannot be served beside v1: their inputs differ"):
        rollout_ranker(registered, "3", canary_percent=50, api=api, poll_s=0.01)
    assert [x["method"] for x in _Api.requests] == ["GET", "GET"]
    assert not Path(registered.kserve_publish_uri.removeprefix("file://")).exists()


def test_a_full_switch_to_other_inputs_publishes_the_new_version_alone(registered, api) -> None:
    r = rollout_ranker(registered, "3", api=api, poll_s=0.01)
    assert r.versions == ["3"] and _graph_route()["user_config"]["champion"] == "3"


def test_dry_run_changes_nothing(registered, api) -> None:
    r = rollout_ranker(registered, "2", canary_percent=25, dry_run=True, api=api)
    assert not r.applied and r.previous_uri is None and _Api.requests == []
    assert not Path(r.storage_uri.removeprefix("file://")).exists()
    assert r.patch == inference_service_patch(r.storage_uri)
    assert r.route_after == {"champion": "<graph's current champion>", "challenger": "2", "percent": 25.0}


def test_a_refusal_is_one_readable_line(registered, api) -> None:
    _Api.status = 403
    with pytest.raises(RolloutError, match=r"refused \(403\).*may not get/patch RayService 'recsys-serve'"):
        rollout_ranker(registered, "2", api=api)
    assert [r["method"] for r in _Api.requests] == ["GET"]  # nothing published or patched after a refused read
    assert not Path(registered.kserve_publish_uri.removeprefix("file://")).exists()


def test_planned_routes_and_missing_settings(tmp_path: Path) -> None:
    assert planned_route(Route("1"), "2", None) == Route("2")
    assert planned_route(Route("1", "4", 5.0), "2", 100) == Route("2")
    assert planned_route(Route("1"), "2", 30) == Route("1", "2", 30.0)
    assert planned_route(Route("1", "2", 30.0), "2", 0) == Route("1")  # 0 ends the canary
    with pytest.raises(ConfigError, match="needs the graph's current champion"):
        planned_route(None, "2", 30)
    s = load_settings(environ={"RECSYS_HOME": str(tmp_path), "RECSYS_PROFILE": "ci"})
    with pytest.raises(ConfigError, match="kserve_inference_service and kserve_publish_uri"):
        rollout_ranker(s, "1", dry_run=True)


def _env(s, tmp_path: Path) -> dict[str, str]:
    from tests.conftest import cli_env

    return cli_env(s.home, RECSYS_KSERVE_INFERENCE_SERVICE="recsys-ranker", RECSYS_KSERVE_NAMESPACE="recsys",
                   RECSYS_KSERVE_RAYSERVICE="recsys-serve", RECSYS_KSERVE_PUBLISH_URI=s.kserve_publish_uri,
                   KUBECONFIG=str(tmp_path / "no-kubeconfig"), HOME=str(tmp_path))


def test_cli_dry_run_prints_the_patch_and_no_credentials_is_one_line(registered, tmp_path: Path) -> None:
    import subprocess

    from tests.conftest import RECSYS

    env = _env(registered, tmp_path)
    dry = subprocess.run([RECSYS, "rollout", "--version", "2", "--canary", "25", "--dry-run"], env=env,
                         capture_output=True, text=True, timeout=120)
    assert dry.returncode == 0, dry.stderr[-2000:]
    assert '"challenger": "2", "percent": 25.0' in dry.stdout and "RayService recsys/recsys-serve" in dry.stdout
    patch = json.loads(dry.stdout.strip().splitlines()[-1])
    assert patch["spec"]["predictor"]["model"]["storageUri"].endswith("/rankers/ranker-v2")
    real = subprocess.run([RECSYS, "rollout", "--version", "2"], env=env, capture_output=True, text=True,
                          timeout=120)
    assert real.returncode != 0 and "Traceback" not in real.stderr
    last = real.stderr.strip().splitlines()[-1]
    assert last.startswith("error:") and "no Kubernetes credentials" in last
    assert not (Path(registered.kserve_publish_uri.removeprefix("file://")) / "ranker-v2").exists()


def test_the_first_pipeline_publishes_the_champion_where_the_inferenceservice_looks(registered) -> None:
    from training.registry import client

    client(registered).set_registered_model_alias("recsys-ranker", "champion", "1")
    assert publish_live(registered) == ["1"]
    live = Path(live_uri(registered.kserve_publish_uri).removeprefix("file://"))
    assert (live / "ranker" / "1" / "model.onnx").read_bytes() == b"onnx-v1"
    assert publish_live(registered.model_copy(update={"kserve_publish_uri": None})) is None
