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
        offline_store={"type": "file"},
        entity_key_serialization_version=3,
        repo_path=str(settings.feature_repo.resolve()),
    )
    return FeatureStore(config=config)
