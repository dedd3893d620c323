"""Online rates per model version from impressions joined with feedback on request_id."""

from __future__ import annotations

from serving.report import online_rates


def imp(rid: str, items: list[int], ranker: str, retrieval: str = "1") -> dict:
    return {"request_id": rid, "items": items, "model_versions": {"retrieval": retrieval, "ranker": ranker}}


def event(rid: str | None, item: int, kind: str = "click") -> dict:
    return {"request_id": rid, "item_id": item, "event_type": kind}


def test_ctr_and_conversion_per_version_count_only_shown_items_of_that_request():
    impressions = [imp("a", [1, 2], "1"), imp("b", [3, 4], "1"), imp("c", [5, 6], "2"), imp("d", [7], "2"),
                   imp("e", [8], "")]
    events = [
        event("a", 2), event("a", 1),  # two clicks on one impression: one click-through
        event("b", 9),  # an item that impression did not show: not a click-through
        event("c", 5, "view"),  # a view is not a click
        event("d", 7, "purchase"),  # a purchase is a click-through and a conversion
        event(None, 3),  # organic: no request id, not joined
        event("e", 8, "rate"),
    ]
    rows = {(r["model"], r["version"]): r for r in online_rates(impressions, events)}
    assert rows[("ranker", "1")] == {"model": "ranker", "version": "1", "impressions": 2, "clicks": 1,
                                          "ctr": 0.5, "conversions": 0, "conversion_rate": 0.0}
    assert (rows[("ranker", "2")]["clicks"], rows[("ranker", "2")]["conversions"]) == (1, 1)
    assert rows[("ranker", "none")]["ctr"] == 1.0  # answered without a ranker (degraded): its own row
    assert rows[("retrieval", "1")]["impressions"] == 5 and rows[("retrieval", "1")]["clicks"] == 3
