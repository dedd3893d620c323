"""`recsys retrain`: logged feedback → training set → warm-started challengers → promotion gate → live swap.

One cycle, each step the same code as its own CLI command:
  1. merge the feedback logged since the last cycle into the prepared data (`training.feedback_data`);
  2. rebuild the feature store from it, then re-push every logged profile (materialization rewrote the
     online rows from the data, which may predate events logged while this cycle ran);
  3. train both challengers warm-started from the champions' weights;
  4. run the promotion gate (mlflow/promotion_policy.yaml): the data moved on, so each champion is re-evaluated
     on the challenger's validation split and the two numbers are compared (`training.reevaluate`); a refused
     challenger stays challenger, with the reasons recorded on its MLflow version;
  5. if both passed: `ops.pipeline.go_live` with both: locally the retrieval half, then the ranker route
     through `ops.rollout` (Triton loads first); in a cluster (the chart's retrain CronJob) through
     `ops.kserve.rollout_ranker`: published repository, InferenceService Ready, then one RayService patch
     moving the ranker route and Recall's retrieval version together.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console

from core.errors import PromotionRefused
from core.settings import Settings
from ops.pipeline import go_live


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
    from core.events import has_event_log
    from serving.feedback import FeedbackWriter

    if not has_event_log(settings):
        return 0

    writer = FeedbackWriter(settings)
    n = writer.log.mark_all_dirty()
    writer.push()  # a failure here leaves them dirty: the serving graph's replay loop retries
    return n


def retrain(settings: Settings, console: Console, force: bool = False, retrieval_epochs: int | None = None,
            ranking_epochs: int | None = None, warm: bool = True) -> RetrainResult:
    from core.names import RANKER_MODEL, RETRIEVAL_MODEL
    from training.feedback_data import merge_events
    from training.promotion import promote
    from training.steps import build_feature_store, train_ranking_step, train_retrieval_step

    t0 = time.perf_counter()
    merged = merge_events(settings)
    console.print(f"feedback: {merged['events']} new events, {merged['added']} new interactions, "
                  f"{merged['new_users']} new users")
    build_feature_store(settings)
    console.print(f"features rebuilt; {replay_profiles(settings)} logged profiles re-pushed to the online store")
    r = train_retrieval_step(settings, warm_start=warm,
                             **({"epochs": retrieval_epochs} if retrieval_epochs else {}))
    k = train_ranking_step(settings, warm_start=warm, **({"epochs": ranking_epochs} if ranking_epochs else {}))
    result = RetrainResult(merged, {RETRIEVAL_MODEL: r["version"], RANKER_MODEL: k["version"]})
    console.print(f"challengers: retrieval v{r['version']} (val HR@10 {r['val_hr_at_10']:.4f}), "
                  f"ranker v{k['version']} (val HR@10 {k['val_hr_at_10']:.4f}), "
                  f"{'warm-started from the champions' if warm else 'trained from scratch'}")
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
        result.live = "; ".join(go_live(settings, result.trained).lines) or "serving: not running"
        console.print(result.live)
    result.seconds = round(time.perf_counter() - t0, 1)
    return result
