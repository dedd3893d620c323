"""The ranker's dense inputs from Feast feature rows: one function shared by training and serving.

Torch-free on purpose: the serving graph builds Triton requests with exactly these transforms.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

INPUTS = ("history", "item", "item_dense", "item_content", "user_dense", "recall_score")
OUTPUTS = ("p_click", "rating")


USER_DENSE_DIM = 2  # log activity, mean rating


def item_dense(frame: pd.DataFrame, genres: list[str]) -> np.ndarray:
    """(N, G+3) float32 from item feature rows (genres, year, popularity, item_mean_rating) — shared with serving."""
    pos = {g: i for i, g in enumerate(genres)}
    out = np.zeros((len(frame), len(genres) + 3), dtype=np.float32)
    for r, gs in enumerate(frame["genres"]):
        for g in gs if gs is not None else []:
            if g in pos:
                out[r, pos[g]] = 1.0
    year = frame["year"].to_numpy(dtype=np.float64)
    out[:, -3] = np.where(year > 0, (year - 1990.0) / 30.0, 0.0)
    out[:, -2] = np.log1p(frame["popularity"].to_numpy(dtype=np.float64)) / math.log(1000.0)
    out[:, -1] = frame["item_mean_rating"].to_numpy(dtype=np.float64) / 5.0
    return out


def user_dense(frame: pd.DataFrame) -> np.ndarray:
    """(N, 2) float32 from user profile rows (n_interactions, mean_rating) — shared with serving."""
    n = frame["n_interactions"].fillna(0).to_numpy(dtype=np.float64)
    m = frame["mean_rating"].fillna(0).to_numpy(dtype=np.float64)
    return np.stack([np.log1p(n) / math.log(1000.0), m / 5.0], axis=1).astype(np.float32)
