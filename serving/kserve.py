"""Cluster rollout of a ranker version: publish its Triton repository, then repoint the KServe InferenceService.

Locally a promoted ranker is swapped inside the running Triton (`serving.rollout`). In a cluster Triton runs as
a KServe InferenceService that loads whatever repository `storageUri` names, so a rollout is: write a Triton
repository holding exactly that version (`<publish_uri>/ranker-v<version>`, in the cluster's ONNX Runtime form by
default) through MLflow's artifact stores (s3://, gs://, wasbs://, file://), then a merge patch of `storageUri`
(and `canaryTrafficPercent`, Serverless mode) through the Kubernetes API. KServe starts the new predictor, moves
traffic when it is ready (or the canary share of it) and keeps the old one until then. The patch is the only
write to the cluster; the chart's promotion ServiceAccount may get and patch this one InferenceService and
nothing else.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from recsys.errors import ConfigError, RecsysError
from recsys.settings import Settings

GROUP, VERSION, PLURAL = "serving.kserve.io", "v1beta1", "inferenceservices"
NAMESPACE_FILE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


class RolloutError(RecsysError):
    """The cluster refused or could not be reached; the message says which and why."""


@dataclass
class KServeRollout:
    name: str
    namespace: str
    version: str
    storage_uri: str
    previous_uri: str | None  # None in a dry run (the cluster was not asked)
    patch: dict[str, Any]
    applied: bool

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def storage_uri_for(publish_uri: str, version: str) -> str:
    return f"{publish_uri.rstrip('/')}/ranker-v{version}"


def inference_service_patch(storage_uri: str, canary_percent: int | None) -> dict[str, Any]:
    """The JSON merge patch: the predictor's model storageUri, and the canary share when one is asked for."""
    predictor: dict[str, Any] = {"model": {"storageUri": storage_uri}}
    if canary_percent is not None:
        if not 0 <= canary_percent <= 100:
            raise ConfigError(f"canary percent must be within 0-100, got {canary_percent}")
        predictor["canaryTrafficPercent"] = canary_percent
    return {"spec": {"predictor": predictor}}


def cluster_namespace(settings: Settings) -> str:
    """Settings first, then the pod's own namespace (in-cluster), then POD_NAMESPACE, else `default`."""
    if settings.kserve_namespace:
        return settings.kserve_namespace
    if NAMESPACE_FILE.exists():
        return NAMESPACE_FILE.read_text().strip()
    return os.environ.get("POD_NAMESPACE", "default")


def publish_ranker(settings: Settings, version: str, uri: str) -> str:
    """Upload a Triton repository with exactly this ranker version (ranker/config.pbtxt, ranker/<version>/)."""
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

    from training.export import write_model
    from training.registry import client, download_artifacts
    from training.tracking import RANKER_MODEL

    mv = client(settings).get_model_version(RANKER_MODEL, version)
    with tempfile.TemporaryDirectory() as d:
        art = download_artifacts(settings, mv.run_id, Path(d) / "artifacts")
        cfg = json.loads((art / "config.json").read_text())
        repo = Path(d) / "repository"
        write_model(repo, "ranker", str(version), art / "ranker.onnx", cfg, settings.kserve_backend)
        get_artifact_repository(uri).log_artifacts(str(repo))
    return uri


def _api(api: Any | None) -> Any:
    if api is not None:
        return api
    from kubernetes import client, config
    from kubernetes.config.config_exception import ConfigException

    try:
        config.load_incluster_config()
    except ConfigException:
        try:
            config.load_kube_config()
        except (ConfigException, FileNotFoundError) as e:
            raise RolloutError(f"no Kubernetes credentials (not in a pod, no kubeconfig): {e}") from None
    return client.CustomObjectsApi()


def _why(e: Exception, name: str, namespace: str) -> str:
    status = getattr(e, "status", None)
    if status == 404:
        return f"no InferenceService {name!r} in namespace {namespace!r}"
    if status in (401, 403):
        return (f"the Kubernetes API refused ({status}): this identity may not get/patch InferenceService "
                f"{name!r} in {namespace!r} (the chart's promotion ServiceAccount may)")
    reason = getattr(e, "reason", None) or str(e).splitlines()[0]
    return f"Kubernetes API error{f' {status}' if status else ''}: {reason}"


def rollout_ranker(settings: Settings, version: str, canary_percent: int | None = None, dry_run: bool = False,
                   api: Any | None = None) -> KServeRollout:
    """Publish ranker `version` and patch the InferenceService to serve it; a dry run does neither, and says
    what it would do."""
    if not settings.kserve_inference_service or not settings.kserve_publish_uri:
        raise ConfigError("cluster rollout needs kserve_inference_service and kserve_publish_uri in settings")
    name, namespace = settings.kserve_inference_service, cluster_namespace(settings)
    uri = storage_uri_for(settings.kserve_publish_uri, version)
    patch = inference_service_patch(uri, canary_percent)
    if dry_run:
        return KServeRollout(name, namespace, version, uri, None, patch, applied=False)
    custom = _api(api)  # credentials first: without them nothing is published
    publish_ranker(settings, version, uri)
    try:
        current = custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
        previous = current.get("spec", {}).get("predictor", {}).get("model", {}).get("storageUri")
        custom.patch_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name, patch)
    except RolloutError:
        raise
    except Exception as e:  # ApiException, urllib3 connection errors: one readable line for the CLI
        raise RolloutError(_why(e, name, namespace)) from None
    return KServeRollout(name, namespace, version, uri, previous, patch, applied=True)
