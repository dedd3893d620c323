"""Offline feature tables, `feast apply`, materialization and point-in-time training sets.

Why snapshots: the user profile is written once per (user, interaction time) holding the state *after*
that moment, so a point-in-time join at `t - 1s` gives a training example exactly the history before it.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import logging
import sys
from collections import Counter
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd

from core.content import embed_items
from core.errors import MissingStepError, one_line
from core.feature_store import embedded_online_path, feature_store, use_wal
from core.settings import Settings
from training import dask_tokens
from training.catalogue_data import repush_catalogue_rows
from training.data.schema import Dataset
from training.data.split import Split

log = logging.getLogger(__name__)

STATIC_TS = pd.Timestamp("1970-01-02", tz="UTC")  # item rows valid for every entity timestamp
ENTITY_OFFSET = pd.Timedelta(seconds=1)  # training rows look at features strictly before their event


def user_profile_table(ds: Dataset, sequence_length: int) -> pd.DataFrame:
    """One row per user per distinct interaction timestamp: the profile after that moment."""
    genres = dict(zip(ds.items["item_id"], ds.items["genres"], strict=True))
    users = ds.users.set_index("user_id")
    df = ds.interactions.sort_values(["user_id", "timestamp", "item_id"], kind="stable")
    rows: list[tuple] = []
    for uid, g in df.groupby("user_id", sort=False):
        items = g["item_id"].to_numpy()
        ts = g["timestamp"].to_numpy()
        ratings = g["rating"].to_numpy(dtype=np.float64)
        counts: Counter[str] = Counter()
        total = 0.0
        for i in range(len(items)):
            counts.update(genres.get(int(items[i]), []))
            total += ratings[i]
            if i + 1 < len(items) and ts[i + 1] == ts[i]:
                continue  # one snapshot per timestamp: the state after all its events
            recent = items[max(0, i + 1 - sequence_length) : i + 1].tolist()
            top = [name for name, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:3]]
            rows.append((int(uid), ts[i], recent, i + 1, total / (i + 1), top))
    out = pd.DataFrame(
        rows,
        columns=["user_id", "event_timestamp", "recent_items", "n_interactions", "mean_rating",
                 "favourite_genres"],
    )
    out["event_timestamp"] = pd.to_datetime(out["event_timestamp"], utc=True)
    out["mean_rating"] = out["mean_rating"].astype(np.float32)
    demo = users.reindex(out["user_id"])
    out["age"] = demo["age"].fillna(-1).astype(np.int64).to_numpy()
    out["gender"] = demo["gender"].fillna("").astype(str).to_numpy()
    out["occupation"] = demo["occupation"].fillna("").astype(str).to_numpy()
    return out


def user_history_table(ds: Dataset, repeatable: Sequence[str] = (), max_seen: int = 10_000) -> pd.DataFrame:
    """One row per user: the items reached by a non-repeatable event type, most recent last (an item met again
    moves to the end), at most `max_seen`; stamped with the user's last interaction. Users with no such item
    still get a row (an empty list), so serving never falls back to the recent window for them."""
    df = ds.interactions.sort_values(["user_id", "timestamp", "item_id"], kind="stable")
    last = df.groupby("user_id", sort=True)["timestamp"].max()
    kept = df[~df["event_type"].isin(list(repeatable))] if len(repeatable) else df
    kept = kept.drop_duplicates(["user_id", "item_id"], keep="last")
    seen = kept.groupby("user_id", sort=True)["item_id"].agg(lambda s: s.to_numpy(np.int64)[-max_seen:].tolist())
    out = pd.DataFrame({"user_id": last.index.to_numpy(np.int64), "event_timestamp": last.to_numpy()})
    out["seen_items"] = [seen.get(u, []) for u in out["user_id"]]
    out["event_timestamp"] = pd.to_datetime(out["event_timestamp"], utc=True)
    return out


def item_feature_table(ds: Dataset, train: pd.DataFrame, embeddings: np.ndarray) -> pd.DataFrame:
    """Item attributes plus popularity/mean rating from the training split only (no test leakage)."""
    stats = train.groupby("item_id")["rating"].agg(["size", "mean"])
    global_mean = float(train["rating"].mean())
    items = ds.items
    return pd.DataFrame(
        {
            "item_id": items["item_id"].astype(np.int64),
            "event_timestamp": STATIC_TS,
            "title": items["title"].astype(str),
            "genres": [list(g) for g in items["genres"]],
            "year": items["year"].fillna(-1).astype(np.int64),
            "popularity": stats["size"].reindex(items["item_id"]).fillna(0).astype(np.int64).to_numpy(),
            "item_mean_rating": stats["mean"].reindex(items["item_id"]).fillna(global_mean)
            .astype(np.float32).to_numpy(),
            "content_embedding": list(embeddings.astype(np.float32)),
        }
    )


def load_definitions(repo: Path, features_dir: Path):
    """Import the Feast repo's definitions module fresh and place its file sources under `features_dir`."""
    path = repo / "features.py"
    if not path.exists():
        raise MissingStepError(f"no Feast definitions at {path}: is `feature_repo` set correctly?")
    name = f"_recsys_feature_repo_{abs(hash(str(path.resolve())))}"
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    for source in (module.user_profile_source, module.user_history_source, module.item_features_source):
        source.file_options.uri = str(features_dir.resolve() / Path(source.path).name)
    return module


def item_vectors(settings: Settings, items: pd.DataFrame) -> np.ndarray:
    """The items' content vectors through the item encoder's ONNX graph, built into the model cache once per machine:
    what serving embeds catalogue upserts with, so both are one path, and on ML-100K's 1,682 items about half the
    time of loading sentence-transformers and encoding with it (README, measurement log). Without a graph (another
    pooling, an export error) sentence-transformers embeds them, as it does upserts then: said, not fatal."""
    from core import content_onnx

    try:
        built = content_onnx.ensure(settings.content_model, settings.model_cache)
    except Exception as e:
        built, why = False, one_line(e)
    else:
        why = "its pipeline is not transformer → mean pooling"
    if not built:
        log.warning("no ONNX graph for the item encoder %s (%s): items and catalogue upserts embed with torch",
                    settings.content_model, why)
        return embed_items(items, settings.content_model)
    enc = content_onnx.encoder(settings.content_model, settings.model_cache, threads=settings.ray_num_cpus)
    if enc is None:  # `ensure` built it, but the cache was emptied since
        return embed_items(items, settings.content_model)
    return enc.embed_items(items)


def build_features(settings: Settings, ds: Dataset, split: Split) -> dict[str, int]:
    """Write the offline sources, apply the definitions and materialize into the online store."""
    fdir = settings.features_dir
    fdir.mkdir(parents=True, exist_ok=True)
    profiles = user_profile_table(ds, settings.sequence_length)
    history = user_history_table(ds, settings.repeat_event_types, settings.max_seen_items)
    emb = item_vectors(settings, ds.items)
    items = item_feature_table(ds, split.train, emb)
    profiles.to_parquet(fdir / "user_profile.parquet", index=False)
    history.to_parquet(fdir / "user_history.parquet", index=False)
    items.to_parquet(fdir / "item_features.parquet", index=False)

    store = feature_store(settings)
    defs = load_definitions(settings.feature_repo, fdir)
    objects = [defs.user, defs.item, defs.user_profile_source, defs.user_history_source, defs.item_features_source,
               defs.user_profile_push, defs.user_history_push, defs.item_features_push, defs.user_profile,
               defs.user_history,
               defs.item_features, defs.retrieval_v1, defs.ranking_v1, defs.serving_v1]
    store.apply(objects)
    online = embedded_online_path(store)
    if online is not None:
        use_wal(online)  # before the first write: serving reads it on the event loop (`FeatureReader.inline`)
    dask_tokens.install()  # materialize reads each source through Feast's dask store too (`dask_tokens`)
    end = datetime.now(UTC) + timedelta(days=1)
    with contextlib.redirect_stdout(io.StringIO()):  # Feast prints colour codes per view; we report the counts
        store.materialize(start_date=datetime(1970, 1, 1, tzinfo=UTC), end_date=end)
    repush_catalogue_rows(settings, store, items)
    return {"user_profile_rows": len(profiles), "item_rows": len(items), "users": profiles["user_id"].nunique()}


def require_features(settings: Settings) -> None:
    if not (settings.features_dir / "registry.db").exists() and settings.feast_registry is None:
        raise MissingStepError(f"no Feast registry in {settings.features_dir}: run `recsys features` first")


def _historical(settings: Settings, entity_df: pd.DataFrame, view: str, service: str,
                names: Sequence[str] | None = None) -> pd.DataFrame:
    """get_historical_features for one view of a FeatureService (only `names` of it, when given); entity rows
    must be unique per key+time.

    Why `names`: Feast's dask store hashes every persisted frame, and the profile's list and string columns make
    that ~25× slower (ML-100K, 14K rows: all 7 profile features 40 s, the ranker's 2 numeric ones 1.6 s)."""
    require_features(settings)
    dask_tokens.install()
    store = feature_store(settings)
    svc = store.get_feature_service(service)
    served = [f.name for p in svc.feature_view_projections if p.name == view for f in p.features]
    missing = sorted(set(names or ()) - set(served))
    if missing:
        raise ValueError(f"feature service {service} has no {view} features {missing}")
    refs = [f"{view}:{n}" for n in served if names is None or n in names]
    return store.get_historical_features(entity_df=entity_df, features=refs).to_df()


def user_features_at(settings: Settings, rows: pd.DataFrame, service: str = "ranking_v1",
                     names: Sequence[str] | None = None) -> pd.DataFrame:
    """Point-in-time user profile (all of the service's profile features, or `names`) for (user_id,
    event_timestamp) rows, in the rows' order.

    Queried once per distinct (user, time): Feast's file store keeps one row per entity key and time.
    """
    keys = rows[["user_id", "event_timestamp"]].drop_duplicates().reset_index(drop=True)
    feats = _historical(settings, keys, "user_profile", service, names)
    return rows[["user_id", "event_timestamp"]].merge(feats, on=["user_id", "event_timestamp"], how="left")


def item_features(settings: Settings, item_ids: np.ndarray, service: str = "ranking_v1") -> pd.DataFrame:
    """Item feature rows (one per id, in the given order) from the offline store."""
    ids = pd.DataFrame({"item_id": np.asarray(item_ids, dtype=np.int64)})
    keys = ids.drop_duplicates().assign(event_timestamp=pd.Timestamp.now(tz="UTC"))
    feats = _historical(settings, keys, "item_features", service).drop(columns="event_timestamp")
    return ids.merge(feats, on="item_id", how="left")


def training_entities(interactions: pd.DataFrame) -> pd.DataFrame:
    """Entity rows for training examples: each sees features as of one second before its event."""
    out = interactions[["user_id", "item_id"]].copy()
    out["event_timestamp"] = interactions["timestamp"] - ENTITY_OFFSET
    return out.reset_index(drop=True)
