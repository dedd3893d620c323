"""`recsys evaluate`: registered models and baselines on the test split under one protocol."""

from __future__ import annotations

from typing import Any

from core.names import RANKER_MODEL, RETRIEVAL_MODEL
from core.settings import Settings
from training.datasets import prepare
from training.registry import version_by_alias


def evaluation_table(settings: Settings, alias: str = "challenger", baselines: bool = True,
                     stage: str = "test") -> list[dict[str, Any]]:
    from training.jobs.ranking import evaluate_pipeline, stage_data
    from training.jobs.retrieval import evaluate
    from training.ranking_data import item_table
    from training.registry import load_torch
    from training.steps import baselines_step, load_retrieval, selected_weights

    prepared = prepare(settings)
    recall, rv = load_retrieval(settings, alias)
    if stage == "valid":  # the weights validation judged: their refit learned the validation targets
        recall = selected_weights(settings, RETRIEVAL_MODEL, recall, rv)
    rows: list[dict[str, Any]] = [
        {"model": f"retrieval v{rv}", **evaluate(recall, prepared, stage, settings.seed).as_dict()}
    ]
    mv = version_by_alias(settings, RANKER_MODEL, alias)
    ranker = load_torch(settings, RANKER_MODEL, str(mv.version)).model
    if stage == "valid":
        ranker = selected_weights(settings, RANKER_MODEL, ranker, str(mv.version))
    data = stage_data(settings, prepared, recall, stage)
    items = item_table(settings, prepared, ranker.cfg.genres)
    rep = evaluate_pipeline(ranker, recall, data, items, prepared.n_items, settings.seed)
    rows.append({"model": f"retrieval v{rv} → ranker v{mv.version}", **rep.as_dict()})
    if baselines:
        rows += [{"model": name, **m} for name, m in baselines_step(settings, stage).items()]
    return rows
