"""Ranker training and evaluation examples, built from point-in-time Feast features and the recall model.

Negatives per positive: half hard (the recall model's top candidates the user did not take), half
uniform, so the ranker learns both to re-order recall's list and to reject off-taste items.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from core.ranking_inputs import USER_DENSE_FEATURES
from core.settings import Settings
from training.datasets import Prepared
from training.features import item_features, training_entities, user_features_at
from training.models.ranking import RankingConfig, item_dense, user_dense
from training.models.retrieval import SASRec
from training.sequences import left_pad

HARD_POOL = 50  # hard negatives are drawn from recall's top-50


@dataclass
class ItemTable:
    """Per-index item inputs of the ranker (row 0 = padding)."""

    dense: np.ndarray  # (n_items + 1, G + 3)
    content: np.ndarray  # (n_items + 1, 384)


@dataclass
class UserRows:
    """One row per (user, time): the ranker's user-side inputs and the recall model's user vector."""

    history: np.ndarray  # (P, L) item indices, left-padded
    dense: np.ndarray  # (P, 2)
    vectors: np.ndarray  # (P, d) recall user vectors


@dataclass
class Examples:
    user_row: np.ndarray  # (E,) index into UserRows
    item: np.ndarray  # (E,) item index
    click: np.ndarray  # (E,) 1 positive, 0 negative
    rating: np.ndarray  # (E,) rating of positives (0 for negatives)
    recall: np.ndarray  # (E,) recall score u·v


def genre_vocab(prepared: Prepared) -> list[str]:
    return sorted({g for gs in prepared.ds.items["genres"] for g in gs})


def item_table(settings: Settings, prepared: Prepared, genres: list[str]) -> ItemTable:
    frame = item_features(settings, prepared.item_ids[1:])
    dense = np.zeros((prepared.n_items + 1, len(genres) + 3), dtype=np.float32)
    dense[1:] = item_dense(frame, genres)
    content = np.zeros((prepared.n_items + 1, len(frame["content_embedding"].iloc[0])), dtype=np.float32)
    content[1:] = np.stack(frame["content_embedding"].to_numpy())
    return ItemTable(dense, content)


@torch.no_grad()
def user_rows(settings: Settings, rows: pd.DataFrame, recall: SASRec, histories: list[np.ndarray]) -> UserRows:
    """Point-in-time user features for (user_id, event_timestamp) rows, encoded for both models.

    The sequences are `histories` (item indices per row, the protocol's order), not Feast's `recent_items`: the
    point-in-time rows stop a second before the event and so drop the items rated in that same second (ML-100K
    users rate many at once), which the protocol, the retrieval job and the served profile all keep."""
    feats = user_features_at(settings, rows, names=USER_DENSE_FEATURES)  # the sequences come from `histories`
    history = left_pad(histories, recall.cfg.max_len)
    recall.eval()
    table = recall.items.all_items()  # the catalogue's item vectors once, not each position's again
    vectors = np.concatenate([
        recall.user_vector(torch.from_numpy(history[i : i + 1024]), table).numpy()
        for i in range(0, len(history), 1024)
    ]) if len(history) else np.zeros((0, recall.cfg.width), dtype=np.float32)
    return UserRows(history, user_dense(feats), vectors)


def sample_examples(
    users: UserRows, positives: np.ndarray, ratings: np.ndarray, item_vectors: np.ndarray,
    cfg: RankingConfig, seed: int,
) -> Examples:
    """For user row p with positive item positives[p]: the positive plus cfg.negatives negatives."""
    rng = np.random.default_rng(seed)
    n_items = item_vectors.shape[0] - 1
    n_hard = cfg.negatives // 2
    rows, items, clicks, rates = [], [], [], []
    for start in range(0, len(positives), 2048):
        sl = slice(start, start + 2048)
        scores = users.vectors[sl] @ item_vectors.T  # (b, n_items + 1)
        scores[:, 0] = -np.inf
        np.put_along_axis(scores, users.history[sl], -np.inf, axis=1)
        np.put_along_axis(scores, positives[sl, None], -np.inf, axis=1)
        pool = np.argpartition(-scores, HARD_POOL, axis=1)[:, :HARD_POOL]
        for j, p in enumerate(range(start, min(start + 2048, len(positives)))):
            hard = rng.choice(pool[j], size=n_hard, replace=False)
            rand = rng.integers(1, n_items + 1, size=cfg.negatives - n_hard)
            rand[rand == positives[p]] = hard[0]
            negs = np.concatenate([hard, rand])
            rows.extend([p] * (1 + len(negs)))
            items.extend([positives[p], *negs])
            clicks.extend([1.0] + [0.0] * len(negs))
            rates.extend([ratings[p]] + [0.0] * len(negs))
    user_row = np.asarray(rows, dtype=np.int64)
    item = np.asarray(items, dtype=np.int64)
    recall = np.einsum("ed,ed->e", users.vectors[user_row], item_vectors[item]).astype(np.float32)
    return Examples(user_row, item, np.asarray(clicks, np.float32), np.asarray(rates, np.float32), recall)


def training_positives(prepared: Prepared, per_user: int, through_valid: bool = False) -> pd.DataFrame:
    """Each user's most recent training interactions (the ones closest to serving time); `position` is the
    interaction's index in the user's sequence (the protocol's (timestamp, item_id) order). `through_valid`: the
    validation interaction counts as the latest one (the refit's examples; it sorts after every training one)."""
    frame = prepared.split.train
    if through_valid:
        frame = pd.concat([frame, prepared.split.valid], ignore_index=True)
    frame = frame.sort_values(["user_id", "timestamp", "item_id"], kind="stable")
    frame = frame.assign(position=frame.groupby("user_id", sort=False).cumcount())
    return frame.groupby("user_id", sort=False).tail(per_user).reset_index(drop=True)


def training_histories(prepared: Prepared, positives: pd.DataFrame, through_valid: bool = False) -> list[np.ndarray]:
    """Each positive's history: the user's items before it in the protocol's order, as evaluation and the served
    profile see them (Feast's point-in-time row, a second earlier, drops the same-second items)."""
    seqs = prepared.train
    if through_valid:
        users, before_test, _ = prepared.eval_set("test")
        seqs = dict(zip(users.tolist(), before_test, strict=True))
    return [seqs[int(u)][: int(k)] for u, k in zip(positives["user_id"], positives["position"], strict=True)]


def target_rows(prepared: Prepared, stage: str) -> pd.DataFrame:
    """The held-out interactions of a stage as Feast entity rows (features strictly before the target)."""
    df = prepared.split.valid if stage == "valid" else prepared.split.test
    return training_entities(df.sort_values("user_id").reset_index(drop=True))
