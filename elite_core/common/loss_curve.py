"""A training run's loss as a small picture (PIL only, drawn in a few milliseconds), and the loss
curve in a few numbers, to keep in a file's metadata and draw again later."""

from __future__ import annotations

import math
from typing import Sequence

from PIL import Image, ImageDraw, ImageFont

WIDTH, HEIGHT = 320, 160
_MARGIN_LEFT, _MARGIN_RIGHT, _MARGIN_TOP, _MARGIN_BOTTOM = 44, 8, 22, 16
_BACKGROUND, _FRAME, _LINE, _TEXT, _MUTED = (250, 250, 247), (200, 200, 195), (40, 110, 200), (30, 30, 30), (120, 120, 115)


def binned_means(values: Sequence[float], bins: int, total: int | None = None) -> list[float | None]:
    """The mean of ``values`` (one per step, steps 1..len) in each of ``bins`` equal spans of
    ``total`` steps (default: as many as there are values), a step counting in the span that holds
    its middle; None for a span with no step yet."""
    total = max(total or len(values), 1)
    sums, counts = [0.0] * bins, [0] * bins
    for step, value in enumerate(values):
        if not math.isfinite(value):
            continue
        column = min(int((step + 0.5) * bins / total), bins - 1)
        sums[column] += value
        counts[column] += 1
    return [s / c if c else None for s, c in zip(sums, counts)]


def curve_summary(losses: Sequence[float], points: int = 100) -> list[float]:
    """At most ``points`` numbers that draw like the whole run: the mean loss of equal spans of steps."""
    return [round(v, 6) for v in binned_means(losses, min(points, len(losses))) if v is not None]


def loss_curve_image(losses: Sequence[float], total: int, caption: str = "", last_step: int | None = None) -> Image.Image:
    """The loss of steps 1..len(losses) of a ``total``-step run, left to right as the run goes (the
    mean of the steps that fall in each pixel column), with ``caption`` above it. ``last_step`` labels
    the right end when the values are a summary of a longer run (default: ``total``)."""
    image = Image.new("RGB", (WIDTH, HEIGHT), _BACKGROUND)
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default()
    left, top, right, bottom = _MARGIN_LEFT, _MARGIN_TOP, WIDTH - _MARGIN_RIGHT, HEIGHT - _MARGIN_BOTTOM
    draw.rectangle((left, top, right, bottom), outline=_FRAME)
    draw.text((4, 4), caption, fill=_TEXT, font=font)
    columns = binned_means(losses, right - left, total)
    shown = [v for v in columns if v is not None]
    if not shown:
        draw.text((left + 6, top + 6), "no loss yet", fill=_MUTED, font=font)
        return image
    low, high = min(shown), max(shown)
    pad = (high - low) * 0.08 or max(abs(high) * 0.05, 1e-6)
    low, high = low - pad, high + pad

    def y_of(value: float) -> float:
        return bottom - (value - low) / (high - low) * (bottom - top)

    points = [(left + i, y_of(v)) for i, v in enumerate(columns) if v is not None]
    if len(points) == 1:
        x, y = points[0]
        draw.ellipse((x - 2, y - 2, x + 2, y + 2), fill=_LINE)
    else:
        draw.line(points, fill=_LINE, width=2)
    draw.text((2, top), f"{high:.3g}", fill=_MUTED, font=font)
    draw.text((2, bottom - 10), f"{low:.3g}", fill=_MUTED, font=font)
    draw.text((left, bottom + 2), "step 1", fill=_MUTED, font=font)
    end = f"step {last_step or total}"
    draw.text((right - draw.textlength(end, font=font), bottom + 2), end, fill=_MUTED, font=font)
    return image
