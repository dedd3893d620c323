"""The Feast `FeatureStore` built from the one settings object; training and serving both use this.

Built in code (not from feature_store.yaml) so RECSYS_HOME / the chart's settings file decide the stores:
SQLite + Parquet files locally, Redis and the chart's registry in a cluster. Make one per process and keep
it: construction parses the registry, which costs more than an online read.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from pathlib import Path

from core.settings import Settings


def _expanded(store: dict | None) -> dict | None:
    """`${VAR}` in the online store's settings from the environment, as Feast does for feature_store.yaml (the
    chart's Redis connection string names `${REDIS_PASSWORD}`, loaded from its mounted file)."""
    return None if store is None else {k: os.path.expandvars(v) if isinstance(v, str) else v for k, v in store.items()}


def feature_store(settings: Settings):
    from feast import FeatureStore
    from feast.repo_config import RepoConfig

    fdir = settings.features_dir.resolve()
    fdir.mkdir(parents=True, exist_ok=True)
    os.environ["RECSYS_FEAST_DIR"] = str(fdir)  # feature_store.yaml reads it for the feast CLI
    config = RepoConfig(
        project=settings.feast_project,
        provider="local",
        registry=settings.feast_registry or str(fdir / "registry.db"),
        online_store=(_expanded(settings.feast_online_store)
                      or {"type": "sqlite", "path": str(fdir / "online_store.db")}),
        # The name, not {"type": "file"}: a dict is validated at once by importing its config class, and that
        # module imports dask.dataframe (and with it scipy): ~28 MB in every serving replica, which never reads
        # offline. A name is resolved on first use (feast/repo_config.py, `_validate_offline_store_config` skips
        # non-dicts; the `offline_store` property resolves a str), so training still gets the same file store.
        offline_store="file",
        entity_key_serialization_version=3,
        repo_path=str(settings.feature_repo.resolve()),
    )
    store = FeatureStore(config=config)
    _versioned_reads_known(store)
    return store


def _versioned_reads_known(store) -> None:
    """Feast's first online read asks whether the store supports versioned reads by importing six online-store
    modules to test `isinstance` against (feast/infra/online_stores/online_store.py,
    `_is_versioned_read_supported`), faiss and redis among them: ~17 MB in each reader for a yes. SQLite and Redis
    are on its list; their answer is cached on the store (`_versioned_read_supported`) before that read."""
    online = store._get_provider().online_store
    if type(online).__name__ in ("SqliteOnlineStore", "RedisOnlineStore"):
        online._versioned_read_supported = True


def embedded_online_path(store) -> Path | None:
    """The embedded SQLite online store's file (the local default), or None for any other store (Redis, the
    feature server)."""
    online = getattr(getattr(store, "config", None), "online_store", None)
    if getattr(online, "type", None) != "sqlite":
        return None
    path = Path(online.path)
    return path if path.is_absolute() else Path(store.config.repo_path) / path


def use_wal(path: Path) -> bool:
    """Put the SQLite online store in write-ahead-log mode (a property of the file, kept by every later
    connection): its readers then never wait on a writer (materialize, the Feedback stage's pushes), so a serving
    replica can read a profile on its event loop (`serving.features.FeatureReader.inline`). True if it took."""
    try:
        with contextlib.closing(sqlite3.connect(path, timeout=30)) as db:
            return db.execute("PRAGMA journal_mode=WAL").fetchone()[0].lower() == "wal"
    except sqlite3.OperationalError:  # held by a reader past the timeout: its readers keep the reader thread
        return False


def in_wal(path: Path) -> bool:
    """Whether the SQLite file is in write-ahead-log mode (read without changing it; False if it cannot be read)."""
    try:
        with contextlib.closing(sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=1)) as db:
            return db.execute("PRAGMA journal_mode").fetchone()[0].lower() == "wal"
    except sqlite3.Error:
        return False
