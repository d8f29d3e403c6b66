"""The node surface an artist sees: each node's help page (web/docs/<node id>.md) against what ComfyUI
publishes about the node in object_info, the search aliases, and the calmer widgets (expert settings
folded away, the second concept's placeholder shown only when a second concept is connected).

object_info comes from ``GET_NODE_INFO_V1()``: what ComfyUI's server answers for a V3 node (its
``node_info``) on 0.3.75 and 0.33.0, so the pages are checked against exactly what the frontend gets."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from conftest import BASE_DIR, COMFY_DIR, PACK_LINK

import folder_paths
import nodes

from elite_test_pack.comfy_server import running_server
from elite_test_pack.workflows import EXAMPLES, api_workflow

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "web" / "docs"
CACHE = Path(os.environ.get("ELITE_CACHE", REPO / ".cache"))
FRONTEND_MODULES = CACHE / "frontend-check" / "node_modules"
NEWEST_FRONTEND = CACHE / "frontend-newest" / "comfyui_frontend_package" / "static"
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
BACKTICKED = re.compile(r"`([^`]*)`")
NUMBER_LIMIT = re.compile(r"\b(min|max|step) `([^`]+)`")
MODEL_FOLDER = re.compile(r"`models/([\w.-]+)`")
PAGE_LINK = re.compile(r"\]\(([\w.-]+)\.md\)")


def object_info(node_id: str) -> dict:
    return nodes.NODE_CLASS_MAPPINGS[node_id].GET_NODE_INFO_V1()


def pack_node_ids() -> list[str]:
    """Every node ComfyUI loaded from the pack's folder (not only the list in nodes/__init__.py)."""
    module = f"custom_nodes.{PACK_LINK.name}"
    return sorted(node_id for node_id, cls in nodes.NODE_CLASS_MAPPINGS.items()
                  if getattr(cls, "RELATIVE_PYTHON_MODULE", None) == module)


def _inputs(info: dict) -> dict[str, tuple[str, dict, bool]]:
    """name -> (type, options, optional), a combo's type as COMBO whether its spec is a list (V1 style)
    or "COMBO" with its options."""
    found = {}
    for group in ("required", "optional"):
        for name, spec in info["input"].get(group, {}).items():
            kind, options = spec[0], dict(spec[1]) if len(spec) > 1 else {}
            if isinstance(kind, list):
                kind, options["options"] = "COMBO", kind
            found[name] = (kind, options, group == "optional")
    return found


def _sections(text: str) -> dict[str, str]:
    parts = re.split(r"^## +(.+?)\s*$", text, flags=re.M)
    return {title.strip().lower(): body for title, body in zip(parts[1::2], parts[2::2])}


def _table(body: str) -> list[list[str]]:
    rows = [line.strip().strip("|").split("|") for line in body.splitlines() if line.strip().startswith("|")]
    return [[cell.strip() for cell in row] for row in rows[2:]]  # past the header and its --- line


def _first_code(cell: str) -> str | None:
    found = BACKTICKED.search(cell)
    return found.group(1) if found else None


def _same_number(page: str, value) -> bool:
    try:
        return math.isclose(float(page), float(value), rel_tol=1e-12, abs_tol=0.0)
    except ValueError:
        return False


def _default_problems(name: str, kind: str, options: dict, cell: str) -> list[str]:
    if "default" not in options:
        return [] if cell in ("—", "-", "") else [f"`{name}` has no default in object_info, the page says {cell!r}"]
    default = options["default"]
    if kind == "STRING" and default == "":
        return [] if cell == "empty" else [f"`{name}`'s default is empty; the page says {cell!r} (write: empty)"]
    shown = _first_code(cell)
    if shown is None:
        return [f"`{name}`'s default {default!r} is not on the page (its cell: {cell!r})"]
    if kind == "BOOLEAN":
        same = shown == ("true" if default else "false")
    elif kind in ("INT", "FLOAT"):
        same = _same_number(shown, default)
    else:
        same = shown == str(default)
    return [] if same else [f"`{name}`'s default is {default!r} in object_info, `{shown}` on the page"]


def _range_problems(name: str, kind: str, options: dict, cell: str) -> list[str]:
    problems = []
    on_page = dict(NUMBER_LIMIT.findall(cell))
    published = {key: options[key] for key in ("min", "max", "step") if key in options} if kind in ("INT", "FLOAT") else {}
    for key in sorted(set(on_page) | set(published)):
        if key not in published:
            problems.append(f"`{name}`: the page gives a {key} ({on_page[key]}), object_info none")
        elif key not in on_page:
            problems.append(f"`{name}`: {key} {published[key]} is not on the page")
        elif not _same_number(on_page[key], published[key]):
            problems.append(f"`{name}`: {key} is {published[key]} in object_info, {on_page[key]} on the page")
    return problems


def _files_listed(node_id: str, name: str, folder: str) -> bool:
    """Whether the combo lists the files of models/<folder>: a new file there shows up in its options."""
    paths = folder_paths.get_folder_paths(folder)
    if not paths:
        return False
    extensions = sorted(folder_paths.folder_names_and_paths[folder][1]) or [".safetensors"]
    probe = Path(paths[0]) / f"page_check_{uuid.uuid4().hex[:8]}{extensions[0] if extensions[0] else '.safetensors'}"
    probe.parent.mkdir(parents=True, exist_ok=True)
    probe.write_bytes(b"")
    try:
        return probe.name in _inputs(object_info(node_id))[name][1].get("options", [])
    finally:
        probe.unlink()


def _options_problems(node_id: str, name: str, options: dict, cell: str) -> list[str]:
    listed, folders = BACKTICKED.findall(cell), MODEL_FOLDER.findall(cell)
    listed = [value for value in listed if not value.startswith("models/")]
    published = list(options.get("options", []))
    if not folders:
        if listed != published:
            return [f"`{name}`'s options are {published} in object_info, {listed} on the page"]
        return []
    problems = [f"`{name}`: `{value}` is not an option" for value in listed if value not in published]
    for folder in folders:
        if not _files_listed(node_id, name, folder):
            problems.append(f"`{name}` does not list the files of models/{folder}, as the page says")
    return problems


def page_problems(node_id: str) -> list[str]:
    """What the node's help page gets wrong or leaves out, compared with object_info."""
    info = object_info(node_id)
    path = DOCS / f"{node_id}.md"
    if not path.is_file():
        return [f"no help page: write web/docs/{node_id}.md"]
    text = path.read_text(encoding="utf-8")
    problems = []
    if text.splitlines()[0] != f"# {info['display_name']}":
        problems.append(f"the title line must be '# {info['display_name']}' (the node's display name)")
    sections = _sections(text)
    for section in ("inputs", "outputs", "what to try first"):
        if section not in sections:
            problems.append(f"no '## {section.capitalize()}' section")
    if problems:
        return problems
    if not re.search(r"^\s*[-*] \S", sections["what to try first"], re.M):
        problems.append("'## What to try first' has no advice (a list of things to try)")

    inputs, rows = _inputs(info), {}
    for row in _table(sections["inputs"]):
        name = _first_code(row[0]) if row else None
        if name is None or len(row) != 5:
            problems.append(f"an input row is not `name` | type | default | range / options | what it does: {row}")
        elif name in rows:
            problems.append(f"`{name}` is listed twice")
        else:
            rows[name] = row
    for name in sorted(set(rows) - set(inputs)):
        problems.append(f"`{name}` is on the page but the node has no such input (a stale name?)")
    for name, (kind, options, optional) in inputs.items():
        if name not in rows:
            problems.append(f"input `{name}` ({kind}{', optional' if optional else ''}) is not on the page")
            continue
        label, type_cell, default_cell, range_cell, words = rows[name]
        if options.get("display_name") and options["display_name"] not in label:
            problems.append(f"`{name}` is shown as '{options['display_name']}': say so on the page")
        if _first_code(type_cell) != kind:
            problems.append(f"`{name}` is a {kind}; the page says {type_cell!r}")
        if ("optional" in type_cell) != optional:
            problems.append(f"`{name}` is {'optional' if optional else 'required'}; the page's type cell says otherwise")
        if ("advanced" in type_cell) != bool(options.get("advanced")):
            problems.append(f"`{name}` is {'' if options.get('advanced') else 'not '}advanced in object_info; "
                            "the page's type cell says otherwise")
        problems += _default_problems(name, kind, options, default_cell)
        problems += _range_problems(name, kind, options, range_cell)
        if kind == "COMBO":
            problems += _options_problems(node_id, name, options, range_cell)
        elif kind not in WIDGET_TYPES and range_cell not in ("—", "-"):
            problems.append(f"`{name}` is a socket: its range / options cell should be —")
        if len(words) < 10:
            problems.append(f"`{name}`: say what it does")

    outputs = [(_first_code(row[0]), _first_code(row[1]) if len(row) > 1 else None, row[-1])
               for row in _table(sections["outputs"])]
    published = list(zip(info["output_name"], info["output"]))
    if [(name, kind) for name, kind, _ in outputs] != published:
        problems.append(f"the outputs are {published} in object_info (name, type, in order); the page lists "
                        f"{[(name, kind) for name, kind, _ in outputs]}")
    problems += [f"output `{name}`: say what it is" for name, _, words in outputs if len(words) < 10]
    return problems


def _same_surface(a: dict, b: dict) -> bool:
    keys = ("input", "output", "output_name")
    return all(json.dumps(a[k], sort_keys=True, default=str) == json.dumps(b[k], sort_keys=True, default=str) for k in keys)


@pytest.mark.parametrize("node_id", pack_node_ids())
def test_the_help_page_lists_every_input_and_output_as_object_info_has_them(node_id):
    """Every input (type, optional, advanced, default, range, options) and every output, no stale name.
    A deprecated node's page sends the artist to the page of the node that replaces it (same inputs)."""
    info = object_info(node_id)
    if info.get("deprecated"):
        text = (DOCS / f"{node_id}.md").read_text(encoding="utf-8")
        assert text.splitlines()[0] == f"# {info['display_name']}"
        targets = [t for t in PAGE_LINK.findall(text) if t in nodes.NODE_CLASS_MAPPINGS]
        assert targets, f"web/docs/{node_id}.md: link the page of the node that replaces it"
        assert any(_same_surface(info, object_info(t)) and not object_info(t).get("deprecated") for t in targets)
        return
    problems = page_problems(node_id)
    assert not problems, f"web/docs/{node_id}.md:\n  " + "\n  ".join(problems)


def test_every_help_page_belongs_to_a_node_and_names_templates_that_exist():
    stale = sorted(p.stem for p in DOCS.glob("*.md") if p.stem not in pack_node_ids())
    assert not stale, f"web/docs pages of no node: {stale}"
    for page in sorted(DOCS.glob("*.md")):
        named = re.findall(r"`(\d+_\w+)` template", page.read_text(encoding="utf-8"))
        assert set(named) <= set(EXAMPLES), f"{page.name} names a template that is not shipped: {named}"


def test_the_page_check_finds_what_is_missing_or_stale(tmp_path, monkeypatch):
    """The check itself: a page with an input left out, a stale input, a wrong default and a wrong
    range is refused, naming each."""
    page = (DOCS / "ELITELocalAttnPatch.md").read_text(encoding="utf-8")
    page = re.sub(r"^\| `global_kv` .*\n", "", page, flags=re.M)
    page = page.replace("| `end_percent` |", "| `finish_percent` |").replace("| `0.8` |", "| `0.7` |")
    page = page.replace("min `0`, max `2`", "min `0`, max `3`")
    (tmp_path / "ELITELocalAttnPatch.md").write_text(page, encoding="utf-8")
    monkeypatch.setattr(sys.modules[__name__], "DOCS", tmp_path)
    problems = "\n".join(page_problems("ELITELocalAttnPatch"))
    assert "input `global_kv` (BOOLEAN) is not on the page" in problems
    assert "`finish_percent` is on the page but the node has no such input" in problems
    assert "input `end_percent`" in problems
    assert "`strength`'s default is 0.8 in object_info, `0.7` on the page" in problems
    assert "`strength`: max is 2.0 in object_info, 3 on the page" in problems


def test_a_file_list_claim_is_checked_against_the_folder(tmp_path, monkeypatch):
    """'a file in models/<folder>' on a page holds only when the combo lists that folder's files."""
    page = (DOCS / "ELITEExampleConcept.md").read_text(encoding="utf-8")
    page = page.replace("`cat`, `dog`, `flower`", "a file in `models/elite`")
    (tmp_path / "ELITEExampleConcept.md").write_text(page, encoding="utf-8")
    monkeypatch.setattr(sys.modules[__name__], "DOCS", tmp_path)
    assert "`example` does not list the files of models/elite" in "\n".join(page_problems("ELITEExampleConcept"))
    assert _files_listed("ELITEGlobalMapperLoader", "mapper_name", "elite")


# Search: the frontend (1.32.9 to 1.58.1) matches the query against the node's id, display name and
# (from 1.4x) search aliases, then ranks the hits: an id or display name equal to the query, then those
# that start with it, shortest first, then those with it as a word, then anywhere; aliases only let a
# node be found. This restates that ranking for one word.

WORD_SPLIT = re.compile(r" |\b|(?<=[a-z])(?=[A-Z])|(?=[A-Z][a-z])")


def _frontend_rank_key(query: str, texts: list[str]) -> tuple:
    keys = []
    for text in texts:
        words, low = [w.lower() for w in WORD_SPLIT.split(text) if w], text.lower()
        if low == query:
            keys.append((0, 0, 0))
        elif low.startswith(query):
            keys.append((1, 0, len(low)))
        elif query in words:
            keys.append((2, low.index(query) + len(low) * 0.5, len(low)))
        elif query in low:
            keys.append((3, low.index(query) + len(low) * 0.5, len(low)))
        else:
            keys.append((9, 0, 0))
    return min(keys)


def _search(query: str) -> list[str]:
    found = []
    for node_id in pack_node_ids():
        info = object_info(node_id)
        if info.get("deprecated"):
            continue  # hidden from search
        texts = [node_id, info["display_name"]]
        aliases = info.get("search_aliases") or []
        if any(query in t.lower() for t in texts + aliases):
            found.append((_frontend_rank_key(query, texts), node_id))
    return [node_id for _, node_id in sorted(found)]


def test_every_node_has_search_aliases_where_comfyui_reads_them():
    from comfyui_elite.nodes.elite_types import SUPPORTS_SEARCH_ALIASES

    if not SUPPORTS_SEARCH_ALIASES:
        pytest.skip("this ComfyUI has no search aliases (0.3.75): the nodes load without them")
    missing = [node_id for node_id in pack_node_ids() if not object_info(node_id).get("search_aliases")]
    assert not missing, f"nodes without search aliases: {missing}"


@pytest.mark.parametrize("words, node_id", [
    ("reference image", "ELITEEncoder"), ("subject", "ELITEEncoder"), ("ip adapter", "ELITELocalAttnPatch"),
    ("personalize", "ELITELocalAttnPatch"), ("textual inversion", "ELITESaveConcept"),
    ("textual inversion", "CatVersionTrain"), ("dreambooth", "CatVersionTrain"), ("elite", "ELITELoadConcept"),
    ("concept", "CatVersionApply"),
])
def test_the_words_artists_type_find_the_node(words, node_id):
    from comfyui_elite.nodes.elite_types import SUPPORTS_SEARCH_ALIASES

    if not SUPPORTS_SEARCH_ALIASES and words not in object_info(node_id)["display_name"].lower():
        pytest.skip("this ComfyUI has no search aliases (0.3.75)")
    assert node_id in _search(words)


def test_elite_lists_the_nodes_that_make_an_image_before_the_score():
    ranked = _search("elite")
    assert ranked[0] != "ELITEEvaluationScore", ranked
    for core in ("ELITEEncoder", "ELITEConditioning", "ELITELocalAttnPatch"):
        assert ranked.index(core) < ranked.index("ELITEEvaluationScore"), ranked
    assert "ELITEScore" not in ranked  # the old id is deprecated: hidden from search


def test_a_workflow_saved_with_the_old_score_id_still_loads():
    old, new = object_info("ELITEScore"), object_info("ELITEEvaluationScore")
    assert old["deprecated"] and not new["deprecated"]
    assert _same_surface(old, new)  # same inputs, widgets and outputs: a saved node keeps its meaning


# Calmer widgets: what object_info tells the frontend, and what the frontend's canvas then shows.

EXPERT = {"ELITELocalAttnPatch": {"start_percent", "end_percent", "global_kv", "attention_map"},
          "ELITEConditioning": {"words", "placeholder_2"}, "ELITEEncoder": {"invert_mask"},
          "ELITEPrepareConcept": {"mask_polarity"}, "ELITEEvaluationScore": {"crop_to_mask"},
          "CatVersionTrain": {"retrain"}}


@pytest.mark.parametrize("node_id", sorted(EXPERT))
def test_expert_inputs_are_advanced_on_this_comfyui(node_id):
    advanced = {name for name, (_, options, _) in _inputs(object_info(node_id)).items() if options.get("advanced")}
    assert advanced == EXPERT[node_id]


def test_the_nodes_say_the_conditioning_goes_to_the_patch_and_to_the_sampler():
    patch, conditioning = object_info("ELITELocalAttnPatch"), object_info("ELITEConditioning")
    positive = _inputs(patch)["positive"][1]["tooltip"]
    for text in (patch["description"], positive, conditioning["description"], conditioning["output_tooltips"][0]):
        assert re.search(r"ELITE (Conditioning|Attention Patch)", text) and "sampler" in text and "positive" in text, text


def _frontend_report(url: str, files: list[Path]) -> dict:
    chromium, node = shutil.which("chromium"), shutil.which("node")
    if not (chromium and node and (FRONTEND_MODULES / "playwright-core").is_dir()):
        if os.environ.get("CI"):
            pytest.fail("the frontend check needs Debian's chromium, node and playwright-core (make test installs them)")
        pytest.skip("the frontend check needs Debian's chromium, node and playwright-core (make test installs them)")
    done = subprocess.run([node, str(REPO / "tests" / "frontend" / "calm_widgets.js"), url, chromium, *map(str, files)],
                          env={**os.environ, "NODE_PATH": str(FRONTEND_MODULES)}, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(done.stdout)


def _template(stem: str) -> str:
    """A shipped template by its name without the number that orders the template browser."""
    (name,) = [name for name in EXAMPLES if re.fullmatch(rf"\d+_{stem}", name)]
    return name


GLOBAL_LOCAL, TWO_CONCEPTS, PREPARE = (_template(s) for s in ("elite_global_local", "elite_two_concepts",
                                                               "elite_prepare_from_photo"))
LOADED = [GLOBAL_LOCAL, TWO_CONCEPTS, PREPARE]


@pytest.fixture(scope="module")
def workflows(tmp_path_factory) -> list[Path]:
    """The shipped templates, and an older save of one whose second placeholder was changed with no
    second concept connected."""
    folder = tmp_path_factory.mktemp("calm")
    files = [REPO / "example_workflows" / f"{name}.json" for name in LOADED]
    old = json.loads(files[0].read_text())
    conditioning = next(n for n in old["nodes"] if n["type"] == "ELITEConditioning")
    conditioning["widgets_values"][3] = "X"
    files.append(folder / "changed_second_placeholder.json")
    files[-1].write_text(json.dumps(old))
    return files


@pytest.fixture(scope="module", params=["pinned", "newest"])
def frontend(request, workflows) -> dict:
    extra = []
    if request.param == "newest":
        if not (NEWEST_FRONTEND / "index.html").is_file():
            pytest.skip(f"the newest frontend is not installed at {NEWEST_FRONTEND} (make test installs it)")
        extra = ["--front-end-root", str(NEWEST_FRONTEND)]
    log_path = BASE_DIR / f"server-calm-widgets-{request.param}.log"
    with running_server(COMFY_DIR, BASE_DIR, log_path, extra_args=extra, timeout=180) as url:
        return _frontend_report(url, workflows)


def _shown(report: dict, workflow: str, node_type: str) -> list[list[str]]:
    return [n["shown"] for n in report["loaded"][workflow]["nodes"].values() if n["type"] == node_type]


def test_a_fresh_node_shows_no_expert_setting_and_one_placeholder(frontend):
    assert "comfyui-elite.calm-widgets" in frontend["extensions"]
    assert frontend["fresh"]["ELITEConditioning"] == ["text", "placeholder"]
    assert frontend["fresh"]["ELITELocalAttnPatch"] == ["strength"]
    assert frontend["fresh"]["ELITEEncoder"] == []
    assert "Show Advanced" in frontend["patch_menu"]
    assert frontend["patch_advanced_shown"] == ["strength", "start_percent", "end_percent", "global_kv", "attention_map"]
    assert frontend["errors"] == []


def test_the_second_placeholder_shows_while_a_second_concept_is_connected(frontend):
    assert frontend["second_connected"] == ["text", "placeholder", "placeholder_2"]
    assert frontend["second_disconnected"] == ["text", "placeholder"]
    assert _shown(frontend, TWO_CONCEPTS, "ELITEConditioning") == [["text", "placeholder", "placeholder_2"]]
    assert _shown(frontend, GLOBAL_LOCAL, "ELITEConditioning") == [["text", "placeholder"]]
    # an older save with a changed second placeholder shows it, and keeps it
    assert _shown(frontend, "changed_second_placeholder", "ELITEConditioning") == [["text", "placeholder", "placeholder_2"]]
    prompt = frontend["loaded"]["changed_second_placeholder"]["prompt"]
    assert [n["inputs"]["placeholder_2"] for n in prompt.values() if n["class_type"] == "ELITEConditioning"] == ["X"]


def test_a_saved_node_with_a_changed_expert_setting_opens_with_it_shown(frontend):
    # the Prepare Concept template records the attention map (attention_map on)
    assert _shown(frontend, PREPARE, "ELITELocalAttnPatch") == [
        ["strength", "start_percent", "end_percent", "global_kv", "attention_map"]]
    assert _shown(frontend, GLOBAL_LOCAL, "ELITELocalAttnPatch") == [["strength"]]


def test_hidden_widgets_keep_their_values_in_the_prompt(frontend):
    for name in LOADED:
        prompt = frontend["loaded"][name]["prompt"]
        assert {k: {"class_type": n["class_type"], "inputs": n["inputs"]} for k, n in prompt.items()} == api_workflow(name)
