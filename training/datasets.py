"""The prepared data every job shares: dataset, leave-last-out split, item index, per-user histories."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Literal

import numpy as np

from core.settings import Settings
from training.data.schema import MANIFEST, Dataset, load_dataset
from training.data.split import Split, leave_last_out
from training.sequences import histories

Stage = Literal["valid", "test"]


@dataclass
class Prepared:
    ds: Dataset
    split: Split
    digest: str  # content digest of the interactions table (logged with every run)
    item_ids: np.ndarray  # (n_items + 1,) raw item id per index; index 0 = padding (-1)
    train: dict[int, np.ndarray]  # user → training item indices in time order

    @property
    def n_items(self) -> int:
        """Real items (the vocabulary without padding)."""
        return len(self.item_ids) - 1

    @property
    def item_index(self) -> dict[int, int]:
        return {int(r): i for i, r in enumerate(self.item_ids) if i > 0}

    def eval_set(self, stage: Stage) -> tuple[np.ndarray, list[np.ndarray], np.ndarray]:
        """(user_ids, histories, targets) for leave-last-out: valid sees train; test sees train + valid."""
        index = self.item_index
        valid = self.split.valid.set_index("user_id")["item_id"]
        target_df = self.split.valid if stage == "valid" else self.split.test
        users, hists, targets = [], [], []
        for uid, item in zip(target_df["user_id"], target_df["item_id"], strict=True):
            h = self.train.get(int(uid), np.zeros(0, dtype=np.int64))
            if stage == "test":
                h = np.append(h, index[int(valid[uid])])
            users.append(int(uid))
            hists.append(h)
            targets.append(index[int(item)])
        return np.asarray(users, dtype=np.int64), hists, np.asarray(targets, dtype=np.int64)


def prepare(settings: Settings) -> Prepared:
    """Load the prepared tables (or say to run `recsys data`) and split them, deterministically; deleted users'
    rows are purged first (`training.tombstones`)."""
    from training.catalogue_data import merge_catalogue
    from training.tombstones import purge_deleted_users

    if (settings.data_dir / MANIFEST).exists():
        purge_deleted_users(settings)
        merge_catalogue(settings)
    ds = load_dataset(settings.data_dir)
    split = leave_last_out(ds.interactions, min_interactions=settings.min_user_interactions)
    item_ids = np.concatenate([[-1], np.sort(ds.items["item_id"].to_numpy(dtype=np.int64))])
    index = {int(r): i for i, r in enumerate(item_ids) if i > 0}
    digest = json.loads((settings.data_dir / MANIFEST).read_text())["interactions_sha256"]
    return Prepared(ds, split, digest, item_ids, histories(split.train, index))
