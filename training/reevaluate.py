"""The champion scored on the challenger's validation split: what the gate compares once the data has moved on.

A scheduled retrain merges new events, so each user's validation target (the second-to-last interaction) is a
newer one than the champion's run saw: the two runs' logged metrics answer different questions, and comparing
them either refuses every retrain or lets a worse model through. Here the champion is evaluated with the same
code and seed the challenger's run used, on the data the challenger was trained on (the prepared data now):
same users, same targets, same candidate universe. A ranker is scored with the retrieval model it was trained
on (its `retrieval_version`), i.e. the champion system as it served.
"""

from __future__ import annotations

from dataclasses import dataclass

from core.names import RANKER_MODEL, RETRIEVAL_MODEL
from core.settings import Settings

SUPPORTED_METRICS = {"val_ndcg@10", "val_ndcg_at_10", "val_hr@10", "val_hr_at_10"}


@dataclass(frozen=True)
class Reevaluation:
    value: float  # the champion's policy metric on the current validation split
    digest: str  # the split's data digest (the challenger's)


def champion_on_current_data(settings: Settings, model: str, version: str, metric: str,
                             ranker_retrieval: str | None = None) -> Reevaluation | str:
    """The champion `version`'s `metric` on the current data's validation split, or why it cannot be computed.
    Both models are scored with the weights their validation judged, not their refits: a refit learned the
    validation targets of its own data, which for users without new events are still the current ones."""
    from training.datasets import prepare
    from training.registry import load_torch
    from training.steps import selected_weights

    if model not in (RETRIEVAL_MODEL, RANKER_MODEL) or metric not in SUPPORTED_METRICS:
        return f"no re-evaluation of {model} on {metric}"
    prepared = prepare(settings)
    hr = "hr" in metric
    if model == RETRIEVAL_MODEL:
        from training.jobs.retrieval import evaluate

        recall = load_torch(settings, RETRIEVAL_MODEL, version).model
        if (why := _vocabulary(recall.cfg.n_items, prepared.n_items, version)) is not None:
            return why
        rep = evaluate(selected_weights(settings, RETRIEVAL_MODEL, recall, version), prepared, "valid", settings.seed)
        return Reevaluation(rep.hr if hr else rep.ndcg, prepared.digest)
    from training.jobs.ranking import evaluate_pipeline, stage_data
    from training.ranking_data import item_table

    if not ranker_retrieval:
        return f"ranker v{version} has no retrieval_version tag: its pipeline cannot be rebuilt"
    ranker = load_torch(settings, RANKER_MODEL, version).model
    recall = load_torch(settings, RETRIEVAL_MODEL, ranker_retrieval).model
    if (why := _vocabulary(recall.cfg.n_items, prepared.n_items, ranker_retrieval)) is not None:
        return why
    recall = selected_weights(settings, RETRIEVAL_MODEL, recall, ranker_retrieval)
    ranker = selected_weights(settings, RANKER_MODEL, ranker, version)
    valid = stage_data(settings, prepared, recall, "valid")
    items = item_table(settings, prepared, ranker.cfg.genres)
    rep = evaluate_pipeline(ranker, recall, valid, items, prepared.n_items, settings.seed)
    return Reevaluation(rep.hr if hr else rep.ndcg, prepared.digest)


def _vocabulary(model_items: int, data_items: int, version: str) -> str | None:
    if model_items == data_items + 1:
        return None
    return (f"retrieval v{version} knows {model_items - 1} items, the data now has {data_items}: the champion "
            f"cannot be scored on the new catalogue")
