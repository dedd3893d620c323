"""The impression log on its own: one JSON line per answer, and serving survives a log it cannot write."""

from __future__ import annotations

from pathlib import Path

from serving.contracts import Degradation, RecommendedItem, RecommendResponse
from serving.impressions import ImpressionLog, read_impressions


def response(rid: str, ranker: str) -> RecommendResponse:
    return RecommendResponse(
        request_id=rid, user_id=4,
        items=[RecommendedItem(item_id=i, title=f"t{i}", score=0.5, rank=r + 1, copy_source="none")
               for r, i in enumerate((10, 20))],
        model_versions={"retrieval": "1", "ranker": ranker}, timings_ms={"total": 3.0},
        degraded=[Degradation(stage="copy", reason="timeout", fallback="template copy")])


def test_each_answer_is_one_line_naming_its_versions(tmp_path: Path) -> None:
    log = ImpressionLog(tmp_path / "imp")
    log.write(response("a", "1"), {"page": "home"})
    log.write(response("b", "2"))
    rows = list(read_impressions(tmp_path / "imp"))  # readable while the writer is still open (line-buffered)
    assert [(r["request_id"], r["model_versions"]["ranker"]) for r in rows] == [("a", "1"), ("b", "2")]
    assert rows[0]["items"] == [10, 20] and rows[0]["degraded"] == ["copy"] and rows[0]["context"] == {"page": "home"}
    with log.path.open("a") as f:
        f.write('{"request_id": "torn')  # a replica killed mid-line
    assert len(list(read_impressions(tmp_path / "imp"))) == 2
    log.close()


def test_an_unwritable_log_is_switched_off_not_raised(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    log = ImpressionLog(blocker / "imp")
    assert log.path is None
    log.write(response("a", "1"))  # no exception
    closed = ImpressionLog(tmp_path / "ok")
    closed._file.close()
    closed.write(response("b", "1"))  # a failed write turns the log off
    assert closed._file is None
