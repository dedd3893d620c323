"""Request filters (`context`): what passes, and the degraded path that cannot check them."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from serving.contracts import Candidates, RequestContext
from serving.ingress import _recall_order


def test_attribute_filters_admit_only_matching_items() -> None:
    ctx = RequestContext(include_genres=["Comedy", "Drama"], exclude_genres=["Horror"], min_year=1990, max_year=1999)
    assert ctx.filters_items()
    assert ctx.admits(["Comedy"], 1995)
    assert not ctx.admits(["Action"], 1995)  # none of the included genres
    assert not ctx.admits(["Comedy", "Horror"], 1995)  # an excluded genre wins
    assert not ctx.admits(["Drama"], 1989) and not ctx.admits(["Drama"], 2000)
    assert not ctx.admits(["Drama"], -1)  # unknown year: a year filter cannot be shown to hold
    assert RequestContext(exclude_items=[3]).filters_items() is False
    with pytest.raises(ValidationError, match="min_year is after max_year"):
        RequestContext(min_year=2000, max_year=1990)


def test_without_item_rows_a_genre_filter_answers_nothing_rather_than_unfiltered_items() -> None:
    cands = Candidates(item_ids=[1, 2, 3, 4], scores=[4.0, 3.0, 2.0, 1.0], channels=["ann"] * 4, model_version="1")
    plain = _recall_order(cands, 3, "triton down", RequestContext(exclude_items=[2]))
    assert [it.item_id for it in plain.items] == [1, 3, 4] and plain.degraded.fallback == "recall order"
    filtered = _recall_order(cands, 3, "triton down", RequestContext(include_genres=["Comedy"]))
    assert filtered.items == [] and "filters need item rows" in filtered.degraded.fallback
