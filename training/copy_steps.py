"""The copy LM's pipeline steps: train (Ray Train + MLflow), register, load the champion adapter, export.

The registered version is a folder, not an MLflow flavour: `adapter.safetensors` (LoRA weights only),
`config.json` (LoRA config and the base model's name), the tokenizer, and sample copies before/after tuning.
Serving needs the same base model (hub name, or the offline SmolLM2) plus this folder.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from core.artifacts import COPY_AHEAD_FILE, COPY_DIR, set_current
from core.copy_guard import PROMPT_FORMAT, Guard
from core.copy_lm import ARTIFACT_DIR, CopyLMConfig, read_copy_folder, write_copy_folder
from core.errors import MissingStepError
from core.names import CHAMPION, COPY_MODEL
from core.settings import Settings
from training.copy_data import build_pairs, catalogue_guard
from training.datasets import Prepared, prepare
from training.registry import download_artifacts, register_artifacts, set_challenger, version_by_alias
from training.tracking import setup_mlflow


def guard_for(prepared: Prepared) -> Guard:
    return catalogue_guard(prepared.ds.items)


def copy_config(settings: Settings, **overrides: Any) -> CopyLMConfig:
    cfg = CopyLMConfig(base_model=settings.copy_base_model, steps=settings.copy_steps, seed=settings.seed,
                       parallel=settings.copy_parallel, use_gpu=settings.use_gpu)
    for k, v in overrides.items():
        setattr(cfg, k, v)
    return cfg


def champion_adapter(settings: Settings) -> tuple[dict[str, torch.Tensor] | None, str, str]:
    """(adapter, version, base model) of the copy champion, for a warm start; (None, "", "") without one."""
    try:
        mv = version_by_alias(settings, COPY_MODEL, CHAMPION)
    except MissingStepError:
        return None, "", ""
    with tempfile.TemporaryDirectory() as d:
        cfg, adapter = read_copy_folder(download_artifacts(settings, mv.run_id, Path(d), ARTIFACT_DIR))
    if cfg.prompt != PROMPT_FORMAT:  # trained on another prompt: no head start, a fresh adapter
        return None, "", ""
    return adapter, str(mv.version), cfg.base_model


def train_copy_step(settings: Settings, resume: bool = False, warm_start: bool = False,
                    **overrides: Any) -> dict[str, Any]:
    """Pairs from the training split → LoRA on Ray Train → base vs tuned on held-out items → challenger."""
    import mlflow
    from training.jobs.copy import train_copy

    prepared = prepare(settings)
    cfg = copy_config(settings, **overrides)
    pairs = build_pairs(prepared.split.train, prepared.ds.items, settings.copy_train_pairs, settings.copy_eval_items,
                        seed=settings.seed)
    if not pairs.train or not pairs.held_out:
        raise MissingStepError("not enough interactions with titled items to build copy training pairs")
    guard = guard_for(prepared)
    setup_mlflow(settings)
    with mlflow.start_run(run_name="copy") as run:
        mlflow.log_params({**{k: v for k, v in cfg.to_dict().items() if k != "target_modules"},
                           "target_modules": ",".join(cfg.target_modules), "data_digest": prepared.digest,
                           "train_pairs": len(pairs.train), "held_out_pairs": len(pairs.held_out),
                           "train_workers": settings.train_workers, "use_gpu": settings.use_gpu})
        warm, warm_version, warm_base = champion_adapter(settings) if warm_start else (None, "", "")
        if warm is not None and warm_base != cfg.base_model:
            warm, warm_version = None, ""  # an adapter only fits the base it was trained on
        out = train_copy(settings, cfg, pairs.train, pairs.held_out, guard, resume,
                         {"uri": settings.tracking_uri, "run_id": run.info.run_id}, warm)
        mlflow.log_param("warm_start_from", warm_version if out.warm_started else "none")
        assert out.tuned is not None and out.base is not None
        metrics = {**out.tuned.as_dict("val_"), **out.base.as_dict("base_val_"),
                   "first_loss": out.first_loss, "final_train_loss": out.losses[-1],
                   "train_seconds": out.train_seconds, "tokens_per_second": out.tokens_per_second,
                   "epochs_completed": out.epochs, "generate_seconds_per_item": out.tuned.generate_seconds / max(
                       1, out.tuned.n)}
        mlflow.log_metrics(metrics)
        samples = [{"facts": b["facts"], "base": b["copy"], "base_violations": b["violations"],
                    "tuned": t["copy"], "tuned_violations": t["violations"]}
                   for b, t in zip(out.base.samples, out.tuned.samples, strict=True)]
        with tempfile.TemporaryDirectory() as d:
            folder = write_copy_folder(Path(d) / ARTIFACT_DIR, out.adapter, cfg,
                                       {"samples.json": samples, "violations.json": {
                                           "base": out.base.violations, "tuned": out.tuned.violations}})
            mlflow.log_artifacts(str(folder), artifact_path=ARTIFACT_DIR)
        # Every held-out copy, base beside tuned, for the reader (not part of the exported model).
        mlflow.log_dict([{"facts": f.document(), "base": b, "tuned": t} for (f, _), b, t in zip(
            pairs.held_out, out.base.texts, out.tuned.texts, strict=True)], "held_out_copies.json")
        version = register_artifacts(settings, COPY_MODEL, run.info.run_id, ARTIFACT_DIR)
        set_challenger(settings, COPY_MODEL, version, {"data_digest": prepared.digest, "base_model": cfg.base_model})
    return {"model": COPY_MODEL, "version": version, "run_id": run.info.run_id, **metrics,
            "epoch_tokens_per_second": out.epoch_tokens_per_second}


def copy_throughput(settings: Settings, steps: int, steps_per_epoch: int) -> dict[str, Any]:
    """Fine-tuning speed only (the bench's 1-vs-2-worker comparison): the same pairs and LoRA setup as
    `train_copy_step`, no evaluation, nothing tracked or registered. Tokens/s per epoch of `steps_per_epoch`."""
    from training.jobs.copy import train_copy

    prepared = prepare(settings)
    cfg = copy_config(settings, steps=steps, steps_per_epoch=steps_per_epoch)
    pairs = build_pairs(prepared.split.train, prepared.ds.items, settings.copy_train_pairs, settings.copy_eval_items,
                        seed=settings.seed)
    out = train_copy(settings, cfg, pairs.train, pairs.held_out, guard_for(prepared), evaluate=False)
    return {"train_seconds": out.train_seconds, "tokens_per_second": out.tokens_per_second,
            "epoch_tokens_per_second": out.epoch_tokens_per_second, "workers": settings.train_workers}


def export_copy(settings: Settings) -> str | None:
    """<model_repo>/copy/<version>/ from the copy champion, then CURRENT (last: a reader never sees half)."""
    try:
        mv = version_by_alias(settings, COPY_MODEL, CHAMPION)
    except MissingStepError:
        return None
    root = settings.model_repo / COPY_DIR
    target = root / str(mv.version)
    with tempfile.TemporaryDirectory() as d:
        folder = download_artifacts(settings, mv.run_id, Path(d), ARTIFACT_DIR)
        ahead = target / COPY_AHEAD_FILE  # copy written ahead by this same version: still its copy, kept
        if ahead.exists():
            shutil.move(ahead, Path(d) / COPY_AHEAD_FILE)
        if target.exists():
            shutil.rmtree(target)
        root.mkdir(parents=True, exist_ok=True)
        shutil.copytree(folder, target)
        if (Path(d) / COPY_AHEAD_FILE).exists():
            shutil.move(Path(d) / COPY_AHEAD_FILE, ahead)
    set_current(root, str(mv.version))
    return str(mv.version)
