"""The graph, wired once. The chart's RayService `import_path` points at `serving.app:app`.

Replica CPU reservations come from settings: 0 on a 2-core laptop (else 4 replicas cannot all be placed),
real reservations in the cluster profile. Scaling per deployment belongs in the serve config
(RayService `serveConfigV2`), which overrides these defaults by deployment name.

Five stages, named below in request order. Three are deployments on the hot path (Ingress → Recall, Copy); a
Serve hop costs more CPU per request than the features read or the ranking client's own work, so the user's
features are read inside Recall (`serving.features`) and the ranking stage, a thin client of Triton, runs in the
Ingress replica (`serving.ranking`, bound as a class the Ingress builds). The models keep their own processes.
"""

from __future__ import annotations

from ray.serve import Application

from core.settings import Settings, load_settings
from serving.copy import CopyStage
from serving.feedback import Feedback
from serving.ingress import Ingress
from serving.ranking import RankingStage
from serving.recall import Recall


def build(settings: Settings) -> Application:
    """Replicas' env and the Ingress's `user_config` (the ranker route) come from the deploy config that imports
    this (`ops.launcher.serve_config` locally, the RayService `serveConfigV2` in a cluster)."""
    opts: dict = {"num_cpus": settings.serve_replica_cpus}

    def o(deployment):
        return deployment.options(ray_actor_options=opts)

    # Serve queues what a replica will not take; let the Ingress take every request its admission may hold, so
    # the excess gets admission's fast 503 (serving.admission) instead of an unbounded wait in Serve's router.
    ingress = o(Ingress).options(max_ongoing_requests=max(64, settings.admission_limit + settings.admission_queue
                                                          + 16))  # + health checks and writes
    return ingress.bind(
        recall=o(Recall).bind(),  # 1-2. the user's features (Feast) → candidates (encoder + ANN + popularity)
        ranking=RankingStage,  # 3. item rows → Triton ranker → blend and rules, in the Ingress replica
        copy=o(CopyStage).bind(),  # 4. copy per item: fine-tuned LM, guard, cache, budget
        feedback=o(Feedback).bind(),  # 5. POST /feedback → event log → online store push
    )


app = build(load_settings())
