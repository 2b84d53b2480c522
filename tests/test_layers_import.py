"""The one-way flow of docs/design.md: models import nothing to their right (the faiss index, the
beyond-accuracy metrics, the training loops, the command line), not even lazily inside a function."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import lifelong

PACKAGE = Path(lifelong.__file__).resolve().parent
RIGHT_OF_MODELS = ("lifelong.index", "lifelong.beyond", "lifelong.train", "lifelong.cli", "lifelong.pipeline",
                   "lifelong.demo")


def imported_modules(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_no_model_file_imports_a_module_to_its_right():
    offending = {path.name: sorted(m for m in imported_modules(path) if m.startswith(RIGHT_OF_MODELS))
                 for path in sorted((PACKAGE / "models").glob("*.py"))}
    assert {name: mods for name, mods in offending.items() if mods} == {}


def test_importing_the_models_loads_nothing_to_their_right():
    code = ("import sys, lifelong.models; "
            f"print(sorted(m for m in sys.modules if m.startswith({RIGHT_OF_MODELS!r})))")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert loaded.returncode == 0, loaded.stderr
    assert loaded.stdout.strip() == "[]"
