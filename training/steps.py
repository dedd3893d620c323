"""The offline pipeline's steps as library functions; the CLI and the in-cluster jobs call these."""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from core.artifacts import CONTENT_PROJECTION_FILE, ITEM_IDS_FILE, PROJ_FILE
from core.errors import ConfigError, MissingStepError
from core.names import CHALLENGER, CHAMPION, RANKER_MODEL, RETRIEVAL_MODEL
from core.settings import Settings
from training.data.movielens import download_movielens, load_movielens
from training.data.schema import save_dataset
from training.data.synthetic import generate_synthetic
from training.datasets import Prepared, prepare
from training.evaluation.baselines import run_baselines
from training.features import build_features, item_features, require_features
from training.models.ranking import INPUTS, Ranker, RankingConfig, ServingRanker, content_projection
from training.models.retrieval import RetrievalConfig, SASRec, UserEncoder
from training.onnx_export import (
    export_ranker,
    export_user_encoder,
    latency_ms,
    parity,
    serving_example,
    user_encoder_example,
)
from training.registry import log_artifacts, log_pytorch, set_challenger, version_by_alias
from training.tracking import setup_mlflow


@dataclass
class DataResult:
    manifest: dict[str, Any]
    source: str  # where the data came from, said to the user


def prepare_data(settings: Settings, source: Path | None = None, download: str | None = None,
                 synthetic: bool = False) -> DataResult:
    """Load MovieLens (a path, a download, RECSYS_DATA, the shared copy) or synthetic data into Parquet."""
    path: Path | None = None
    if download:
        path = download_movielens(download, settings.home / "raw")  # type: ignore[arg-type]
    elif not synthetic:
        path = source or settings.data or (settings.shared_data if settings.shared_data.exists() else None)
    if path is None:
        ds = generate_synthetic(seed=settings.seed)
        origin = "synthetic data" + ("" if synthetic else " (no RECSYS_DATA and no shared ML-100K found)")
    else:
        ds = load_movielens(Path(path))
        origin = str(path)
    from core.catalogue import read_state
    from training.catalogue_data import with_catalogue
    from training.tombstones import tombstones, without_deleted

    ds, _, _ = without_deleted(ds, tombstones(settings))  # the raw files still hold deleted users
    ds, _, _ = with_catalogue(ds, read_state(settings))  # nor the items upserted since
    return DataResult(save_dataset(ds, settings.data_dir), origin)


def build_feature_store(settings: Settings) -> dict[str, int]:
    prepared = prepare(settings)
    return build_features(settings, prepared.ds, prepared.split)


def content_matrix(settings: Settings, prepared: Prepared) -> np.ndarray:
    """(n_items, 384) content embeddings in index order, read through Feast's offline store."""
    frame = item_features(settings, prepared.item_ids[1:])
    return np.stack(frame["content_embedding"].to_numpy()).astype(np.float32)


def _run_spec(settings: Settings, run) -> dict[str, str]:
    return {"uri": settings.tracking_uri, "run_id": run.info.run_id}


def _data_params(settings: Settings, prepared: Prepared) -> dict[str, Any]:
    return {"data_digest": prepared.digest, "dataset": prepared.ds.name, "n_items": prepared.n_items,
            "n_users": len(prepared.train), "train_workers": settings.train_workers, "use_gpu": settings.use_gpu}


def window_stride(max_len: int, overlap: float) -> int:
    """Items between the ends of consecutive training windows: `overlap` of a window is context it shares with the
    next one (`training.sequences.training_windows`)."""
    if not 0 <= overlap < 1:
        raise ConfigError(f"retrieval_window_overlap must be in [0, 1), got {overlap}")
    return max(1, round(max_len * (1 - overlap)))


def retrieval_config(settings: Settings, prepared: Prepared, **overrides: Any) -> RetrievalConfig:
    cfg = RetrievalConfig(n_items=prepared.n_items + 1, max_len=settings.sequence_length,
                          stride=window_stride(settings.sequence_length, settings.retrieval_window_overlap),
                          epochs=settings.retrieval_epochs, patience=settings.retrieval_patience,
                          plateau=settings.retrieval_plateau, budget_s=settings.retrieval_budget_s,
                          refit_epochs=settings.retrieval_refit_epochs, members=settings.retrieval_members,
                          d_model=settings.retrieval_member_dim, n_heads=settings.retrieval_heads,
                          mask_seen=settings.retrieval_mask_seen,
                          mask_prior=settings.retrieval_mask_prior,
                          average_epochs=settings.retrieval_average_epochs, seed=settings.seed)
    for k, v in overrides.items():
        setattr(cfg, k, v)
    if cfg.n_heads < 1:
        raise ConfigError(f"retrieval_heads must be ≥ 1 (attention heads in each block); got {cfg.n_heads}")
    if cfg.members < 1 or cfg.d_model < 1 or cfg.d_model % cfg.n_heads:
        raise ConfigError(f"retrieval_members must be ≥ 1 and retrieval_member_dim a positive multiple of "
                          f"{cfg.n_heads} (retrieval_heads); got {cfg.members} and {cfg.d_model}")
    if cfg.mask_prior < 0:
        raise ConfigError(f"retrieval_mask_prior must be ≥ 0 (items before each window); got {cfg.mask_prior}")
    return cfg


SELECTED_FILE = "selected_state.pt"  # the weights before the refit: what validation judged


def log_selected(selected: torch.nn.Module | None) -> None:
    """Inside an active MLflow run: the weights validation judged, beside the refit ones registered."""
    if selected is None:
        return
    with tempfile.TemporaryDirectory() as d:
        torch.save(selected.state_dict(), Path(d) / SELECTED_FILE)
        log_artifacts({SELECTED_FILE: Path(d) / SELECTED_FILE})


def register_retrieval(settings: Settings, prepared: Prepared, model: SASRec,
                       metrics: dict[str, float], selected: SASRec | None = None) -> str:
    """Inside an active MLflow run: ONNX + parity + latency + index artifacts, pytorch flavour, challenger; with a
    refit, the weights validation chose too (the ranking job tunes its blend against those)."""
    import mlflow

    model.eval()
    log_selected(selected)
    with tempfile.TemporaryDirectory() as d:
        onnx_path = export_user_encoder(model, Path(d) / "user_encoder.onnx")
        enc = UserEncoder(model)
        checks = {"onnx_parity_max_abs_diff": parity(enc, user_encoder_example(model, 32, seed=1), onnx_path),
                  "onnx_latency_ms": latency_ms(onnx_path, user_encoder_example(model, 1))}
        with torch.no_grad():
            index = model.items.all_items().numpy().astype(np.float32)
            proj = model.items.proj.weight.numpy().astype(np.float32) if model.items.proj is not None else None
        log_artifacts({"user_encoder.onnx": onnx_path, "item_embeddings.npy": index,
                       ITEM_IDS_FILE: prepared.item_ids.tolist(), "config.json": model.cfg.to_dict(),
                       **({PROJ_FILE: proj} if proj is not None else {})})
    mlflow.log_metrics({**metrics, **checks})
    version = log_pytorch(enc, user_encoder_example(model, 2), ["history"], RETRIEVAL_MODEL)
    set_challenger(settings, RETRIEVAL_MODEL, version, {"data_digest": prepared.digest, **checks})
    return version


def register_ranker(settings: Settings, prepared: Prepared, model: Ranker, metrics: dict[str, float],
                    retrieval_version: str, selected: Ranker | None = None) -> str:
    """Inside an active MLflow run: ONNX + parity + latency artifacts, pytorch flavour, challenger; with a refit,
    the weights validation judged too (the gate re-evaluates a champion with those)."""
    import mlflow

    model.eval()
    log_selected(selected)
    with tempfile.TemporaryDirectory() as d:
        onnx_path = export_ranker(model, Path(d) / "ranker.onnx")
        serving = ServingRanker(model)
        checks = {"onnx_parity_max_abs_diff": parity(serving, serving_example(model, 64, seed=1), onnx_path),
                  "onnx_latency_ms": latency_ms(onnx_path, serving_example(model, 200))}
        log_artifacts({"ranker.onnx": onnx_path, "config.json": model.cfg.to_dict(),
                       ITEM_IDS_FILE: prepared.item_ids.tolist(), CONTENT_PROJECTION_FILE: content_projection(model)})
    mlflow.log_metrics({**metrics, **checks})
    version = log_pytorch(serving, serving_example(model, 2), list(INPUTS), RANKER_MODEL)
    set_challenger(settings, RANKER_MODEL, version, {"data_digest": prepared.digest,
                                                     "retrieval_version": retrieval_version, **checks})
    return version


def champion_state(settings: Settings, name: str, item_ids: np.ndarray | None = None, cfg: Any = None,
                   same: tuple[str, ...] = ()) -> tuple[dict[str, Any] | None, str]:
    """The champion's weights for a warm start, and its version ("" when there is no champion yet). With
    `item_ids` (the new data's vocabulary) the item rows follow their ids there (`grow_vocabulary`): items added
    to the catalogue since the champion was trained get rows, the others keep what they learned. `same`: fields
    of the new `cfg` the champion must share (`config_changes`); otherwise a cold start, its reason logged to the
    run (`warm_start_refused`)."""
    import mlflow
    from training.jobs.common import config_changes, grow_vocabulary
    from training.registry import download_artifacts, load_torch

    try:
        mv = version_by_alias(settings, name, CHAMPION)
    except MissingStepError:
        return None, ""
    model = load_torch(settings, name, str(mv.version)).model
    changed = config_changes(model, cfg, same) if cfg is not None else {}
    if changed:
        mlflow.log_param("warm_start_refused", "; ".join(f"{k} {a} → {b}" for k, (a, b) in changed.items()))
        return None, ""
    state = model.state_dict()
    if item_ids is not None:
        with tempfile.TemporaryDirectory() as d:
            ids_file = download_artifacts(settings, mv.run_id, Path(d)) / ITEM_IDS_FILE
            if ids_file.exists():  # versions registered before the ranker logged it: an exact fit or a cold start
                state = grow_vocabulary(state, np.asarray(json.loads(ids_file.read_text())), item_ids)
    return state, str(mv.version)


def train_retrieval_step(settings: Settings, resume: bool = False, warm_start: bool = False,
                         **overrides: Any) -> dict[str, Any]:
    from training.jobs.retrieval import train_retrieval

    require_features(settings)
    prepared = prepare(settings)
    cfg = retrieval_config(settings, prepared, **overrides)
    setup_mlflow(settings)
    import mlflow

    with mlflow.start_run(run_name="retrieval") as run:
        mlflow.log_params({**cfg.to_dict(), **_data_params(settings, prepared)})
        warm, warm_version = (champion_state(settings, RETRIEVAL_MODEL, prepared.item_ids, cfg, ("n_heads",))
                              if warm_start else (None, ""))
        out = train_retrieval(settings, prepared, content_matrix(settings, prepared), cfg, resume,
                              _run_spec(settings, run), warm)
        mlflow.log_params({"warm_start_from": warm_version if out.warm_started else "none",
                           "stopped": out.stopped or "epoch cap"})
        metrics = {**out.valid.as_dict("val_"), **out.test.as_dict("test_"),
                   "train_seconds": out.train_seconds, "samples_per_second": out.samples_per_second,
                   "epochs_completed": out.epochs, "kept_epoch": out.best_epoch,
                   "refit_epochs": cfg.refit_epochs if out.selected is not None else 0}
        version = register_retrieval(settings, prepared, out.model, metrics, out.selected)
    return {"model": RETRIEVAL_MODEL, "version": version, "run_id": run.info.run_id, **metrics}


def load_retrieval(settings: Settings, alias: str = CHALLENGER) -> tuple[SASRec, str]:
    from training.registry import load_torch

    mv = version_by_alias(settings, RETRIEVAL_MODEL, alias)
    enc = load_torch(settings, RETRIEVAL_MODEL, mv.version)
    return enc.model, str(mv.version)


def selected_weights(settings: Settings, name: str, model: torch.nn.Module, version: str) -> torch.nn.Module:
    """The weights validation judged for model `name` `version` (before its refit over the validation
    interactions), else `model` itself: whatever is tuned or compared on validation must not see a model that
    learned its targets."""
    import copy

    from mlflow.exceptions import MlflowException

    from training.registry import client, download_artifacts

    mv = client(settings).get_model_version(name, version)
    with tempfile.TemporaryDirectory() as d:
        try:
            art = download_artifacts(settings, mv.run_id, Path(d), f"artifacts/{SELECTED_FILE}")
        except (MlflowException, OSError):
            return model  # no refit ran for this version
        state = torch.load(art, map_location="cpu", weights_only=True)
    out = copy.deepcopy(model)
    out.load_state_dict(state)
    return out.eval()


def train_ranking_step(settings: Settings, resume: bool = False, warm_start: bool = False,
                       **overrides: Any) -> dict[str, Any]:
    from training.jobs.ranking import train_ranking

    require_features(settings)
    prepared = prepare(settings)
    recall, recall_version = load_retrieval(settings, CHALLENGER)
    if recall.cfg.n_items != prepared.n_items + 1:  # the ranker shares its retrieval model's item index space
        raise MissingStepError(
            f"the catalogue has {prepared.n_items} items and retrieval v{recall_version} knows "
            f"{recall.cfg.n_items - 1} (items were upserted since): run `recsys train retrieval` first, or "
            "`recsys retrain`, which trains both")
    cfg = RankingConfig(epochs=settings.ranking_epochs, refit_epochs=settings.ranking_refit_epochs,
                        seed=settings.seed)
    for k, v in overrides.items():
        setattr(cfg, k, v)
    setup_mlflow(settings)
    import mlflow

    with mlflow.start_run(run_name="ranking") as run:
        params = {k: v for k, v in cfg.to_dict().items() if k != "genres"}
        mlflow.log_params({**params, **_data_params(settings, prepared), "retrieval_version": recall_version})
        warm, warm_version = champion_state(settings, RANKER_MODEL, prepared.item_ids) if warm_start else (None, "")
        out = train_ranking(settings, prepared, recall, cfg, resume=resume, mlflow_run=_run_spec(settings, run),
                            warm=warm, recall_valid=selected_weights(settings, RETRIEVAL_MODEL, recall, recall_version))
        mlflow.log_param("warm_start_from", warm_version if out.warm_started else "none")
        metrics = {**out.valid.as_dict("val_"), **out.test.as_dict("test_"),
                   **out.recall_valid.as_dict("recall_val_"), **out.recall_test.as_dict("recall_test_"),
                   **{f"val_{k}": v for k, v in out.classification.items()},
                   "train_seconds": out.train_seconds, "samples_per_second": out.samples_per_second,
                   "epochs_completed": out.epochs, "recall_weight": out.model.cfg.recall_weight,
                   "ranking_candidates": out.model.cfg.candidates,
                   **({f"val_ndcg_at_10_candidates_{c}": v for c, v in out.blend.ndcg.items()} if out.blend else {}),
                   "refit_epochs": cfg.refit_epochs if out.selected is not None else 0}
        version = register_ranker(settings, prepared, out.model, metrics, recall_version, out.selected)
    return {"model": RANKER_MODEL, "version": version, "run_id": run.info.run_id, **metrics}


def baselines_step(settings: Settings, stage: str = "test") -> dict[str, dict[str, float]]:
    """MostPop, item-kNN, EASE, BPR-MF under the same protocol (histories = everything before the target)."""
    prepared = prepare(settings)
    _, hists, targets = prepared.eval_set(stage)  # type: ignore[arg-type]
    results = run_baselines(hists, hists, targets, prepared.n_items, seed=settings.seed)
    return {name: {**r.report.as_dict(), "fit_seconds": r.fit_seconds} for name, r in results.items()}


def require_data(settings: Settings) -> None:
    if not (settings.data_dir / "manifest.json").exists():
        raise MissingStepError(f"no prepared data set in {settings.data_dir}: run `recsys data` first")
