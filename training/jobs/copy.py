"""Copy LM job: LoRA fine-tuning on Ray Train (DDP or FSDP over N workers; GPU by settings), per-epoch
checkpoints holding only the adapter and optimizer, resume like the other jobs; then base vs adapter on
held-out items."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from core.copy_guard import CopyFacts, Guard
from core.copy_lm import CopyLMConfig, add_lora, load_base, load_lora, load_tokenizer, merged
from core.quiet import quiet_third_party
from core.settings import Settings
from training.copy_eval import CopyReport, evaluate_copy
from training.copy_fluency import fluency
from training.copy_text import collate, encode_pairs, lm_loss
from training.jobs.common import (
    fit,
    load_result_state,
    log_epoch_metrics,
    restore_state,
    save_and_report,
    worker_threads,
)
from training.models.lora_shards import lora_state, shard


def train_loop(config: dict[str, Any]) -> None:
    """Every worker: the same base, its shard of each global batch; rank 0 checkpoints the adapter."""
    quiet_third_party()  # this worker's own warnings filter (core.quiet)
    import ray.train
    import ray.train.torch

    torch.set_num_threads(config["threads"])
    cfg = CopyLMConfig(**config["model"])
    torch.manual_seed(cfg.seed)
    base, tok = load_base(config["base_dir"], Path(config["cache"]))
    model = add_lora(base, cfg)
    start, history = 0, []
    state = restore_state()
    if state is not None:
        load_lora(model, state["adapter"])
        start, history = int(state["epoch"]), list(state.get("history", []))
    elif config.get("init") is not None:
        load_lora(model, config["init"])
    device = ray.train.torch.get_device()
    fsdp = cfg.parallel == "fsdp" and ray.train.get_context().get_world_size() > 1
    net = shard(model, cfg.use_gpu) if fsdp else ray.train.torch.prepare_model(model)  # fsdp: shards go to device
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.lr, weight_decay=0.0)
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    if state is not None:
        _load_optimizer(model, opt, state["optimizer"], fsdp)
        _set_rng(state.get("rng"), rank, world, device)
    data = config["train"]
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    per_worker = max(1, cfg.batch_size // world)
    epochs = max(1, -(-cfg.steps // cfg.steps_per_epoch))
    for epoch in range(start, epochs):
        t0 = time.perf_counter()
        rng = np.random.default_rng(cfg.seed * 1_000 + epoch)
        net.train()
        losses, tokens = [], 0
        for _ in range(min(cfg.steps_per_epoch, cfg.steps - epoch * cfg.steps_per_epoch)):
            batch = rng.choice(len(data), size=per_worker * world, replace=len(data) < per_worker * world)
            b = collate([data[i] for i in batch[rank * per_worker : (rank + 1) * per_worker]], pad)
            b = {k: v.to(device) if torch.is_tensor(v) else v for k, v in b.items()}
            loss, _ = lm_loss(net, b)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(loss.item())
            tokens += int(b["attention_mask"].sum()) * world
        seconds = time.perf_counter() - t0
        metrics = {"epoch": epoch + 1, "train_loss": float(np.mean(losses)), "epoch_first_loss": losses[0],
                   "start_epoch": start, "epoch_seconds": seconds, "tokens_per_second": tokens / seconds}
        ckpt = None
        adapter, optimizer = lora_state(model), _optimizer_state(model, opt, fsdp)  # collectives under FSDP
        rng = _rng_states(world, device)  # a collective too
        history.append(metrics)
        if rank == 0:  # the epochs' metrics ride in the checkpoint: Ray keeps only the latest (`fit`)
            ckpt = {"adapter": adapter, "optimizer": optimizer, "rng": rng, "epoch": epoch + 1,
                    "config": cfg.to_dict(), "history": history}
            log_epoch_metrics(config.get("mlflow"), metrics, epoch + 1)
        save_and_report(metrics, ckpt)


def _rng_states(world: int, device: torch.device) -> list[dict[str, torch.Tensor]]:
    """Every rank's torch generator state (LoRA dropout draws from it; ranks diverge with their batches' padded
    lengths), so a resumed epoch draws the masks the uninterrupted run would have: resume is exact. The CUDA
    generator only when training on the GPU (a CPU run on a GPU node must not open a CUDA context)."""
    own = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        own["cuda"] = torch.cuda.get_rng_state(device)
    if world == 1:
        return [own]
    import torch.distributed as dist

    states: list[Any] = [None] * world
    dist.all_gather_object(states, own)
    return states


def _set_rng(states: list[dict[str, torch.Tensor]] | None, rank: int, world: int, device: torch.device) -> None:
    """This rank's saved generator state; a checkpoint from another world size (or before states were saved)
    keeps the fresh seed: resume still works, dropout masks differ."""
    if not states or len(states) != world:
        return
    torch.set_rng_state(states[rank]["cpu"])
    if "cuda" in states[rank] and device.type == "cuda":
        torch.cuda.set_rng_state(states[rank]["cuda"], device)


def _optimizer_state(model, opt, fsdp: bool) -> dict[str, Any]:
    """The optimizer state to checkpoint; under FSDP gathered whole (keyed by parameter name) onto rank 0, the
    one that checkpoints (every rank must call it)."""
    if not fsdp:
        return opt.state_dict()
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    return get_optimizer_state_dict(model, opt, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def _load_optimizer(model, opt, state: dict[str, Any], fsdp: bool) -> None:
    if not fsdp:
        opt.load_state_dict(state)
        return
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    set_optimizer_state_dict(model, opt, state, options=StateDictOptions(full_state_dict=True))


@dataclass
class CopyOutcome:
    adapter: dict[str, torch.Tensor]
    config: CopyLMConfig
    base: CopyReport | None  # None: evaluation skipped (throughput runs)
    tuned: CopyReport | None
    losses: list[float]  # train_loss per epoch
    first_loss: float  # the first step's loss (before any update)
    train_seconds: float
    tokens_per_second: float
    epochs: int
    warm_started: bool
    epoch_tokens_per_second: list[float]  # per epoch (the spread of the mean above)


def train_copy(settings: Settings, cfg: CopyLMConfig, train: list[tuple[CopyFacts, str]],
               held_out: list[tuple[CopyFacts, str]], guard: Guard, resume: bool = False,
               mlflow_run: dict[str, str] | None = None,
               warm: dict[str, torch.Tensor] | None = None, evaluate: bool = True) -> CopyOutcome:
    """`evaluate` False: training only (a throughput measurement); base and tuned reports are None."""
    from core.copy_lm import resolve_base

    cache = settings.model_cache
    base_dir = resolve_base(cfg.base_model, cache)  # once here, not raced by N workers
    tok = load_tokenizer(base_dir, cache)
    config = {"model": cfg.to_dict(), "threads": worker_threads(settings), "base_dir": base_dir,
              "cache": str(cache), "train": encode_pairs(tok, train), "mlflow": mlflow_run, "init": warm}
    t0 = time.perf_counter()
    result = fit(settings, "copy", train_loop, config, resume, max(1, -(-cfg.steps // cfg.steps_per_epoch)))
    seconds = time.perf_counter() - t0
    state = load_result_state(result)
    # Every epoch's metrics, resumed ones included (Ray's metrics_dataframe holds only the checkpoints it kept).
    history = state.get("history") or [result.metrics]
    losses = [float(m["train_loss"]) for m in history]
    first = float(history[0].get("epoch_first_loss", float("nan")))
    per_epoch = [float(m["tokens_per_second"]) for m in history if "tokens_per_second" in m]
    tps = float(np.mean(per_epoch)) if per_epoch else 0.0
    if not evaluate:
        return CopyOutcome(state["adapter"], cfg, None, None, losses, first, seconds, tps, int(state["epoch"]),
                           warm is not None, per_epoch)
    base, tok = load_base(base_dir, cache)
    base_report = evaluate_copy(base.eval(), tok, held_out, guard, cfg.max_new_tokens, train, cfg.min_p)
    tuned, tok = merged(base_dir, cache, cfg, state["adapter"])
    tuned_report = evaluate_copy(tuned, tok, held_out, guard, cfg.max_new_tokens, train, cfg.min_p)
    for report in (base_report, tuned_report):  # both read by the untuned base model
        report.fluency = fluency(base, tok, report.texts)
    del base
    return CopyOutcome(state["adapter"], cfg, base_report, tuned_report, losses, first, seconds, tps,
                       int(state["epoch"]), warm is not None, per_epoch)
