"""Cluster rollout of a ranker version: publish a Triton repository, repoint KServe, then switch the graph.

Locally a promoted ranker is swapped inside the running Triton (`ops.rollout`). In a cluster Triton runs as
a KServe InferenceService that loads whatever repository `storageUri` names, and the graph's ranking stage
(in the Ingress replicas) asks it for the versions its route names (the RayService's Ingress `user_config`).
The order keeps every request answered by a real model:
  1. publish `<publish_uri>/ranker-v<version>` holding the versions of the graph's current route AND of the new
     one (ONNX Runtime form by default) through MLflow's artifact stores (s3://, gs://, wasbs://, file://);
  2. merge-patch the InferenceService's `storageUri`; KServe starts the new predictor and moves traffic when it
     is Ready, and either predictor serves every version the graph may ask for meanwhile;
  3. wait until the InferenceService reports Ready for this generation;
  4. copy the same repository to `<publish_uri>/live`, the chart's `storageUri`: a `helm upgrade` that resets the
     InferenceService's spec to the chart's value then serves the promoted champion, not an older one;
  5. merge-patch the RayService's ranker route, the Ingress `user_config` (all users to the new version, or a
     sticky per-user canary share): KubeRay reconfigures live replicas in place.
The first offline pipeline in a cluster fills `live` too (`publish_live`), before any promotion has run.
The canary is the graph's (per-user, sticky, both KServe modes): KServe's own `canaryTrafficPercent` splits
requests between predictor revisions, and a request pinned to the new version must not reach the old revision,
so a rollout sets it to 100 where the InferenceService has one. The chart's promotion ServiceAccount may get and
patch this one InferenceService and this one RayService, nothing else.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from core.artifacts import Route, input_difference
from core.errors import ConfigError, RecsysError
from core.settings import Settings
from ops import rayservice

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
    patch: dict[str, Any]  # the InferenceService merge patch
    applied: bool
    versions: list[str] = field(default_factory=list)  # ranker versions in the published repository
    route_before: dict[str, Any] | None = None  # the graph's route before (None: unknown or not set)
    route_after: dict[str, Any] | None = None  # the route the graph was given (None: no RayService to switch)
    rayservice: str | None = None
    retrieval: str | None = None  # the retrieval version Recall was switched to with it (a retrain), if any

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def storage_uri_for(publish_uri: str, version: str) -> str:
    return f"{publish_uri.rstrip('/')}/ranker-v{version}"


def live_uri(publish_uri: str) -> str:
    """The repository the chart's InferenceService names (`ranker.storageUri` default): always the champion's."""
    return f"{publish_uri.rstrip('/')}/live"


def inference_service_patch(storage_uri: str, current: dict[str, Any] | None = None) -> dict[str, Any]:
    """The JSON merge patch: the predictor's model storageUri, and `canaryTrafficPercent: 100` where the live
    object holds another share (the graph does the canary; see the module docstring)."""
    predictor: dict[str, Any] = {"model": {"storageUri": storage_uri}}
    share = ((current or {}).get("spec", {}).get("predictor", {})).get("canaryTrafficPercent")
    if share is not None and share != 100:
        predictor["canaryTrafficPercent"] = 100
    return {"spec": {"predictor": predictor}}


def planned_route(before: Route | None, version: str, canary_percent: float | None) -> Route:
    """All users to `version`, or `canary_percent` % of them (by user hash) beside the current champion."""
    if canary_percent is None or canary_percent >= 100:
        return Route(str(version))
    if not canary_percent >= 0:
        raise ConfigError(f"canary percent must be within 0-100, got {canary_percent}")
    if before is None:
        raise ConfigError("a canary needs the graph's current champion: set kserve_rayservice (the chart does)")
    if canary_percent == 0 or before.champion == str(version):
        return Route(before.champion)
    return Route(before.champion, str(version), float(canary_percent))


def cluster_namespace(settings: Settings) -> str:
    """Settings first, then the pod's own namespace (in-cluster), then POD_NAMESPACE, else `default`."""
    if settings.kserve_namespace:
        return settings.kserve_namespace
    if NAMESPACE_FILE.exists():
        return NAMESPACE_FILE.read_text().strip()
    return os.environ.get("POD_NAMESPACE", "default")


def build_repository(settings: Settings, route: Route, keep: list[str], work: Path) -> tuple[Path, list[str]]:
    """A Triton repository under `work` serving the route's versions and, where their inputs match the champion's
    (one config.pbtxt serves them all), the `keep` versions too; recsys.json routes to the champion. A routed
    version that cannot be served beside the champion is a ConfigError before anything is uploaded. Returns the
    repository and the versions it holds."""
    from core.names import RANKER_MODEL
    from training.export import write_champion, write_config, write_version
    from training.registry import client, download_artifacts

    found: dict[str, tuple[Path, dict]] = {}
    for v in dict.fromkeys([*route.versions, *keep]):  # the champion first: the others must match its inputs
        mv = client(settings).get_model_version(RANKER_MODEL, v)
        art = download_artifacts(settings, mv.run_id, work / f"artifacts-{v}")
        cfg = json.loads((art / "config.json").read_text())
        if found and input_difference(cfg, found[route.champion][1]):
            if v in route.versions:
                raise ConfigError(f"ranker v{v} cannot be served beside v{route.champion}: their inputs differ")
            continue  # the graph's old route loses this version when it switches (a short degraded window)
        found[v] = (art, cfg)
    repo = work / "repository"
    for v, (art, cfg) in found.items():
        write_version(repo, "ranker", v, art / "ranker.onnx", cfg, settings.kserve_backend)
    published = sorted(found, key=int)
    champion = found[route.champion][1]
    write_config(repo, "ranker", champion, settings.kserve_backend, published)
    write_champion(repo, "ranker", route.champion, champion)
    return repo, published


def upload(repo: Path, uri: str) -> None:
    """The repository's files under `uri`, through MLflow's artifact stores (s3://, gs://, wasbs://, file://)."""
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

    get_artifact_repository(uri).log_artifacts(str(repo))


def publish_ranker(settings: Settings, route: Route, keep: list[str], uri: str) -> list[str]:
    """`build_repository`, uploaded to `uri`; the published versions."""
    with tempfile.TemporaryDirectory() as d:
        repo, published = build_repository(settings, route, keep, Path(d))
        upload(repo, uri)
    return published


def publish_live(settings: Settings) -> list[str] | None:
    """Publish the registered ranker champion to `live` (what the InferenceService loads on install); None when
    the settings name no publish URI (locally)."""
    from core.names import CHAMPION, RANKER_MODEL
    from training.registry import version_by_alias

    if not settings.kserve_publish_uri:
        return None
    champion = str(version_by_alias(settings, RANKER_MODEL, CHAMPION).version)
    return publish_ranker(settings, Route(champion), [], live_uri(settings.kserve_publish_uri))


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


def _why(e: Exception, kind: str, name: str, namespace: str) -> str:
    status = getattr(e, "status", None)
    if status == 404:
        return f"no {kind} {name!r} in namespace {namespace!r}"
    if status in (401, 403):
        return (f"the Kubernetes API refused ({status}): this identity may not get/patch {kind} "
                f"{name!r} in {namespace!r} (the chart's promotion ServiceAccount may)")
    reason = getattr(e, "reason", None) or str(e).splitlines()[0]
    return f"Kubernetes API error{f' {status}' if status else ''}: {reason}"


class _Cluster:
    """The two objects a rollout reads and patches; every API failure becomes one RolloutError line."""

    def __init__(self, custom: Any, namespace: str) -> None:
        self.custom, self.namespace = custom, namespace

    def _call(self, kind: str, name: str, fn, *args) -> dict[str, Any]:
        try:
            return fn(*args)
        except Exception as e:  # ApiException, urllib3 connection errors: one readable line for the CLI
            raise RolloutError(_why(e, kind, name, self.namespace)) from None

    def get(self, api: tuple[str, str, str], kind: str, name: str) -> dict[str, Any]:
        return self._call(kind, name, self.custom.get_namespaced_custom_object, *api[:2], self.namespace, api[2],
                          name)

    def patch(self, api: tuple[str, str, str], kind: str, name: str, body: dict[str, Any]) -> dict[str, Any]:
        return self._call(kind, name, self.custom.patch_namespaced_custom_object, *api[:2], self.namespace,
                          api[2], name, body)


ISVC, RAYSERVICE = (GROUP, VERSION, PLURAL), (rayservice.GROUP, rayservice.VERSION, rayservice.PLURAL)


def _ready(obj: dict[str, Any], generation: int | None) -> tuple[bool, str]:
    """(Ready for this spec generation?, why not): KServe's Ready condition, and its observedGeneration when
    reported (a Ready left over from the previous spec does not count)."""
    status = obj.get("status") or {}
    seen = status.get("observedGeneration")
    if generation is not None and seen is not None and int(seen) < generation:
        return False, f"KServe has not yet seen generation {generation} (observed {seen})"
    cond = next((c for c in status.get("conditions") or [] if c.get("type") == "Ready"), None)
    if cond is None:
        return False, "no Ready condition yet"
    if str(cond.get("status")) == "True":
        return True, ""
    return False, cond.get("message") or cond.get("reason") or "Ready is False"


def wait_ready(cluster: _Cluster, name: str, generation: int | None, timeout_s: float, poll_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        ok, why = _ready(cluster.get(ISVC, "InferenceService", name), generation)
        if ok:
            return
        if time.monotonic() >= deadline:
            raise RolloutError(f"InferenceService {cluster.namespace}/{name} not Ready {timeout_s:.0f} s after the "
                               f"patch ({why}); the graph keeps its route, whose versions the new repository also "
                               "serves")
        time.sleep(poll_s)


def rollout_ranker(settings: Settings, version: str, canary_percent: float | None = None, dry_run: bool = False,
                   api: Any | None = None, poll_s: float = 5.0, retrieval: str | None = None) -> KServeRollout:
    """Publish, repoint the InferenceService, wait for Ready, switch the graph's route (module docstring); a dry
    run contacts nothing and says what it would publish and patch. `retrieval`: a retrieval version exported to
    the shared state that Recall switches to in the same RayService patch (a retrain moves both models)."""
    if not settings.kserve_inference_service or not settings.kserve_publish_uri:
        raise ConfigError("cluster rollout needs kserve_inference_service and kserve_publish_uri in settings")
    name, namespace = settings.kserve_inference_service, cluster_namespace(settings)
    version = str(version)
    uri = storage_uri_for(settings.kserve_publish_uri, version)
    rs = settings.kserve_rayservice
    if dry_run:
        after = planned_route(Route("<graph's current champion>"), version, canary_percent) if rs else None
        return KServeRollout(name, namespace, version, uri, None, inference_service_patch(uri), False,
                             route_after=after.as_dict() if after else None, rayservice=rs)
    cluster = _Cluster(_api(api), namespace)  # credentials first: without them nothing is published
    graph = cluster.get(RAYSERVICE, "RayService", rs) if rs else None
    before = (rayservice.graph_route(graph, settings.serve_app_name) or _file_route(settings)) if graph else None
    after = planned_route(before, version, canary_percent)
    current = cluster.get(ISVC, "InferenceService", name)
    with tempfile.TemporaryDirectory() as d:  # built once, uploaded twice: the version's prefix, then live
        repo, published = build_repository(settings, after, before.versions if before else [], Path(d))
        upload(repo, uri)
        patch = inference_service_patch(uri, current)
        patched = cluster.patch(ISVC, "InferenceService", name, patch)
        wait_ready(cluster, name, patched.get("metadata", {}).get("generation"), settings.kserve_ready_timeout_s,
                   poll_s)
        upload(repo, live_uri(settings.kserve_publish_uri))
    previous = current.get("spec", {}).get("predictor", {}).get("model", {}).get("storageUri")
    out = KServeRollout(name, namespace, version, uri, previous, patch, True, published,
                        before.as_dict() if before else None, None, rs)
    if graph is not None and rs:
        _route_files(settings, after)
        cluster.patch(RAYSERVICE, "RayService", rs,
                      rayservice.route_patch(graph, settings.serve_app_name, after, retrieval))
        out.route_after, out.retrieval = after.as_dict(), retrieval
    return out


def _file_route(settings: Settings) -> Route | None:
    """Without a user_config the Ingress replicas route by the shared repository's recsys.json."""
    from core.artifacts import read_route

    try:
        return read_route(settings)
    except RecsysError:
        return None


def _route_files(settings: Settings, route: Route) -> None:
    """The graph's ranking stage reads each routed version's shapes and blend weight from the shared model
    repository (the chart's state volume): export the versions it lacks, and point its recsys.json at the route
    (what a replica starting later reads)."""
    from core.artifacts import write_route
    from training.export import export_missing

    export_missing(settings, "ranker", route.versions, settings.kserve_backend)
    write_route(settings, route)
