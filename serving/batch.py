"""Offline batch scoring through the serving path, for e-mail/push campaigns and outside evaluation.

`recsys recommend --batch USERS_FILE --out recs.jsonl`: every user goes through the same stage objects the
graph uses (Feast online features → `Recaller` → `RankingStage` with its blend and business rules); only the
ranker's transport differs: the exported `model.onnx` that Triton serves runs in this process, so a batch job
needs neither Triton nor Ray Serve. The output is written to a temporary file and renamed at the end, so a
reader never sees half a file.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from core.artifacts import ONNX_FILE, onnx_session
from core.errors import DataFormatError, MissingStepError, one_line
from core.events import has_event_log, open_event_log
from core.ranking_inputs import INPUTS
from core.settings import Settings

if TYPE_CHECKING:
    from serving.contracts import Candidates, RankedItems, UserContext

log = logging.getLogger(__name__)


class LocalRanker:
    """`RankerClient`'s interface over the exported ONNX files, one session per version, in this process."""

    def __init__(self, settings: Settings, threads: int = 1) -> None:
        self.root = settings.model_repo / "ranker"
        self.threads = threads
        self.sessions: dict[str, object] = {}

    def _session(self, version: str):
        if version not in self.sessions:
            path = self.root / version / ONNX_FILE
            if not path.exists():
                raise MissingStepError(f"ranker version {version} is not exported at {path}: run `recsys export`")
            self.sessions[version] = onnx_session(path, self.threads)
        return self.sessions[version]

    async def ready(self, version: str = "") -> bool:
        return True

    async def score(self, inputs: dict[str, np.ndarray], version: str, timeout_s: float) -> np.ndarray:
        sess = self._session(version)
        return sess.run(["p_click"], {name: np.ascontiguousarray(inputs[name]) for name in INPUTS})[0][:, 0]

    async def close(self) -> None:
        self.sessions.clear()


def read_users(path: Path) -> list[int]:
    """User ids, one per line (a `user_id` header, blank lines and `#` comments are skipped); CSV rows give
    their first column. A line that is not an integer is an error naming the line: nothing is scored."""
    if not path.is_file():
        raise DataFormatError(f"users file not found: {path}")
    users: list[int] = []
    for n, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), start=1):
        field = line.split("#", 1)[0].split(",", 1)[0].strip()
        if not field or (n == 1 and field.lower() == "user_id"):
            continue
        try:
            users.append(int(field))
        except ValueError:
            raise DataFormatError(f"{path}:{n}: not a user id: {field[:40]!r}") from None
    if not users:
        raise DataFormatError(f"{path}: no user ids")
    return users


@dataclass
class BatchSummary:
    users: int
    cold_start: int  # users without features: popular items (`cold_start: true` in their line)
    degraded: int  # lines where a stage gave its degraded answer (named in the line)
    seconds: float
    out: Path


class BatchPath:
    """The graph's stage objects in this process (Feast online features → `Recaller` → `RankingStage` over
    `LocalRanker`), for jobs that walk users through the serving path offline: batch scoring, copy ahead."""

    def __init__(self, settings: Settings) -> None:
        from core.catalogue import read_state
        from serving.features import FeatureReader
        from serving.ranking import RankingStage
        from serving.recall import Recaller

        self.reader = FeatureReader(settings)
        self.recaller = Recaller(settings, self.reader, read_state(settings))  # retired items out, new ones in
        if has_event_log(settings):  # the events logged since the rebuild, counted as the live Recall counts them
            try:
                with contextlib.closing(open_event_log(settings)) as events:
                    self.recaller.follow_events(events)
            except Exception as e:
                log.warning("batch: event stream unreadable (%s); popularity as of the rebuild", one_line(e))
        self.client = LocalRanker(settings)
        self.ranker = RankingStage(settings, self.reader, client=self.client)
        self.ranker.timeout_s = 60.0  # offline: no latency budget, only a guard against a hung call

    async def rank(self, user_id: int, k: int) -> tuple[UserContext, Candidates, RankedItems]:
        user = self.reader.user(user_id)
        cands = self.recaller.candidates(user, n=self.ranker.pool(user_id))
        return user, cands, await self.ranker.rank(user, cands, k)

    async def close(self) -> None:
        await self.client.close()


async def _score(settings: Settings, users: list[int], k: int, out: Path) -> BatchSummary:
    path = BatchPath(settings)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    cold = degraded = 0
    t0 = time.perf_counter()
    with tmp.open("w", encoding="utf-8") as f:
        for uid in users:
            user, cands, ranked = await path.rank(uid, k)
            flags = [ranked.degraded.model_dump()] if ranked.degraded else []
            cold += not user.known
            degraded += bool(flags)
            f.write(json.dumps({"user_id": uid, "items": [it.item_id for it in ranked.items],
                                "scores": [round(it.score, 6) for it in ranked.items],  # the order's
                                "p_click": [None if "p_click" not in it.score_parts else
                                            round(it.score_parts["p_click"], 6) for it in ranked.items],
                                "explore": [it.explore for it in ranked.items],
                                "model_versions": {"retrieval": cands.model_version, "ranker": ranked.model_version},
                                "cold_start": not user.known, "degraded": flags}) + "\n")
    await path.close()
    tmp.replace(out)
    return BatchSummary(len(users), cold, degraded, time.perf_counter() - t0, out)


def score_users(settings: Settings, users: list[int], k: int, out: Path) -> BatchSummary:
    return asyncio.run(_score(settings, users, k, out))
