"""MLflow: one experiment, runs with params/metrics/artifacts, and the registry with aliases."""

from __future__ import annotations

import os

from core.settings import Settings


def setup_mlflow(settings: Settings) -> str:
    """Point MLflow at the settings' tracking URI; create the experiment with our artifact root."""
    os.environ.setdefault("MLFLOW_ENABLE_ASYNC_LOGGING", "false")
    import mlflow

    settings.home.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(settings.tracking_uri)
    mlflow.set_registry_uri(settings.tracking_uri)
    exp = mlflow.get_experiment_by_name(settings.mlflow_experiment)
    if exp is None:
        location = None if settings.mlflow_tracking_uri else settings.artifact_root.as_uri()
        exp_id = mlflow.create_experiment(settings.mlflow_experiment, artifact_location=location)
    else:
        exp_id = exp.experiment_id
    mlflow.set_experiment(experiment_id=exp_id)
    return exp_id


def client(settings: Settings):
    from mlflow import MlflowClient

    setup_mlflow(settings)
    return MlflowClient(tracking_uri=settings.tracking_uri, registry_uri=settings.tracking_uri)
