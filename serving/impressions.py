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


REDACTED = b'{"redacted":true}'


def read_impressions(directory: Path) -> Iterator[dict]:
    """Every impression under `directory`, file by file; a torn last line (a killed replica) and the lines of
    deleted users are skipped."""
    for path in sorted(directory.glob("*.jsonl")):
        with path.open(encoding="utf-8") as f:
            for line in f:
                try:
                    row = json.loads(line)
                except ValueError:
                    continue
                if "request_id" in row:
                    yield row


def redact_user(directory: Path, user_id: int) -> int:
    """Overwrite every impression line of `user_id` in place with `{"redacted":true}` padded to its length; returns
    how many. In place, not a rewritten copy: the replicas keep appending to these files through their own open
    descriptors (O_APPEND), and a renamed copy would take their next lines away from them. Files are read line by
    line (they grow without bound); only a file with a line to redact is opened for writing and fsynced."""
    n = 0
    if not directory.is_dir():
        return 0
    needle = f'"user_id":{int(user_id)},'.encode()
    for path in sorted(directory.glob("*.jsonl")):
        hits: list[tuple[int, int]] = []  # (offset, length) of the user's lines
        with path.open("rb") as f:
            offset = 0
            for line in f:
                body = line.rstrip(b"\n")
                if needle in body and len(body) >= len(REDACTED):
                    try:
                        mine = json.loads(body).get("user_id") == user_id
                    except ValueError:  # a torn line: its user cannot be told, so it goes too
                        mine = True
                    if mine:
                        hits.append((offset, len(body)))
                offset += len(line)
        if hits:
            with path.open("r+b") as f:
                for at, length in hits:
                    f.seek(at)
                    f.write(REDACTED.ljust(length))
                f.flush()
                os.fsync(f.fileno())
            n += len(hits)
    return n
