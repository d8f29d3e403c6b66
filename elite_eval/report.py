"""The report of a scored run: ``report.md`` and ``report.html`` (tables per method and subject),
``tradeoff.png`` (prompt fidelity against subject fidelity, one point per method: the λ curve) and
``grids/<subject>.jpg`` (one row per method, one column per prompt, the concept photo first)."""

from __future__ import annotations

import html
import logging
from pathlib import Path

from PIL import Image, ImageDraw

from elite_core.common.files import open_oriented

log = logging.getLogger("elite.eval")

METRIC_TITLES = {"dino_i": "DINO-I", "clip_i": "CLIP-I", "masked_clip_i": "masked CLIP-I", "clip_t": "CLIP-T"}
# DreamBench numbers as published (docs/reference/dreambench.md, Published numbers), for comparison in the report.
PAPER_NUMBERS = {
    "ELITE (SD v1-4), paper": {"dino_i": 0.621, "clip_i": 0.771, "clip_t": 0.293},
    "Textual Inversion (SD), listed": {"dino_i": 0.569, "clip_i": 0.780, "clip_t": 0.255},
    "DreamBooth (SD), listed": {"dino_i": 0.668, "clip_i": 0.803, "clip_t": 0.305},
    "Real images (upper bound)": {"dino_i": 0.774, "clip_i": 0.885},
}
THUMB = 160


def _metrics(scores: dict) -> list[str]:
    return [m for m in METRIC_TITLES if m in scores["metrics"]]


def _cell(summary: dict | None) -> str:
    if not summary:
        return "–"
    return f"{summary['mean']:.3f} ± {summary['std']:.3f}" if summary["seeds"] > 1 else f"{summary['mean']:.3f}"


def tables(scores: dict) -> list[tuple[str, list[str], list[list[str]]]]:
    """(title, header, rows) of each table, shared by the Markdown and the HTML report."""
    metrics = _metrics(scores)
    methods = scores["methods"]
    overall = [[name] + [_cell(data["summary"].get(m)) for m in metrics] for name, data in methods.items()]
    found = [("Per method (mean ± std over seeds)", ["method"] + [METRIC_TITLES[m] for m in metrics], overall)]
    paper = [[name] + [f"{values[m]:.3f}" if m in values else "–" for m in metrics] for name, values in PAPER_NUMBERS.items()]
    found.append(("Published DreamBench numbers (for comparison only: other weights, CLIP and prompts)",
                  ["method"] + [METRIC_TITLES[m] for m in metrics], paper))
    subjects = sorted({s for data in methods.values() for m in metrics for s in data["summary"].get(m, {}).get("subjects", {})})
    for m in metrics:
        rows = [[name] + [f"{data['summary'][m]['subjects'][s]:.3f}" if s in data["summary"].get(m, {}).get("subjects", {})
                          else "–" for s in subjects] for name, data in methods.items()]
        found.append((f"{METRIC_TITLES[m]} per subject", ["method"] + subjects, rows))
    return found


def tradeoff_plot(scores: dict, path: Path) -> str:
    """CLIP-T (x) against DINO-I (y; CLIP-I when there is no DINO), a point per method; ELITE's points
    joined in order of λ (global only first). Returns the y metric's key."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    y_key = "dino_i" if "dino_i" in scores["metrics"] else "clip_i"
    fig, ax = plt.subplots(figsize=(6.4, 4.8), dpi=120)
    curve = []
    for name, data in scores["methods"].items():
        summary = data["summary"]
        if "clip_t" not in summary or y_key not in summary:
            continue
        x, y = summary["clip_t"]["mean"], summary[y_key]["mean"]
        ax.errorbar(x, y, xerr=summary["clip_t"]["std"], yerr=summary[y_key]["std"], fmt="o", capsize=3)
        ax.annotate(name, (x, y), textcoords="offset points", xytext=(6, 4), fontsize=8)
        if data["kind"] == "elite":
            curve.append((data["strength"] if data["strength"] is not None else -1.0, x, y))
    if len(curve) > 1:
        curve.sort()
        ax.plot([c[1] for c in curve], [c[2] for c in curve], "-", color="gray", alpha=0.6, label="ELITE, λ rising")
        ax.legend(loc="best", fontsize=8)
    ax.set_xlabel("CLIP-T (prompt fidelity) →")
    ax.set_ylabel(f"{METRIC_TITLES[y_key]} (subject fidelity) →")
    ax.set_title("Likeness against prompt-following")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return y_key


def _thumb(path: Path) -> Image.Image:
    image = open_oriented(str(path)).convert("RGB")
    image.thumbnail((THUMB, THUMB))
    canvas = Image.new("RGB", (THUMB, THUMB), "white")
    canvas.paste(image, ((THUMB - image.width) // 2, (THUMB - image.height) // 2))
    return canvas


def image_grid(rows: list[tuple[str, list[Path | None]]], concept: Path, path: Path) -> None:
    """One row per method (its label, then its images), the concept photo in the first column."""
    label_width, columns = 150, max(len(images) for _, images in rows)
    grid = Image.new("RGB", (label_width + THUMB * (columns + 1), THUMB * len(rows)), "white")
    draw = ImageDraw.Draw(grid)
    for r, (label, images) in enumerate(rows):
        draw.text((6, r * THUMB + THUMB // 2 - 6), label, fill="black")
        if r == 0:
            grid.paste(_thumb(concept), (label_width, 0))
        for c, image in enumerate(images):
            if image is not None and image.is_file():
                grid.paste(_thumb(image), (label_width + THUMB * (c + 1), r * THUMB))
    path.parent.mkdir(parents=True, exist_ok=True)
    grid.save(path, quality=88)


def _markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def _html_table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def write_report(scores: dict, out: Path, grids: dict[str, Path]) -> dict[str, Path]:
    """report.md, report.html and tradeoff.png in ``out``; ``grids`` maps subject -> its grid image."""
    out = Path(out)
    plot = out / "tradeoff.png"
    y_key = tradeoff_plot(scores, plot)
    intro = (f"Benchmark: {scores['benchmark']}. Encoders: "
             + ", ".join(f"{k} = {v}" for k, v in scores["encoders"].items())
             + f". Seeds: {scores['seeds']}. Raw cosine similarities; each number is averaged over the pairs of a "
             "prompt, then over prompts, then over subjects, and its spread is the standard deviation over seeds.")
    reading = (f"How to read the plot: right is closer to the prompt (CLIP-T), up is closer to the subject "
               f"({METRIC_TITLES[y_key]}). Raising ELITE's λ usually moves up and to the left; pick the λ where "
               "the curve stops gaining likeness for the prompt-following it costs.")
    sections = tables(scores)
    md = ["# ELITE evaluation report", "", intro, ""]
    page = ["<!doctype html><meta charset='utf-8'><title>ELITE evaluation report</title>",
            "<style>body{font-family:sans-serif;max-width:1200px;margin:2em auto}table{border-collapse:collapse;"
            "margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}td:first-child{text-align:left}"
            "img{max-width:100%}</style>", "<h1>ELITE evaluation report</h1>", f"<p>{html.escape(intro)}</p>"]
    for title, header, rows in sections:
        md += [f"## {title}", "", _markdown_table(header, rows), ""]
        page += [f"<h2>{html.escape(title)}</h2>", _html_table(header, rows)]
    md += ["## Trade-off", "", reading, "", f"![trade-off]({plot.name})", "", "## Images", ""]
    page += ["<h2>Trade-off</h2>", f"<p>{html.escape(reading)}</p>", f"<img src='{plot.name}' alt='trade-off'>",
             "<h2>Images</h2>"]
    for subject, grid in grids.items():
        rel = grid.relative_to(out).as_posix()
        md += [f"### {subject}", "", f"![{subject}]({rel})", ""]
        page += [f"<h3>{html.escape(subject)}</h3>", f"<img src='{html.escape(rel)}' alt='{html.escape(subject)}'>"]
    (out / "report.md").write_text("\n".join(md), encoding="utf-8")
    (out / "report.html").write_text("\n".join(page), encoding="utf-8")
    log.info("report: %s, %s, %s", out / "report.md", out / "report.html", plot)
    return {"markdown": out / "report.md", "html": out / "report.html", "plot": plot}
