"""Copy written ahead: after a copy model is exported, the users most likely to ask next get the copy for their
recommendations generated in a Ray batch job, so their requests find it in the cache instead of waiting for it.

Each user walks the serving path offline (`serving.batch.BatchPath`: features → recall → ranking, as
`recommend --batch`), the facts are built as the Copy stage builds them (`serving.copy_facts`, so the cache keys
match), and Ray Data generates them: one copy model per actor (`CopyModel`, the served decoder: a copy written
ahead is the copy the replica would have written), on a GPU each with `copy_use_gpu`, else on `copy_threads`
CPU threads. The copies go beside the model, `<model_repo>/copy/<version>/ahead.jsonl` (a temporary file, then
renamed); a Copy replica loading that version puts them in its cache through its own guard
(`CopyWriter.seed`). Each version has its own: a new model starts without another's copies.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from core.artifacts import COPY_AHEAD_FILE, COPY_DIR, exported_copy_version, load_item_ids
from core.copy_guard import CopyFacts, ItemFacts, Taste
from core.errors import MissingStepError
from core.settings import Settings

log = logging.getLogger(__name__)
AHEAD_FILE = COPY_AHEAD_FILE


def record(facts: CopyFacts, text: str) -> dict[str, Any]:
    it, taste = facts.item, facts.taste
    return {"item_id": it.item_id, "title": it.title, "year": it.year, "genres": list(it.genres),
            "taste_genres": list(taste.genres), "liked": list(taste.liked), "text": text}


def from_record(row: dict[str, Any]) -> tuple[CopyFacts, str]:
    """KeyError / TypeError / ValueError on a row that is not a `record`."""
    item = ItemFacts(int(row["item_id"]), str(row["title"]), int(row["year"]), tuple(str(g) for g in row["genres"]))
    taste = Taste(tuple(str(g) for g in row["taste_genres"]), tuple(str(t) for t in row["liked"]))
    if not isinstance(row["text"], str):
        raise TypeError("text: not a string")
    return CopyFacts(item, taste), row["text"]


def write_ahead(path: Path, written: list[tuple[CopyFacts, str]]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        for facts, text in written:
            f.write(json.dumps(record(facts, text)) + "\n")
    tmp.replace(path)  # a replica never reads half a file


def read_ahead(path: Path) -> list[tuple[CopyFacts, str]]:
    """The copies written ahead for one version; none if there is no file. A line that does not parse is left
    out and counted in one warning: it is only a cache entry, the request generates its copy as any miss."""
    if not path.is_file():
        return []
    out, bad = [], 0
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            out.append(from_record(json.loads(line)))
        except (ValueError, KeyError, TypeError):
            bad += 1
    if bad:
        log.warning("copy ahead: %d of %d lines of %s unreadable, left out", bad, bad + len(out), path)
    return out


class _Generator:
    """A Ray Data actor: one copy model, loaded once; a batch row is one viewer's facts (one decode group)."""

    def __init__(self, folder: str, cache_dir: str, dtype: str, use_gpu: bool, threads: int) -> None:
        from serving.copy_lm import CopyModel

        self.model = CopyModel(Path(folder), Path(cache_dir), dtype, use_gpu, threads)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        texts = []
        for doc in batch["facts"]:
            facts = [from_record(r)[0] for r in json.loads(doc)]
            texts.append(json.dumps(self.model.generate(facts)))
        return {"i": batch["i"], "texts": np.array(texts, dtype=object)}


def generate_ahead(settings: Settings, folder: Path, groups: list[list[CopyFacts]]) -> list[list[str]]:
    """Each group's copies through Ray Data (Ray must be connected: the caller's cluster, local or KubeRay)."""
    import ray.data

    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = ctx.print_on_execution_start = False  # a job's log, not a terminal's
    logging.getLogger("ray.data").setLevel(logging.ERROR)  # "progress bars disabled", per-stage timings
    rows = [{"i": i, "facts": json.dumps([record(f, "") for f in g])} for i, g in enumerate(groups)]
    gpu = settings.copy_use_gpu or settings.use_gpu  # a GPU serving replica, or the GPU training cluster's workers
    ds = ray.data.from_items(rows).map_batches(
        _Generator, batch_size=1, concurrency=max(1, settings.copy_ahead_actors),
        fn_constructor_kwargs={"folder": str(folder), "cache_dir": str(settings.model_cache),
                               "dtype": settings.copy_dtype, "use_gpu": gpu, "threads": settings.copy_threads},
        num_gpus=1 if gpu else 0, num_cpus=1)  # torch's threads are copy_threads; the one CPU reserves the actor
    out: list[list[str]] = [[] for _ in groups]
    for row in ds.take_all():
        out[int(row["i"])] = json.loads(row["texts"])
    return out


@dataclass
class AheadSummary:
    version: str
    users: int
    copies: int  # distinct (item, taste) pairs written
    model_copies: int  # of them, the ones the guard passed (the rest will be served as their template)
    seconds: float
    path: Path


async def _facts(settings: Settings, users: list[int], k: int) -> tuple[list[list[CopyFacts]], Any]:
    """Per user, the facts of their k recommendations that no earlier user already has (same item, same taste)."""
    from serving.batch import BatchPath
    from serving.copy_facts import CopyCatalogue

    path = BatchPath(settings)
    catalogue = CopyCatalogue.read(path.reader, [int(i) for i in load_item_ids(settings)[1:]])
    seen: set[tuple[int, str]] = set()
    groups = []
    try:
        for uid in users:
            user, _, ranked = await path.rank(uid, k)
            group = []
            for f in catalogue.request_facts(user, ranked):
                key = (f.item.item_id, f.taste.bucket())
                if key not in seen:
                    seen.add(key)
                    group.append(f)
            if group:
                groups.append(group)
    finally:
        await path.close()
    return groups, catalogue.guard


def copy_ahead(settings: Settings, users: list[int], k: int = 10) -> AheadSummary:
    """Write the copy of these users' top-k lists ahead, for the exported copy version (Ray connected)."""
    version = exported_copy_version(settings.model_repo)
    if version is None:
        raise MissingStepError("no exported copy model to write copy ahead with: train and promote one "
                               "(`recsys train copy`, `recsys promote copy`)")
    folder = settings.model_repo / COPY_DIR / version
    t0 = time.perf_counter()
    groups, guard = asyncio.run(_facts(settings, users, k))
    texts = generate_ahead(settings, folder, groups) if groups else []
    written = [(f, t) for g, ts in zip(groups, texts, strict=True) for f, t in zip(g, ts, strict=True)]
    write_ahead(folder / AHEAD_FILE, written)
    passed = sum(guard.factual(t, f) for f, t in written)
    return AheadSummary(version, len(users), len(written), passed, round(time.perf_counter() - t0, 1),
                        folder / AHEAD_FILE)
