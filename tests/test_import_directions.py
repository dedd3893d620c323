"""The layering rule: `core` imports none of ours; `training` (offline) and `serving` (online) stand on `core` and
never import each other; `ops` runs both; `recsys` (CLI, demo, bench) is the top; the Feast repo is declarations.
Every import counts, module-level or inside a function."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
OURS = ("core", "training", "serving", "ops", "recsys", "feature_repo")
ALLOWED = {
    "core": {"core"},
    "training": {"core", "training"},
    "serving": {"core", "serving"},
    "ops": {"core", "training", "serving", "ops"},
    "recsys": set(OURS) - {"feature_repo"},
    "feature_repo": set(),
}


def violations(root: Path) -> list[str]:
    """'file:line imports module' for every import that crosses the layering the wrong way."""
    out = []
    for package, allowed in ALLOWED.items():
        for path in sorted((root / package).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                else:
                    continue
                for name in names:
                    top = name.split(".")[0]
                    if top in OURS and top not in allowed:
                        out.append(f"{path.relative_to(root)}:{node.lineno} imports {name}")
    return out


def test_every_import_follows_the_layering() -> None:
    assert violations(REPO) == []


@pytest.mark.parametrize(("package", "line"), [
    ("training", "from serving.events import open_event_log"),  # offline reaching into the online graph
    ("serving", "    from training.copy_text import generate"),  # the graph on training code, inside a function
    ("core", "import ops.launcher"),  # the core reaching up
    ("feature_repo", "from core.settings import load_settings"),  # settings read at declaration import
])
def test_the_check_catches_an_edge_against_the_layering(tmp_path: Path, package: str, line: str) -> None:
    for name in ALLOWED:
        (tmp_path / name).mkdir()
    body = f"def f():\n{line}\n" if line.startswith(" ") else f"{line}\n"
    (tmp_path / package / "mod.py").write_text(body)
    (tmp_path / "ops" / "fine.py").write_text("from training import steps\nfrom serving import app\n")
    assert violations(tmp_path) == [f"{package}/mod.py:{2 if line.startswith(' ') else 1} imports "
                                    f"{line.split()[1]}"]
