"""The graph, wired once. The chart's RayService `import_path` points at `serving.app:app`.

Replica CPU reservations come from settings: 0 on a 2-core laptop (else 5 replicas cannot all be placed),
real reservations in the cluster profile. Scaling per deployment belongs in the serve config
(RayService `serveConfigV2`), which overrides these defaults by deployment name.
"""

from __future__ import annotations

from ray.serve import Application

from recsys.settings import Settings, load_settings
from serving.copy import CopyStage
from serving.features import Features
from serving.ingress import Ingress
from serving.ranking import Ranking
from serving.recall import Recall


def build(settings: Settings, env: dict[str, str] | None = None, route: dict | None = None) -> Application:
    """`env` is passed to every replica; `route` is the Ranking deployment's user_config. Deployed by
    import path (`serving.launcher.deploy`, the RayService), both come from the deploy config instead."""
    opts: dict = {"num_cpus": settings.serve_replica_cpus}
    if env:
        opts["runtime_env"] = {"env_vars": env}

    def o(deployment):
        return deployment.options(ray_actor_options=opts)

    ranking = o(Ranking).options(user_config=route) if route else o(Ranking)
    return o(Ingress).bind(features=o(Features).bind(), recall=o(Recall).bind(), ranking=ranking.bind(),
                           copy=o(CopyStage).bind())


app = build(load_settings())
