"""What both Ray Train jobs share: the epoch on the worker's device, per-epoch checkpoints, resume after a crash,
the trainer call."""

from __future__ import annotations

import contextlib
import functools
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
TRAIN_POLL_ENV, TRAIN_POLL_S = "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5"  # Ray Train's poll of its workers (`fit`)


def autocast(device: torch.device):
    """bf16 autocast on a GPU (fp32 weights and optimizer state, bf16 matmuls; losses such as cross-entropy stay in
    fp32 by autocast's own rules), nothing on the CPU."""
    if device.type != "cuda":
        return contextlib.nullcontext()
    return torch.autocast(device_type="cuda", dtype=torch.bfloat16)


def run_epoch(model: torch.nn.Module, opt: torch.optim.Optimizer, batches: Iterable[tuple[np.ndarray, ...]],
              device: torch.device, after_step: Callable[[], None] | None = None, average: bool = True) -> float:
    """One pass over `batches` (arrays in the model's argument order): each batch moved to `device` (the worker's
    `ray.train.torch.get_device()`, where `prepare_replicas` put the model), forward under `autocast`, backward,
    the gradients averaged over the ranks (`average_gradients`; not with `average` False, where each rank trains a
    model of its own), step, then `after_step` (a weight average's update). The mean loss; losses stay on the
    device until the end (no host sync per step)."""
    losses = []
    for arrays in batches:
        tensors = [torch.from_numpy(a).to(device, non_blocking=True) for a in arrays]
        with autocast(device):
            _, loss = model(*tensors)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if average:
            average_gradients(model)
        opt.step()
        if after_step is not None:
            after_step()
        losses.append(loss.detach())
    return float(torch.stack(losses).float().mean()) if losses else float("nan")


def adamw(params, lr: float, weight_decay: float = 0.01) -> torch.optim.Optimizer:
    """AdamW with the fused kernel (one pass over all parameters; CPU and GPU): a worker pays the optimizer's
    step whole whatever its share of the batch, so its cost is what limits data-parallel scaling most."""
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=True)


def _world() -> int:
    """Ranks in this worker's process group (1 outside one: a single worker, or a loop run in-process)."""
    import torch.distributed as dist

    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def prepare_replicas(model: torch.nn.Module) -> torch.nn.Module:
    """The model on the worker's device (`prepare_model`, not wrapped), every rank starting from rank 0's
    parameters and buffers, as DDP's constructor would make them. The ranks then stay equal by taking the same
    averaged gradients (`average_gradients`, called by `run_epoch`)."""
    return from_rank_zero(on_worker_device(model))


def on_worker_device(model: torch.nn.Module) -> torch.nn.Module:
    """The model on the worker's device as it is: no rank's parameters replace another's."""
    import ray.train.torch

    return ray.train.torch.prepare_model(model, parallel_strategy=None)


def from_rank_zero(model: torch.nn.Module) -> torch.nn.Module:
    """`model` with rank 0's parameters and buffers on every rank (a no-op for one worker)."""
    if _world() > 1:
        import torch.distributed as dist

        with torch.no_grad():
            for t in model.state_dict().values():
                dist.broadcast(t, src=0)
    return model


def average_gradients(model: torch.nn.Module) -> None:
    """Each gradient replaced by its mean over the ranks: one all-reduce of them all, flattened, after backward;
    a parameter a rank did not use counts there as a zero gradient. The arithmetic is DDP's (bit for bit, test);
    DDP's buckets instead start all-reducing during backward, on a communication thread that contends with the
    compute thread of a CPU worker given one core. On ML-100K's retrieval step (2 gloo workers, no Ray) that cost
    ~15 ms a step where the all-reduce alone takes 1.4 ms (README, measurement log). On GPUs it is one NCCL call
    for these small models (~0.5 M floats)."""
    world = _world()
    if world == 1:
        return
    import torch.distributed as dist

    params = [p for p in model.parameters() if p.requires_grad]
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    grads = [p.grad for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat.div_(world)
    torch._foreach_copy_(grads, [t.view_as(g) for t, g in zip(flat.split([g.numel() for g in grads]), grads,
                                                                    strict=True)])


def on_cpu(state: Any) -> Any:
    """A copy of a state dict on the host (kept across epochs, loaded by the driver without a GPU), a model's or an
    optimizer's (nested: its per-parameter moments and param groups)."""
    if isinstance(state, torch.Tensor):
        return state.detach().to("cpu", copy=True)
    if isinstance(state, dict):
        return {k: on_cpu(v) for k, v in state.items()}
    if isinstance(state, list | tuple):
        return type(state)(on_cpu(v) for v in state)
    return state


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


def config_changes(model: torch.nn.Module, cfg: Any, fields: tuple[str, ...]) -> dict[str, tuple[Any, Any]]:
    """{field: (the champion's, the new)} for the `fields` where the champion `model`'s config (`model.cfg`) and the
    new `cfg` differ. Some settings (the attention heads) change what the weights compute but not their shapes, so
    `fits` alone would warm-start a different function from them."""
    old = getattr(model, "cfg", None)
    pairs = {f: (getattr(old, f, None), getattr(cfg, f)) for f in fields} if old is not None else {}
    return {f: pair for f, pair in pairs.items() if pair[0] != pair[1]}


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


def initial_state(model: torch.nn.Module, opt: torch.optim.Optimizer, config: dict[str, Any],
                  state: dict[str, Any] | None) -> tuple[int, dict[str, Any] | None]:
    """Load the run's checkpoint `state` (`restore_state()`, None on a fresh start) or else the warm-start weights;
    returns the start epoch and that checkpoint, whose other entries the loop may carry on."""
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
    """Run `loop` on N workers with TorchTrainer, data-parallel over gloo on CPU or NCCL on GPU by settings."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    ensure_ray(settings)
    # Ray Train's controller polls the workers at most every RAY_TRAIN_HEALTH_CHECK_INTERVAL_S (2 s by default;
    # ray/train/v2/_internal/execution/controller/controller.py, its control loop) and learns only at a poll that
    # the workers' loop has ended, so a shorter poll returns every fit sooner, epochs no slower (README,
    # measurement log). The driver's value reaches the controller and the workers (ENV_VARS_TO_PROPAGATE in
    # ray/train/v2/_internal/constants.py), on a laptop and in a RayJob alike; an operator's own value wins.
    os.environ.setdefault(TRAIN_POLL_ENV, TRAIN_POLL_S)
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
            # Only the latest checkpoint is read (a resume, the result); by default Ray keeps every epoch's, a run's
            # and each retrain's worth of disk (README, measurement log). Ray never deletes the latest, and writes its
            # snapshot before deleting the others (ray/train/v2/_internal/execution/checkpoint/
            # checkpoint_manager.py, _save_state_and_delete_old_checkpoints).
            checkpoint_config=CheckpointConfig(num_to_keep=1),
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


@functools.lru_cache(maxsize=4)
def _tracking_client(uri: str):
    """One MLflow client per tracking URI in a worker: building one (its store: a database engine on the SQLite
    default) took ~0.1 s, ~90 % of an epoch's logging (py-spy on rank 0; README, measurement log)."""
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri)


def log_epoch_metrics(spec: dict[str, str] | None, metrics: dict[str, float], step: int) -> None:
    """From rank 0 inside the Ray Train loop: this epoch's metrics on the driver's MLflow run (`spec`)."""
    if spec:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)  # one backend write for the epoch, not one per metric
        batch = [Metric(k, float(v), now, step) for k, v in metrics.items()]
        _tracking_client(spec["uri"]).log_batch(spec["run_id"], metrics=batch)
