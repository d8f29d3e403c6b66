"""The benchmark runner (elite_eval) on tiny RANDOM SD1.x models: a two-subject, two-prompt
DreamBench-style set, every method side by side, the scores and the report; a second run reuses
the finished images; two processes under accelerate make the files of one, and resume each other."""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import COMFY_DIR, ELITE_MODELS, SHARED_DIR, TINY_GLOBAL_MAPPER, TINY_LOCAL_MAPPER
from PIL import Image, ImageDraw

from elite_test_pack.process_launch import LAUNCH_ENV, launcher
from elite_test_pack.tiny_metric_models import save_clip_folder, tiny_clip, tiny_dino
from elite_test_pack.tiny_models import build_tiny_clip, build_tiny_clip_vision, build_tiny_sd15_model, build_tiny_vae

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from elite_eval import run as cli  # noqa: E402
from elite_eval.benchmark import fill_template, parse_prompts_and_classes, read_benchmark  # noqa: E402
from elite_eval.generate import Models, RunError, RunSettings, generate, image_path  # noqa: E402
from elite_eval.methods import parse_methods  # noqa: E402
from elite_eval.processes import Processes, launched_processes  # noqa: E402
from elite_eval.scoring import score_run, write_outputs  # noqa: E402

TOKENIZER_DIR = COMFY_DIR / "comfy" / "sd1_tokenizer"
METHODS = ["sd", "elite-global", "elite-local@0", "elite-local@1", "catversion"]
SETTINGS = RunSettings(seeds=(0, 1), size=64, steps=1)
# DreamBench's file layout (its own prompts are not shipped here): the class table, then both lists.
PROMPTS_AND_CLASSES = """Classes

subject_name,class
ball,toy
kitty,cat

Prompts

Object Prompts

prompt_list = [
'a {0} {1} in the snow'.format(unique_token, class_token),
'a {0} {1} on a wooden table'.format(unique_token, class_token),
]

Live Subject Prompts

prompt_list = [
'a {0} {1} in the jungle'.format(unique_token, class_token),
'a {0} {1} wearing a red hat'.format(unique_token, class_token),
]
"""


def _photo(path: Path, colour, background, size=(96, 80), mask_path: Path | None = None) -> None:
    image = Image.new("RGB", size, background)
    mask = Image.new("L", size, 0)
    box = (size[0] // 4, size[1] // 4, 3 * size[0] // 4, 3 * size[1] // 4)
    ImageDraw.Draw(image).ellipse(box, fill=colour)
    ImageDraw.Draw(mask).ellipse(box, fill=255)
    image.save(path)
    if mask_path is not None:
        mask_path.parent.mkdir(exist_ok=True)
        mask.save(mask_path)


@pytest.fixture(scope="module")
def dreambench(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("dreambench")
    (root / "prompts_and_classes.txt").write_text(PROMPTS_AND_CLASSES)
    (root / "ball").mkdir()
    _photo(root / "ball" / "00.jpg", (200, 30, 40), (90, 160, 90), mask_path=root / "ball" / "masks" / "00.png")
    _photo(root / "ball" / "01.jpg", (190, 40, 40), (60, 60, 200), size=(80, 96))
    (root / "kitty").mkdir()
    _photo(root / "kitty" / "00.png", (240, 180, 90), (30, 30, 30), mask_path=root / "kitty" / "masks" / "00.png")
    return root


def _prefix(seed: int):
    from elite_core.catversion.prefix import CatVersionPrefix

    gen = torch.Generator().manual_seed(seed)
    keys, values = (torch.randn(3, 1, 768, generator=gen) * 0.5 for _ in range(2))
    return CatVersionPrefix(layers=(9, 10, 11), keys=keys, values=values)


@pytest.fixture(scope="module")
def models() -> Models:
    from elite_core.comfyui import elite as comfy_elite

    built = Models(build_tiny_sd15_model(seed=0), build_tiny_clip(seed=7, real_size=True), build_tiny_vae(seed=2),
                   clip_vision=build_tiny_clip_vision(seed=3))
    built.global_mapper = comfy_elite.load_global_mapper(TINY_GLOBAL_MAPPER)
    built.local_mapper = comfy_elite.load_local_mapper(TINY_LOCAL_MAPPER)
    built.catversion = {"ball": _prefix(1), "kitty": _prefix(2)}
    return built


@pytest.fixture(scope="module")
def encoder_files(tmp_path_factory) -> dict[str, Path]:
    """A tiny CLIP as the single model.safetensors (its tokenizer: ComfyUI's) and a tiny DINO folder."""
    clip_folder = save_clip_folder(tiny_clip(), tmp_path_factory.mktemp("clip"), TOKENIZER_DIR)
    dino_folder = tmp_path_factory.mktemp("dino")
    tiny_dino().save_pretrained(dino_folder, safe_serialization=True)
    return {"clip": clip_folder / "model.safetensors", "dino": dino_folder}


@pytest.fixture(scope="module")
def finished_run(dreambench, models, encoder_files, tmp_path_factory):
    from elite_eval.scoring import load_scorers

    out = tmp_path_factory.mktemp("run")
    benchmark = read_benchmark(dreambench)
    methods = parse_methods(METHODS)
    counts = generate(benchmark, methods, models, SETTINGS, out, progress=False)
    scorers = load_scorers(str(encoder_files["clip"]), str(encoder_files["dino"]), str(TOKENIZER_DIR))
    scores = score_run(benchmark, methods, SETTINGS, out, scorers, progress=False)
    paths = write_outputs(scores, benchmark, methods, SETTINGS, out)
    return {"out": out, "benchmark": benchmark, "methods": methods, "counts": counts, "scores": scores, "paths": paths,
            "scorers": scorers}


def _pixels(path: Path) -> np.ndarray:
    with Image.open(path) as img:
        return np.asarray(img).copy()


def test_dreambench_file_layout_is_read():
    classes, objects, live = parse_prompts_and_classes(PROMPTS_AND_CLASSES)
    assert classes == {"ball": "toy", "kitty": "cat"}
    assert objects == ["a {0} {1} in the snow", "a {0} {1} on a wooden table"]
    assert live == ["a {0} {1} in the jungle", "a {0} {1} wearing a red hat"]
    elite, sd, catversion = parse_methods(["elite-local@0.6", "sd", "catversion"])
    assert elite.prompt(live[0], "cat") == "a S in the jungle"
    assert sd.prompt(live[0], "cat") == catversion.prompt(live[0], "cat") == "a cat in the jungle"
    assert fill_template(objects[1], "sks", "toy") == "a sks toy on a wooden table"


def _generated_images(finished_run) -> list[dict[str, np.ndarray]]:
    """Each subject x prompt x seed of the run: {method name: its image's pixels}."""
    out, benchmark, methods = finished_run["out"], finished_run["benchmark"], finished_run["methods"]
    return [{m.name: _pixels(image_path(out, m, subject, index, seed)) for m in methods}
            for subject in benchmark.subjects for index in range(2) for seed in SETTINGS.seeds]


def test_every_method_is_generated_for_every_subject_prompt_and_seed(finished_run):
    assert finished_run["counts"] == {"made": 5 * 2 * 2 * 2, "reused": 0}
    for subject in finished_run["benchmark"].subjects:
        assert subject.prompts == tuple(parse_prompts_and_classes(PROMPTS_AND_CLASSES)[2 if subject.class_noun == "cat" else 1])
    images = _generated_images(finished_run)
    assert len(images) == 8 and all(image["sd"].shape == (64, 64, 3) for image in images)


def test_local_strength_zero_gives_the_global_only_image(finished_run):
    """λ = 0 leaves the local branch out: the global-only image, bit for bit."""
    for image in _generated_images(finished_run):
        np.testing.assert_array_equal(image["elite-local@0"], image["elite-global"])


def test_each_method_changes_every_image(finished_run):
    """SD and the local branch against the global-only image, CatVersion against plain SD."""
    differs = {"sd": 0, "catversion": 0, "elite-local@1": 0}
    for image in _generated_images(finished_run):
        for name in differs:
            differs[name] += int(not np.array_equal(image[name], image["elite-global" if name != "catversion" else "sd"]))
    assert all(count == 8 for count in differs.values()), differs


def test_scores_follow_the_papers_aggregation(finished_run):
    scores = finished_run["scores"]
    saved = json.loads((finished_run["out"] / "scores.json").read_text())
    assert saved["methods"].keys() == set(METHODS)
    assert set(saved["encoders"]) == {"clip", "dino"} and saved["seeds"] == [0, 1]
    for name, data in scores["methods"].items():
        assert len(data["images"]) == 8
        for metric in ("clip_t", "clip_i", "dino_i", "masked_clip_i"):
            values = [i[metric] for i in data["images"]]
            assert all(-1.0 <= v <= 1.0 for v in values)
            # restated: prompts -> subjects -> seeds, then the sample std over the seeds
            per_seed = []
            for seed in SETTINGS.seeds:
                subjects = {}
                for i in data["images"]:
                    if i["seed"] == seed:
                        subjects.setdefault(i["subject"], []).append(i[metric])
                per_seed.append(np.mean([np.mean(v) for v in subjects.values()]))
            assert data["summary"][metric]["mean"] == pytest.approx(np.mean(per_seed), abs=1e-12)
            assert data["summary"][metric]["std"] == pytest.approx(np.std(per_seed, ddof=1), abs=1e-12)


def test_a_generated_copy_of_the_reference_scores_one(finished_run, tmp_path):
    """The scorer's per-image numbers on a known case: the concept photo itself, as a generated image."""
    from elite_eval.scoring import _subject_references, score_image

    scorers, benchmark = finished_run["scorers"], finished_run["benchmark"]
    kitty = [s for s in benchmark.subjects if s.name == "kitty"][0]  # one photo: the copy equals every reference
    copy = tmp_path / "copy.png"
    Image.open(kitty.concept).convert("RGB").save(copy)
    text = scorers.clip.encode_texts(["a cat"])
    values = score_image(copy, kitty.mask, text, _subject_references(kitty, scorers), scorers)
    for metric in ("clip_i", "dino_i", "masked_clip_i"):
        assert values[metric] == pytest.approx(1.0, abs=1e-5), metric


def test_the_report_has_every_table_the_plot_and_the_grids(finished_run):
    out, paths = finished_run["out"], finished_run["paths"]
    markdown = paths["markdown"].read_text()
    for heading in ("Per method", "Published DreamBench numbers", "DINO-I per subject", "CLIP-I per subject",
                    "masked CLIP-I per subject", "CLIP-T per subject", "Trade-off"):
        assert f"## {heading}" in markdown, heading
    for method in METHODS:
        assert f"| {method} |" in markdown
    assert "0.621" in markdown  # the paper's ELITE DINO for comparison
    page = paths["html"].read_text()
    assert page.count("<table>") == 6 and "tradeoff.png" in page
    with Image.open(paths["plot"]) as plot:
        assert plot.format == "PNG" and plot.width > 300
    for subject in ("ball", "kitty"):
        with Image.open(out / "grids" / f"{subject}.jpg") as grid:
            assert grid.height == 160 * len(METHODS) and grid.width == 150 + 160 * 3  # labels, concept, 2 prompts


def test_a_second_run_reuses_the_finished_images(finished_run, models):
    out, benchmark, methods = finished_run["out"], finished_run["benchmark"], finished_run["methods"]
    files = sorted((out / "images").rglob("*.png"))
    stamps = {p: p.stat().st_mtime_ns for p in files}
    assert generate(benchmark, methods, models, SETTINGS, out, progress=False) == {"made": 0, "reused": 40}
    assert {p: p.stat().st_mtime_ns for p in files} == stamps
    gone = image_path(out, methods[0], benchmark.subjects[0], 1, 1)
    gone.unlink()
    assert generate(benchmark, methods, models, SETTINGS, out, progress=False) == {"made": 1, "reused": 39}
    with pytest.raises(RunError, match="steps"):
        generate(benchmark, methods, models, RunSettings(seeds=(0, 1), size=64, steps=2), out, progress=False)


def test_what_a_method_lacks_is_refused_before_sampling(dreambench, models, tmp_path):
    benchmark = read_benchmark(dreambench)
    no_masks = benchmark.select(["ball"])
    no_masks = type(benchmark)(benchmark.name, benchmark.root,
                               tuple(type(s)(**{**s.__dict__, "mask": None}) for s in no_masks.subjects))
    with pytest.raises(RunError, match=r"masks/<photo stem>\.png"):
        generate(no_masks, parse_methods(["elite-local@0.6"]), models, SETTINGS, tmp_path / "a", progress=False)
    bare = Models(models.model, models.clip, models.vae)
    with pytest.raises(RunError, match="needs one adapter per subject; none for ball, kitty"):
        generate(benchmark, parse_methods(["catversion"]), bare, SETTINGS, tmp_path / "b", progress=False)
    assert not (tmp_path / "a" / "images").exists() and not (tmp_path / "b" / "images").exists()


def _scoring_args(finished_run, dreambench) -> list[str]:
    """The command line that scores the finished run again (no generation)."""
    return [str(dreambench), "--out", str(finished_run["out"]), "--methods", *METHODS, "--seeds", "0", "1", "--size",
            "64", "--steps", "1", "--skip-generation"]


def test_the_command_line_scores_a_finished_run(finished_run, dreambench, encoder_files):
    out = finished_run["out"]
    (out / "report.md").unlink()
    args = _scoring_args(finished_run, dreambench)
    assert cli.main(args + ["--clip", str(encoder_files["clip"]), "--dino", str(encoder_files["dino"]),
                            "--tokenizer", str(TOKENIZER_DIR), "--masked-crop", "--cpu"]) == 0
    assert (out / "report.md").is_file()
    rescored = json.loads((out / "scores.json").read_text())
    assert rescored["masked_crop"] is True
    for name, data in rescored["methods"].items():  # the crop changes masked CLIP-I only
        before = finished_run["scores"]["methods"][name]["summary"]
        assert data["summary"]["clip_i"]["mean"] == pytest.approx(before["clip_i"]["mean"], abs=1e-6)
        assert data["summary"]["masked_clip_i"]["mean"] != pytest.approx(before["masked_clip_i"]["mean"], abs=1e-6)


def test_the_command_line_refuses_to_score_without_encoders(finished_run, dreambench, caplog):
    out, args = finished_run["out"], _scoring_args(finished_run, dreambench)
    caplog.set_level(logging.ERROR)
    assert cli.main(args) == 2
    assert "Pass --clip" in caplog.text
    assert cli.main(args + ["--clip", str(out / "missing.safetensors")]) == 2
    assert "missing.safetensors" in caplog.text


@pytest.mark.skipif(not (SHARED_DIR / "data" / "elite_test_datasets").is_dir(), reason="needs ../shared")
def test_elite_test_inputs_are_read_with_their_masks():
    benchmark = read_benchmark(SHARED_DIR / "data" / "elite_test_datasets")
    assert benchmark.name == "elite-test" and len(benchmark.subjects) >= 10
    for subject in benchmark.subjects:
        assert subject.mask == subject.concept.with_name(f"{subject.concept.stem}_bg.png")
        assert subject.class_noun == "object" and len(subject.prompts) == 6


def test_the_command_line_names_missing_generation_models(dreambench, encoder_files, tmp_path, caplog):
    caplog.set_level(logging.ERROR)
    args = [str(dreambench), "--out", str(tmp_path / "run"), "--methods", "elite-global", "--comfyui", str(COMFY_DIR),
            "--cpu", "--clip", str(encoder_files["clip"]), "--tokenizer", str(TOKENIZER_DIR)]
    assert cli.main(args) == 2
    assert "Pass --checkpoint" in caplog.text
    assert cli.main(args + ["--checkpoint", "no-such-sd15.safetensors"]) == 2
    assert "Checkpoint 'no-such-sd15.safetensors' was not found" in caplog.text
    assert cli.main([*args[:4], "elite-local@7", *args[5:]]) == 2
    assert "λ must be a number from 0 to 2" in caplog.text
    assert not (tmp_path / "run" / "images").exists()


# --------------------------------------------------------------------------- several processes


def test_one_process_makes_every_image_and_a_share_is_every_nth_from_the_rank(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    alone = launched_processes(cpu=True)
    assert (alone.rank, alone.count, alone.is_main) == (0, 1, True)
    assert alone.share(list("abcde")) == list("abcde")
    second = Processes()
    second.rank, second.count = 1, 3
    assert second.share(list("abcdefg")) == ["b", "e"] and not second.is_main


def test_several_processes_without_accelerate_are_refused_with_the_install_line(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setitem(sys.modules, "accelerate", None)  # what an install without accelerate does
    with pytest.raises(RunError, match=r"2 processes .*pip install -r requirements-eval\.txt"):
        launched_processes(cpu=True)


def test_help_needs_no_accelerate():
    blocked = ("import runpy, sys; sys.modules['accelerate'] = None; sys.argv = ['run', '--help']; "
               "runpy.run_module('elite_eval.run', run_name='__main__')")
    env = {k: v for k, v in LAUNCH_ENV.items() if k != "WORLD_SIZE"}
    done = subprocess.run([sys.executable, "-c", blocked], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "--skip-generation" in done.stdout


# Three methods x two subjects x two prompts x two seeds: 24 images, 12 per process.
LAUNCHED_METHODS = ["sd", "elite-global", "elite-local@1"]


def _launch(out: Path, dreambench: Path, encoder_files: dict[str, Path], processes: int) -> str:
    """tests/eval_accelerate_worker.py (the runner's command line on the tiny models) into ``out``;
    returns its log."""
    command = [*launcher(processes), str(REPO / "tests" / "eval_accelerate_worker.py"), str(dreambench),
               "--out", str(out), "--methods", *LAUNCHED_METHODS, "--seeds", "0", "1", "--size", "64", "--steps", "1",
               "--comfyui", str(COMFY_DIR), "--cpu", "--global-mapper", str(ELITE_MODELS / TINY_GLOBAL_MAPPER),
               "--local-mapper", str(ELITE_MODELS / TINY_LOCAL_MAPPER), "--clip", str(encoder_files["clip"]),
               "--dino", str(encoder_files["dino"]), "--tokenizer", str(TOKENIZER_DIR)]
    done = subprocess.run(command, cwd=REPO, env=LAUNCH_ENV, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    return done.stderr


def _files(out: Path) -> dict[str, bytes]:
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


def _interrupted_copy(source: Path, target: Path, keep_every: int) -> tuple[list[Path], dict[Path, int]]:
    """``source`` as a stopped run leaves it: no scores or report yet, only every ``keep_every``-th
    image, and a half-written PNG under the temporary name of one that is missing. Returns the
    missing images and the modification times of the kept ones."""
    shutil.copytree(source, target)
    for name in ("scores.json", "report.md", "report.html", "tradeoff.png"):
        (target / name).unlink()
    shutil.rmtree(target / "grids")
    images = sorted((target / "images").rglob("*.png"))
    missing = [p for i, p in enumerate(images) if i % keep_every]
    whole = missing[0].read_bytes()
    Path(str(missing[0]) + ".partial").write_bytes(whole[: len(whole) // 2])
    for path in missing:
        path.unlink()
    kept = {p: p.stat().st_mtime_ns for p in images if p not in missing}
    return missing, kept


@pytest.fixture(scope="module")
def launched_runs(tmp_path_factory, dreambench, encoder_files):
    """The same run made by one process and by two; a stopped copy of the two-process run finished by
    one process, and a stopped copy of the one-process run finished by two."""
    root = tmp_path_factory.mktemp("launched")
    runs = {"one": root / "one", "two": root / "two"}
    logs = {name: _launch(runs[name], dreambench, encoder_files, processes) for name, processes in (("one", 1), ("two", 2))}
    resumed = {}
    for name, source, processes, keep_every in (("by_one", runs["two"], 1, 2), ("by_two", runs["one"], 2, 3)):
        out = root / f"resumed_{name}"
        missing, kept = _interrupted_copy(source, out, keep_every)
        resumed[name] = {"out": out, "missing": missing, "kept": kept,
                         "log": _launch(out, dreambench, encoder_files, processes)}
    return {"runs": runs, "logs": logs, "resumed": resumed}


@pytest.mark.first_comfyui_only
def test_two_processes_write_the_files_of_one_bit_for_bit(launched_runs):
    one, two = (_files(launched_runs["runs"][name]) for name in ("one", "two"))
    assert sum(name.startswith("images/") for name in one) == 24
    assert {"scores.json", "report.md", "report.html", "tradeoff.png", "run.json"} <= one.keys()
    assert one.keys() == two.keys()
    differing = [name for name in one if one[name] != two[name]]
    assert not differing, differing


@pytest.mark.first_comfyui_only
def test_the_two_processes_share_the_images(launched_runs):
    log = launched_runs["logs"]["two"]
    assert "images (process 1 of 2): 12 of the 24 missing made here, 0 already there" in log, log[-3000:]
    assert "images (process 2 of 2): 12 of the 24 missing made here, 0 already there" in log, log[-3000:]
    assert "images: 24 made, 0 already there" in launched_runs["logs"]["one"]
    assert log.count("report: ") == 1  # the main process alone scores and reports


@pytest.mark.first_comfyui_only
@pytest.mark.parametrize("name", ["by_one", "by_two"])
def test_a_stopped_run_is_finished_by_another_number_of_processes(launched_runs, name):
    resumed = launched_runs["resumed"][name]
    out, missing, kept = resumed["out"], resumed["missing"], resumed["kept"]
    assert {p: p.stat().st_mtime_ns for p in kept} == kept  # what was there is kept, not made again
    assert not list(out.rglob("*.partial"))  # the half-written file never counted
    if name == "by_one":
        assert f"images: {len(missing)} made, {len(kept)} already there" in resumed["log"]
    else:  # 16 missing of 24: 8 each
        assert len(missing) == 16, len(missing)
        for rank in (1, 2):
            assert f"images (process {rank} of 2): 8 of the 16 missing made here, 8 already there" in resumed["log"]
    reference = _files(launched_runs["runs"]["one"])
    finished = _files(out)
    assert finished.keys() == reference.keys()
    assert [n for n in reference if reference[n] != finished[n]] == []
