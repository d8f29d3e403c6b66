"""The template browser's thumbnails (example_workflows/<name>.jpg), composed with Pillow: the number
that orders the templates, a title, the concept photo(s) the template uses, its prompt and its key
nodes. The frontend shows them square (about 260 px wide); every text is drawn at least 22 px high
on the 512 px card, 11 px or more on screen. The top band stays clear on the left, where frontends
from 1.4x lay a "Node graph" badge over the card; the method's name sits on the right. Same template,
font and Pillow: the same bytes.

    .cache/venv/bin/python scripts/template_cards.py      (scripts/template_screenshots.py runs it too)
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import sys
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont, ImageOps

REPO = Path(__file__).resolve().parents[1]
TEMPLATES = REPO / "example_workflows"
CONCEPTS = REPO / "assets" / "concepts"
SIZE = 512
MARGIN = 28
log = logging.getLogger("elite.cards")

BACKGROUND = (30, 32, 38)
PANEL = (44, 47, 56)
TEXT = (240, 241, 245)
MUTED = (170, 175, 188)
ELITE_ACCENT = (86, 132, 255)
CATVERSION_ACCENT = (236, 146, 60)


@dataclass(frozen=True)
class Card:
    title: str
    subtitle: str
    key_nodes: tuple[str, ...]


# What each card says; the photos and the prompt are read from the template itself.
CARDS = {
    "01_elite_global": Card("ELITE: one photo", "the simplest start",
                            ("Example Concept", "Encoder", "Conditioning", "Attention Patch")),
    "02_elite_global_local": Card("ELITE: full detail", "global + local mapper",
                                  ("Local Mapper", "Encoder", "Conditioning", "Attention Patch")),
    "03_elite_prepare_from_photo": Card("Your own photo", "crop, preview, attention map",
                                        ("Load Image", "Prepare Concept", "Encoder", "Attention Map")),
    "04_elite_saved_concept": Card("Save and reuse", "encode once, load it again",
                                   ("Encoder", "Save Concept", "Load Concept")),
    "05_elite_with_lora": Card("ELITE + a LoRA", "LCM LoRA: 8 steps", ("Attention Patch", "LoRA Loader", "KSampler")),
    "06_elite_two_concepts": Card("Two concepts", "S on the left, T on the right",
                                  ("Encoder \u00d7 2", "Conditioning", "Attention Patch \u00d7 2")),
    "07_catversion_teddybear": Card("CatVersion adapter", "the authors' teddybear",
                                    ("Adapter Loader", "CatVersion Apply", "KSampler")),
    "08_catversion_train_then_apply": Card("Train CatVersion", "slow: it trains first",
                                           ("Example Concept", "Train Concept", "CatVersion Apply")),
}


class FontMissing(RuntimeError):
    pass


def font_path() -> Path:
    """Inter, the frontend's own font, from the comfyui_frontend_package ComfyUI installs."""
    spec = importlib.util.find_spec("comfyui_frontend_package")
    if spec is None or not spec.submodule_search_locations:
        raise FontMissing("the cards use the frontend's font: install ComfyUI's requirements "
                          "(comfyui-frontend-package) in this Python, e.g. run it with .cache/venv/bin/python")
    path = Path(list(spec.submodule_search_locations)[0]) / "static" / "fonts" / "inter-latin-normal.woff2"
    if not path.is_file():
        raise FontMissing(f"the frontend's font is not at {path}")
    return path


def _font(size: int, weight: int) -> ImageFont.FreeTypeFont:
    font = ImageFont.truetype(str(font_path()), size)
    axes = {axis["name"]: axis for axis in font.get_variation_axes()}
    values = []
    for name, axis in axes.items():
        wanted = {b"Weight": weight, b"Optical size": size}.get(name, axis["default"])
        values.append(min(max(wanted, axis["minimum"]), axis["maximum"]))
    font.set_variation_by_axes(values)
    return font


def _read(name: str) -> dict:
    return json.loads((TEMPLATES / f"{name}.json").read_text())


def _widget(node: dict, index: int = 0):
    values = node.get("widgets_values") or []
    return values[index] if len(values) > index else None


def concept_photos(workflow: dict) -> list[Image.Image | None]:
    """The shipped concept photos the template loads (ELITE Example Concept), in graph order; None for
    each Load Image the user fills in."""
    photos = []
    for node in sorted(workflow["nodes"], key=lambda n: n["id"]):
        if node["type"] == "ELITEExampleConcept" and (CONCEPTS / f"{_widget(node)}.jpg").is_file():
            with Image.open(CONCEPTS / f"{_widget(node)}.jpg") as photo:
                photos.append(photo.convert("RGB"))
        elif node["type"] == "LoadImage":
            photos.append(None)
    return photos[:3]


def prompt_text(workflow: dict) -> str:
    """The template's prompt: ELITE Conditioning's text, else the first non-empty CLIP Text Encode."""
    for kind in ("ELITEConditioning", "CLIPTextEncode"):
        for node in sorted(workflow["nodes"], key=lambda n: n["id"]):
            text = _widget(node)
            if node["type"] == kind and node.get("mode", 0) == 0 and isinstance(text, str) and text.strip():
                return text.strip()
    return ""


def _highlighted(workflow: dict) -> set[str]:
    """The words the card colours: ELITE's placeholders, CatVersion's class word."""
    words = set()
    for node in workflow["nodes"]:
        values = [v for v in node.get("widgets_values") or [] if isinstance(v, str)]
        if node["type"] == "ELITEConditioning":
            words.update(v for v in values[1:] if v and " " not in v and len(v) <= 4)
        elif node["type"] == "CatVersionTrain" and values:
            words.add(values[0])
        elif node["type"] == "CatVersionLoader" and values:
            words.add(Path(values[0]).stem)
    return {w for w in words if w}


def _rounded_photo(photo: Image.Image, size: int, radius: int = 18) -> Image.Image:
    square = ImageOps.fit(photo, (size, size), Image.Resampling.LANCZOS)
    mask = Image.new("L", (size, size), 0)
    ImageDraw.Draw(mask).rounded_rectangle([0, 0, size - 1, size - 1], radius, fill=255)
    square.putalpha(mask)
    return square


def _empty_frame(size: int, accent: tuple[int, int, int]) -> Image.Image:
    frame = Image.new("RGBA", (size, size), (0, 0, 0, 0))
    draw = ImageDraw.Draw(frame)
    draw.rounded_rectangle([0, 0, size - 1, size - 1], 18, fill=PANEL, outline=accent, width=4)
    mid, arm = size // 2, size // 7
    draw.line([mid - arm, mid, mid + arm, mid], fill=accent, width=8)
    draw.line([mid, mid - arm, mid, mid + arm], fill=accent, width=8)
    return frame


def _file_icon(size: int, accent: tuple[int, int, int], label: str) -> Image.Image:
    icon = Image.new("RGBA", (size, size), (0, 0, 0, 0))
    draw = ImageDraw.Draw(icon)
    left, top, right, bottom, fold = size * 0.18, size * 0.06, size * 0.82, size * 0.8, size * 0.18
    draw.polygon([(left, top), (right - fold, top), (right, top + fold), (right, bottom), (left, bottom)], fill=PANEL,
                 outline=accent, width=4)
    draw.line([(right - fold, top), (right - fold, top + fold), (right, top + fold)], fill=accent, width=4)
    font = _font(24, 600)
    width = draw.textlength(label, font=font)
    draw.text(((size - width) / 2, bottom + 12), label, font=font, fill=TEXT)
    return icon


def _photo_stack(card: Image.Image, photos: list, accent, box: tuple[int, int, int, int]) -> None:
    """One photo fills the box; two or three overlap like prints on a table."""
    x0, y0, x1, y1 = box
    side = y1 - y0
    if len(photos) > 1:
        side = int(side * (0.64 if len(photos) == 2 else 0.6))
    step_x = (x1 - x0 - side) // max(len(photos) - 1, 1)
    step_y = (y1 - y0 - side) // max(len(photos) - 1, 1)
    for i, photo in enumerate(photos):
        tile = _empty_frame(side, accent) if photo is None else _rounded_photo(photo, side)
        border = Image.new("RGBA", (side + 8, side + 8), (0, 0, 0, 0))
        ImageDraw.Draw(border).rounded_rectangle([0, 0, side + 7, side + 7], 22, fill=BACKGROUND)
        border.alpha_composite(tile, (4, 4))
        card.alpha_composite(border, (x0 + i * step_x - 4, y0 + i * step_y - 4))


def _wrap(draw, words: list[str], font, width: int) -> list[list[str]]:
    lines, line = [], []
    for word in words:
        trial = " ".join(line + [word])
        if line and draw.textlength(trial, font=font) > width:
            lines.append(line)
            line = [word]
        else:
            line.append(word)
    return lines + ([line] if line else [])


def _prompt_panel(card: Image.Image, text: str, highlighted: set[str], accent, box) -> None:
    draw = ImageDraw.Draw(card)
    x0, y0, x1, y1 = box
    draw.rounded_rectangle(box, 18, fill=PANEL)
    draw.text((x0 + 18, y0 + 12), "prompt", font=_font(22, 500), fill=MUTED)
    for size in (32, 30, 28, 26, 24):  # the largest that fits
        font, bold = _font(size, 500), _font(size, 800)
        lines = _wrap(draw, f"\u201c{text}\u201d".split(), bold, x1 - x0 - 36)
        line_height = int(size * 1.28)
        if 48 + line_height * len(lines) <= y1 - y0 - 8:
            break
    y = y0 + 48
    for line in lines:
        x = x0 + 18
        for word in line:
            core = word.strip("\u201c\u201d,.")
            face, colour = (bold, accent) if core in highlighted else (font, TEXT)
            draw.text((x, y), word, font=face, fill=colour)
            x += draw.textlength(word + " ", font=face)
        y += line_height


def _chip_rows(draw, names: tuple[str, ...], font, arrow: int, gap: int) -> list[list[tuple[str, int]]]:
    rows, x = [[]], MARGIN
    for name in names:
        width = int(draw.textlength(name, font=font)) + 40
        step = arrow + gap if rows[-1] else 0
        if rows[-1] and x + step + width > SIZE - MARGIN:
            rows.append([])
            x, step = MARGIN, 0
        rows[-1].append((name, width))
        x += step + width
    return rows


def _key_nodes(card: Image.Image, names: tuple[str, ...], accent, top: int) -> None:
    """The graph's key nodes as node-like chips joined by arrows, in at most two rows."""
    draw = ImageDraw.Draw(card)
    height, gap, arrow = 46, 10, 26
    for size in (24, 22):
        font = _font(size, 600)
        rows = _chip_rows(draw, names, font, arrow, gap)
        if len(rows) <= 2:
            break
    else:
        raise ValueError(f"the key nodes {names} do not fit two rows of a card: shorten them")
    for r, row in enumerate(rows):
        x, y = MARGIN, top + r * (height + 12)
        for i, (name, width) in enumerate(row):
            if i:
                mid = y + height // 2
                draw.line([x + 2, mid, x + arrow - 6, mid], fill=MUTED, width=4)
                draw.polygon([(x + arrow - 8, mid - 8), (x + arrow, mid), (x + arrow - 8, mid + 8)], fill=MUTED)
                x += arrow + gap
            draw.rounded_rectangle([x, y, x + width, y + height], 10, fill=PANEL)
            draw.rounded_rectangle([x, y, x + 8, y + height], 4, fill=accent)
            draw.text((x + 24, y + height / 2), name, font=font, fill=TEXT, anchor="lm")
            x += width


def compose(name: str) -> Image.Image:
    """The card of template ``name`` (an RGB image, SIZE × SIZE)."""
    if name not in CARDS:
        raise KeyError(f"example_workflows/{name}.json has no card: add it to CARDS in scripts/template_cards.py")
    spec, workflow = CARDS[name], _read(name)
    catversion = name.split("_", 1)[1].startswith("catversion")
    accent = CATVERSION_ACCENT if catversion else ELITE_ACCENT
    card = Image.new("RGBA", (SIZE, SIZE), BACKGROUND)
    draw = ImageDraw.Draw(card)
    family = _font(26, 800)
    draw.text((SIZE - MARGIN, 38), "CatVersion" if catversion else "ELITE", font=family, fill=accent, anchor="rm")
    head = 70
    number = name.split("_", 1)[0].lstrip("0")
    draw.ellipse([MARGIN, head, MARGIN + 68, head + 68], fill=accent)
    draw.text((MARGIN + 34, head + 35), number, font=_font(42, 800), fill=(255, 255, 255), anchor="mm")
    title_x = MARGIN + 86
    for size in (40, 36, 32):
        title_font = _font(size, 800)
        if draw.textlength(spec.title, font=title_font) <= SIZE - MARGIN - title_x:
            break
    draw.text((title_x, head - 4), spec.title, font=title_font, fill=TEXT)
    draw.text((title_x, head + 42), spec.subtitle, font=_font(26, 500), fill=MUTED)

    top, bottom = 160, 362
    photos = concept_photos(workflow)
    photo_box = (MARGIN, top, MARGIN + bottom - top, bottom)
    if photos:
        _photo_stack(card, photos, accent, photo_box)
    else:
        loader = next((n for n in workflow["nodes"] if n["type"] == "CatVersionLoader"), None)
        label = str(_widget(loader)) if loader else "adapter"
        card.alpha_composite(_file_icon(bottom - top, accent, label), photo_box[:2])
    _prompt_panel(card, prompt_text(workflow), _highlighted(workflow), accent, (photo_box[2] + 20, top,
                                                                                SIZE - MARGIN, bottom))
    _key_nodes(card, spec.key_nodes, accent, bottom + 18)
    return card.convert("RGB")


def write_cards(names: list[str] | None = None) -> list[Path]:
    names = names or sorted(p.stem for p in TEMPLATES.glob("*.json"))
    written = []
    for name in names:
        path = TEMPLATES / f"{name}.jpg"
        compose(name).save(path, quality=90, optimize=True)
        written.append(path)
    return written


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help="templates to draw (default: all)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        for path in write_cards(args.names):
            log.info("%s", path.relative_to(REPO))
    except (FontMissing, KeyError, ValueError) as error:
        log.error("%s", error.args[0])
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
