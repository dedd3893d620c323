"""The graph, wired once. The chart's RayService `import_path` points at `serving.app:app`.

Replica CPU reservations come from settings: 0 on a 2-core laptop (else 4 replicas cannot all be placed),
real reservations in the cluster profile. Scaling per deployment belongs in the serve config
(RayService `serveConfigV2`), which overrides these defaults by deployment name.

Five stages, three deployments on the hot path (Ingress → Recall, Copy): each Serve hop costs ~3–4 ms of CPU per
request here, so the user's features are read inside Recall (`serving.features`) and the ranking stage, a thin
client of Triton, runs in the Ingress (`serving.ranking`); the models keep their own processes.
"""

from __future__ import annotations

from ray.serve import Application

from recsys.settings import Settings, load_settings
from serving.copy import CopyStage
from serving.feedback import Feedback
from serving.ingress import Ingress
from serving.recall import Recall


def build(settings: Settings) -> Application:
    """Replicas' env and the Ingress's `user_config` (the ranker route) come from the deploy config that imports
    this (`serving.launcher.serve_config` locally, the RayService `serveConfigV2` in a cluster)."""
    opts: dict = {"num_cpus": settings.serve_replica_cpus}

    def o(deployment):
        return deployment.options(ray_actor_options=opts)

    return o(Ingress).bind(recall=o(Recall).bind(), copy=o(CopyStage).bind(), feedback=o(Feedback).bind())


app = build(load_settings())
