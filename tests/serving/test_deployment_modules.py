"""A Serve deployment class sees only the module globals that exist when its decorator runs: a helper
defined below the class is missing in the replica (found as NameError on gRPC error paths)."""

from __future__ import annotations

import ast
from pathlib import Path

SERVING = Path(__file__).resolve().parents[2] / "serving"


def _defined_at(tree: ast.Module) -> dict[str, int]:
    """Module-level name → line where it is first bound (defs, classes, assignments, imports)."""
    out: dict[str, int] = {}
    for node in tree.body:
        names: list[str] = []
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names = [node.name]
        elif isinstance(node, ast.Assign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names = [t.id for t in targets if isinstance(t, ast.Name)]
        elif isinstance(node, ast.Import | ast.ImportFrom):
            names = [(a.asname or a.name).split(".")[0] for a in node.names]
        for n in names:
            out.setdefault(n, node.lineno)
    return out


def _deployments(tree: ast.Module) -> list[ast.ClassDef]:
    return [n for n in tree.body if isinstance(n, ast.ClassDef)
            and any("serve.deployment" in ast.unparse(d) for d in n.decorator_list)]


def test_deployment_classes_use_only_globals_defined_above_them():
    checked = 0
    for path in sorted(SERVING.glob("*.py")):
        tree = ast.parse(path.read_text())
        defined = _defined_at(tree)
        for cls in _deployments(tree):
            start = min([cls.lineno, *(d.lineno for d in cls.decorator_list)])
            used = {n.id for n in ast.walk(cls) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)}
            late = sorted(n for n in used if defined.get(n, 0) > start)
            assert not late, f"{path.name}: {cls.name} uses {late}, defined below the class"
            checked += 1
    assert checked >= 4  # Ingress, Recall, Copy, Feedback
