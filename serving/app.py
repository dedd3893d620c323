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
from serving.feedback import Feedback
from serving.ingress import Ingress
from serving.ranking import Ranking
from serving.recall import Recall


def build(settings: Settings) -> Application:
    """Replicas' env and Ranking's `user_config` (the route) come from the deploy config that imports this
    (`serving.launcher.serve_config` locally, the RayService `serveConfigV2` in a cluster)."""
    opts: dict = {"num_cpus": settings.serve_replica_cpus}

    def o(deployment):
        return deployment.options(ray_actor_options=opts)

    return o(Ingress).bind(features=o(Features).bind(), recall=o(Recall).bind(), ranking=o(Ranking).bind(),
                           copy=o(CopyStage).bind(), feedback=o(Feedback).bind())


app = build(load_settings())
