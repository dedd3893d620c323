"""`core.errors.one_line`: any exception becomes one bounded line, the line a client or a log can use."""

from __future__ import annotations

from core.errors import one_line


def test_first_line_by_default_last_line_for_remote_tracebacks_type_when_empty() -> None:
    remote = RuntimeError("Traceback (most recent call last):\n  File 'x.py'\n\nValueError: bad input\n")
    assert one_line(remote) == "Traceback (most recent call last):"
    assert one_line(remote, last=True) == "ValueError: bad input"
    assert one_line(TimeoutError()) == "TimeoutError"
    assert one_line(OSError("disk full\nmore"), typed=True) == "OSError: disk full"
    assert one_line(ValueError(""), typed=True) == "ValueError: "


def test_a_line_is_bounded() -> None:
    assert len(one_line(ValueError("x" * 5000))) == 200
    assert "\n" not in one_line(ValueError("a\nb\nc"), last=True)
