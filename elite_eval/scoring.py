"""Scoring a run's images with the papers' metrics (``elite_core.evaluation.metrics``), and its outputs.

Per image: CLIP-T against the prompt with the class noun; CLIP-I and DINO-I as the mean over the
subject's real photos; masked CLIP-I with the photos' backgrounds filled white (their masks), and
the generated image's too when a mask for it lies at ``<out>/masks/<method>/<subject>/<image name>``
(from a segmenter of your choice), else whole. One image per (prompt, seed), so a prompt's value of
one seed is that image's; the run's numbers are aggregated prompts → subjects → seeds.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image

from elite_core.common.files import open_oriented, read_image, read_mask
from elite_core.common.images import images_to_pil
from elite_core.evaluation.encoders import ClipEncoder, EvalModelError, ImageEncoder, load_encoder
from elite_core.evaluation.metrics import aggregate, cosine_matrix, masked_view

from .benchmark import Benchmark, Subject
from .generate import RunSettings, image_path
from .methods import Method, clip_t_text
from .report import image_grid, write_report

log = logging.getLogger("elite.eval")


class ScoringError(RuntimeError):
    """Scoring cannot go on; the message says what to fix."""


@dataclass
class Scorers:
    clip: ClipEncoder | None = None
    dino: ImageEncoder | None = None
    masked_crop: bool = False  # crop masked views to the object's box (CatVersion's score does not)

    @property
    def metrics(self) -> list[str]:
        return (["clip_t", "clip_i", "masked_clip_i"] if self.clip else []) + (["dino_i"] if self.dino else [])

    @property
    def names(self) -> dict[str, str]:
        return {key: enc.name for key, enc in (("clip", self.clip), ("dino", self.dino)) if enc is not None}


def load_scorers(clip: str | None, dino: str | None, tokenizer_dir: str | None = None, device: str = "cpu") -> Scorers:
    if not clip and not dino:
        raise ScoringError("Pass --clip (CLIP ViT-B/32, for CLIP-T, CLIP-I and masked CLIP-I) and/or --dino "
                           "(DINO ViT-S/16 or DINOv2, for DINO-I): local Hugging Face folders or model.safetensors files.")
    try:
        return Scorers(clip=load_encoder(clip, "clip", tokenizer_dir, device) if clip else None,
                       dino=load_encoder(dino, None, None, device) if dino else None)
    except EvalModelError as exc:
        raise ScoringError(str(exc)) from None


def _pil(path: Path) -> Image.Image:
    return open_oriented(str(path)).convert("RGB")


def _masked_pil(image_path_: Path, mask_path: Path, crop: bool) -> Image.Image:
    return images_to_pil(masked_view(read_image(str(image_path_))[0], read_mask(str(mask_path))[0], crop))[0]


def _subject_references(subject: Subject, scorers: Scorers) -> dict[str, torch.Tensor]:
    photos = [_pil(p) for p in subject.references]
    found = {}
    if scorers.clip:
        found["clip"] = scorers.clip.encode_images(photos)
        masked = [_masked_pil(p, m, scorers.masked_crop)
                  for p, m in zip(subject.references, subject.reference_masks) if m is not None]
        if masked:
            found["masked_clip"] = scorers.clip.encode_images(masked)
    if scorers.dino:
        found["dino"] = scorers.dino.encode_images(photos)
    return found


def score_image(path: Path, mask: Path | None, text: torch.Tensor | None, refs: dict, scorers: Scorers) -> dict:
    """Every metric of one generated image (raw cosines)."""
    values = {}
    image = _pil(path)
    if scorers.clip:
        emb = scorers.clip.encode_images([image])
        values["clip_t"] = cosine_matrix(text, emb).mean().item()
        values["clip_i"] = cosine_matrix(refs["clip"], emb).mean().item()
        if "masked_clip" in refs:
            masked = scorers.clip.encode_images([_masked_pil(path, mask, scorers.masked_crop)]) if mask else emb
            values["masked_clip_i"] = cosine_matrix(refs["masked_clip"], masked).mean().item()
    if scorers.dino:
        values["dino_i"] = cosine_matrix(refs["dino"], scorers.dino.encode_images([image])).mean().item()
    return values


def score_run(benchmark: Benchmark, methods: list[Method], settings: RunSettings, out: Path, scorers: Scorers,
              progress: bool = True) -> dict:
    """scores.json's content: every image's numbers and each method's aggregate."""
    from tqdm import tqdm

    out = Path(out)
    missing = [image_path(out, m, s, i, seed) for m in methods for s in benchmark.subjects
               for i in range(len(s.prompts)) for seed in settings.seeds
               if not image_path(out, m, s, i, seed).is_file()]
    if missing:
        raise ScoringError(f"{len(missing)} image(s) are missing, e.g. {missing[0]}. Run without --skip-generation "
                           "to make them (finished images are kept).")
    refs = {s.name: _subject_references(s, scorers) for s in benchmark.subjects}
    texts = {}
    if scorers.clip:
        texts = {(s.name, i): scorers.clip.encode_texts([clip_t_text(t, s.class_noun)])
                 for s in benchmark.subjects for i, t in enumerate(s.prompts)}
    result = {"benchmark": str(benchmark.root), "seeds": list(settings.seeds), "encoders": scorers.names,
              "metrics": scorers.metrics, "masked_crop": scorers.masked_crop, "methods": {}}
    total = len(methods) * sum(len(s.prompts) for s in benchmark.subjects) * len(settings.seeds)
    with tqdm(total=total, desc="scoring", unit="image", disable=not progress) as bar:
        for method in methods:
            images = []
            for subject in benchmark.subjects:
                for index, template in enumerate(subject.prompts):
                    for seed in settings.seeds:
                        path = image_path(out, method, subject, index, seed)
                        mask = out / "masks" / path.relative_to(out / "images")
                        values = score_image(path, mask if mask.is_file() else None, texts.get((subject.name, index)),
                                             refs[subject.name], scorers)
                        images.append({"subject": subject.name, "prompt_index": index, "seed": seed,
                                       "prompt": method.prompt(template, subject.class_noun),
                                       "file": path.relative_to(out).as_posix(), **values})
                        bar.update(1)
            result["methods"][method.name] = {"kind": method.kind, "strength": method.strength, "images": images,
                                              "summary": summarise(images)}
    return result


def summarise(images: list[dict]) -> dict:
    """Each metric aggregated prompts → subjects → seeds (elite_core.evaluation.metrics.aggregate)."""
    summary = {}
    metrics = sorted({key for image in images for key in image} - {"subject", "prompt_index", "seed", "prompt", "file"})
    for metric in metrics:
        values = {(i["seed"], i["subject"], i["prompt_index"]): i[metric] for i in images if metric in i}
        if values:
            found = aggregate(values)
            summary[metric] = {"mean": found.mean, "std": found.std, "seeds": found.num_seeds,
                               "subjects": dict(found.per_subject)}
    return summary


def write_outputs(scores: dict, benchmark: Benchmark, methods: list[Method], settings: RunSettings, out: Path) -> dict:
    """scores.json, the image grids and the report."""
    out = Path(out)
    (out / "scores.json").write_text(json.dumps(scores, indent=1))
    grids = {}
    for subject in benchmark.subjects:
        rows = [(m.name, [image_path(out, m, subject, i, settings.seeds[0]) for i in range(len(subject.prompts))])
                for m in methods]
        grids[subject.name] = out / "grids" / f"{subject.name}.jpg"
        image_grid(rows, subject.concept, grids[subject.name])
    return {"scores": out / "scores.json", **write_report(scores, out, grids)}
