"""Image generation for a benchmark through the pack's own ComfyUI code paths: the same encoder,
conditioning, attention patch and CatVersion prefix the nodes run, sampled by ComfyUI's sampler.

Images go to ``<out>/images/<method>/<subject>/p<prompt>_s<seed>.png``. A run is resumable: an
image that exists is never made again, and each is written to a temporary name first, so a stopped
run leaves no half-written file. ``<out>/run.json`` records the settings; a later run in the same
folder with other settings is refused rather than mixing images of both.

Several processes (``accelerate launch``, see processes.py) share the missing images: each lists
them before any is made, in the order of ``jobs``, and makes every ``count``-th from its rank. An
image's noise comes from its own seed only, so it is the same whichever process makes it.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from elite_core.common.files import PARTIAL_SUFFIX, read_image, read_mask, write_atomically
from elite_core.common.images import images_to_pil

from .benchmark import Benchmark, Subject
from .methods import ELITE_PLACEHOLDER, Method
from .processes import Processes

log = logging.getLogger("elite.eval")


class RunError(RuntimeError):
    """The run cannot go on; the message says what to fix."""


@dataclass
class Models:
    """What the methods need, loaded by ComfyUI (or built by tests): MODEL, CLIP, VAE of an SD1.x
    checkpoint, and for ELITE the CLIP vision model and the pack's loaded mappers; for CatVersion
    one adapter (a CatVersionPrefix) per subject name."""

    model: object
    clip: object
    vae: object
    clip_vision: object | None = None
    global_mapper: object | None = None
    local_mapper: object | None = None
    catversion: dict[str, object] = field(default_factory=dict)


@dataclass(frozen=True)
class RunSettings:
    seeds: tuple[int, ...] = (0, 1, 2, 3)
    size: int = 512
    steps: int | None = None    # None: each method's own
    cfg: float | None = None    # None: each method's own


def image_path(out: Path, method: Method, subject: Subject, prompt_index: int, seed: int) -> Path:
    return out / "images" / method.name / subject.name / f"p{prompt_index:02d}_s{seed}.png"


def save_image(image: torch.Tensor, path: Path) -> None:
    """The IMAGE as a PNG, written under a temporary name first: a stopped run leaves no half file
    under the image's name (the only name a run counts)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    picture = images_to_pil(image)[0]
    write_atomically(str(path), lambda partial: picture.save(partial, format="PNG"))


def run_settings_record(out: Path, record: dict) -> dict:
    """What run.json will hold, or a refusal when the folder holds images made with other settings."""
    path = out / "run.json"
    if path.is_file():
        before = json.loads(path.read_text())
        changed = sorted(k for k in record if k in before and before[k] != record[k] and k != "methods")
        if changed:
            raise RunError(f"{out} holds images made with other settings ({', '.join(changed)} differ: "
                           f"{ {k: before[k] for k in changed} }). Use another --out folder, or the same settings "
                           "to go on with that run.")
        earlier = before.get("methods", [])  # in their first order, whichever run resumes: a stable file
        record = {**record, "methods": [*earlier, *(m for m in record["methods"] if m not in earlier)]}
    return record


def write_run_settings(out: Path, record: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    text = json.dumps(record, indent=2)
    write_atomically(str(out / "run.json"), lambda partial: Path(partial).write_text(text))


def _text_conditioning(clip, text: str):
    return clip.encode_from_tokens_scheduled(clip.tokenize(text))


class Generator:
    """Makes one method's image of one (subject, prompt, seed); encodes each subject once."""

    def __init__(self, models: Models, settings: RunSettings):
        self.models = models
        self.settings = settings
        self._concepts: dict[tuple[str, bool], object] = {}
        self._clips: dict[str, object] = {}
        self._conditioning: dict[tuple, object] = {}  # the seeds of a prompt share its encoding

    def check(self, methods: list[Method], benchmark: Benchmark) -> None:
        """Refuse before any sampling when a method lacks what it needs."""
        m = self.models
        for method in methods:
            if method.kind == "elite" and (m.clip_vision is None or m.global_mapper is None):
                raise RunError(f"{method.name} needs CLIP ViT-L/14 vision (--clip-vision) and ELITE's global mapper "
                               "(--global-mapper).")
            if method.needs_local_mapper:
                if m.local_mapper is None:
                    raise RunError(f"{method.name} needs ELITE's local mapper (--local-mapper).")
                unmasked = [s.name for s in benchmark.subjects if s.mask is None]
                if unmasked:
                    raise RunError(f"{method.name} needs an object mask per subject; none for {', '.join(unmasked)}. "
                                   "Put <subject>/masks/<photo stem>.png (white on the object) beside the photos.")
            if method.kind == "catversion":
                missing = [s.name for s in benchmark.subjects if s.name not in m.catversion]
                if missing:
                    raise RunError(f"catversion needs one adapter per subject; none for {', '.join(missing)}. "
                                   "Put <subject>.safetensors (or the authors' .bin) in the --catversion folder.")

    def _concept(self, subject: Subject, local: bool):
        from elite_core.comfyui import elite as comfy_elite

        key = (subject.name, local)
        if key not in self._concepts:
            m = self.models
            image = read_image(str(subject.concept))
            mask = read_mask(str(subject.mask)) if local and subject.mask is not None else None
            self._concepts[key] = comfy_elite.encode_concept(
                m.clip_vision, m.global_mapper, image, m.local_mapper if local else None, mask)
        return self._concepts[key]

    def _catversion_clip(self, subject: Subject):
        from elite_core.comfyui import catversion as comfy_catversion

        if subject.name not in self._clips:
            self._clips[subject.name] = comfy_catversion.apply_catversion(self.models.clip, self.models.catversion[subject.name])
        return self._clips[subject.name]

    def _prepared(self, method: Method, subject: Subject, template: str):
        """(MODEL, positive, negative) of a method for one prompt, as the nodes make them."""
        from elite_core.comfyui import elite as comfy_elite
        from elite_core.comfyui import elite_patch

        m = self.models
        text = method.prompt(template, subject.class_noun)
        negative = _text_conditioning(m.clip, "")  # plain CLIP, as ELITE's and CatVersion's authors do
        if method.kind == "elite":
            concept = self._concept(subject, method.needs_local_mapper)
            positive, _ = comfy_elite.concept_conditioning(m.clip, concept, text, ELITE_PLACEHOLDER, all_words=False)
            return elite_patch.apply_elite(m.model, concept, positive, strength=method.strength or 0.0), positive, negative
        clip = self._catversion_clip(subject) if method.kind == "catversion" else m.clip
        return m.model, _text_conditioning(clip, text), negative

    def image(self, method: Method, subject: Subject, template: str, seed: int) -> torch.Tensor:
        key = (method.name, subject.name, template)
        if key not in self._conditioning:
            self._conditioning = {key: self._prepared(method, subject, template)}  # one prompt at a time
        model, positive, negative = self._conditioning[key]
        return sample(model, self.models.vae, positive, negative, seed, self.settings.size,
                      method.sampling(self.settings.steps, self.settings.cfg))


def sample(model, vae, positive, negative, seed: int, size: int, sampling) -> torch.Tensor:
    """One image as ComfyUI's KSampler and VAE Decode make it (empty latent, seeded noise)."""
    from elite_core.comfyui.runtime import sample_image

    return sample_image(model, vae, positive, negative, seed, size, sampling.steps, sampling.cfg, sampling.sampler,
                        sampling.scheduler)


def jobs(benchmark: Benchmark, methods: list[Method], seeds) -> list[tuple[Method, Subject, int, str, int]]:
    return [(method, subject, index, template, seed)
            for method in methods for subject in benchmark.subjects
            for index, template in enumerate(subject.prompts) for seed in seeds]


def generate(benchmark: Benchmark, methods: list[Method], models: Models, settings: RunSettings, out: Path,
             progress: bool = True, processes: Processes | None = None) -> dict[str, int]:
    """Make every missing image of the run, or this process's share of them when it is one of
    several; returns how many it made and how many were there before. Several processes return once
    all of them are done."""
    from tqdm import tqdm

    out = Path(out)
    processes = processes or Processes()
    generator = Generator(models, settings)
    generator.check(methods, benchmark)
    record = run_settings_record(out, {"benchmark": str(benchmark.root), "methods": [m.name for m in methods],
                                       **{k: list(v) if isinstance(v, tuple) else v
                                          for k, v in asdict(settings).items()}})
    todo = jobs(benchmark, methods, settings.seeds)
    missing = [job for job in todo if not image_path(out, *_place(job)).is_file()]
    if processes.is_main:  # what a stopped run was writing: never counted, removed before anything is written
        for leftover in (out / "images").rglob(f"*{PARTIAL_SUFFIX}"):
            leftover.unlink(missing_ok=True)
    processes.wait()  # every process has listed the missing images before any is made
    if processes.is_main:
        write_run_settings(out, record)
    mine = processes.share(missing)
    with tqdm(total=len(mine), desc="generating", unit="image", disable=not (progress and processes.is_main)) as bar:
        for method, subject, index, template, seed in mine:
            with torch.inference_mode():  # as ComfyUI runs its nodes
                image = generator.image(method, subject, template, seed)
            save_image(image, image_path(out, method, subject, index, seed))
            bar.update(1)
    counts = {"made": len(mine), "reused": len(todo) - len(missing)}
    if processes.count > 1:
        log.info("images (%s): %d of the %d missing made here, %d already there", processes.describe(),
                 counts["made"], len(missing), counts["reused"])
    else:
        log.info("images: %d made, %d already there", counts["made"], counts["reused"])
    processes.wait()  # every image is written
    return counts


def _place(job) -> tuple:
    method, subject, index, _, seed = job
    return method, subject, index, seed
