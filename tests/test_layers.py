"""The direction of dependency of docs/architecture.md, checked on the source: `ledger` is
the ground floor and imports no package above it (migrations/env.py imports the
store, so the store importing migrations would be a circle)."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
ABOVE_LEDGER = {"api", "consensus", "migrations", "node", "wallet"}


def imported_packages(path: Path) -> set[str]:
    """Top-level packages a module imports, at module level or inside functions."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found


def test_ledger_imports_no_package_above_it():
    offenders = {
        str(path.relative_to(REPO)): sorted(imported_packages(path) & ABOVE_LEDGER)
        for path in sorted((REPO / "ledger").rglob("*.py"))
    }
    assert {path: names for path, names in offenders.items() if names} == {}


def test_the_check_sees_an_import_inside_a_function(tmp_path):
    module = tmp_path / "m.py"
    module.write_text("def f():\n    import migrations\n    from node.config import x\n")
    assert imported_packages(module) == {"migrations", "node"}
