"""Test modules never import each other: shared helpers live in conftest.py (issue 10, "Tests")."""

from __future__ import annotations

import ast
from pathlib import Path

TESTS = Path(__file__).resolve().parent


def imported_modules(source: str) -> set[str]:
    """Top-level names of every module imported anywhere in ``source`` (including inside functions)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module is not None and node.level == 0:
            names.add(node.module.split(".")[0])
        elif isinstance(node, ast.ImportFrom) and node.level > 0:
            # ``from . import test_x`` / ``from .test_x import y``
            names.update([node.module.split(".")[0]] if node.module else [a.name for a in node.names])
    return names


def test_module_imports_are_found_at_any_depth() -> None:
    source = (
        "import os.path\nfrom conftest import ATOL\ndef f():\n    from test_x import y\n    import test_z\n"
    )
    assert imported_modules(source) == {"os", "conftest", "test_x", "test_z"}
    assert imported_modules("from .test_rel import y\nfrom . import test_dot\n") == {"test_rel", "test_dot"}


def test_no_test_module_imports_another() -> None:
    modules = sorted(TESTS.rglob("*.py"))
    test_modules = {p.stem for p in modules if p.stem.startswith("test_")}
    assert "test_engine" in test_modules  # the scan sees the real test folder
    offenders = [
        f"{path.relative_to(TESTS)} imports {name}"
        for path in modules
        for name in sorted(imported_modules(path.read_text()) & test_modules)
    ]
    assert not offenders, "move shared helpers into tests/conftest.py: " + "; ".join(offenders)
