"""Impression log: what the graph showed, to whom, and which model versions chose it — one JSON line per answer.

Online results are compared per model version by joining these lines with feedback on `request_id`
(CTR, conversion per ranker version, canary vs champion). Append-only files, one per replica process, so
replicas never contend for a file. A log that cannot be written is switched off with one warning: serving
a recommendation matters more than logging it, and the response itself still names its versions.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from serving.contracts import RecommendResponse

log = logging.getLogger(__name__)


class ImpressionLog:
    def __init__(self, directory: Path | None, name: str = "ingress") -> None:
        self.path: Path | None = None
        self._file: IO[str] | None = None
        if directory is None:
            return
        try:
            directory.mkdir(parents=True, exist_ok=True)
            self.path = directory / f"{name}-{os.getpid()}.jsonl"
            self._file = self.path.open("a", buffering=1, encoding="utf-8")  # line-buffered: whole lines only
        except OSError as e:
            log.warning("impression log off: cannot open %s (%s)", directory, e)
            self.path = None

    def write(self, resp: RecommendResponse, context: dict | None = None) -> None:
        if self._file is None:
            return
        row = {"ts": round(time.time(), 3), "request_id": resp.request_id, "user_id": resp.user_id,
               "items": [it.item_id for it in resp.items], "scores": [round(it.score, 5) for it in resp.items],
               "model_versions": resp.model_versions, "degraded": [d.stage for d in resp.degraded]}
        if context:
            row["context"] = context
        try:
            self._file.write(json.dumps(row, separators=(",", ":")) + "\n")
        except (OSError, ValueError) as e:  # disk full, file closed: stop logging, keep serving
            log.warning("impression log off after a failed write to %s (%s)", self.path, e)
            self._file = None

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def read_impressions(directory: Path) -> Iterator[dict]:
    """Every impression under `directory`, file by file; a torn last line (a killed replica) is skipped."""
    for path in sorted(directory.glob("*.jsonl")):
        with path.open(encoding="utf-8") as f:
            for line in f:
                try:
                    yield json.loads(line)
                except ValueError:
                    continue
