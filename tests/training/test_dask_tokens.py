"""The fast object-array token must keep dask's contract: equal content → equal token, any change → new token."""

import numpy as np
from dask.base import tokenize

from training import dask_tokens

dask_tokens.install()


def _block(rows: list[list]) -> np.ndarray:
    out = np.empty((len(rows[0]), len(rows)), dtype=object)  # pandas stores object blocks column-major like this
    for j, row in enumerate(rows):
        for i, v in enumerate(row):
            out[i, j] = v
    return out


def test_equal_content_in_different_objects_gives_the_same_token() -> None:
    a = _block([[np.array([1, 2, 3]), ["Drama"], "M", None], [np.array([4]), ["Comedy", "War"], "F", "artist"]])
    b = _block([[np.array([1, 2, 3]), ["Drama"], "M", None], [np.array([4]), ["Comedy", "War"], "F", "artist"]])
    assert a is not b
    assert tokenize(a) == tokenize(b)


def test_any_change_gives_a_new_token() -> None:
    base = [[np.array([1, 2, 3]), np.array(["Drama"], dtype=object), "M"]]
    changed = [
        [[np.array([1, 2, 4]), np.array(["Drama"], dtype=object), "M"]],  # one id in a sequence
        [[np.array([1, 2, 3], dtype=np.int32), np.array(["Drama"], dtype=object), "M"]],  # same values, other dtype
        [[np.array([1, 2, 3]), np.array(["Drama", "War"], dtype=object), "M"]],  # a nested object array
        [[np.array([1, 2, 3]), np.array(["Drama"], dtype=object), "F"]],
    ]
    tokens = {tokenize(_block(base))} | {tokenize(_block(c)) for c in changed}
    assert len(tokens) == 1 + len(changed)


def test_string_boundaries_and_long_arrays_are_not_blurred() -> None:
    assert tokenize(np.array(["ab", "c"], dtype=object)) != tokenize(np.array(["a", "bc"], dtype=object))
    long_a = np.array([1] * 5000, dtype=object)
    long_b = long_a.copy()
    long_b[2500] = 2  # numpy's repr would elide the middle of a 5,000-element array
    nested_a = np.empty(1, dtype=object)
    nested_a[0] = long_a
    nested_b = np.empty(1, dtype=object)
    nested_b[0] = long_b
    assert tokenize(nested_a) != tokenize(nested_b)


def test_numeric_arrays_keep_dask_tokens() -> None:
    x = np.arange(10)
    assert tokenize(x) == tokenize(np.arange(10))
    assert tokenize(x) != tokenize(np.arange(1, 11))
