"""The offline pipeline's optional last step: copy written ahead saves misses, so its failure is said, not raised."""
from ops.pipeline import _best_effort


def test_a_failed_copy_ahead_is_one_line_and_the_pipeline_goes_on() -> None:
    def boom() -> None:
        raise RuntimeError("actor died\nTraceback (most recent call last): ...")

    said = _best_effort(boom)
    assert isinstance(said, str) and "\n" not in said and "actor died" in said and "cache misses" in said
    assert _best_effort(lambda: 42) == 42
