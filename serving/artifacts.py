"""Loading what `recsys export` wrote (the champions): recall index, user encoder, ranker config.

Export code lives in `training/`; this is the serving side's reader of the same layout:
  <model_repo>/{user_encoder,ranker}/recsys.json   the route: {"version": "3", "config": {...},
                                                   "challenger": null | {"version": "4", "percent": 10.0}}
  <model_repo>/{user_encoder,ranker}/<v>/{model.onnx, recsys.json}   one exported version and its config
  <home>/recall_index/CURRENT → <v>/{item_ids.json, item_embeddings.npy, items.hnsw.faiss}
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from recsys.errors import MissingStepError
from recsys.settings import Settings

ANN_FILE = "items.hnsw.faiss"  # faiss HNSW, inner product; row i is item index i + 1 (no padding row)


@dataclass
class ModelInfo:
    name: str
    version: str
    config: dict


SHAPE_KEYS = ("genres", "max_len", "content_dim")  # what a ranker config.pbtxt's tensor shapes depend on


def input_difference(cfg: dict, champion: dict) -> str | None:
    """The first input (shape key) in which a ranker config differs from the champion's; None: one config.pbtxt
    serves both."""
    return next((k for k in SHAPE_KEYS if cfg.get(k) != champion.get(k)), None)

def model_info(settings: Settings, name: str, version: str | None = None) -> ModelInfo:
    """The champion's info (version None), or that of one exported version."""
    path = settings.model_repo / name / (version or "") / "recsys.json"
    if not path.exists():
        what = f"{name} v{version}" if version else name
        raise MissingStepError(f"no exported {what} in {settings.model_repo}: run `recsys export` first")
    data = json.loads(path.read_text())
    return ModelInfo(name, str(data["version"]), data["config"])


@dataclass(frozen=True)
class Route:
    """Which ranker versions answer: the champion, and a challenger for `percent` % of users (by user hash)."""

    champion: str
    challenger: str | None = None
    percent: float = 0.0

    @property
    def versions(self) -> list[str]:
        return [self.champion] + ([self.challenger] if self.challenger and self.challenger != self.champion else [])

    def as_dict(self) -> dict:
        return {"champion": self.champion, "challenger": self.challenger, "percent": self.percent}

    @classmethod
    def from_dict(cls, d: dict) -> Route:
        return cls(str(d["champion"]), d.get("challenger"), float(d.get("percent") or 0.0))


def read_route(settings: Settings, name: str = "ranker") -> Route:
    path = settings.model_repo / name / "recsys.json"
    if not path.exists():
        raise MissingStepError(f"no exported {name} in {settings.model_repo}: run `recsys export` first")
    data = json.loads(path.read_text())
    ch = data.get("challenger") or {}
    return Route(str(data["version"]), ch.get("version"), float(ch.get("percent", 0.0)))


def write_route(settings: Settings, route: Route, name: str = "ranker") -> None:
    """Point the model's top-level recsys.json at `route` (atomically: replicas may be reading it)."""
    info = model_info(settings, name, route.champion)
    ch = {"version": route.challenger, "percent": route.percent} if route.challenger else None
    path = settings.model_repo / name / "recsys.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps({"version": info.version, "config": info.config, "challenger": ch}, indent=1))
    tmp.replace(path)


@dataclass
class RecallIndex:
    version: str
    item_ids: np.ndarray  # (n_items + 1,) raw id per index; index 0 = padding (-1)
    embeddings: np.ndarray  # (n_items + 1, d) float32; row 0 = padding
    ann: object | None  # faiss index over rows 1..n (row i of the index = item index i + 1), None → exact

    @property
    def index_of(self) -> dict[int, int]:
        return item_index(self.item_ids)


def recall_index_dir(settings: Settings) -> Path:
    root = settings.home / "recall_index"
    current = root / "CURRENT"
    if not current.exists():
        raise MissingStepError(f"no recall index in {root}: run `recsys export` first")
    return root / current.read_text().strip()


def load_item_ids(settings: Settings) -> np.ndarray:
    """(n_items + 1,) raw id per model index (index 0 = padding), the index space both models share."""
    return np.asarray(json.loads((recall_index_dir(settings) / "item_ids.json").read_text()), dtype=np.int64)


def item_index(item_ids: np.ndarray) -> dict[int, int]:
    return {int(r): i for i, r in enumerate(item_ids) if i > 0}


def load_recall_index(settings: Settings) -> RecallIndex:
    d = recall_index_dir(settings)
    item_ids = load_item_ids(settings)
    emb = np.load(d / "item_embeddings.npy").astype(np.float32)
    ann = None
    if (d / ANN_FILE).exists():
        try:
            import faiss

            ann = faiss.read_index(str(d / ANN_FILE))
            ann.hnsw.efSearch = 256
        except Exception:  # a broken or foreign index file: exact search still answers
            ann = None
    return RecallIndex(d.name, item_ids, emb, ann)


def onnx_session(path: Path, threads: int = 1):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def exported_copy_version(model_repo: Path) -> str | None:
    """The copy LM version `recsys export` made current, or None (the copy stage then serves templates)."""
    current = model_repo / "copy" / "CURRENT"
    return current.read_text().strip() if current.exists() else None
