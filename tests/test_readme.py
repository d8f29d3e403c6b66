"""The README stays an artist's page: short, in the order an artist needs it, with model files that match what the
shipped templates ask for, and links (README.md, docs/) that lead to files that exist."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
MAX_LINES = 180

# The sections an artist reads, in order: a heading's words identify it.
SECTION_ORDER = [
    ("what it does", re.compile(r"what it does", re.I)),
    ("install", re.compile(r"\binstall", re.I)),
    ("model files", re.compile(r"model files", re.I)),
    ("templates", re.compile(r"templates", re.I)),
    ("settings", re.compile(r"settings", re.I)),
    ("troubleshooting", re.compile(r"troubleshooting", re.I)),
]

FENCE = re.compile(r"^(```|~~~).*?^\1[^\n]*$", re.M | re.S)
INLINE_CODE = re.compile(r"`[^`\n]*`")
LINK = re.compile(r"\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$", re.M)


def _readme() -> str:
    return README.read_text(encoding="utf-8")


def _headings(text: str) -> list[str]:
    return [m.group(2) for m in HEADING.finditer(FENCE.sub("", text))]


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def _template_models() -> list[tuple[str, dict]]:
    found = []
    for path in sorted((REPO / "example_workflows").glob("*.json")):
        graph = json.loads(path.read_text(encoding="utf-8"))
        for node in graph.get("nodes", []):
            for model in (node.get("properties") or {}).get("models") or []:
                found.append((path.name, model))
    return found


def _doc_files() -> list[Path]:
    return [README, *sorted((REPO / "docs").glob("*.md"))]


def test_readme_is_short():
    lines = _readme().splitlines()
    assert len(lines) <= MAX_LINES, f"README.md has {len(lines)} lines; an artist's page keeps to {MAX_LINES}"


def test_readme_sections_come_in_the_order_artists_need():
    headings = _headings(_readme())
    positions = []
    for name, pattern in SECTION_ORDER:
        where = [i for i, h in enumerate(headings) if pattern.search(h)]
        assert where, f"README.md has no '{name}' heading; its headings: {headings}"
        positions.append((where[0], name))
    assert positions == sorted(positions), f"README.md's sections are out of order: {[n for _, n in sorted(positions)]}"


def test_template_models_are_in_the_readme_table_with_folder_and_url():
    models = _template_models()
    assert models, "no template names a model in properties.models"
    rows = [line for line in _readme().splitlines() if line.lstrip().startswith("|")]
    problems = []
    for template, model in models:
        name, directory, url = model["name"], model["directory"], model.get("url")
        matching = [row for row in rows if f"`{name}`" in row]
        if not matching:
            problems.append(f"{template}: {name} is not in the README's model-file table")
            continue
        if not any(f"models/{directory}" in row and (not url or url in row) for row in matching):
            problems.append(f"{template}: the README's row for {name} lacks models/{directory} or {url}")
    assert not problems, "\n".join(sorted(set(problems)))


def test_the_templates_table_lists_every_template_in_order():
    from elite_test_pack.workflows import EXAMPLES

    listed = re.findall(r"^\| `(\d\d_\w+)` \|", _readme(), re.M)
    assert listed == EXAMPLES, f"the README's template table lists {listed}; example_workflows/ holds {EXAMPLES}"


@pytest.mark.parametrize("doc", _doc_files(), ids=lambda p: str(p.relative_to(REPO)))
def test_relative_links_lead_to_files_that_exist(doc: Path):
    text = INLINE_CODE.sub("", FENCE.sub("", doc.read_text(encoding="utf-8")))
    problems = []
    for target in LINK.findall(text):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I):  # http:, https:, mailto:
            continue
        path_part, _, anchor = target.partition("#")
        linked = (doc.parent / path_part).resolve() if path_part else doc
        if not linked.exists():
            problems.append(f"{target}: no {linked.relative_to(REPO) if linked.is_relative_to(REPO) else linked}")
            continue
        if anchor and linked.suffix == ".md":
            anchors = {_slug(h) for h in _headings(linked.read_text(encoding="utf-8"))}
            if anchor not in anchors:
                problems.append(f"{target}: {linked.name} has no heading with the anchor #{anchor}")
    assert not problems, f"{doc.relative_to(REPO)}:\n" + "\n".join(problems)
