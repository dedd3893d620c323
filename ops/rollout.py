"""Change which ranker versions answer, live and without dropping a request: swap, canary, rollback.

The order is what makes it safe under load:
  1. Triton loads the union of the old and the new versions (explicit model control, from a config.pbtxt
     written for the union), so every version a replica may still be calling stays served;
  2. the route file and the graph switch: Ingress replicas (the ranking stage) get the route as Serve
     `user_config` and are reconfigured in place (no restart, no cold caches);
  3. config.pbtxt names only the new versions and Triton reloads from it, unloading the rest after their
     in-flight requests finish.
A server or graph that is not running is simply not touched: the files are right for its next start.
"""

from __future__ import annotations

from dataclasses import dataclass

from core.artifacts import Route, input_difference, model_info, read_route, write_route
from core.errors import ConfigError
from core.settings import Settings
from ops import launcher, triton_server

MODEL = "ranker"


@dataclass
class RolloutResult:
    before: Route
    after: Route
    triton: bool  # a running Triton was switched
    graph: bool  # a running graph was reconfigured


def set_route(settings: Settings, route: Route) -> RolloutResult:
    from training.export import export_missing, repository_backend, write_config

    if not 0.0 <= route.percent <= 100.0:
        raise ConfigError(f"challenger percent must be within 0-100, got {route.percent}")
    before = read_route(settings)
    backend = repository_backend(settings, MODEL)
    export_missing(settings, MODEL, route.versions, backend)
    configs = {v: model_info(settings, MODEL, v).config for v in route.versions}
    champion = configs[route.champion]
    for v, cfg in configs.items():
        diff = input_difference(cfg, champion)
        if diff:
            raise ConfigError(f"ranker v{v} cannot be served beside v{route.champion}: inputs differ in {diff}")

    live = triton_server.ready(settings)
    if live:
        # The union in this release's config (written, then loaded from the file), not the running server's
        # config with a new version list: a server started on an older export may hold another tensor layout.
        union = sorted(set(before.versions) | set(route.versions), key=int)
        write_config(settings.model_repo, MODEL, champion, backend, union)
        triton_server.load_model(settings, MODEL)
    write_route(settings, route)
    graph = launcher.reconfigure(settings)
    write_config(settings.model_repo, MODEL, champion, backend, route.versions)
    if live:
        triton_server.load_model(settings, MODEL)
    return RolloutResult(before, route, live, graph)


def promote_live(settings: Settings, version: str) -> RolloutResult:
    """The new champion takes all traffic; a canary on the same version ends."""
    return set_route(settings, Route(str(version)))


def canary(settings: Settings, challenger: str | None, percent: float) -> RolloutResult:
    """Send `percent` % of users (by user hash) to `challenger` beside the current champion; 0 or None ends it."""
    champion = read_route(settings).champion
    if not challenger or percent <= 0:
        return set_route(settings, Route(champion))
    return set_route(settings, Route(champion, str(challenger), float(percent)))
