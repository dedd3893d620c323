"""The exported artifact layout, named once: every file name, the one writer of each `recsys.json`, and
the readers serving uses. `training.export` writes through the writers here; nothing else spells the names.
  <model_repo>/{user_encoder,ranker}/recsys.json   the route: {"version": "3", "config": {...},
                                                   "challenger": null | {"version": "4", "percent": 10.0}}
  <model_repo>/{user_encoder,ranker}/<v>/{model.onnx, recsys.json}   one exported version and its config
  <home>/recall_index/CURRENT → <v>/{item_ids.json, item_embeddings.npy, items.hnsw.faiss, content_proj.npy}
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from core.errors import MissingStepError
from core.settings import Settings

META_FILE = "recsys.json"  # a model's route (top level) or one version's config (version folder)
ONNX_FILE = "model.onnx"  # one exported version's graph
CONFIG_PBTXT = "config.pbtxt"  # Triton's model config (one per model, listing the versions it loads)
CURRENT = "CURRENT"  # the version a folder of versions serves (written last, atomically)
ITEM_IDS_FILE = "item_ids.json"  # raw item id per model index (index 0 = padding)
EMBEDDINGS_FILE = "item_embeddings.npy"  # (n_items + 1, d) item tower output, row = model index
PROJ_FILE = "content_proj.npy"  # (d, content_dim) the item tower's content projection: vectors for upserted items
CONTENT_PROJECTION_FILE = "content_projection.npy"  # (d, content_dim + 1) a "projected" ranker's content layer
ANN_FILE = "items.hnsw.faiss"  # faiss HNSW, inner product; row i is item index i + 1 (no padding row)
RECALL_INDEX_DIR = "recall_index"  # under settings.home
COPY_DIR = "copy"  # under the model repository: <v>/ adapter folders + CURRENT
COPY_AHEAD_FILE = "ahead.jsonl"  # in a copy version's folder: its copy written ahead (serving.copy_ahead)


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def write_version_meta(repo: Path, name: str, version: str, cfg: dict) -> None:
    """One exported version's own recsys.json (its config): what `model_info(…, version)` reads."""
    _atomic_write(repo / name / version / META_FILE, json.dumps({"version": version, "config": cfg}, indent=1))


def write_route_meta(repo: Path, name: str, version: str, cfg: dict, challenger: dict | None = None) -> None:
    """The model's top-level recsys.json: the champion's version and config, and the challenger's share
    (atomically: replicas may be reading it)."""
    _atomic_write(repo / name / META_FILE,
                  json.dumps({"version": version, "config": cfg, "challenger": challenger}, indent=1))


def version_exported(repo: Path, name: str, version: str) -> bool:
    return (repo / name / version / META_FILE).exists()


def set_current(root: Path, version: str) -> None:
    """Point a folder of versions at `version` (last step of an export: a reader never sees half of one)."""
    root.mkdir(parents=True, exist_ok=True)
    _atomic_write(root / CURRENT, version)


@dataclass
class ModelInfo:
    name: str
    version: str
    config: dict


SHAPE_KEYS = ("genres", "max_len", "content_dim")  # what a ranker config.pbtxt's tensor shapes depend on


def content_layout(cfg: dict) -> str:
    """What a ranker version's `item_content` input holds: "projected" (the content layer applied, in serving) or
    "raw" (the embedding; versions exported before the layout existed)."""
    return str(cfg.get("serving_content", "raw"))


def input_difference(cfg: dict, champion: dict) -> str | None:
    """The first input (shape key) in which a ranker config differs from the champion's; None: one config.pbtxt
    serves both. The content layout counts: a raw graph's fixed 384-wide input and a projected graph's cannot
    share one config under Triton's onnxruntime backend (it checks config dims against the graph's)."""
    if content_layout(cfg) != content_layout(champion):
        return "serving_content"
    return next((k for k in SHAPE_KEYS if cfg.get(k) != champion.get(k)), None)

def model_info(settings: Settings, name: str, version: str | None = None) -> ModelInfo:
    """The champion's info (version None), or that of one exported version."""
    path = settings.model_repo / name / (version or "") / META_FILE
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
    path = settings.model_repo / name / META_FILE
    if not path.exists():
        raise MissingStepError(f"no exported {name} in {settings.model_repo}: run `recsys export` first")
    data = json.loads(path.read_text())
    ch = data.get("challenger") or {}
    return Route(str(data["version"]), ch.get("version"), float(ch.get("percent", 0.0)))


def write_route(settings: Settings, route: Route, name: str = "ranker") -> None:
    """Point the model's top-level recsys.json at `route`."""
    info = model_info(settings, name, route.champion)
    ch = {"version": route.challenger, "percent": route.percent} if route.challenger else None
    write_route_meta(settings.model_repo, name, info.version, info.config, ch)


@dataclass
class RecallIndex:
    version: str
    item_ids: np.ndarray  # (n_items + 1,) raw id per index; index 0 = padding (-1)
    embeddings: np.ndarray  # (n_items + 1, d) float32; row 0 = padding
    ann: object | None  # faiss index over rows 1..n (row i of the index = item index i + 1), None → exact
    proj: np.ndarray | None = None  # (d, content_dim): an item's vector from its content alone (catalogue upserts)

    @property
    def index_of(self) -> dict[int, int]:
        return item_index(self.item_ids)


def recall_index_dir(settings: Settings) -> Path:
    root = settings.home / RECALL_INDEX_DIR
    current = root / CURRENT
    if not current.exists():
        raise MissingStepError(f"no recall index in {root}: run `recsys export` first")
    return root / current.read_text().strip()


def recall_index_built(settings: Settings) -> float:
    """When the current recall index was exported (epoch s): the time its rebuilt popularity counts stand for."""
    return (recall_index_dir(settings) / ITEM_IDS_FILE).stat().st_mtime


def load_item_ids(settings: Settings) -> np.ndarray:
    """(n_items + 1,) raw id per model index (index 0 = padding), the index space both models share."""
    return np.asarray(json.loads((recall_index_dir(settings) / ITEM_IDS_FILE).read_text()), dtype=np.int64)


def item_index(item_ids: np.ndarray) -> dict[int, int]:
    return {int(r): i for i, r in enumerate(item_ids) if i > 0}


def load_recall_index(settings: Settings) -> RecallIndex:
    d = recall_index_dir(settings)
    item_ids = load_item_ids(settings)
    emb = np.load(d / EMBEDDINGS_FILE).astype(np.float32)
    ann = None
    if (d / ANN_FILE).exists():
        try:
            import faiss

            ann = faiss.read_index(str(d / ANN_FILE))
            ann.hnsw.efSearch = 256
        except Exception:  # a broken or foreign index file: exact search still answers
            ann = None
    proj = np.load(d / PROJ_FILE).astype(np.float32) if (d / PROJ_FILE).exists() else None
    return RecallIndex(d.name, item_ids, emb, ann, proj)


def onnx_session(path: Path, threads: int = 1):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def exported_copy_version(model_repo: Path) -> str | None:
    """The copy LM version `recsys export` made current, or None (the copy stage then serves templates)."""
    current = model_repo / COPY_DIR / CURRENT
    return current.read_text().strip() if current.exists() else None
