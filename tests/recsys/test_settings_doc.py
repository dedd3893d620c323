"""The README's configuration reference is the generated one, and it names every setting with a meaning."""

from __future__ import annotations

from core.settings import Settings
from recsys.settings_doc import BEGIN, END, README, field_comments, reference_table, with_reference


def test_readme_reference_is_current() -> None:
    text = README.read_text()
    assert BEGIN in text and END in text  # the block writer leaves a README without markers unchanged
    assert with_reference(text) == text, "README's settings table is stale: run `python -m recsys.settings_doc`"


def test_every_setting_has_a_row_and_a_comment() -> None:
    table = reference_table()
    notes = field_comments()
    for name in Settings.model_fields:
        assert f"| `RECSYS_{name.upper()}` |" in table
        assert notes.get(name), f"settings.py: say what {name!r} sets in a comment on its line"
