"""`recsys retrain`: logged feedback → training set → warm-started challengers → promotion gate → live swap.

One cycle, each step the same code as its own CLI command:
  1. merge the feedback logged since the last cycle into the prepared data (`training.feedback_data`);
  2. rebuild the feature store from it, then re-push every logged profile (materialization rewrote the
     online rows from the data, which may predate events logged while this cycle ran);
  3. train both challengers warm-started from the champions' weights;
  4. run the promotion gate (mlflow/promotion_policy.yaml): a refused challenger stays challenger, with the
     reasons recorded on its MLflow version;
  5. if both passed and serving is up: export the retrieval half, then move the ranker route through
     `serving.rollout` (Triton loads first), which also reconfigures Recall onto the new index. In a cluster
     (settings name a KServe InferenceService: the chart's retrain CronJob) the same through
     `serving.kserve.rollout_ranker`: published repository, InferenceService Ready, then one RayService patch
     moving the ranker route and Recall's retrieval version together.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console

from recsys.errors import PromotionRefused
from recsys.settings import Settings


@dataclass
class RetrainResult:
    merged: dict[str, Any]
    trained: dict[str, str]  # model → new challenger version
    decisions: list[str] = field(default_factory=list)  # one line per model
    promoted: bool = False  # both challengers passed (or were forced) and are champions now
    live: str = "not serving"  # what happened to the running graph
    seconds: float = 0.0


def replay_profiles(settings: Settings) -> int:
    """Mark every logged profile unpushed and push them now; returns how many there were."""
    from serving.events import has_event_log
    from serving.feedback import FeedbackWriter

    if not has_event_log(settings):
        return 0

    writer = FeedbackWriter(settings)
    n = writer.log.mark_all_dirty()
    writer.push()  # a failure here leaves them dirty: the serving graph's replay loop retries
    return n


def retrain(settings: Settings, console: Console, force: bool = False, retrieval_epochs: int | None = None,
            ranking_epochs: int | None = None) -> RetrainResult:
    from training.feedback_data import merge_events
    from training.promotion import promote
    from training.steps import build_feature_store, train_ranking_step, train_retrieval_step
    from training.tracking import RANKER_MODEL, RETRIEVAL_MODEL

    t0 = time.perf_counter()
    merged = merge_events(settings)
    console.print(f"feedback: {merged['events']} new events, {merged['added']} new interactions, "
                  f"{merged['new_users']} new users")
    build_feature_store(settings)
    console.print(f"features rebuilt; {replay_profiles(settings)} logged profiles re-pushed to the online store")
    r = train_retrieval_step(settings, warm_start=True,
                             **({"epochs": retrieval_epochs} if retrieval_epochs else {}))
    k = train_ranking_step(settings, warm_start=True, **({"epochs": ranking_epochs} if ranking_epochs else {}))
    result = RetrainResult(merged, {RETRIEVAL_MODEL: r["version"], RANKER_MODEL: k["version"]})
    console.print(f"challengers: retrieval v{r['version']} (val HR@10 {r['val_hr_at_10']:.4f}), "
                  f"ranker v{k['version']} (val HR@10 {k['val_hr_at_10']:.4f}), warm-started from the champions")
    passed = True
    for name in (RETRIEVAL_MODEL, RANKER_MODEL):
        try:
            d = promote(settings, name, force=force)
            result.decisions.append(d.line())
            passed = passed and d.promoted
        except PromotionRefused as e:
            result.decisions.append(str(e))
            passed = False
            break  # the ranker is only valid beside its own retrieval model: do not promote it alone
    for line in result.decisions:
        console.print(line)
    result.promoted = passed
    if passed:
        result.live = swap_live(settings, k["version"])
        console.print(f"serving: {result.live}")
    result.seconds = round(time.perf_counter() - t0, 1)
    return result


def swap_live(settings: Settings, ranker_version: str) -> str:
    """New retrieval files first (CURRENT last), then the ranker route: Triton, graph (Recall, Ingress)."""
    from serving import launcher, triton_server
    from serving.artifacts import read_route
    from serving.rollout import promote_live
    from training.export import export_repository, export_retrieval

    if settings.kserve_inference_service:
        from serving.kserve import rollout_ranker

        _, retrieval = export_retrieval(settings)  # onto the state volume the graph's Recall replicas read
        r = rollout_ranker(settings, ranker_version, retrieval=str(retrieval))
        graph = f"RayService {r.rayservice}: ranker {r.route_after}, Recall v{r.retrieval}" if r.route_after \
            else "no kserve_rayservice: the graph was not switched"
        return f"cluster: InferenceService {r.name} serves {r.storage_uri} (Ready); {graph}"

    try:
        read_route(settings)
    except Exception:  # never exported: a full export is all there is to do
        export_repository(settings)
        return "exported (no previous export)"
    if not (triton_server.ready(settings) or launcher.healthy(settings)):
        export_repository(settings)
        return "exported; the next `recsys serve` starts with the new champions"
    _, retrieval = export_retrieval(settings)
    res = promote_live(settings, ranker_version)
    return (f"retrieval v{retrieval} and ranker v{res.after.champion} live (was ranker v{res.before.champion}; "
            f"triton {'switched' if res.triton else 'not running'}, graph "
            f"{'reconfigured' if res.graph else 'not running'})")
