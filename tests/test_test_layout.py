"""The test suite's layout: test modules stand alone, and nothing outside tests/ reaches into it.

* No tests/test_*.py imports another test_* module: shared fixtures live in conftest.py, shared
  helper functions in the elite_test_pack package at the repository root.
* scripts/, bench/ and elite_test_pack/ neither put a tests directory on sys.path nor import a
  module of tests/; they import the harness as ``elite_test_pack`` with the repository root on sys.path.

The sources are parsed (ast), so an import inside a function or a path built with ``/`` counts.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TESTS = REPO / "tests"
OUTSIDE_TESTS = ("scripts", "bench", "elite_test_pack")
# What lives in tests/ and must never be imported from outside: its modules, and the harness's old name.
TESTS_MODULES = {path.stem for path in TESTS.glob("*.py")} | {"tests", "comfy_test_pack"}
PATH_CHANGERS = {"insert", "append", "extend"}


def imported_modules(tree: ast.AST) -> list[tuple[int, str]]:
    """(line, top-level module name) of every absolute import and importlib.import_module("...")."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name.split(".")[0]) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module.split(".")[0]))
        elif (isinstance(node, ast.Call) and _dotted(node.func) in ("importlib.import_module", "import_module", "__import__")
              and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
            found.append((node.lineno, node.args[0].value.split(".")[0]))
    return sorted(found)


def _dotted(node: ast.AST) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    return ""


def _assignments(tree: ast.AST) -> dict[str, list[ast.AST]]:
    """Every value assigned to a plain name anywhere in the file (to follow ``TESTS = REPO / "tests"``)."""
    values: dict[str, list[ast.AST]] = {}
    for node in ast.walk(tree):
        if isinstance(node, (ast.Assign, ast.AnnAssign)) and node.value is not None:
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                for name in ast.walk(target):
                    if isinstance(name, ast.Name):
                        values.setdefault(name.id, []).append(node.value)
    return values


def _names_tests_dir(expr: ast.AST, values: dict[str, list[ast.AST]], seen: set[str] | None = None) -> bool:
    """Whether ``expr`` spells a path with a ``tests`` component (through the names it uses)."""
    seen = set() if seen is None else seen
    for node in ast.walk(expr):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            if "tests" in node.value.replace("\\", "/").split("/"):
                return True
        elif isinstance(node, ast.Name) and node.id not in seen:
            seen.add(node.id)
            if any(_names_tests_dir(value, values, seen) for value in values.get(node.id, [])):
                return True
    return False


def lines_putting_tests_on_sys_path(tree: ast.AST) -> list[int]:
    """Lines that put a tests directory on sys.path (insert/append/extend, assignment, site.addsitedir)."""
    values = _assignments(tree)
    lines = []
    for node in ast.walk(tree):
        added = []
        if isinstance(node, ast.Call):
            if isinstance(node.func, ast.Attribute) and node.func.attr in PATH_CHANGERS and \
                    _dotted(node.func.value) == "sys.path":
                added = node.args
            elif _dotted(node.func) in ("site.addsitedir", "addsitedir"):
                added = node.args
        elif isinstance(node, (ast.Assign, ast.AugAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if any(_dotted(t.value if isinstance(t, ast.Subscript) else t) == "sys.path" for t in targets):
                added = [node.value]
        if any(_names_tests_dir(arg, values) for arg in added):
            lines.append(node.lineno)
    return sorted(lines)


def _parse(path: Path) -> ast.AST:
    return ast.parse(path.read_text(), filename=str(path))


def _outside_sources() -> list[Path]:
    return sorted(path for folder in OUTSIDE_TESTS for path in (REPO / folder).rglob("*.py"))


@pytest.mark.parametrize("path", sorted(TESTS.glob("test_*.py")), ids=lambda path: path.name)
def test_no_test_module_imports_another(path):
    imports = [f"line {line}: {name}" for line, name in imported_modules(_parse(path)) if name.startswith("test_")]
    assert not imports, f"{path.name} imports test modules ({imports}): put shared fixtures in conftest.py " \
                        "and shared helpers in elite_test_pack"


def test_scripts_benches_and_the_harness_neither_put_tests_on_sys_path_nor_import_from_it():
    assert _outside_sources(), "no sources found to check"
    problems = []
    for path in _outside_sources():
        tree = _parse(path)
        where = path.relative_to(REPO)
        problems += [f"{where}:{line}: puts a tests directory on sys.path" for line in lines_putting_tests_on_sys_path(tree)]
        problems += [f"{where}:{line}: imports {name} from tests/" for line, name in imported_modules(tree)
                     if name in TESTS_MODULES]
    assert not problems, "\n".join(problems)


def test_the_checks_see_what_they_look_for():
    """The detectors flag the patterns this layout forbids (so the tests above cannot pass vacuously)."""
    bad = ast.parse('''
import sys
from pathlib import Path
REPO = Path(__file__).resolve().parents[1]
TESTS = REPO / "tests"
sys.path.insert(0, str(REPO / "tests"))
sys.path.append(str(TESTS))
sys.path[:0] = ["tests/"]

def later():
    from test_workflows import submit
    import comfy_test_pack.workflows
    importlib.import_module("test_encoder")
''')
    assert lines_putting_tests_on_sys_path(bad) == [6, 7, 8]
    assert [name for _, name in imported_modules(bad)] == ["sys", "pathlib", "test_workflows", "comfy_test_pack",
                                                          "test_encoder"]
    good = ast.parse('''
import sys
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "scripts"))
json.loads((REPO / "tests" / "api_workflows" / "x.json").read_text())  # data, not a path entry
from elite_test_pack.workflows import tiny_prompt
''')
    assert lines_putting_tests_on_sys_path(good) == []
    assert not {name for _, name in imported_modules(good)} & TESTS_MODULES
