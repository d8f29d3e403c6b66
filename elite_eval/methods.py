"""The methods a benchmark compares, and the prompt and sampler each one gets.

    sd                plain SD1.x: the class noun in the prompt, nothing personalised
    elite-global      ELITE's global mapping: the concept's word at S, the mapper's K/V weights
    elite-local@0.6   ELITE's global + local mapping at λ = 0.6 (any λ from 0 to 2)
    catversion        the subject's CatVersion adapter on the text encoder, the class noun in the prompt

Each method samples as its authors do unless the run overrides it: ELITE (and plain SD beside it)
LMS 50 steps at CFG 5 (docs/reference/elite.md §8), CatVersion DDIM 50 uniform steps at CFG 10
(docs/reference/catversion.md §7). Every image is scored against the prompt with the class noun
(DreamBench's CLIP-T convention: the placeholder replaced by the class noun).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from .benchmark import fill_template

ELITE_PLACEHOLDER = "S"


class MethodError(ValueError):
    """A method name that cannot be read; the message lists what can."""


@dataclass(frozen=True)
class Sampling:
    steps: int
    cfg: float
    sampler: str
    scheduler: str


ELITE_SAMPLING = Sampling(steps=50, cfg=5.0, sampler="lms", scheduler="normal")
CATVERSION_SAMPLING = Sampling(steps=50, cfg=10.0, sampler="ddim", scheduler="ddim_uniform")


@dataclass(frozen=True)
class Method:
    name: str
    kind: str                    # "sd", "elite" or "catversion"
    strength: float | None = None  # λ of ELITE's local branch; None: global mapping only

    @property
    def needs_local_mapper(self) -> bool:
        return self.kind == "elite" and self.strength is not None

    def prompt(self, template: str, class_noun: str) -> str:
        """The prompt this method samples with. ELITE's word stands for the whole subject, so S takes
        the class noun's place ("a S in the snow"); the others call the subject by its class."""
        if self.kind == "elite":
            return fill_template(template, "", ELITE_PLACEHOLDER)
        return fill_template(template, "", class_noun)

    def sampling(self, steps: int | None = None, cfg: float | None = None) -> Sampling:
        base = CATVERSION_SAMPLING if self.kind == "catversion" else ELITE_SAMPLING
        return replace(base, steps=steps or base.steps, cfg=base.cfg if cfg is None else cfg)


def parse_method(text: str) -> Method:
    name = text.strip().lower()
    if name in ("sd", "catversion", "elite-global"):
        return Method(name, "elite" if name == "elite-global" else name)
    if name.startswith("elite-local@"):
        try:
            strength = float(name.split("@", 1)[1])
        except ValueError:
            strength = math.nan
        if not 0.0 <= strength <= 2.0:
            raise MethodError(f"'{text}': λ must be a number from 0 to 2, e.g. elite-local@0.6.")
        return Method(f"elite-local@{strength:g}", "elite", strength)
    raise MethodError(f"Unknown method '{text}'. Methods: sd, elite-global, elite-local@<λ> (e.g. elite-local@0.6), "
                      "catversion.")


def parse_methods(texts: list[str]) -> list[Method]:
    methods = [parse_method(t) for part in texts for t in part.split(",") if t.strip()]
    names = [m.name for m in methods]
    if len(set(names)) != len(names):
        raise MethodError(f"A method is listed twice: {names}.")
    if not methods:
        raise MethodError("No method given: pass e.g. --methods sd elite-global elite-local@0.6.")
    return methods


def clip_t_text(template: str, class_noun: str) -> str:
    """The text CLIP-T compares each image with: the prompt with the class noun, no unique token."""
    return fill_template(template, "", class_noun)
