"""Ranking job: DIN/DCN-v2 ranker trained with Ray Train on point-in-time examples, then evaluated as
the served pipeline (recall top-N → ranker) with the same full-ranking protocol as retrieval."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from core.quiet import quiet_third_party
from core.ranking_inputs import RECALL_WEIGHTS, blend
from core.settings import Settings
from training.datasets import Prepared
from training.evaluation.metrics import auc, logloss, mae, ndcg_from_ranks, rmse
from training.evaluation.protocol import RankingReport, evaluate_full_ranking, full_ranks
from training.jobs.common import (
    fit,
    fits,
    initial_state,
    load_result_state,
    log_epoch_metrics,
    on_cpu,
    prepare_replicas,
    restore_state,
    run_epoch,
    save_and_report,
    worker_threads,
)
from training.models.ranking import Ranker, RankingConfig
from training.models.retrieval import SASRec
from training.ranking_data import (
    Examples,
    ItemTable,
    UserRows,
    genre_vocab,
    item_table,
    sample_examples,
    target_rows,
    training_histories,
    training_positives,
    user_rows,
)

RECALL_N = 200  # the most candidates the ranker re-orders (the serving default, `recall_candidates`)
# Candidate counts tried on validation: the ranker's cost is linear in them on every request (ONNX rows, item
# rows, the blend), so a larger pool must earn its place (`tune_blend`).
CANDIDATE_COUNTS = (25, 50, 100, RECALL_N)


def batch_arrays(users: UserRows, items: ItemTable, user_row: np.ndarray, item: np.ndarray,
                 recall: np.ndarray) -> tuple[np.ndarray, ...]:
    """Gather the six model inputs for examples (user_row[i], item[i]), in the model's argument order."""
    return (users.history[user_row], item[:, None], items.dense[item], items.content[item], users.dense[user_row],
            recall[:, None].astype(np.float32))


def batch_inputs(users: UserRows, items: ItemTable, user_row: np.ndarray, item: np.ndarray,
                 recall: np.ndarray) -> tuple[torch.Tensor, ...]:
    return tuple(torch.from_numpy(a) for a in batch_arrays(users, items, user_row, item, recall))


def _epoch(model: torch.nn.Module, opt: torch.optim.Optimizer, users: UserRows, items: ItemTable, ex: Examples,
           seed: int, rank: int, world: int, per_worker: int, device: torch.device) -> tuple[float, int]:
    """One pass over this rank's equal shard of `ex` in a seeded order: (mean loss, samples over all ranks)."""
    n_per = len(ex.item) // world
    shard = np.random.default_rng(seed).permutation(len(ex.item))[rank * n_per : (rank + 1) * n_per]
    model.train()
    batches = (shard[i : i + per_worker] for i in range(0, n_per, per_worker))
    loss = run_epoch(model, opt, ((*batch_arrays(users, items, ex.user_row[b], ex.item[b], ex.recall[b]),
                                 ex.click[b, None], ex.rating[b, None]) for b in batches), device)
    return loss, n_per * world


def train_loop(config: dict[str, Any]) -> None:
    """Runs on every Ray Train worker; resumes from the run's latest checkpoint if Ray restored one. After
    `epochs` over the training examples, `refit_epochs` more over the refit examples (through each user's
    validation interaction); rank 0 reports the weights before the refit beside the refit ones."""
    quiet_third_party()  # this worker's own warnings filter (core.quiet)
    import ray.train
    import ray.train.torch

    torch.set_num_threads(config["threads"])
    cfg = RankingConfig(**config["model"])
    saved = restore_state()
    if saved is not None:  # a resumed run keeps the width it was checkpointed with (32 before it was a setting)
        cfg.attention_hidden = RankingConfig.from_dict(saved["config"]).attention_hidden
    torch.manual_seed(cfg.seed)
    model = prepare_replicas(Ranker(cfg))  # on the device before the optimizer and its restored state
    device = ray.train.torch.get_device()
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr)
    start, restored = initial_state(model, opt, config, saved)  # every rank: the same checkpoint or warm start
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    users, items, ex = config["users"], config["items"], config["examples"]
    per_worker = max(1, cfg.batch_size // world)
    for epoch in range(start, cfg.epochs):
        t0 = time.perf_counter()
        train_loss, samples = _epoch(model, opt, users, items, ex, cfg.seed * 1_000 + epoch, rank, world, per_worker,
                                     device)
        metrics = {"epoch": epoch + 1, "train_loss": train_loss, "start_epoch": start,
                   "epoch_seconds": time.perf_counter() - t0, "samples": samples}
        state = None
        if rank == 0:
            state = {"model": model.state_dict(), "optimizer": opt.state_dict(), "epoch": epoch + 1,
                     "config": cfg.to_dict()}
            log_epoch_metrics(config.get("mlflow"), metrics, epoch + 1)
        save_and_report(metrics, state)
    if not cfg.refit_epochs or (restored or {}).get("refit_done"):
        return
    selected = on_cpu(model.state_dict())  # every rank holds the same weights (`prepare_replicas`): no broadcast
    rusers, rex = config["refit_users"], config["refit_examples"]
    for epoch in range(cfg.refit_epochs):
        loss, samples = _epoch(model, opt, rusers, items, rex, cfg.seed * 1_000 + 999 - epoch, rank, world,
                               per_worker, device)
    done = {"refit_epochs": cfg.refit_epochs, "refit_samples": samples, "refit_loss": loss}
    save_and_report(done, {"model": model.state_dict(), "optimizer": opt.state_dict(), "epoch": cfg.epochs,
                           "config": cfg.to_dict(), "selected": selected, "refit_done": True} if rank == 0 else None)


@torch.no_grad()
def predict(model: Ranker, users: UserRows, items: ItemTable, user_row, item, recall) -> tuple[np.ndarray, ...]:
    model.eval()
    out_p, out_r = [], []
    for i in range(0, len(item), 4096):
        sl = slice(i, i + 4096)
        (p, r), _ = model(*batch_inputs(users, items, user_row[sl], item[sl], recall[sl]))
        out_p.append(p[:, 0].numpy())
        out_r.append(r[:, 0].numpy())
    return np.concatenate(out_p), np.concatenate(out_r)


@dataclass
class StageData:
    users: UserRows
    targets: np.ndarray  # (U,) item index of the held-out interaction
    ratings: np.ndarray  # (U,) its rating
    histories: list[np.ndarray]  # items to exclude (everything before the target)


def stage_data(settings: Settings, prepared: Prepared, recall: SASRec, stage: str) -> StageData:
    """Held-out targets with the protocol's histories (everything before the target in (timestamp, item_id)
    order): the same the retrieval job evaluates on and the served online profile holds."""
    rows = target_rows(prepared, stage)
    index = prepared.item_index
    user_ids, hists, _ = prepared.eval_set(stage)  # type: ignore[arg-type]
    by_user = dict(zip(user_ids.tolist(), hists, strict=True))
    df = prepared.split.valid if stage == "valid" else prepared.split.test
    df = df.sort_values("user_id").reset_index(drop=True)
    targets = df["item_id"].map(index).to_numpy(dtype=np.int64)
    histories = [by_user[int(u)] for u in df["user_id"]]
    users = user_rows(settings, rows, recall, histories)
    return StageData(users, targets, df["rating"].to_numpy(np.float32), histories)


def candidate_scores(ranker: Ranker, recall: SASRec, data: StageData, items: ItemTable, n: int = RECALL_N):
    """For every evaluation user: recall scores over the catalogue (U, n_items + 1), recall's top-n unseen
    candidates in recall order (U, n), so any first m columns are its top m, and the ranker's p(click) for them."""
    item_vectors = recall.items.all_items().detach().numpy()
    s = data.users.vectors @ item_vectors.T
    n = min(n, s.shape[1] - 1)  # a catalogue smaller than the pool: every item is a candidate
    masked = s.copy()
    masked[:, 0] = -np.inf
    for r, hist in enumerate(data.histories):
        masked[r, hist] = -np.inf
    cand = np.argpartition(-masked, n, axis=1)[:, :n]
    order = np.argsort(-np.take_along_axis(masked, cand, axis=1), axis=1, kind="stable")
    cand = np.take_along_axis(cand, order, axis=1)
    rows = np.arange(len(s))
    p, _ = predict(ranker, data.users, items, np.repeat(rows, n), cand.reshape(-1),
                   np.take_along_axis(s, cand, axis=1).reshape(-1))
    return s, cand, p.reshape(len(s), n)


def pipeline_scores(s: np.ndarray, cand: np.ndarray | None, p: np.ndarray | None, weight: float):
    """score_fn for the full-ranking protocol: candidates ordered by the blend, the rest below in recall order."""

    def score(rows: np.ndarray) -> np.ndarray:
        if cand is None or p is None:
            return s[rows]
        out = s[rows] - 1e6
        c = cand[rows]
        np.put_along_axis(out, c, blend(p[rows], np.take_along_axis(s[rows], c, axis=1), weight), axis=1)
        return out

    return score


def evaluate_pipeline(ranker: Ranker | None, recall: SASRec, data: StageData, items: ItemTable,
                      n_items: int, seed: int, weight: float | None = None) -> RankingReport:
    """Recall alone (ranker None) or recall → ranker with its tuned `recall_weight` (or `weight`)."""
    rows = np.arange(len(data.targets))
    if ranker is None:
        fn = pipeline_scores(data.users.vectors @ recall.items.all_items().detach().numpy().T, None, None, 0.0)
    else:
        s, cand, p = candidate_scores(ranker, recall, data, items, ranker.cfg.candidates or RECALL_N)
        fn = pipeline_scores(s, cand, p, ranker.cfg.recall_weight if weight is None else weight)
    return evaluate_full_ranking(fn, rows, data.histories, data.targets, n_items, seed=seed)


@dataclass(frozen=True)
class BlendChoice:
    """The served blend chosen on validation: how many of recall's candidates the ranker re-orders, and the
    recall weight; with each count's best weight and validation NDCG@10, for the run's record."""

    candidates: int
    weight: float
    ndcg: dict[int, float]  # candidate count → validation NDCG@10 at its best weight
    weights: dict[int, float]  # candidate count → that weight (the served weight may be larger: `choose_blend`)


def tune_blend(ranker: Ranker, recall: SASRec, data: StageData, items: ItemTable, n_items: int,
               seed: int) -> BlendChoice:
    """The served candidate count and recall weight, chosen on validation NDCG@10 by `choose_blend`."""
    counts = [c for c in CANDIDATE_COUNTS if c <= RECALL_N]
    s, cand, p = candidate_scores(ranker, recall, data, items, max(counts))
    rows = np.arange(len(data.targets))
    grid = {}  # (count, weight) → per-user NDCG@10
    for c in counts:
        for w in RECALL_WEIGHTS:
            ranks, _ = full_ranks(pipeline_scores(s, cand[:, :c], p[:, :c], w), rows, data.histories,
                                  data.targets, n_items, seed=seed)
            grid[c, w] = ndcg_from_ranks(ranks, 10)
    return choose_blend(grid)


def choose_blend(grid: dict[tuple[int, float], np.ndarray]) -> BlendChoice:
    """The one-standard-error rule, the error taken over the users' paired differences. First the candidate
    count: each count at its best recall weight, and the smallest count within one standard error of the best one
    (a larger pool costs ranking time on every request). Then the weight at that count: the largest whose
    validation NDCG@10 is within one standard error of the best weight's, so the ranker's re-ordering is served
    only where it beats recall's own order by more than noise (on ML-100K a weight of 0.5 won validation by
    +0.004 ± 0.005 over recall's order and lost test by 0.004; README, measurement log). Last, the count again at
    the weight served: a pool chosen for a weight the rule then set aside is cut to the smallest within one standard
    error at the served one (at recall's own order a larger pool only has more near-ties broken, and the ranker
    scored 100 candidates a request for that on ML-100K)."""
    counts = sorted({c for c, _ in grid})
    weights = {c: sorted(w for cc, w in grid if cc == c) for c in counts}
    top = {c: max(weights[c], key=lambda w: (float(grid[c, w].mean()), -w)) for c in counts}
    best_count = max(counts, key=lambda c: (float(grid[c, top[c]].mean()), -c))
    count = next(c for c in counts if _within_one_se(grid[c, top[c]], grid[best_count, top[best_count]]))
    weight = max(w for w in weights[count] if _within_one_se(grid[count, w], grid[count, top[count]]))
    count = next(c for c in counts if (c, weight) in grid and _within_one_se(grid[c, weight], grid[count, weight]))
    return BlendChoice(count, weight, {c: round(float(grid[c, top[c]].mean()), 5) for c in counts}, dict(top))


def _within_one_se(candidate: np.ndarray, best: np.ndarray) -> bool:
    """Whether `candidate`'s mean is at most one standard error (of the paired per-user difference) below `best`'s."""
    diff = candidate - best
    se = float(diff.std(ddof=1) / np.sqrt(len(diff))) if len(diff) > 1 else 0.0
    return float(diff.mean()) >= -se


def classification_metrics(ranker: Ranker, recall: SASRec, data: StageData, items: ItemTable,
                           cfg: RankingConfig) -> dict[str, float]:
    """AUC/logloss on held-out positives + sampled negatives; rating RMSE/MAE on held-out positives."""
    item_vectors = recall.items.all_items().detach().numpy()
    ex = sample_examples(data.users, data.targets, data.ratings, item_vectors, cfg, seed=cfg.seed + 7)
    p, r = predict(ranker, data.users, items, ex.user_row, ex.item, ex.recall)
    pos = ex.click > 0.5
    return {"auc": auc(ex.click, p), "logloss": logloss(ex.click, p),
            "rating_rmse": rmse(ex.rating[pos], r[pos]), "rating_mae": mae(ex.rating[pos], r[pos])}


@dataclass
class RankingOutcome:
    model: Ranker
    items: ItemTable
    valid: RankingReport
    test: RankingReport
    recall_valid: RankingReport
    recall_test: RankingReport
    classification: dict[str, float]
    train_seconds: float
    samples_per_second: float
    epochs: int
    warm_started: bool = False  # began from the champion's weights
    selected: Ranker | None = None  # the weights before the refit, which validation judged (None: no refit ran)
    blend: BlendChoice | None = None  # the candidate count and recall weight validation chose


def _examples(settings: Settings, prepared: Prepared, recall: SASRec, cfg: RankingConfig, per_user: int,
              through_valid: bool, seed: int) -> tuple[UserRows, Examples]:
    """Each user's latest `per_user` interactions (through the validation one with `through_valid`) as positives,
    with their point-in-time user rows and negatives, scored by `recall`."""
    from training.features import training_entities

    pos = training_positives(prepared, per_user, through_valid)
    users = user_rows(settings, training_entities(pos), recall, training_histories(prepared, pos, through_valid))
    positives = pos["item_id"].map(prepared.item_index).to_numpy(dtype=np.int64)
    return users, sample_examples(users, positives, pos["rating"].to_numpy(np.float32),
                                  recall.items.all_items().detach().numpy(), cfg, seed)


def train_ranking(settings: Settings, prepared: Prepared, recall: SASRec, cfg: RankingConfig,
                  per_user: int = 30, resume: bool = False, mlflow_run: dict[str, str] | None = None,
                  warm: dict[str, torch.Tensor] | None = None, recall_valid: SASRec | None = None) -> RankingOutcome:
    """Examples (Feast point-in-time user features, protocol histories, recall) → Ray Train → pipeline evaluation.
    `recall_valid`: the recall weights validation chose (before their refit over the validation interactions,
    `training.jobs.retrieval._refit`). The ranker learns from their scores and hard negatives, and its blend is
    tuned and validation reported against them, so training and validation see one recall that has not learned
    the validation targets. Then, like retrieval, the ranker is refit (`refit_epochs`) on examples through each
    user's validation interaction, scored by the refit recall it will serve with; test pairs the two refits,
    neither of which has learned the test targets."""
    recall_valid = recall if recall_valid is None else recall_valid
    cfg.genres = genre_vocab(prepared)
    cfg.n_items = prepared.n_items + 1
    cfg.max_len = recall.cfg.max_len
    items = item_table(settings, prepared, cfg.genres)
    users, ex = _examples(settings, prepared, recall_valid, cfg, per_user, False, cfg.seed)
    config = {"model": cfg.to_dict(), "threads": worker_threads(settings), "users": users, "items": items,
              "examples": ex, "mlflow": mlflow_run,
              "init": warm if warm is not None and fits(Ranker(cfg), warm) else None}
    if cfg.refit_epochs:
        config["refit_users"], config["refit_examples"] = _examples(settings, prepared, recall, cfg, per_user, True,
                                                                    cfg.seed + 1)
    t0 = time.perf_counter()
    result = fit(settings, "ranking", train_loop, config, resume, cfg.epochs)
    seconds = time.perf_counter() - t0
    state = load_result_state(result)
    model = Ranker(RankingConfig.from_dict(state["config"]))
    model.load_state_dict(state["model"])
    model.eval()
    selected = model
    if "selected" in state:  # validation judges the weights before the refit: the refit learned its targets
        selected = Ranker(model.cfg)
        selected.load_state_dict(state["selected"])
        selected.eval()
    valid = stage_data(settings, prepared, recall_valid, "valid")
    test = stage_data(settings, prepared, recall, "test")
    n = prepared.n_items
    choice = tune_blend(selected, recall_valid, valid, items, n, cfg.seed)
    model.cfg.candidates, model.cfg.recall_weight = choice.candidates, choice.weight
    samples = len(ex.item) * cfg.epochs + (len(config["refit_examples"].item) * cfg.refit_epochs
                                           if state.get("refit_done") else 0)
    return RankingOutcome(
        model, items,
        evaluate_pipeline(selected, recall_valid, valid, items, n, cfg.seed),
        evaluate_pipeline(model, recall, test, items, n, cfg.seed),
        evaluate_pipeline(None, recall_valid, valid, items, n, cfg.seed),
        evaluate_pipeline(None, recall, test, items, n, cfg.seed),
        classification_metrics(selected, recall_valid, valid, items, cfg),
        seconds, samples / seconds, state["epoch"], config["init"] is not None,
        selected if selected is not model else None, choice,
    )
