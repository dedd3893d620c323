"""Retrieval job: SASRec-style encoder trained on Ray Train workers (`Layout`), evaluated, logged and registered."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from core.quiet import quiet_third_party
from core.settings import Settings
from training.datasets import Prepared
from training.evaluation.protocol import RankingReport, evaluate_full_ranking
from training.jobs.common import (
    adamw,
    fit,
    fits,
    load_result_state,
    log_epoch_metrics,
    on_cpu,
    on_worker_device,
    prepare_replicas,
    restore_state,
    run_epoch,
    save_and_report,
    worker_threads,
)
from training.models.retrieval import SHARED, RetrievalConfig, SASRec, joined_state, member_config, member_state
from training.sequences import left_pad, training_windows, window_priors


def score_fn(model: SASRec, seqs: np.ndarray, device: torch.device | None = None):
    """Full-catalogue scores for evaluation: user vector · all item vectors, computed where the model is."""
    device = device or torch.device("cpu")

    @torch.no_grad()
    def score(rows: np.ndarray) -> np.ndarray:
        model.eval()
        table = model.items.all_items()
        u = model.user_vector(torch.from_numpy(seqs[rows]).to(device), table)
        return (u @ table.T).float().cpu().numpy()

    return score


def evaluate(model: SASRec, prepared: Prepared, stage: str, seed: int = 0) -> RankingReport:
    users, hists, targets = prepared.eval_set(stage)  # type: ignore[arg-type]
    seqs = left_pad(hists, model.cfg.max_len)
    rows = np.arange(len(users))
    return evaluate_full_ranking(score_fn(model, seqs), rows, hists, targets, prepared.n_items, seed=seed)


def stopping(cfg: RetrievalConfig, epoch: int, best_epoch: int, seconds: float) -> tuple[str, float]:
    """After `epoch` (1-based) with the best validation so far at `best_epoch` and `seconds` spent: why to stop
    ("" to go on), and the learning-rate factor for the next epoch. The data set decides how long to train,
    within the epoch cap and the time budget: no fixed epoch count transfers between data sets."""
    stale = epoch - best_epoch
    if epoch >= cfg.epochs:
        return "epoch cap", 1.0
    if cfg.patience and stale >= cfg.patience:
        return f"no better validation NDCG@10 for {stale} epochs", 1.0
    if cfg.budget_s and seconds >= cfg.budget_s:
        return f"time budget {cfg.budget_s:.0f} s", 1.0
    return "", 0.5 if cfg.plateau and stale and stale % cfg.plateau == 0 else 1.0


def _agree(flag: float, device: torch.device, world: int) -> float:
    """Rank 0's decision on every rank (the ranks must run the same number of steps)."""
    if world == 1:
        return flag
    import torch.distributed as dist

    t = torch.tensor([flag], dtype=torch.float32, device=device)
    dist.broadcast(t, src=0)
    return float(t.item())


def _batches(weights: np.ndarray, seed: int, rank: int, world: int, per_worker: int) -> Iterator[np.ndarray]:
    """This rank's row batches of one epoch. A seeded permutation is cut into global batches of
    `per_worker × world` rows, the batches one worker would take, and each global batch is split between the
    ranks by `weights` (a row's target positions: its share of the full-softmax logits, most of a step's cost)
    so that no rank waits for a heavier half at the step's all-reduce. Every rank takes the same number of steps
    and rows; the global batches do not depend on the number of workers."""
    size = per_worker * world
    perm = np.random.default_rng(seed).permutation(len(weights))
    for i in range(0, len(perm), size):
        rows = perm[i : i + size]
        take = len(rows) // world  # a last short batch: equal parts, the remainder left out
        if take == 0:
            return
        yield _balanced_part(rows[: take * world], weights, rank, world)


def _balanced_part(rows: np.ndarray, weights: np.ndarray, rank: int, world: int) -> np.ndarray:
    """`rank`'s part of `rows` cut into `world` equal-sized parts of near-equal weight: heaviest row first, each
    to the lightest part that still has room (the same on every rank: a stable sort of the same rows)."""
    if world == 1:
        return rows
    cap = len(rows) // world
    load, size = np.zeros(world), np.zeros(world, dtype=np.int64)
    mine = []
    for r in rows[np.argsort(-weights[rows], kind="stable")]:
        part = min((p for p in range(world) if size[p] < cap), key=lambda p: (load[p], p))
        load[part] += weights[r]
        size[part] += 1
        if part == rank:
            mine.append(r)
    return np.sort(np.asarray(mine, dtype=np.int64))


def _epoch_rows(n_rows: int, per_worker: int, world: int) -> int:
    """Rows one epoch of `_batches` trains on, all ranks together."""
    size = per_worker * world
    return n_rows // size * size + n_rows % size // world * world


@dataclass(frozen=True)
class Layout:
    """How the ranks share the retrieval model. Its members are independent models (`training.models.retrieval`),
    so when the ranks can take equal shares of them (`split`) each rank trains its own members on every batch, with
    no gradient exchange at all; the ranks meet once an epoch, when rank 0 joins the members to validate and
    checkpoint them. Otherwise (one rank, or members the ranks cannot share) the ranks are data-parallel replicas
    of the whole model, each taking a part of every batch (`_batches`). Either way a step learns from the same
    global batch. Split, each worker on ML-100K (1 thread) steps one member over 32 windows in ~30 ms, where the
    replicas stepped both over 16 in ~53 ms and waited ~7 for each other at the all-reduce (README, measurement
    log)."""

    rank: int
    world: int
    split: bool

    @classmethod
    def of(cls, cfg: RetrievalConfig, rank: int, world: int) -> Layout:
        return cls(rank, world, world > 1 and cfg.members % world == 0)

    def describe(self, cfg: RetrievalConfig) -> str:
        if self.split:
            return (f"each of {self.world} workers trains {cfg.members // self.world} of the {cfg.members} members "
                    "(no gradient exchange)")
        return f"{self.world} data-parallel replicas" if self.world > 1 else "1 worker"

    def config(self, cfg: RetrievalConfig) -> RetrievalConfig:
        """The model this rank trains: its members, or the whole model."""
        return member_config(cfg, cfg.members // self.world) if self.split else cfg

    def own(self, state: dict[str, torch.Tensor], cfg: RetrievalConfig) -> dict[str, torch.Tensor]:
        """This rank's part of a whole model's state."""
        if not self.split:
            return state
        k = cfg.members // self.world
        return member_state(state, cfg, self.rank * k, k)

    @property
    def parts(self) -> int:
        """Ranks each global batch is cut between."""
        return 1 if self.split else self.world

    def per_worker(self, cfg: RetrievalConfig) -> int:
        return cfg.batch_size if self.split else max(1, cfg.batch_size // self.world)

    def batches(self, weights: np.ndarray, seed: int, per_worker: int) -> Iterator[np.ndarray]:
        return _batches(weights, seed, 0 if self.split else self.rank, self.parts, per_worker)

    def epoch(self, n_rows: int, per_worker: int) -> tuple[int, int]:
        """(rows, global batches) of one epoch of `batches` over `n_rows` rows."""
        rows = _epoch_rows(n_rows, per_worker, self.parts)
        return rows, rows // (per_worker * self.parts)

    def gathered(self, obj: Any) -> list[Any]:
        """Every rank's `obj`, in rank order (split), or this rank's alone (the replicas are one model)."""
        if not self.split:
            return [obj]
        import torch.distributed as dist

        out: list[Any] = [None] * self.world
        # On NCCL the pickled objects travel through torch.cuda.current_device(), which Ray Train sets on each GPU
        # worker (ray/train/torch/config.py, TorchConfigContextManager; ray/train/v2/torch/train_loop_utils.py,
        # prepare_model); the states are on the host already (`part`, `on_cpu`).
        dist.all_gather_object(out, obj)
        return out

    def part(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """This rank's state to gather, on the host: rank 0's whole, the others' without the buffers every rank
        holds alike (the content table, which `joined_state` reads from rank 0's)."""
        return on_cpu({k: v for k, v in state.items() if self.rank == 0 or k not in SHARED})

    def whole(self, state: dict[str, torch.Tensor], cfg: RetrievalConfig) -> dict[str, torch.Tensor]:
        """The whole model's state from every rank's own (on the host)."""
        parts = self.gathered(self.part(state))
        return joined_state(parts, cfg) if self.split else parts[0]

    def from_rank_zero(self, obj: Any) -> Any:
        """Rank 0's `obj` on every rank."""
        if self.world == 1:
            return obj
        import torch.distributed as dist

        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]


def window_batches(inputs: np.ndarray, targets: np.ndarray, priors: np.ndarray | None,
                   rows: Iterator[np.ndarray]) -> Iterator[tuple[np.ndarray, ...]]:
    """The model's arguments for each batch of window rows: with the seen-item mask, each window's earlier items."""
    for b in rows:
        yield (inputs[b], targets[b]) if priors is None else (inputs[b], targets[b], priors[b])


def _refit(model: SASRec, best: dict[str, Any] | None, config: dict[str, Any], cfg: RetrievalConfig,
           device: torch.device, lay: Layout) -> dict[str, torch.Tensor]:
    """`refit_epochs` epochs from the kept weights over every interaction before the test target (the validation
    targets too: each user's most recent one, which the chosen epoch never learned from). Rank 0's kept weights go
    to every rank first; returns the whole refit model's state. With `average_epochs` the refit ends, as training
    did, at the weight average, begun at the kept weights: the raw weights' NDCG@10 moves ±0.005 from one epoch to
    the next, and a refit of them served that noise (ML-100K, seeds 0 / 1: test NDCG@10 0.1067 / 0.1052 raw,
    0.1158 / 0.1167 averaged over 3 epochs; README, measurement log)."""
    kept = lay.from_rank_zero(best["model"] if lay.rank == 0 and best is not None else None)
    if kept is not None:
        model.load_state_dict(lay.own(kept, cfg))
    # A fresh optimizer: the last epoch's moments belong to the raw weights, not to the kept average's.
    opt = adamw(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    inputs, targets, priors = config["refit_inputs"], config["refit_targets"], config.get("refit_priors")
    weights = (targets != 0).sum(1)
    per_worker = lay.per_worker(cfg)
    _, steps = lay.epoch(len(inputs), per_worker)
    avg = weight_average(model, cfg.average_epochs, steps, model.state_dict())  # begun at the kept weights
    for epoch in range(cfg.refit_epochs):
        model.train()
        batches = lay.batches(weights, cfg.seed * 1_000 + 999 - epoch, per_worker)
        run_epoch(model, opt, window_batches(inputs, targets, priors, batches), device, average=not lay.split,
                  after_step=None if avg is None else lambda: avg.update_parameters(model))
    model.eval()
    return lay.whole((model if avg is None else avg.module).state_dict(), cfg)


def weight_average(model: SASRec, epochs: float, steps_per_epoch: int, state: dict[str, torch.Tensor] | None = None):
    """The exponential average of `model`'s parameters over optimizer steps (`torch.optim.swa_utils`) with a
    horizon of `epochs` epochs (decay 1 − 1/(epochs·steps), so it means the same on any data size), or None for 0.
    What validation judges and the run keeps: on ML-100K the raw weights' validation NDCG@10 moved ±0.005 from
    epoch to epoch, so the best epoch was partly luck and patience stopped one seed at epoch 25 at 0.109; the
    average's curve is smooth (README, measurement log). `state`: a restored average."""
    if not epochs:
        return None
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

    decay = 1.0 - 1.0 / max(1.0, epochs * max(1, steps_per_epoch))
    avg = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay))
    if state is not None:
        avg.module.load_state_dict(state)
        avg.n_averaged.fill_(1)
    return avg


def _restored_optimizer(opt: torch.optim.Optimizer, saved: Any, lay: Layout) -> None:
    """The checkpoint's optimizer state into `opt` when it was saved under this layout (split: one state per
    rank); a run resumed under another layout keeps the weights and starts its moments afresh."""
    if lay.split and isinstance(saved, list) and len(saved) == lay.world:
        opt.load_state_dict(saved[lay.rank])
    elif not lay.split and isinstance(saved, dict):
        opt.load_state_dict(saved)


def train_loop(config: dict[str, Any]) -> None:
    """Runs on every Ray Train worker, each training its share of the model (`Layout`). Resumes from the run's
    latest checkpoint if Ray restored one. Rank 0 evaluates the whole model every epoch (the weight average's,
    `weight_average`, when `average_epochs` is set), keeps the best weights, and decides the learning rate and
    when to stop; then every rank refits from the kept weights (`_refit`) and rank 0 reports the refit weights
    beside the kept ones."""
    quiet_third_party()  # this worker's own warnings filter (core.quiet)
    import ray.train
    import ray.train.torch

    torch.set_num_threads(config["threads"])
    cfg = RetrievalConfig(**config["model"])
    torch.manual_seed(cfg.seed)
    content = torch.from_numpy(config["content"])
    whole = SASRec(cfg, content)  # the same seeded start on every rank; a split rank trains its members of it
    ctx = ray.train.get_context()
    lay = Layout.of(cfg, ctx.get_world_rank(), ctx.get_world_size())
    rank = lay.rank
    restored = restore_state()
    start = int(restored["epoch"]) if restored else 0
    if restored or config.get("init") is not None:
        whole.load_state_dict(restored["model"] if restored else config["init"])
    model = SASRec(lay.config(cfg), content) if lay.split else whole
    if lay.split:
        model.load_state_dict(lay.own(whole.state_dict(), cfg))
        # Each rank its own dropout stream: seeded alike, the members drew the same masks (one worker draws
        # different ones for each), and an ensemble gains from its members' differences.
        torch.manual_seed(cfg.seed * 1_000 + 1 + lay.rank)
    # On the device before the optimizer: a restored optimizer state goes where the parameters are when it is
    # loaded, and a fused AdamW steps CUDA parameters with CPU moments no further (the copy job's order too).
    model = on_worker_device(model) if lay.split else prepare_replicas(model)
    device = ray.train.torch.get_device()
    opt = adamw(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    if restored:
        _restored_optimizer(opt, restored["optimizer"], lay)
    best = restored.get("best") if restored else None  # a resumed run keeps its best epoch (early stopping)
    judge = whole.to(device) if lay.split and rank == 0 else None  # rank 0 validates the joined members in it
    inputs, targets, priors = config["inputs"], config["targets"], config.get("priors")
    per_worker = lay.per_worker(cfg)
    weights = (targets != 0).sum(1)  # a window's target positions (`_batches`)
    valid = config["valid"]
    spent = restored.get("spent", 0.0) if restored else 0.0
    stopped, last = (restored or {}).get("stopped", ""), start  # a restored run that had stopped trains no more
    rows, steps = lay.epoch(len(inputs), per_worker)
    saved_avg = (restored or {}).get("average")
    avg = weight_average(model, cfg.average_epochs, steps, None if saved_avg is None else lay.own(saved_avg, cfg))
    for epoch in range(start, cfg.epochs if not stopped else start):
        t0 = time.perf_counter()
        model.train()
        train_loss = run_epoch(model, opt, window_batches(inputs, targets, priors, lay.batches(
                                   weights, cfg.seed * 1_000 + epoch, per_worker)), device,
                               after_step=None if avg is None else lambda: avg.update_parameters(model),
                               average=not lay.split)
        seconds = time.perf_counter() - t0
        # Split, each rank's members and their average reach rank 0, which joins them (one exchange an epoch).
        every = lay.gathered((lay.part(model.state_dict()), None if avg is None else lay.part(avg.module.state_dict()),
                              train_loss) if lay.split else (None, None, train_loss))
        metrics = {"epoch": epoch + 1, "train_loss": float(np.mean([e[2] for e in every])), "start_epoch": start,
                   "epoch_seconds": seconds, "samples": rows}
        if rank == 0:
            if lay.split:
                raw = joined_state([e[0] for e in every], cfg)
                averaged = None if avg is None else joined_state([e[1] for e in every], cfg)
                judge.load_state_dict(averaged if averaged is not None else raw)
                judged = judge
            else:
                raw, averaged = model.state_dict(), None if avg is None else avg.module.state_dict()
                judged = avg.module if avg is not None else model
            hists = [np.asarray(h) for h in valid["histories"]]
            rep = evaluate_full_ranking(
                score_fn(judged, valid["seqs"], device), np.arange(len(hists)), hists, valid["targets"],
                cfg.n_items - 1, seed=cfg.seed,
            )
            metrics.update(rep.as_dict("epoch_val_"))  # not "val_": that name is the kept model's summary
            if best is None or rep.ndcg > best["val_ndcg"]:
                best = {"model": on_cpu(judged.state_dict()),
                        "epoch": epoch + 1, "val_ndcg": rep.ndcg}
            metrics["best_epoch"] = best["epoch"]
        spent += time.perf_counter() - t0
        why, factor = stopping(cfg, epoch + 1, best["epoch"], spent) if rank == 0 else ("", 1.0)
        code = _agree(-1.0 if why else factor, device, lay.world)  # -1: stop; else the learning-rate factor
        for g in opt.param_groups:
            g["lr"] *= code if code > 0 else 1.0
        metrics["lr"] = opt.param_groups[0]["lr"]
        stopped, last = why, epoch + 1
        moments = lay.gathered(on_cpu(opt.state_dict())) if lay.split else opt.state_dict()  # one per rank, split
        if rank == 0:
            log_epoch_metrics(config.get("mlflow"), metrics, epoch + 1)
            save_and_report(metrics, {"model": raw, "optimizer": moments, "epoch": epoch + 1, "config": cfg.to_dict(),
                                      "best": best, "spent": spent, "stopped": why, "average": averaged})
        else:
            save_and_report(metrics, None)
        if code < 0:
            break
    if cfg.refit_epochs and not (restored or {}).get("refit_done"):
        refit = _refit(model, best, config, cfg, device, lay)
        done = {"refit_epochs": cfg.refit_epochs, "refit_samples": len(config["refit_inputs"])}
        if rank == 0:
            best = {**best, "selected": best["model"], "model": refit}  # the refit weights are what is registered
            save_and_report(done, {"model": refit, "optimizer": None if lay.split else opt.state_dict(), "epoch": last,
                                   "config": cfg.to_dict(), "best": best, "spent": spent, "refit_done": True,
                                   "stopped": stopped})
        else:
            save_and_report(done, None)


@dataclass
class RetrievalOutcome:
    model: SASRec
    valid: RankingReport
    test: RankingReport
    train_seconds: float
    samples_per_second: float
    epochs: int
    warm_started: bool = False  # began from the champion's weights
    best_epoch: int = 0  # the epoch whose weights were kept (best validation NDCG@10)
    stopped: str = ""  # why training ended: "epoch cap", patience or the time budget
    selected: SASRec | None = None  # the kept epoch's weights before the refit (None: no refit ran)


def train_retrieval(
    settings: Settings,
    prepared: Prepared,
    content: np.ndarray,
    cfg: RetrievalConfig,
    resume: bool = False,
    mlflow_run: dict[str, str] | None = None,
    warm: dict[str, torch.Tensor] | None = None,
) -> RetrievalOutcome:
    """config → data → Ray Train loop → final evaluation on valid and test (full ranking)."""
    seqs = [prepared.train[u] for u in sorted(prepared.train)]
    inputs, targets = training_windows(seqs, cfg.max_len, cfg.stride)
    mask_prior = cfg.mask_prior if cfg.mask_seen else 0  # items before each window its seen-item mask reads
    priors = window_priors(seqs, cfg.max_len, cfg.stride, mask_prior) if mask_prior else None
    _, before_test, _ = prepared.eval_set("test")  # every interaction before each user's test target
    refit_inputs, refit_targets = training_windows(before_test, cfg.max_len, cfg.stride)
    refit_priors = window_priors(before_test, cfg.max_len, cfg.stride, mask_prior) if mask_prior else None
    _, vh, vt = prepared.eval_set("valid")
    content_full = np.zeros((prepared.n_items + 1, content.shape[1]), dtype=np.float32)
    content_full[1:] = content
    config = {
        "model": cfg.to_dict(),
        "threads": worker_threads(settings),
        "content": content_full,
        "inputs": inputs,
        "targets": targets,
        "refit_inputs": refit_inputs,
        "refit_targets": refit_targets,
        "priors": priors,
        "refit_priors": refit_priors,
        "valid": {"seqs": left_pad(vh, cfg.max_len), "histories": vh, "targets": vt},
        "mlflow": mlflow_run,
        "init": warm if warm is not None and fits(SASRec(cfg, torch.from_numpy(content_full)), warm) else None,
    }
    if config["init"] is not None:  # the content of today's catalogue, not the one the champion was trained on
        config["init"] = {**config["init"], "items.content": torch.from_numpy(content_full)}
    t0 = time.perf_counter()
    result = fit(settings, "retrieval", train_loop, config, resume, cfg.epochs)
    seconds = time.perf_counter() - t0
    state = load_result_state(result)
    model = SASRec(RetrievalConfig(**state["config"]), torch.from_numpy(content_full))
    best = state.get("best") or {"model": state["model"], "epoch": state["epoch"]}
    model.load_state_dict(best["model"])  # the best validation epoch's weights, refit (`_refit`) when it ran
    model.eval()
    selected = model
    if "selected" in best:  # validation is reported for the weights it chose: the refit ones learned its targets
        selected = SASRec(model.cfg, torch.from_numpy(content_full))
        selected.load_state_dict(best["selected"])
        selected.eval()
    samples = len(inputs) * state["epoch"] + len(refit_inputs) * int(state.get("refit_done", False)) * cfg.refit_epochs
    return RetrievalOutcome(model, evaluate(selected, prepared, "valid", cfg.seed),
                            evaluate(model, prepared, "test", cfg.seed), seconds, samples / seconds,
                            state["epoch"], config["init"] is not None, int(best["epoch"]),
                            state.get("stopped", ""), selected if selected is not model else None)
