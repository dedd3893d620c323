"""The Feast `FeatureStore` built from the one settings object; training and serving both use this.

Built in code (not from feature_store.yaml) so RECSYS_HOME / the chart's settings file decide the stores:
SQLite + Parquet files locally, Redis and the chart's registry in a cluster. Make one per process and keep
it: construction parses the registry, which costs more than an online read.
"""

from __future__ import annotations

import os

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
