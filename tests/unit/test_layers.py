"""The package's shape, checked so it does not drift back: layers and unit sizes (README,
"Layers and modules")."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "dagster_metaflow"
COMPILER = {
    "ir",
    "automation",
    "wiring",
    "translator",
    "op_specs",
    "codegen",
    "compiler",
    "cli",
    "definitions_file",
    "tokens",
    "deploy",
    "component",
    "component_cache",
}
LEAVES = {"task_options", "step_decorators", "naming", "errors", "notifications"}
MAX_FUNCTION = 80
MAX_CLASS = 300


def _modules(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*.py") if "__pycache__" not in p.parts)


def _imported(path: Path) -> set[str]:
    """Package modules `path` imports (top level or inside functions), as top names."""
    names: set[str] = set()
    inside_runtime = path.parent.name == "runtime"
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level:
            parts = (node.module or "").split(".")
            if inside_runtime and node.level == 1:
                continue  # a sibling in the runtime
            names.add(parts[0] if parts[0] else "")
            if not parts[0]:
                names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("dagster_metaflow."):
            names.add(node.module.split(".")[1])  # type: ignore[union-attr]
    return names


@pytest.mark.parametrize("path", _modules(PACKAGE / "runtime"), ids=lambda p: p.name)
def test_the_runtime_never_imports_the_compiler(path: Path) -> None:
    assert not _imported(path) & COMPILER, f"{path.name} imports {sorted(_imported(path) & COMPILER)}"


@pytest.mark.parametrize("leaf", sorted(LEAVES))
def test_shared_leaves_import_nothing_of_the_package(leaf: str) -> None:
    path = PACKAGE / f"{leaf}.py"
    assert not _imported(path) - {"errors"} - {leaf}, f"{leaf} imports {_imported(path)}"


def test_a_generated_file_loads_no_compiler_module() -> None:
    """What a generated file imports at load time (the runtime names it uses)."""
    names = ", ".join(
        [
            "MetaflowFlow",
            "metaflow_executor",
            "metaflow_io_manager",
            "executor_with_defaults",
            "with_metaflow_run_end",
            "Trigger",
            "evaluate_triggers",
        ]
    )
    code = (
        f"import sys\nfrom dagster_metaflow.runtime import {names}\n"
        f"print(sorted(m for m in sys.modules if m.split('.')[:2] in "
        f"[['dagster_metaflow', c] for c in {sorted(COMPILER)!r}]))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_no_function_over_80_lines_no_class_over_300() -> None:
    over = []
    for path in _modules(PACKAGE):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                length = (node.end_lineno or node.lineno) - node.lineno + 1
                limit = MAX_CLASS if isinstance(node, ast.ClassDef) else MAX_FUNCTION
                if length > limit:
                    over.append(f"{path.relative_to(PACKAGE)}:{node.name} ({length} lines)")
    assert not over, over


def test_no_python_module_writes_python_source() -> None:
    """The template writes the generated file; compiler modules hand it records (no
    `def `/`@op`/`.map(` code text in their string literals)."""
    suspicious = ("def ", "@op", ".map(", "yield from ", "RetryPolicy(")
    found = []
    for name in ("wiring", "translator", "op_specs", "codegen"):
        tree = ast.parse((PACKAGE / f"{name}.py").read_text())
        docstrings = {
            id(n.body[0].value)
            for n in ast.walk(tree)
            if isinstance(n, (ast.Module, ast.FunctionDef, ast.ClassDef))
            and n.body
            and isinstance(n.body[0], ast.Expr)
        }
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
                if any(s in node.value for s in suspicious):
                    found.append(f"{name}.py:{node.lineno}: {node.value[:40]!r}")
    assert not found, found
