"""The ELITE trainer (elite_training.elite) on accelerate: the folder data, one vs two processes,
exact resume, and the trained mapper in ComfyUI. Tiny seeded RANDOM models saved as an SD1.x
diffusers folder with ComfyUI's real CLIP tokenizer files."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import BASE_DIR, COMFY_DIR, ELITE_MODELS
from PIL import Image
from safetensors.torch import load_file

from elite_test_pack.elite_trainer_runs import launch, launch_command, log_column, losses
from elite_test_pack.in_process import run_prompt
from elite_test_pack.process_launch import LAUNCH_ENV
from elite_test_pack.tiny_training_models import build_training_models
from elite_test_pack.workflows import tiny_prompt

pytestmark = pytest.mark.comfyui_independent  # the trainers never import ComfyUI code

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from elite_core.elite.objectives import new_global_mapper  # noqa: E402
from elite_training.data.folder import FolderDataset
from elite_training.data.samples import reference_caption, reference_placeholder_index, sample_generator
from elite_training.elite import mapper_widths  # noqa: E402


@pytest.fixture(scope="module")
def base_model(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("sd15-diffusers")
    unet, text, vision, vae, _ = build_training_models()
    unet.save_pretrained(root / "unet")
    vae.save_pretrained(root / "vae")
    text.save_pretrained(root / "text_encoder")
    vision.save_pretrained(root / "image_encoder")
    shutil.copytree(COMFY_DIR / "comfy" / "sd1_tokenizer", root / "tokenizer")
    return root


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("objects")
    (root / "images").mkdir()
    (root / "masks").mkdir()
    rng = np.random.default_rng(1)
    for i, (w, h) in enumerate([(96, 80), (64, 64), (120, 90)]):
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(root / "images" / f"obj{i}.png")
        if i != 1:  # one image without a mask: the whole image is the object
            mask = np.zeros((h, w), np.uint8)
            mask[h // 4:3 * h // 4, w // 5:w // 2] = 255
            Image.fromarray(mask).save(root / "masks" / f"obj{i}.png")
    (root / "images" / "broken.jpg").write_bytes(b"not a jpeg")
    return root


def test_folder_data_is_seeded_and_skips_unreadable_files(data):
    dataset = FolderDataset(str(data), resolution=64)
    assert len(dataset) == 3 and dataset.skipped == 1
    a, b = dataset.sample(0, sample_generator(0, 5, 1)), dataset.sample(0, sample_generator(0, 5, 1))
    assert torch.equal(a.pixels, b.pixels) and torch.equal(a.pixels_clip, b.pixels_clip) and a.caption == b.caption
    c = dataset.sample(0, sample_generator(0, 6, 1))
    assert not torch.equal(a.pixels_clip, c.pixels_clip)
    assert a.pixels.shape == (3, 64, 64) and a.pixels_clip.shape == (3, 224, 224)
    # the object box: obj0's mask covers columns 19..47 and rows 20..59, padded by 10 px
    assert a.pixels.abs().max() <= 1.0
    # the reference's caption and index quirks (docs/reference/elite.md §1.1, §9.1)
    assert reference_caption("the photo of a {}") == "ahe photo of a S"
    assert reference_placeholder_index("a photo of a S") == 5
    assert reference_placeholder_index("a close-up photo of a S") == 6  # a word index used as a token index


# Two processes x batch 1 x accumulation 2 hold the same global batch of 4 samples (in the same
# micro-batches) as one process x batch 2 x accumulation 2, and as one process x batch 4.
TWO_PROCESSES = ("--batch-size", "1", "--gradient-accumulation", "2")
ONE_PROCESS = ("--batch-size", "2", "--gradient-accumulation", "2")
ONE_PROCESS_NO_ACCUMULATION = ("--batch-size", "4", "--gradient-accumulation", "1")
ONE_PROCESS_STEPS = 3  # one_process_run's steps


@pytest.fixture(scope="module")
def two_process_runs(tmp_path_factory, base_model, data) -> SimpleNamespace:
    """Two processes training until SIGINT reaches the launcher's whole process group (what Ctrl-C in
    a terminal does), that run resumed for one more step, and the same steps never stopped."""
    root = tmp_path_factory.mktemp("two-processes")
    stopped = root / "stopped"
    command = launch_command(stopped, base_model, data, "--steps", "500", *TWO_PROCESSES, "--checkpoint-every", "0",
                             processes=2)
    process = subprocess.Popen(command, cwd=REPO, env=LAUNCH_ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True, start_new_session=True)
    log_file, deadline = stopped / "train_log.jsonl", time.monotonic() + 600
    while not (log_file.is_file() and len(log_file.read_text().splitlines()) >= 2):
        assert process.poll() is None and time.monotonic() < deadline, process.stdout.read()[-4000:]
        time.sleep(0.2)
    os.killpg(process.pid, signal.SIGINT)
    output = process.communicate(timeout=300)[0]
    checkpoints = sorted(d.name for d in stopped.iterdir() if d.name.startswith("checkpoint-"))
    assert len(checkpoints) == 1, output[-4000:]
    step = json.loads((stopped / checkpoints[0] / "elite_step.json").read_text())["step"]
    losses_when_stopped = losses(stopped)
    launch(root, base_model, data, "stopped", "--steps", str(step + 1), *TWO_PROCESSES, "--resume", "latest",
           processes=2)
    whole = launch(root, base_model, data, "whole", "--steps", str(step + 1), *TWO_PROCESSES, "--checkpoint-every", "2",
                   processes=2)
    return SimpleNamespace(stopped=stopped, whole=whole, step=step, output=output, checkpoints=checkpoints,
                           losses_when_stopped=losses_when_stopped)


@pytest.fixture(scope="module")
def one_process_run(tmp_path_factory, base_model, data) -> Path:
    """Three steps of the two-process run's global batches in one process, with a checkpoint at step 2,
    validation images and the official .pt export (none of which may change training)."""
    root = tmp_path_factory.mktemp("one-process")
    return launch(root, base_model, data, "whole", "--steps", str(ONE_PROCESS_STEPS), *ONE_PROCESS,
                  "--checkpoint-every", "2", "--export-pt", "--validation-images", "2", "--validation-steps", "2")


# Ctrl-C: both processes finish the step in progress, one checkpoint holds it, and resuming from it
# gives the same weights as a run that was never stopped.


def test_ctrl_c_stops_both_processes_after_the_same_step_with_one_checkpoint_holding_it(two_process_runs):
    run = two_process_runs
    assert 2 <= run.step < 500 and len(run.losses_when_stopped) == run.step, run.output[-4000:]
    assert run.checkpoints == [f"checkpoint-{run.step}"]
    assert (run.stopped / f"mapper_{run.step:06d}.safetensors").is_file()


def test_ctrl_c_is_reported_and_cuts_no_process_off_inside_the_trainer(two_process_runs):
    run = two_process_runs
    assert "stopped on request after step" in run.output, run.output[-6000:]
    # no process was cut off inside the trainer (torch's launcher reports the signal with its own traceback)
    assert 'elite_training/' not in "".join(line for line in run.output.splitlines() if line.lstrip().startswith("File ")), \
        run.output[-6000:]


def test_the_run_resumed_after_ctrl_c_equals_one_never_stopped(two_process_runs):
    run = two_process_runs
    a, b = load_file(str(run.whole / "global_mapper.safetensors")), load_file(str(run.stopped / "global_mapper.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert losses(run.stopped) == losses(run.whole)


# 2 processes x batch 1 x accumulation 2 = 1 x 2 x 2 = 1 x 4 x 1 over the first two steps: the same
# losses, the same gradient norms before clipping (so accumulation neither drops nor rescales a
# micro-batch, and the processes' gradients are averaged once), and the same update.


@pytest.fixture(scope="module")
def no_accumulation_run(tmp_path_factory, base_model, data) -> Path:
    """The two-process run's first two global batches in one process, four samples at once."""
    return launch(tmp_path_factory.mktemp("no-accumulation"), base_model, data, "batch4", "--steps", "2",
                  *ONE_PROCESS_NO_ACCUMULATION)


def test_two_processes_and_one_log_the_same_losses_and_gradient_norms(two_process_runs, one_process_run,
                                                                      no_accumulation_run):
    runs = (two_process_runs.whole, one_process_run, no_accumulation_run)
    for column in ("loss", "grad_norm"):
        first, *others = (log_column(run, column)[:2] for run in runs)
        assert len(first) == 2
        for other in others:
            np.testing.assert_allclose(other, first, rtol=1e-5, err_msg=column)
    assert min(log_column(one_process_run, "grad_norm")) > 0  # norms of 0 would make the comparison empty


def test_two_processes_and_one_make_the_same_update(two_process_runs, one_process_run, no_accumulation_run):
    two, one, four = (load_file(str(path)) for path in (two_process_runs.whole / "mapper_000002.safetensors",
                                                       one_process_run / "mapper_000002.safetensors",
                                                       no_accumulation_run / "global_mapper.safetensors"))
    unet, _, vision, _, _ = build_training_models()
    init = new_global_mapper(unet, mapper_widths(unet, vision), seed=0).state_dict()
    assert two.keys() == one.keys() == four.keys() == init.keys()
    # AdamW's first steps move a weight by about +-lr whatever its gradient's size, so a weight with a
    # ~0 gradient can differ by a rounding of the summation order; compare the whole update instead.
    flat = lambda d: torch.cat([d[k].flatten() for k in sorted(d)])  # noqa: E731
    update_one = flat(one) - flat(init)
    assert update_one.norm() > 0
    for other in (two, four):
        assert (flat(other) - flat(init) - update_one).norm() < 1e-2 * update_one.norm()


# The one-process run (3 steps, a checkpoint at step 2, validation images, --export-pt) and the same
# run resumed from its checkpoint: what the run writes, and that resuming gives the run never stopped.


@pytest.fixture(scope="module")
def resumed_run(tmp_path_factory, base_model, data, one_process_run) -> Path:
    """one_process_run's checkpoint-2 alone in a new output folder, resumed to the last step."""
    root = tmp_path_factory.mktemp("resumed")
    shutil.copytree(one_process_run / "checkpoint-2", root / "resumed" / "checkpoint-2")
    return launch(root, base_model, data, "resumed", "--steps", str(ONE_PROCESS_STEPS), *ONE_PROCESS,
                  "--checkpoint-every", "2", "--resume", "latest")


def test_validation_grids_are_written_at_the_checkpoint_and_at_the_end(one_process_run):
    # (they do not disturb training: the run matches the two-process run without them, and the
    # resumed run matches it)
    for step in (2, ONE_PROCESS_STEPS):
        with Image.open(one_process_run / "validation" / f"step_{step:06d}.png") as grid:
            assert grid.size == (2 * 64, 2 * 64)


def test_the_run_writes_a_tensorboard_log(one_process_run):
    assert list(one_process_run.rglob("events.out.tfevents.*")), "no TensorBoard log"


def test_a_checkpoint_and_a_mapper_are_saved_at_the_checkpoint_step(one_process_run):
    assert (one_process_run / "checkpoint-2").is_dir() and (one_process_run / "mapper_000002.safetensors").is_file()


def test_export_pt_writes_the_official_layout_beside_each_mapper_file(one_process_run):
    """--export-pt: the official layout (a plain state dict, official names) beside each file."""
    whole = one_process_run
    for pt, st in (("mapper_000002.pt", "mapper_000002.safetensors"), ("mapper.pt", "global_mapper.safetensors")):
        official, ours = torch.load(whole / pt, map_location="cpu", weights_only=True), load_file(str(whole / st))
        assert official.keys() == ours.keys() and all(torch.equal(official[k], ours[k]) for k in ours)


def test_the_resumed_run_ends_with_the_uninterrupted_runs_mapper(one_process_run, resumed_run):
    a = load_file(str(one_process_run / "global_mapper.safetensors"))
    b = load_file(str(resumed_run / "global_mapper.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_the_resumed_run_logs_the_uninterrupted_runs_losses_after_the_checkpoint(one_process_run, resumed_run):
    assert losses(resumed_run) == losses(one_process_run)[2:]


def test_the_steps_after_the_checkpoint_change_the_mapper(one_process_run):
    a = load_file(str(one_process_run / "global_mapper.safetensors"))
    halfway = load_file(str(one_process_run / "mapper_000002.safetensors"))
    assert not all(torch.equal(a[k], halfway[k]) for k in a)


def test_the_trained_mapper_runs_in_comfyui(one_process_run):
    """The trained file is what the loader node reads: copied into models/elite, the workflow runs."""
    shutil.copyfile(one_process_run / "global_mapper.safetensors", ELITE_MODELS / "trained_global.safetensors")
    executor = run_prompt(tiny_prompt("01_elite_global", "trained_global.safetensors"))
    assert executor.success, [m for m in executor.status_messages if m[0] == "execution_error"]
    assert (BASE_DIR / "models" / "elite" / "trained_global.safetensors").is_file()


@pytest.fixture(scope="module")
def object_data(tmp_path_factory) -> Path:
    """Objects big enough for the local stage (>= 100 px, aspect within [0.5, 2]), one without a
    mask and one too small: both skipped."""
    root = tmp_path_factory.mktemp("local-objects")
    (root / "images").mkdir()
    (root / "masks").mkdir()
    rng = np.random.default_rng(2)
    for i, (w, h, box) in enumerate([(200, 180, (30, 20, 170, 160)), (240, 160, (60, 25, 200, 150)),
                                     (160, 160, None), (160, 160, (10, 10, 60, 60))]):
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(root / "images" / f"obj{i}.png")
        if box:
            mask = np.zeros((h, w), np.uint8)
            mask[box[1]:box[3], box[0]:box[2]] = 255
            Image.fromarray(mask).save(root / "masks" / f"obj{i}.png")
    return root


def test_local_folder_data_follows_the_reference_augmentation(object_data):
    from elite_training.data.folder import LocalFolderDataset

    dataset = LocalFolderDataset(str(object_data), resolution=64, latent_down=2)
    assert len(dataset) == 2 and dataset.skipped == 2
    seen = set()
    for step in range(40):
        sample = dataset.sample(step % 2, sample_generator(3, step, 0))
        again = dataset.sample(step % 2, sample_generator(3, step, 0))
        assert torch.equal(sample.pixels, again.pixels) and torch.equal(sample.pixels_object, again.pixels_object)
        assert sample.pixels.shape == (3, 64, 64) and sample.mask.shape == (1, 32, 32)
        assert set(sample.object_segmentation.unique().tolist()) <= {0.0, 1.0}
        prefix = sample.caption.split(" photo")[0].split(" rend")[0].split(" cropped")[0].split(" close-up")[0]
        seen.add(prefix.replace(" dark", "").replace(" bright", "").replace(" good", ""))
        if sample.caption.startswith(("a far away", "very small")):  # pasted small: valid only where pasted
            assert 0 < sample.mask.mean() < 1
            assert sample.pixels[:, sample.mask[0].repeat_interleave(2, 0).repeat_interleave(2, 1) == 0].max() <= 1.0
        else:
            assert sample.mask.min() == 1
    assert {"a far away", "very small", "a"} & seen and ({"zoomed in", "close up"} & seen)


# The global stage under bf16 mixed precision (it trains, and saves its mapper in fp32 for the nodes),
# then the local stage from it; both files in ComfyUI.


@pytest.fixture(scope="module")
def bf16_global_then_local_runs(tmp_path_factory, base_model, object_data) -> SimpleNamespace:
    root = tmp_path_factory.mktemp("bf16-then-local")
    trained_global = launch(root, base_model, object_data, "global", "--steps", "1", "--batch-size", "2",
                            "--mixed-precision", "bf16")
    local = launch(root, base_model, object_data, "local", "--stage", "local", "--steps", "2", "--batch-size", "2",
                   "--global-mapper", str(trained_global / "global_mapper.safetensors"))
    return SimpleNamespace(trained_global=trained_global, local=local)


@pytest.fixture(scope="module")
def trained_mapper_files(bf16_global_then_local_runs) -> tuple[str, str]:
    """The two trained mappers copied into models/elite: (global file name, local file name)."""
    runs = bf16_global_then_local_runs
    shutil.copyfile(runs.trained_global / "global_mapper.safetensors", ELITE_MODELS / "trained_g.safetensors")
    shutil.copyfile(runs.local / "local_mapper.safetensors", ELITE_MODELS / "trained_l.safetensors")
    return "trained_g.safetensors", "trained_l.safetensors"


def test_the_bf16_global_stage_trains_and_saves_its_mapper_in_fp32(bf16_global_then_local_runs):
    trained_global = bf16_global_then_local_runs.trained_global
    assert all(np.isfinite(losses(trained_global)))
    assert {t.dtype for t in load_file(str(trained_global / "global_mapper.safetensors")).values()} == {torch.float32}


def test_the_local_stage_trains_from_the_bf16_global_mapper(bf16_global_then_local_runs):
    local = bf16_global_then_local_runs.local
    assert len(losses(local)) == 2 and all(np.isfinite(losses(local)))


def test_the_trained_global_and_local_mappers_run_in_comfyui(trained_mapper_files):
    executor = run_prompt(tiny_prompt("02_elite_global_local", *trained_mapper_files))
    assert executor.success, [m for m in executor.status_messages if m[0] == "execution_error"]


def test_each_loader_refuses_the_other_stages_trained_file(trained_mapper_files):
    """The kind is in the metadata."""
    from comfyui_elite.nodes.nodes_mapper_loader import ELITELocalMapperLoader

    trained_global, _ = trained_mapper_files
    with pytest.raises(Exception, match="global"):
        ELITELocalMapperLoader.execute(trained_global)


def test_resume_is_refused_when_the_processes_would_start_from_different_steps(tmp_path):
    """Only the main process writes a checkpoint's model and step, so machines that do not share
    --output-dir would resume from different steps (and then hang in their collectives): refused."""
    from elite_training.data.objects import DataError
    from elite_training.elite_checkpoints import agree_on_start, find_resume

    class Processes:  # what accelerate's gather returns when the processes hold these values
        device = torch.device("cpu")

        def __init__(self, *starts):
            self.starts = starts

        def gather(self, tensor):
            return torch.tensor(self.starts)

    agree_on_start(Processes(6, 6), 6)
    with pytest.raises(DataError, match="storage that every machine shares"):
        agree_on_start(Processes(6, 0), 6)
    config = SimpleNamespace(resume="latest", output_dir=str(tmp_path))
    assert find_resume(config) == (None, 0)  # nothing to resume yet: start afresh
    (tmp_path / "checkpoint-4").mkdir()
    assert find_resume(config) == (None, 0)  # a checkpoint without its step file is unfinished
    (tmp_path / "checkpoint-4" / "elite_step.json").write_text('{"step": 4}')
    (tmp_path / "checkpoint-10").mkdir()
    (tmp_path / "checkpoint-10" / "elite_step.json").write_text('{"step": 10}')
    assert find_resume(config) == (str(tmp_path / "checkpoint-10"), 10)
    with pytest.raises(DataError, match="not a finished checkpoint"):
        find_resume(SimpleNamespace(resume=str(tmp_path / "nowhere"), output_dir=str(tmp_path)))
