"""Ranker versions that one Triton config can serve together: the content layout counts (issue 30)."""

from __future__ import annotations

from core.artifacts import input_difference
from training.export import ranker_specs

RAW = {"genres": ["Action", "Drama"], "max_len": 5, "content_dim": 384, "d_model": 32}  # exported before the layout
PROJECTED = {**RAW, "serving_content": "projected"}


def _content_dims(cfg: dict) -> tuple[int, ...]:
    return next(t.dims for t in ranker_specs(cfg)[0] if t.name == "item_content")


def test_a_projected_and_a_raw_ranker_are_not_paired_and_the_config_admits_each_ones_width() -> None:
    assert input_difference(PROJECTED, PROJECTED) is None and input_difference(RAW, RAW) is None
    assert input_difference(RAW, PROJECTED) == "serving_content"  # a canary across the change is refused
    assert input_difference(PROJECTED, RAW) == "serving_content"
    assert input_difference({**PROJECTED, "genres": ["Action"]}, PROJECTED) == "genres"
    # A raw graph's input is fixed at 384 (Triton's onnxruntime backend checks config dims against it); a
    # projected graph declares its width dynamic, so versions of another d_model share the config.
    assert _content_dims(RAW) == (-1, 384)
    assert _content_dims(PROJECTED) == (-1, -1)
    assert input_difference({**PROJECTED, "d_model": 64}, PROJECTED) is None
