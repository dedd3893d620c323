"""The README's configuration reference, generated from `Settings` so it cannot drift from the code.

Each row: the environment variable, the default and the comment written beside the field in settings.py.
`python -m recsys.settings_doc` rewrites the README block; a test fails when the block is stale.
"""

from __future__ import annotations

import ast
import inspect
import io
import tokenize
from pathlib import Path

from core import settings as settings_module
from core.settings import ENV_PREFIX, Settings

BEGIN = "<!-- settings:begin (written by `python -m recsys.settings_doc`) -->"
END = "<!-- settings:end -->"
README = Path(__file__).resolve().parent.parent / "README.md"


def field_comments() -> dict[str, str]:
    """Field name → the comment on its line in the `Settings` class body (blank if none)."""
    source = inspect.getsource(settings_module)
    comments = {tok.start[0]: tok.string.lstrip("# ").strip()
                for tok in tokenize.generate_tokens(io.StringIO(source).readline) if tok.type == tokenize.COMMENT}
    cls = next(n for n in ast.parse(source).body if isinstance(n, ast.ClassDef) and n.name == "Settings")
    return {n.target.id: comments.get(n.lineno, "") for n in cls.body
            if isinstance(n, ast.AnnAssign) and isinstance(n.target, ast.Name) and n.target.id != "model_config"}


def _default(name: str) -> str:
    value = Settings.model_fields[name].default
    text = "" if value is None else str(value)
    return f"`{text}`" if text else "unset"


def reference_table() -> str:
    notes = field_comments()
    rows = ["| variable | default | what it sets |", "|---|---|---|"]
    for name in Settings.model_fields:
        note = notes.get(name, "").replace("|", "\\|")
        rows.append(f"| `{ENV_PREFIX}{name.upper()}` | {_default(name).replace('|', chr(92) + '|')} | {note} |")
    return "\n".join(rows)


def with_reference(readme: str) -> str:
    """README text with the block between the settings markers replaced (the bench's block writer)."""
    from recsys.bench.report import with_readme_block

    return with_readme_block(readme, reference_table(), BEGIN, END)


if __name__ == "__main__":
    README.write_text(with_reference(README.read_text()))
    print(f"configuration reference written to {README}")
