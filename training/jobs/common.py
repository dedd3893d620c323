"""What both Ray Train jobs share: the epoch on the worker's device, per-epoch checkpoints, resume after a crash,
the trainer call."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from core.errors import MissingStepError
from core.settings import Settings
from training.ray_cluster import ensure_ray, worker_resources

STATE_FILE = "state.pt"


def autocast(device: torch.device):
    """bf16 autocast on a GPU (fp32 weights and optimizer state, bf16 matmuls; losses such as cross-entropy stay in
    fp32 by autocast's own rules), nothing on the CPU."""
    if device.type != "cuda":
        return contextlib.nullcontext()
    return torch.autocast(device_type="cuda", dtype=torch.bfloat16)


def run_epoch(model: torch.nn.Module, opt: torch.optim.Optimizer, batches: Iterable[tuple[np.ndarray, ...]],
              device: torch.device, after_step: Callable[[], None] | None = None) -> float:
    """One pass over `batches` (arrays in the model's argument order): each batch moved to `device` (the worker's
    `ray.train.torch.get_device()`, where `prepare_model` put the model), forward under `autocast`, backward, step,
    then `after_step` (a weight average's update). The mean loss; losses stay on the device until the end (no host
    sync per step)."""
    losses = []
    for arrays in batches:
        tensors = [torch.from_numpy(a).to(device, non_blocking=True) for a in arrays]
        with autocast(device):
            _, loss = model(*tensors)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if after_step is not None:
            after_step()
        losses.append(loss.detach())
    return float(torch.stack(losses).float().mean()) if losses else float("nan")


def adamw(params, lr: float, weight_decay: float = 0.01) -> torch.optim.Optimizer:
    """AdamW with the fused kernel (one pass over all parameters; CPU and GPU): a worker pays the optimizer's
    step whole whatever its share of the batch, so its cost is what limits data-parallel scaling most."""
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=True)


def buffer_sync_off(ddp_init: Callable[..., Any] | None = None) -> dict[str, bool]:
    """DDP's keyword for "do not sync buffers before every forward", in the installed PyTorch's spelling:
    `forward_sync_buffers` since 2.13 (which deprecates `broadcast_buffers`), `broadcast_buffers` before it. A
    cluster image's PyTorch need not be the pinned one: 2.11's DDP refused the newer keyword (an H200 run)."""
    import inspect

    if ddp_init is None:
        ddp_init = torch.nn.parallel.DistributedDataParallel.__init__
    params = inspect.signature(ddp_init).parameters
    return {"forward_sync_buffers": False} if "forward_sync_buffers" in params else {"broadcast_buffers": False}


def prepare_ddp(model: torch.nn.Module) -> torch.nn.Module:
    """The model on the worker's device, in DDP when there are several workers (`prepare_model`). Buffers are
    not synced before every forward (DDP's default): the models' buffers are constant inputs (the retrieval item
    tower's content table, 2.6 MB on ML-100K), built the same on every rank."""
    import ray.train.torch

    return ray.train.torch.prepare_model(model, parallel_strategy_kwargs=buffer_sync_off())


def on_cpu(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A copy of a state dict on the host (kept across epochs, loaded by the driver without a GPU)."""
    return {k: v.detach().to("cpu", copy=True) for k, v in state.items()}


def save_and_report(metrics: dict[str, float], state: dict[str, Any] | None) -> None:
    """Report this epoch; rank 0 passes the checkpoint (model, optimizer, epoch, config), others None."""
    import ray.train

    if state is None:
        ray.train.report(metrics)
        return
    with tempfile.TemporaryDirectory() as d:
        torch.save(state, Path(d) / STATE_FILE)
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(d))


def restore_state() -> dict[str, Any] | None:
    """The latest checkpoint of this run, if Ray restored one (same run name and storage path)."""
    import ray.train

    ckpt = ray.train.get_checkpoint()
    if ckpt is None:
        return None
    with ckpt.as_directory() as d:
        return torch.load(Path(d) / STATE_FILE, map_location="cpu", weights_only=False)


def fits(fresh: torch.nn.Module, state: dict[str, torch.Tensor]) -> bool:
    """Whether `state` has exactly `fresh`'s parameter names and shapes (a warm start is then exact)."""
    target = fresh.state_dict()
    return state.keys() == target.keys() and all(state[k].shape == target[k].shape for k in target)


ITEM_ROWS = ("items.id_emb.weight", "items.content", "item_emb.weight")  # weights with one row per item index


def grow_vocabulary(state: dict[str, torch.Tensor], old_ids: np.ndarray,
                    new_ids: np.ndarray) -> dict[str, torch.Tensor]:
    """A champion's weights on a new item vocabulary (raw id per index, index 0 padding): each item's rows move
    to its new index; an item the champion never had starts at zero (an id embedding of zero places it by its
    content alone, where serving placed it since its catalogue upsert); rows of items gone are dropped."""
    if np.array_equal(old_ids, new_ids):
        return state
    pos = {int(r): i for i, r in enumerate(old_ids) if i > 0}
    src = np.array([0] + [pos.get(int(r), -1) for r in new_ids[1:]], dtype=np.int64)
    have = torch.from_numpy(np.nonzero(src >= 0)[0])
    out = dict(state)
    for key in ITEM_ROWS:
        t = state.get(key)
        if t is not None and t.shape[0] == len(old_ids):
            grown = t.new_zeros((len(new_ids), *t.shape[1:]))
            grown[have] = t[torch.from_numpy(src[src >= 0])]
            out[key] = grown
    return out


def initial_state(model: torch.nn.Module, opt: torch.optim.Optimizer,
                  config: dict[str, Any]) -> tuple[int, dict[str, Any] | None]:
    """Restore the run's checkpoint (resume) or else load the warm-start weights; returns the start epoch and
    the restored checkpoint (None on a fresh start), whose other entries the loop may carry on."""
    state = restore_state()
    if state is not None:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        return int(state["epoch"]), state
    if config.get("init") is not None:
        model.load_state_dict(config["init"])
    return 0, None


def load_result_state(result) -> dict[str, Any]:
    with result.checkpoint.as_directory() as d:
        return torch.load(Path(d) / STATE_FILE, map_location="cpu", weights_only=False)


def _pointer(settings: Settings, job: str) -> Path:
    return settings.runs_dir / f"{job}.current.json"


def run_name(settings: Settings, job: str, resume: bool) -> str:
    """A new run name, or with `resume` the unfinished run's, so Ray restores its latest checkpoint."""
    pointer = _pointer(settings, job)
    if resume:
        if not pointer.exists():
            raise MissingStepError(f"no interrupted {job} run to resume: run `recsys train {job}` first")
        return json.loads(pointer.read_text())["name"]
    name = f"{job}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
    settings.runs_dir.mkdir(parents=True, exist_ok=True)
    pointer.write_text(json.dumps({"name": name}))
    return name


def fit(
    settings: Settings,
    job: str,
    loop: Callable[[dict], None],
    config: dict[str, Any],
    resume: bool,
    total_epochs: int = 0,
):
    """Run `loop` on N workers with TorchTrainer; DDP on CPU (gloo) or GPU (nccl) by settings."""
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    ensure_ray(settings)
    name = run_name(settings, job, resume)
    trainer = TorchTrainer(
        loop,
        train_loop_config=config,
        scaling_config=ScalingConfig(
            num_workers=settings.train_workers,
            use_gpu=settings.use_gpu,
            resources_per_worker=worker_resources(settings),
        ),
        run_config=RunConfig(
            name=name,
            storage_path=str(settings.runs_dir.resolve()),
            failure_config=FailureConfig(max_failures=1),
        ),
    )
    from training.progress import EpochLines

    sigint = signal.getsignal(signal.SIGINT)
    try:
        with EpochLines(job, config.get("mlflow"), total_epochs):  # a line per epoch on this console
            result = trainer.fit()
    finally:
        # Ray Train's fit installs a SIGINT handler that holds its controller actor's handle
        # (ray/train/v2/api/data_parallel_trainer.py, _register_sigint_handler) and never removes it: in a
        # long-lived driver (the bench, a retrain loop) the TrainController and its DatasetManager (~0.6 GiB)
        # stayed alive after the run. The previous handler back = the handle dropped = both actors end.
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, sigint)
    if result.error:
        raise RuntimeError(f"{job} training failed: {result.error}")
    _pointer(settings, job).unlink(missing_ok=True)  # finished: the next `train` starts fresh
    return result


def worker_threads(settings: Settings) -> int:
    """torch threads per worker = its CPU share (measured: 2×1 thread beats 1×2 on 2 cores)."""
    return int(worker_resources(settings)["CPU"])


def log_epoch_metrics(spec: dict[str, str] | None, metrics: dict[str, float], step: int) -> None:
    """From rank 0 inside the Ray Train loop: this epoch's metrics on the driver's MLflow run (`spec`)."""
    if spec:
        from mlflow.entities import Metric

        from mlflow import MlflowClient

        now = int(time.time() * 1000)  # one backend write for the epoch, not one per metric
        batch = [Metric(k, float(v), now, step) for k, v in metrics.items()]
        MlflowClient(tracking_uri=spec["uri"]).log_batch(spec["run_id"], metrics=batch)
