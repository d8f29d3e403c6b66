"""Run a benchmark: generate every method's images (resumable), score them, write the report.

    python -m elite_eval.run BENCHMARK_DIR --out runs/dreambench \\
        --methods sd elite-global elite-local@0.4 elite-local@0.8 \\
        --checkpoint v1-4-pruned-emaonly.safetensors --clip-vision clip-vit-large-patch14.safetensors \\
        --global-mapper global_mapper.pt --local-mapper local_mapper.pt \\
        --clip /models/clip-vit-base-patch32 --dino /models/dino-vits16

    accelerate launch --num_processes 4 -m elite_eval.run BENCHMARK_DIR --out runs/dreambench ...

BENCHMARK_DIR is DreamBench's dataset/ folder or ELITE's test-input layout (see benchmark.py).
Under accelerate launch the processes share the missing images and the main one scores and reports
(docs/evaluation.md).
Model names are looked up in the ComfyUI folder's models/ (or given as paths); the scoring encoders
are local Hugging Face folders or model.safetensors files. Nothing is ever downloaded.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

PACK_DIR = Path(__file__).resolve().parents[1]
if str(PACK_DIR) not in sys.path:
    sys.path.insert(0, str(PACK_DIR))

from elite_core.common.checks import real_number, seed_number, whole_number  # noqa: E402  (after the path line)

log = logging.getLogger("elite.eval")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m elite_eval.run", description=__doc__.splitlines()[0])
    p.add_argument("benchmark", help="DreamBench's dataset/ folder, or a folder of <n>.jpg + <n>_bg.png")
    p.add_argument("--out", required=True, help="run folder: images/, scores.json, report.md/.html")
    p.add_argument("--methods", nargs="+", default=["sd", "elite-global", "elite-local@0.6"],
                   help="sd, elite-global, elite-local@<λ> (several λ for the trade-off curve), catversion")
    p.add_argument("--subjects", nargs="+", help="only these subjects")
    p.add_argument("--prompts", type=whole_number(1), help="only the first N prompts of each subject")
    p.add_argument("--seeds", type=seed_number, nargs="+", default=[0, 1, 2, 3], help="one image per prompt per seed")
    p.add_argument("--size", type=whole_number(64, multiple_of=64), default=512)
    p.add_argument("--steps", type=whole_number(1), help="sampling steps for every method (default: each method's own, 50)")
    p.add_argument("--cfg", type=real_number(0.0, 100.0), help="CFG for every method (default: ELITE and SD 5, CatVersion 10)")
    models = p.add_argument_group("generation models (names in ComfyUI's models/ folders, or paths)")
    models.add_argument("--comfyui", help="the ComfyUI folder (default: $COMFYUI_DIR or the one this pack is in)")
    models.add_argument("--cpu", action="store_true", help="run on the CPU")
    models.add_argument("--checkpoint", help="SD1.x checkpoint (models/checkpoints)")
    models.add_argument("--clip-vision", help="CLIP ViT-L/14 vision (models/clip_vision), for ELITE")
    models.add_argument("--global-mapper", help="ELITE global mapper (models/elite)")
    models.add_argument("--local-mapper", help="ELITE local mapper (models/elite), for elite-local@λ")
    models.add_argument("--catversion", help="folder of CatVersion adapters named <subject>.safetensors or .bin")
    scoring = p.add_argument_group("scoring encoders (local files only)")
    scoring.add_argument("--clip", help="CLIP for CLIP-T/CLIP-I: ViT-B/32 as the papers (HF folder or model.safetensors)")
    scoring.add_argument("--dino", help="DINO ViT-S/16 or DINOv2 for DINO-I (HF folder or model.safetensors)")
    scoring.add_argument("--tokenizer", help="CLIP tokenizer folder for a single CLIP file (default: ComfyUI's)")
    scoring.add_argument("--masked-crop", action="store_true",
                         help="masked CLIP-I on the object's box only (default: the whole image, background white)")
    p.add_argument("--skip-generation", action="store_true", help="score and report the images already there")
    return p


def _comfy_tokenizer(comfyui: str | None) -> str | None:
    """ComfyUI's copy of the CLIP tokenizer (comfy/sd1_tokenizer), for a CLIP given as a single file."""
    from elite_core.comfyui.runtime import SetupError, find_comfyui

    try:
        folder = find_comfyui(comfyui) / "comfy" / "sd1_tokenizer"
    except SetupError:
        return None
    return str(folder) if folder.is_dir() else None


def load_models(args, benchmark, methods):
    """Load what the chosen methods need with ComfyUI's loaders and the pack's adapter."""
    from elite_core.catversion.prefix import read_catversion_file
    from elite_core.comfyui import elite as comfy_elite
    from elite_core.comfyui.runtime import SetupError, load_clip_vision, load_sd1_checkpoint, name_in_folder

    from .generate import Models, RunError

    if not args.checkpoint:
        raise RunError("Pass --checkpoint: the SD1.x checkpoint every method samples with.")
    try:
        model, clip, vae = load_sd1_checkpoint(args.checkpoint)
    except SetupError as exc:
        raise RunError(str(exc)) from None
    models = Models(model, clip, vae)
    kinds = {m.kind for m in methods}
    if "elite" in kinds:
        if not (args.clip_vision and args.global_mapper):
            raise RunError("ELITE methods need --clip-vision (CLIP ViT-L/14) and --global-mapper.")
        try:
            models.clip_vision = load_clip_vision(args.clip_vision)
        except SetupError as exc:
            raise RunError(str(exc)) from None
        comfy_elite.register_model_folder()
        models.global_mapper = comfy_elite.load_global_mapper(name_in_folder("elite", args.global_mapper))
        if any(m.needs_local_mapper for m in methods):
            if not args.local_mapper:
                raise RunError("elite-local@λ needs --local-mapper.")
            models.local_mapper = comfy_elite.load_local_mapper(name_in_folder("elite", args.local_mapper))
    if "catversion" in kinds:
        if not args.catversion or not os.path.isdir(args.catversion):
            raise RunError("catversion needs --catversion FOLDER with one adapter per subject (<subject>.safetensors "
                           "or the authors' <subject>.bin).")
        for subject in benchmark.subjects:
            for suffix in (".safetensors", ".bin"):
                path = os.path.join(args.catversion, subject.name + suffix)
                if os.path.isfile(path):
                    models.catversion[subject.name] = read_catversion_file(path)
                    break
    return models


def main(argv=None, load=load_models) -> int:
    """The command line; ``load(args, benchmark, methods)`` gives the generation models (tests pass
    tiny ones). Under ``accelerate launch`` every process makes its share of the missing images, and
    the main process scores and reports once all of them are done."""
    args = build_parser().parse_args(argv)
    import torch

    logging.basicConfig(level=logging.INFO, format="[eval] %(message)s")
    from elite_core.common.checks import ELITEInputError

    from .benchmark import BenchmarkError, read_benchmark
    from .generate import RunError, RunSettings, generate
    from .methods import MethodError, parse_methods
    from .processes import Processes, launched_processes
    from .scoring import ScoringError, load_scorers, score_run, write_outputs

    out = Path(args.out)
    processes = Processes()
    try:
        processes = launched_processes(args.cpu)  # before ComfyUI starts: each process takes its own GPU
        benchmark = read_benchmark(args.benchmark).select(args.subjects, args.prompts)
        methods = parse_methods(args.methods)
        settings = RunSettings(seeds=tuple(args.seeds), size=args.size, steps=args.steps, cfg=args.cfg)
        device = "cuda" if torch.cuda.is_available() and not args.cpu else "cpu"
        if processes.is_main:  # the only one that scores
            scorers = load_scorers(args.clip, args.dino, args.tokenizer or _comfy_tokenizer(args.comfyui), device)
            scorers.masked_crop = args.masked_crop
        if not args.skip_generation:
            from elite_core.comfyui.runtime import SetupError, find_comfyui, start_comfyui

            try:
                start_comfyui(find_comfyui(args.comfyui), cpu=args.cpu)
            except SetupError as exc:
                raise RunError(str(exc)) from None
            generate(benchmark, methods, load(args, benchmark, methods), settings, out, processes=processes)
        if not processes.is_main:
            return 0
        scores = score_run(benchmark, methods, settings, out, scorers)
        paths = write_outputs(scores, benchmark, methods, settings, out)
    except (BenchmarkError, MethodError, RunError, ScoringError, ELITEInputError, FileNotFoundError) as exc:
        log.error("%s", exc)
        return 2
    finally:
        processes.close()
    log.info("done: %s", ", ".join(str(p) for p in paths.values()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
