"""The floor plan's rules, read from the imports of every module (docs/development.md, "Layout").

* Only ``elite_core/comfyui/``, ``nodes/`` and the entry point import ComfyUI.
* ``elite_core/elite``, ``catversion`` and ``evaluation`` import none of each other (nor ``comfyui``);
  ``common/`` imports nothing of the pack but itself.
* What ComfyUI imports (the entry point, ``nodes/``, ``elite_core/``) never reaches ``elite_training``
  or ``elite_eval``, whose extra dependencies a Manager install does not have; those two command-line
  packages import neither of each other.
* No module is named like a top-level module of ComfyUI (``utils``, ``model``, ``ops``, ``sd``).
* Every ``§`` citation in the code names a file of ``docs/reference/`` and a section it has.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("elite_core", "elite_training", "elite_eval", "nodes")
COMFYUI_MODULES = {"comfy", "comfy_api", "comfy_extras", "comfy_execution", "folder_paths", "server", "node_helpers",
                   "nodes", "execution", "comfyui_version", "latent_preview", "app", "utils"}
METHODS = ("elite", "catversion", "evaluation")
COMFYUI_SHADOWED = {"utils", "model", "ops", "sd"}


def pack_modules(root: Path) -> list[Path]:
    files = [root / "__init__.py"] if (root / "__init__.py").is_file() else []
    for package in PACKAGES:
        files += sorted((root / package).rglob("*.py"))
    return files


def module_parts(root: Path, path: Path) -> tuple[str, ...]:
    parts = path.relative_to(root).with_suffix("").parts
    return parts[:-1] if parts[-1] == "__init__" else parts


def imports_of(root: Path, path: Path) -> list[tuple[int, str, tuple[str, ...] | None]]:
    """(line, what, pack module) of each import: ``what`` is the top-level name for outside modules,
    ``pack module`` the pack's module path (e.g. ("elite_core", "common", "files")) for its own."""
    here = module_parts(root, path)
    package = here if path.name == "__init__.py" else here[:-1]
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                found.append(_classify(node.lineno, tuple(alias.name.split("."))))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[:len(package) - node.level + 1] if node.level > 1 else package
                target = base + tuple((node.module or "").split(".")) if node.module else base
                # ``from . import x``: x is a module of that package when a file says so
                for alias in node.names if not node.module else [None]:
                    name = target + ((alias.name,) if alias else ())
                    is_module = alias and ((root.joinpath(*name).with_suffix(".py")).is_file() or (root.joinpath(*name)).is_dir())
                    found.append((node.lineno, ".".join(name), name if is_module or not alias else target))
            else:
                found.append(_classify(node.lineno, tuple(node.module.split("."))))
    return found


def _classify(line: int, name: tuple[str, ...]):
    if name[0] in ("elite_core", "elite_training", "elite_eval"):
        return line, ".".join(name), name
    if name[0] == "comfyui_elite":  # the alias tests give the loaded pack
        return line, ".".join(name), name[1:]
    return line, name[0], None


def violations(root: Path) -> list[str]:
    problems = []
    for path in pack_modules(root):
        where = module_parts(root, path)
        label = "/".join(path.relative_to(root).parts)
        if path.stem in COMFYUI_SHADOWED:
            problems.append(f"{label}: a module named {path.stem!r} is shadowed by ComfyUI's own")
        in_comfyui_layer = where[:2] == ("elite_core", "comfyui") or where[:1] == ("nodes",) or where == ()
        for line, what, pack in imports_of(root, path):
            at = f"{label}:{line}"
            if pack is None:
                if what in COMFYUI_MODULES and not in_comfyui_layer:
                    problems.append(f"{at} imports ComfyUI ({what}) outside elite_core/comfyui/ and nodes/")
                continue
            if pack[:1] in (("elite_training",), ("elite_eval",)) and where[:1] not in (("elite_training",), ("elite_eval",)):
                problems.append(f"{at} imports {what}: ComfyUI would import a command-line package")
            if where[:1] == ("elite_training",) and pack[:1] == ("elite_eval",) or \
                    where[:1] == ("elite_eval",) and pack[:1] == ("elite_training",):
                problems.append(f"{at} imports {what}: elite_training and elite_eval are independent")
            if where[:1] == ("elite_core",) and len(where) > 1 and len(pack) > 1 and pack[0] == "elite_core":
                mine, theirs = where[1], pack[1]
                if mine == "common" and theirs != "common":
                    problems.append(f"{at} imports {what}: common/ imports nothing of the pack but itself")
                if mine in METHODS and theirs != mine and theirs in METHODS + ("comfyui",):
                    problems.append(f"{at} imports {what}: elite_core/{mine}/ may import only common/ and itself")
    return problems


def test_the_pack_keeps_its_floor_plan():
    assert violations(REPO) == []


@pytest.mark.parametrize("module, line, expected", [
    ("elite_core/elite/extra.py", "from ..catversion.prefix import CatVersionPrefix", "may import only common/"),
    ("elite_core/evaluation/extra.py", "from ..comfyui import folders", "may import only common/"),
    ("elite_core/catversion/extra.py", "import comfy.utils", "imports ComfyUI (comfy)"),
    ("elite_core/common/extra.py", "from ..elite import sites", "imports nothing of the pack"),
    ("elite_core/comfyui/extra.py", "from elite_training.data import open_dataset", "command-line package"),
    ("nodes/extra.py", "from ..elite_eval import run", "command-line package"),
    ("elite_eval/extra.py", "import elite_training.elite", "independent"),
    ("elite_core/elite/ops.py", "import torch", "shadowed by ComfyUI's own"),
])
def test_a_bad_import_is_named(tmp_path, module, line, expected):
    """The checker on a copy of the pack with one bad module added: it names that module."""
    for path in pack_modules(REPO):
        copy = tmp_path / path.relative_to(REPO)
        copy.parent.mkdir(parents=True, exist_ok=True)
        copy.write_text(path.read_text(encoding="utf-8"), encoding="utf-8")
    (tmp_path / module).write_text(line + "\n", encoding="utf-8")
    problems = violations(tmp_path)
    assert len(problems) == 1 and problems[0].startswith(module) and expected in problems[0], problems


SECTION = re.compile(r"§\s?(\d+(?:\.\d+)?)")
CITED_FILE = re.compile(r"docs/reference/([\w-]+\.md)")


def reference_sections(name: str) -> set[str]:
    text = (REPO / "docs" / "reference" / name).read_text(encoding="utf-8")
    return set(re.findall(r"^#{2,4} (\d+(?:\.\d+)?)\.? ", text, re.M))


def test_every_section_citation_names_a_reference_file_and_section():
    problems = []
    for path in sorted(REPO.rglob("*.py")):
        if ".cache" in path.parts:
            continue
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            sections = SECTION.findall(line)
            if not sections:
                continue
            files = CITED_FILE.findall(line)
            where = f"{path.relative_to(REPO)}:{number}"
            if not files:
                problems.append(f"{where}: § without a docs/reference/ file")
                continue
            missing = [f for f in files if not (REPO / "docs" / "reference" / f).is_file()]
            if missing:
                problems.append(f"{where}: no docs/reference/{missing[0]}")
                continue
            known = set().union(*(reference_sections(f) for f in files))
            problems += [f"{where}: §{s} is not a section of {', '.join(files)}" for s in sections if s not in known]
    assert problems == []


MAPPED = ("nodes", "elite_core", "elite_training", "elite_eval", "elite_test_pack", "scripts", "bench")


def test_the_module_map_lists_every_module():
    text = (REPO / "docs" / "development.md").read_text(encoding="utf-8")
    section = text.split("## Module map", 1)[1].split("\n## ", 1)[0]
    listed = set(re.findall(r"^\| `([\w/]+\.py)` \|", section, re.M))
    present = {"__init__.py"} | {str(p.relative_to(REPO)) for d in MAPPED for p in (REPO / d).rglob("*.py")}
    assert sorted(present - listed) == [], "modules missing from docs/development.md's module map"
    assert sorted(listed - present) == [], "the module map lists modules that do not exist"
