"""The graph's model routes in a cluster: the Ingress (and Recall) `user_config` inside a KubeRay RayService.

Locally `ops.rollout` reconfigures the running graph. In a cluster the graph is a RayService whose
`serveConfigV2` (a YAML document held as a string) carries that user_config; KubeRay applies a change that
touches only user_config in place, so live Ingress replicas (they run the ranking stage) get a `reconfigure`
call and nothing restarts. A retrain moves both models: Recall's user_config names the retrieval version whose
exported index it loads.
"""

from __future__ import annotations

from typing import Any

import yaml

from core.artifacts import Route
from core.errors import ConfigError

GROUP, VERSION, PLURAL = "ray.io", "v1", "rayservices"
DEPLOYMENT = "Ingress"  # the deployment that runs the ranking stage
RECALL = "Recall"


def _application(config: dict[str, Any], app: str) -> dict[str, Any]:
    for a in config.get("applications") or []:
        if a.get("name") == app:
            return a
    raise ConfigError(f"the RayService's serveConfigV2 has no application {app!r} (settings serve_app_name)")


def _serve_config(obj: dict[str, Any]) -> dict[str, Any]:
    text = obj.get("spec", {}).get("serveConfigV2")
    if not text:
        raise ConfigError("the RayService has no spec.serveConfigV2")
    return yaml.safe_load(text)


def graph_route(obj: dict[str, Any], app: str) -> Route | None:
    """The route the RayService gives its Ingress replicas (the ranking stage); None when it sets none (they
    read the exported repository's recsys.json at start)."""
    for d in _application(_serve_config(obj), app).get("deployments") or []:
        if d.get("name") == DEPLOYMENT and d.get("user_config"):
            return Route.from_dict(d["user_config"])
    return None


def route_patch(obj: dict[str, Any], app: str, route: Route, retrieval: str | None = None) -> dict[str, Any]:
    """A merge patch replacing serveConfigV2 with the same document, but the Ingress user_config = `route` (and
    Recall's = {"retrieval": version} when a new retrieval model goes live with it)."""
    config = _serve_config(obj)
    deployments = _application(config, app).setdefault("deployments", [])

    def deployment(name: str) -> dict[str, Any]:
        found = next((d for d in deployments if d.get("name") == name), None)
        if found is None:
            found = {"name": name}
            deployments.append(found)
        return found

    deployment(DEPLOYMENT)["user_config"] = route.as_dict()
    if retrieval is not None:
        deployment(RECALL)["user_config"] = {"retrieval": str(retrieval)}
    return {"spec": {"serveConfigV2": yaml.safe_dump(config, sort_keys=False)}}
