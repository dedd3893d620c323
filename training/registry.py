"""Log a trained model to MLflow (params, metrics, ONNX, index, pytorch flavour) and register it as challenger."""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from core.errors import MissingStepError
from core.names import CHALLENGER
from core.settings import Settings
from training.tracking import client


def torch_requirement(version: str | None = None) -> str:
    """The logged models' torch pin without the local build label ("2.13.0+cu130" → "torch==2.13.0"): a pin with
    the label made MLflow warn on every load in an environment with another build of the same release (CPU here,
    CUDA in the cluster); without it, PEP 440 lets `==2.13.0` match any local build of 2.13.0."""
    return f"torch=={(version or torch.__version__).split('+', 1)[0]}"


def log_pytorch(model: torch.nn.Module, example: tuple[torch.Tensor, ...], names: list[str],
                registered_name: str) -> str:
    """Log the pytorch flavour with a tensor-spec signature and an input example; return the new version."""
    from mlflow.models import infer_signature

    import mlflow

    with torch.no_grad():
        out = model(*example)
    out = out if isinstance(out, tuple) else (out,)
    inputs = {n: t.numpy() for n, t in zip(names, example, strict=True)}
    outputs = {f"output_{i}": o.numpy() for i, o in enumerate(out)}
    signature = infer_signature(inputs, outputs)
    # pickle (not pt2): the loaded model is our class again, with its config, for evaluation and export.
    example = inputs[names[0]] if len(names) == 1 else inputs
    # MLflow re-validates the example through pyfunc serving, which cannot feed integer/multi-tensor inputs to
    # the pytorch flavour and warns with a multi-line "Failed to validate serving input example"; the example
    # and signature are still logged, and this project loads the model with mlflow.pytorch, not pyfunc.
    logging.getLogger("mlflow.models.model").setLevel(logging.ERROR)
    info = mlflow.pytorch.log_model(model, name="model", signature=signature, input_example=example,
                                    serialization_format="pickle", pip_requirements=[torch_requirement()],
                                    registered_model_name=registered_name)
    return str(info.registered_model_version)


def log_artifacts(files: dict[str, Path | np.ndarray | dict | list]) -> None:
    """Write small arrays/json to a temp dir and log them under `artifacts/`."""
    import mlflow

    with tempfile.TemporaryDirectory() as d:
        for name, value in files.items():
            path = Path(d) / name
            if isinstance(value, Path):
                path.write_bytes(value.read_bytes())
            elif isinstance(value, np.ndarray):
                np.save(path, value)
            else:
                path.write_text(json.dumps(value, indent=1))
        mlflow.log_artifacts(d, artifact_path="artifacts")


def register_artifacts(settings: Settings, name: str, run_id: str, artifact_path: str) -> str:
    """Register a run's artifact folder (not an MLflow flavour: e.g. a LoRA adapter + tokenizer) as a version."""
    from mlflow.exceptions import MlflowException

    c = client(settings)
    try:
        c.get_registered_model(name)
    except MlflowException:
        c.create_registered_model(name, description="created by recsys training")
    source = f"{c.get_run(run_id).info.artifact_uri.rstrip('/')}/{artifact_path}"
    return str(c.create_model_version(name, source=source, run_id=run_id).version)


def set_challenger(settings: Settings, name: str, version: str, tags: dict[str, Any]) -> None:
    c = client(settings)
    for k, v in tags.items():
        c.set_model_version_tag(name, version, k, str(v))
    c.set_registered_model_alias(name, CHALLENGER, version)


def version_by_alias(settings: Settings, name: str, alias: str):
    """The ModelVersion behind `name@alias`, or a readable MissingStepError naming the step to run."""
    from mlflow.exceptions import MlflowException

    try:
        return client(settings).get_model_version_by_alias(name, alias)
    except MlflowException as e:
        step = "`recsys train`" if alias == CHALLENGER else f"`recsys promote {name}`"
        raise MissingStepError(f"no {name}@{alias} in the MLflow registry: run {step} first") from e


def download_artifacts(settings: Settings, run_id: str, dest: Path, artifact_path: str = "artifacts") -> Path:
    import mlflow

    client(settings)
    return Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=artifact_path, dst_path=str(dest)))


def load_torch(settings: Settings, name: str, version: str) -> torch.nn.Module:
    import mlflow

    client(settings)
    return mlflow.pytorch.load_model(f"models:/{name}/{version}", map_location="cpu")
