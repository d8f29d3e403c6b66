"""CatVersion Train Concept never trains for nothing: the content fingerprint of what makes an
adapter (photos, caption, recipe, base models and their LoRAs), finding a saved adapter again by it,
`retrain`, runs that stopped early, and what the node shows while and after it trains."""

from __future__ import annotations

import dataclasses
import os
import shutil

import numpy as np
import pytest
import torch
from conftest import CATVERSION_MODELS
from PIL import Image
from safetensors import safe_open

import comfy.model_management
import comfy.sd
import comfy.utils
import nodes

from comfyui_elite.elite_core.catversion.training import CatVersionRecipe, training_fingerprint
from comfyui_elite.elite_core.comfyui import catversion_files, training_progress
from comfyui_elite.elite_core.comfyui import catversion_training as training
from comfyui_elite.elite_core.comfyui.fingerprints import sd1_models_fingerprint
from comfyui_elite.elite_core.common.loss_curve import curve_summary, loss_curve_image
from comfyui_elite.nodes.nodes_catversion import CatVersionTrain
from elite_test_pack.in_process import run_prompt
from elite_test_pack.tiny_models import build_tiny_clip, build_tiny_sd15_model, build_tiny_vae
from elite_test_pack.workflows import node_id, tiny_prompt

CAPTION = "teddybear"
RESOLUTION = 64
RECIPE = CatVersionRecipe(steps=3, resolution=RESOLUTION, caption=CAPTION)
BASE = "the base models' fingerprint"


@pytest.fixture(scope="module")
def sd1():
    """MODEL, CLIP (the real CLIP-L text layout) and VAE, seeded; made in inference mode as ComfyUI's loaders do."""
    with torch.inference_mode():
        return (build_tiny_sd15_model(seed=0), build_tiny_clip(seed=7, real_size=True, std=0.02),
                build_tiny_vae(seed=2))


@pytest.fixture(scope="module")
def photos() -> torch.Tensor:
    gen = torch.Generator().manual_seed(4)
    with torch.inference_mode():
        return torch.randint(0, 256, (3, 72, 88, 3), generator=gen).float() / 255.0


def adapter_files(prefix: str) -> list[str]:
    return sorted(f for f in os.listdir(CATVERSION_MODELS) if f.startswith(f"{prefix}_"))


def metadata_of(name: str) -> dict[str, str]:
    with safe_open(str(CATVERSION_MODELS / name), "pt") as f:
        return f.metadata()


@pytest.fixture()
def trainings(monkeypatch) -> list[int]:
    """Counts the training runs the node starts (each entry: the run's planned steps)."""
    runs = []
    real = training.train_concept

    def counted(model, clip, vae, images, recipe, *args, **kwargs):
        runs.append(recipe.steps)
        return real(model, clip, vae, images, recipe, *args, **kwargs)

    monkeypatch.setattr(training, "train_concept", counted)
    return runs


def run_node(sd1, photos, prefix: str, steps: int, seed: int, retrain: bool = False):
    model, clip, vae = sd1
    return CatVersionTrain.execute(photos, model, clip, vae, CAPTION, prefix, steps, 0.01, 2, RESOLUTION, True, seed,
                                   retrain)


# --------------------------------------------------------------------------- the photos, caption and recipe


def test_the_fingerprint_is_the_same_for_the_same_photos_caption_and_recipe(photos):
    same = training_fingerprint(photos, RECIPE, BASE)
    assert training_fingerprint(photos.clone(), dataclasses.replace(RECIPE), BASE) == same
    strided = photos.permute(0, 3, 1, 2).contiguous().permute(0, 2, 3, 1)  # same values, other memory layout
    assert not strided.is_contiguous() and training_fingerprint(strided, RECIPE, BASE) == same
    assert training_fingerprint([photos], RECIPE, BASE) == same
    # the caption as training uses it (surrounding spaces are dropped there too)
    assert training_fingerprint(photos, dataclasses.replace(RECIPE, caption=f"  {CAPTION} "), BASE) == same


RECIPE_CHANGES = {
    "steps": 4, "batch_size": 1, "learning_rate": 0.011, "flip_probability": 0.0, "resolution": 128, "seed": 24,
    "caption": "teddy bear", "weight_decay": 0.0, "init_std": 0.5, "layers": (10, 11),
}


def test_every_field_of_the_recipe_is_tried_below():
    assert set(RECIPE_CHANGES) == {field.name for field in dataclasses.fields(CatVersionRecipe)}


@pytest.mark.parametrize("field", sorted(RECIPE_CHANGES))
def test_the_fingerprint_changes_with_any_field_of_the_recipe(photos, field):
    changed = dataclasses.replace(RECIPE, **{field: RECIPE_CHANGES[field]})
    assert training_fingerprint(photos, changed, BASE) != training_fingerprint(photos, RECIPE, BASE)


def one_pixel_brighter(photos):
    changed = photos.clone()
    changed[2, 71, 87, 1] += 1 / 255
    return changed


@pytest.mark.parametrize("change", [
    one_pixel_brighter,
    lambda photos: photos.flip(0),  # the same photos in another order (another sequence of draws)
    lambda photos: photos[:2],
    lambda photos: photos.half(),
])
def test_the_fingerprint_changes_with_any_photo_pixel(photos, change):
    assert training_fingerprint(change(photos), RECIPE, BASE) != training_fingerprint(photos, RECIPE, BASE)


def test_the_fingerprint_changes_with_the_base_models(photos):
    assert training_fingerprint(photos, RECIPE, BASE + " v2") != training_fingerprint(photos, RECIPE, BASE)


# --------------------------------------------------------------------------- the base models


def models_fingerprint(model, clip, vae, caption: str = CAPTION) -> str:
    return sd1_models_fingerprint(model, clip, vae, caption)


def small_sd1():
    """The tiny MODEL and VAE of ``sd1`` with a two-layer CLIP (quick to build; the fingerprint reads any CLIP)."""
    return build_tiny_sd15_model(seed=0), build_tiny_clip(seed=7), build_tiny_vae(seed=2)


@pytest.fixture(scope="module")
def small() -> tuple:
    return small_sd1()


@pytest.fixture(scope="module")
def plain_fingerprint(small) -> str:
    return models_fingerprint(*small)


def test_the_base_models_fingerprint_is_of_their_content_not_of_the_objects(small, plain_fingerprint):
    model, clip, vae = small
    assert models_fingerprint(model.clone(), clip.clone(), vae) == plain_fingerprint
    with torch.inference_mode():  # built again from the same seeds, as ComfyUI's loaders make them
        assert models_fingerprint(*small_sd1()) == plain_fingerprint


@pytest.mark.parametrize("part", ["MODEL", "CLIP", "VAE"])
@pytest.mark.parametrize("how", ["every value, slightly (a fine-tune)", "one sampled value"])
def test_the_base_models_fingerprint_changes_when_a_weight_changes(part, how, small, plain_fingerprint):
    model, clip, vae = small
    module = {"MODEL": model.model.diffusion_model, "CLIP": clip.cond_stage_model, "VAE": vae.first_stage_model}[part]
    weights = [p for p in module.parameters() if p.dim() == 2 or p.dim() == 4]
    weight = weights[len(weights) // 2]
    original = weight.detach().clone()
    try:
        with torch.no_grad():
            if how.startswith("every"):
                weight.add_(torch.randn(weight.shape, generator=torch.Generator().manual_seed(1)) * 1e-4)
            else:
                weight.view(-1)[-1] += 1e-3  # the last value is always among the sampled ones
        assert models_fingerprint(model, clip, vae) != plain_fingerprint
    finally:
        with torch.no_grad():
            weight.copy_(original)
    assert models_fingerprint(model, clip, vae) == plain_fingerprint


def test_the_base_models_fingerprint_changes_with_the_caption_tokens_not_with_a_clip_skip(small, plain_fingerprint):
    """The training encodes at the final layer whatever CLIP Set Last Layer says (test_catversion_training.py
    checks that): a cut CLIP trains the same adapter as the uncut one, so it has the same fingerprint."""
    model, clip, vae = small
    for last_layer in (-2, -4):
        (skipped,) = nodes.CLIPSetLastLayer().set_last_layer(clip, last_layer)
        assert models_fingerprint(model, skipped, vae) == plain_fingerprint
    assert models_fingerprint(model, clip, vae, "teddy bear") != plain_fingerprint


def tiny_lora(model, rank: int = 2, seed: int = 5) -> tuple[dict[str, torch.Tensor], str]:
    """A LoRA (ComfyUI's generic key format) on one cross-attention K weight of the tiny UNet."""
    key = next(k for k in model.model.state_dict() if k.endswith("attn2.to_k.weight"))
    out_features, in_features = model.model.state_dict()[key].shape
    gen = torch.Generator().manual_seed(seed)
    stem = key[:-len(".weight")]
    return {f"{stem}.lora_up.weight": torch.randn(out_features, rank, generator=gen) * 0.5,
            f"{stem}.lora_down.weight": torch.randn(rank, in_features, generator=gen) * 0.5}, key


def test_the_base_models_fingerprint_covers_a_lora_and_its_strength_whether_or_not_it_is_applied(small,
                                                                                                   plain_fingerprint):
    model, clip, vae = small
    plain = plain_fingerprint
    lora, key = tiny_lora(model)
    with_lora = comfy.sd.load_lora_for_models(model, None, lora, 1.0, 0.0)[0]
    assert with_lora.patches, "the LoRA was not loaded"
    full = models_fingerprint(with_lora, clip, vae)
    half = models_fingerprint(comfy.sd.load_lora_for_models(model, None, lora, 0.5, 0.0)[0], clip, vae)
    other = models_fingerprint(comfy.sd.load_lora_for_models(model, None, tiny_lora(model, seed=6)[0], 1.0, 0.0)[0],
                               clip, vae)
    assert len({plain, full, half, other}) == 4
    assert models_fingerprint(comfy.sd.load_lora_for_models(model, None, lora, 1.0, 0.0)[0], clip, vae) == full
    # Loaded, ComfyUI writes the LoRA into the weight itself (keeping a backup): neither the patched
    # MODEL nor the plain one it was cloned from changes its fingerprint.
    original = model.model.state_dict()[key].clone()
    comfy.model_management.load_models_gpu([with_lora])
    try:
        assert not torch.equal(model.model.state_dict()[key], original), "the LoRA was not applied in place"
        assert models_fingerprint(with_lora, clip, vae) == full
        assert models_fingerprint(model, clip, vae) == plain
    finally:
        comfy.model_management.unload_all_models()
    assert torch.equal(model.model.state_dict()[key], original)


def test_retrain_is_off_by_default_and_comes_last():
    """Last: a workflow saved before it existed keeps its widget values in place (the new one takes its
    default). That it is an expert (advanced) input is checked with the others in test_node_reference.py."""
    inputs = CatVersionTrain.define_schema().inputs
    assert [i.id for i in inputs][-2:] == ["seed", "retrain"] and inputs[-1].default is False


# --------------------------------------------------------------------------- the node finds its adapter again
# Each training here is a few steps with the real-size CLIP text encoder: the tests share runs where they can.


class RecordingServer:
    """PromptServer.instance as far as the progress text goes."""

    client_id = "the browser"

    def __init__(self):
        self.texts: list[tuple[str, str, str]] = []

    def send_progress_text(self, text, node_id, sid=None):
        self.texts.append((str(node_id), text, sid))


def watch_the_browser(patch) -> tuple[RecordingServer, list]:
    """What reaches the browser: the progress text (a recording server) and the progress bar's
    updates with their previews (through the hook main.py installs)."""
    import server

    recording, bar = RecordingServer(), []
    patch.setattr(server.PromptServer, "instance", recording, raising=False)
    patch.setattr(comfy.utils, "PROGRESS_BAR_HOOK",
                  lambda value, total, preview, prompt_id=None, node_id=None: bar.append((value, total, preview, node_id)))
    return recording, bar


@pytest.fixture()
def browser(monkeypatch):
    return watch_the_browser(monkeypatch)


FIRST = dict(prefix="reuse", steps=3, seed=23)


@pytest.fixture(scope="module")
def first_run(sd1, photos):
    """One training of FIRST as the node runs it (node id "7"), watched from the browser: (result,
    progress texts, progress bar updates)."""
    with pytest.MonkeyPatch.context() as patch:
        recording, bar = watch_the_browser(patch)
        recipe = CatVersionRecipe(steps=FIRST["steps"], resolution=RESOLUTION, caption=CAPTION, seed=FIRST["seed"])
        result = training.train_or_reuse(*sd1, photos, recipe, FIRST["prefix"], node_id="7")
    return result, recording.texts, bar


def test_training_shows_the_step_the_loss_and_a_loss_curve_on_the_node(first_run):
    result, texts, bar = first_run
    saved = metadata_of("reuse_00001.safetensors")
    assert [value for value, *_ in bar][-1] == 3 and all(total == 3 for _, total, *_ in bar)
    with_curve = [(value, preview) for value, _, preview, _ in bar if preview is not None]
    assert with_curve[0][0] == 1 and with_curve[-1][0] == 3  # the first and last steps always show
    kind, image, max_size = with_curve[-1][1]  # ComfyUI's preview tuple (format, PIL image, size limit)
    assert kind == "PNG" and isinstance(image, Image.Image) and max_size is None
    assert {(node, sid) for node, _, sid in texts} == {("7", "the browser")}
    shown = [text for _, text, _ in texts]
    assert shown[0].startswith("step 1/3  loss ") and f"{float(saved['loss_first']):.4f}" in shown[0]
    assert shown[-2].startswith("step 3/3  loss ") and f"{float(saved['loss_last']):.4f}" in shown[-2]
    # at the end: the saved file, the first and last loss, and the curve
    assert shown[-1] == result.message and result.message.startswith("Saved reuse_00001.safetensors")
    assert f"{float(saved['loss_first']):.4f}" in result.message and f"{float(saved['loss_last']):.4f}" in result.message
    assert result.curve.shape == (1, 160, 320, 3) and not result.reused


def test_a_second_run_with_the_same_photos_settings_and_models_loads_the_saved_adapter(first_run, sd1, photos,
                                                                                      trainings, browser):
    trained = first_run[0].adapter
    recording, _ = browser
    # the same graph again, as after a restart (nothing cached): the file is loaded, nothing trains
    second = run_node(sd1, photos, **FIRST)
    assert trainings == [] and adapter_files("reuse") == ["reuse_00001.safetensors"]
    (again,) = second.result
    assert again.name == "reuse_00001.safetensors"
    assert torch.equal(again.keys, trained.keys) and torch.equal(again.values, trained.values)
    (text,) = second.ui["text"]
    assert text.startswith("Found reuse_00001.safetensors") and "not training again" in text
    assert second.ui["images"]  # its loss curve, from the file's metadata
    assert recording.texts == []  # the node id comes with ComfyUI's executor (see the template's test)
    # found by what made it, whatever the name asked for now
    renamed = run_node(sd1, photos, **{**FIRST, "prefix": "reuse_renamed"})
    assert trainings == [] and renamed.result[0].name == "reuse_00001.safetensors"
    assert adapter_files("reuse_renamed") == []


def test_a_clip_skipped_clip_trains_the_adapter_of_the_uncut_one_says_why_and_finds_it(first_run, sd1, photos,
                                                                                      trainings, browser, caplog):
    """CLIP Set Last Layer -2 before the training node: the run trains at the final layer, the very adapter
    of the uncut CLIP (first_run), with a note on the node and in the log; without retrain it finds the
    uncut CLIP's file and says the same."""
    model, clip, vae = sd1
    recording, _ = browser
    (skipped,) = nodes.CLIPSetLastLayer().set_last_layer(clip, -2)
    note = ("This CLIP skips its last layer (CLIP Set Last Layer -2); CatVersion trains at the final layer as the paper "
            "does; the adapter is applied to whatever CLIP you give CatVersion Apply.")
    found = CatVersionTrain.execute(photos, model, skipped, vae, CAPTION, FIRST["prefix"], FIRST["steps"], 0.01, 2,
                                    RESOLUTION, True, FIRST["seed"])
    assert trainings == [] and found.result[0].name == "reuse_00001.safetensors"
    (text,) = found.ui["text"]
    assert text.startswith("Found reuse_00001.safetensors") and text.endswith(note)
    recipe = CatVersionRecipe(steps=FIRST["steps"], resolution=RESOLUTION, caption=CAPTION, seed=FIRST["seed"])
    with caplog.at_level("INFO", logger="elite.catversion"):
        again = training.train_or_reuse(model, skipped, vae, photos, recipe, "reuse_skipped", retrain=True, node_id="7")
    assert trainings == [3] and adapter_files("reuse_skipped") == ["reuse_skipped_00001.safetensors"]
    trained = first_run[0].adapter
    assert torch.equal(again.adapter.keys, trained.keys) and torch.equal(again.adapter.values, trained.values)
    shown = [text for _, text, _ in recording.texts]
    assert shown and all(text.endswith(note) for text in shown)  # under every step's text, and the last message
    assert f"CatVersion: {note}" in caplog.text
    os.remove(CATVERSION_MODELS / "reuse_skipped_00001.safetensors")  # the tests below find reuse_00001 by this fingerprint
    assert skipped.layer_idx == -2 and clip.layer_idx is None


def test_a_damaged_file_is_passed_over(first_run, sd1, photos, trainings):
    good = CATVERSION_MODELS / "reuse_00001.safetensors"
    cut = CATVERSION_MODELS / "reuse_00009.safetensors"  # newer, the same metadata, but cut short
    cut.write_bytes(good.read_bytes()[:-100])
    try:
        assert run_node(sd1, photos, **FIRST).result[0].name == "reuse_00001.safetensors"
    finally:
        cut.unlink()
    assert trainings == []


def test_retrain_trains_again_into_the_next_file_which_later_runs_load(sd1, photos, trainings):
    first = run_node(sd1, photos, "again", steps=1, seed=31)
    retrained = run_node(sd1, photos, "again", steps=1, seed=31, retrain=True)
    assert trainings == [1, 1]
    assert adapter_files("again") == ["again_00001.safetensors", "again_00002.safetensors"]
    assert first.ui["text"][0].startswith("Saved again_00001.safetensors") and first.ui["images"]
    assert retrained.result[0].name == "again_00002.safetensors"
    assert retrained.ui["text"][0].startswith("Saved again_00002.safetensors")
    assert run_node(sd1, photos, "again", steps=1, seed=31).result[0].name == "again_00002.safetensors"  # the newest
    assert trainings == [1, 1]


def test_a_run_that_stopped_early_is_never_reused(sd1, photos, trainings, monkeypatch):
    real_on_step = training_progress.ComfyProgress.on_step

    def interrupt_after_step_1(self, report):
        real_on_step(self, report)
        if report.step == 1:
            comfy.model_management.interrupt_current_processing(True)

    monkeypatch.setattr(training_progress.ComfyProgress, "on_step", interrupt_after_step_1)
    try:
        with pytest.raises(comfy.model_management.InterruptProcessingException):
            run_node(sd1, photos, "stopped", steps=2, seed=41)
    finally:
        comfy.model_management.interrupt_current_processing(False)
    monkeypatch.setattr(training_progress.ComfyProgress, "on_step", real_on_step)
    assert adapter_files("stopped") == ["stopped_00001_step1_of_2.safetensors"]
    partial = metadata_of("stopped_00001_step1_of_2.safetensors")
    # the same file under a plain name still says it stopped at step 1 of 2
    shutil.copyfile(CATVERSION_MODELS / "stopped_00001_step1_of_2.safetensors",
                    CATVERSION_MODELS / "stopped_copy_00001.safetensors")
    try:
        result = run_node(sd1, photos, "stopped", steps=2, seed=41)
    finally:
        os.remove(CATVERSION_MODELS / "stopped_copy_00001.safetensors")
    assert trainings == [2, 2] and result.result[0].name == "stopped_00002.safetensors"
    # the partial file was made from the same inputs: only its being incomplete kept it from being used
    assert metadata_of("stopped_00002.safetensors")[catversion_files.FINGERPRINT_KEY] == partial[catversion_files.FINGERPRINT_KEY]


def test_the_template_run_twice_through_comfyui_trains_once_and_says_so(trainings, browser):
    """Each run_prompt is a new executor with an empty cache, as after a restart of ComfyUI. The second
    prompt has no `retrain` at all, as one saved before the input existed: it still runs, retrain off."""
    recording, _ = browser
    prompt = tiny_prompt("08_catversion_train_then_apply")
    train = node_id(prompt, "CatVersionTrain")
    prompt[train]["inputs"].update(filename_prefix="template_reuse", steps=1)
    shown = []
    for run in range(2):
        if run == 1:
            del prompt[train]["inputs"]["retrain"]
        executor = run_prompt(prompt)
        assert executor.success, [m for m in executor.status_messages if m[0] == "execution_error"]
        shown.append(executor.history_result["outputs"][train]["text"][0])
    assert trainings == [1]
    assert shown[0].startswith("Saved template_reuse_00001.safetensors")
    assert shown[1].startswith("Found template_reuse_00001.safetensors")
    assert {node for node, _, _ in recording.texts} == {train}  # the node's own id, from the executor
    assert [text for _, text, _ in recording.texts if not text.startswith("step ")] == shown


# --------------------------------------------------------------------------- the loss curve


def line_pixels(image: Image.Image) -> np.ndarray:
    pixels = np.asarray(image).astype(int)
    return (pixels[..., 2] > 150) & (pixels[..., 0] < 120)  # the blue line


def plot_frame_columns(image: Image.Image) -> tuple[int, int]:
    """The x of the plot frame's left and right sides: the only columns drawn over most of the height."""
    pixels = np.asarray(image).astype(int)
    drawn = (np.abs(pixels - pixels[0, 0]).sum(-1) > 0) & ~line_pixels(image)
    sides = np.nonzero(drawn.sum(0) > image.height // 2)[0]
    return int(sides.min()), int(sides.max())


def test_the_loss_curve_grows_left_to_right_and_is_drawn_higher_for_a_higher_loss():
    falling = loss_curve_image([1.0, 0.8, 0.6, 0.4], total=8)
    assert falling.size == (320, 160)
    ys, xs = np.nonzero(line_pixels(falling))
    frame_left, frame_right = plot_frame_columns(falling)
    plot_left, plot_width = frame_left, frame_right - frame_left
    # half of the 8 steps done: from the middle of step 1's span (1/16) to that of step 4 (7/16)
    assert abs(xs.min() - (plot_left + plot_width / 16)) <= 3 and abs(xs.max() - (plot_left + plot_width * 7 / 16)) <= 3
    left, right = ys[xs <= xs.min() + 3].mean(), ys[xs >= xs.max() - 3].mean()
    assert left < right - 50  # the first (higher) loss sits higher in the picture
    rising = np.nonzero(line_pixels(loss_curve_image([0.4, 0.6, 0.8, 1.0], total=4)))
    assert rising[0][rising[1] <= rising[1].min() + 3].mean() > rising[0][rising[1] >= rising[1].max() - 3].mean() + 50


def test_the_stored_curve_is_the_mean_of_equal_spans_of_steps():
    losses = [float(i) for i in range(1000)]
    summary = curve_summary(losses)
    assert len(summary) == 100
    assert summary[0] == pytest.approx(np.mean(losses[:10])) and summary[-1] == pytest.approx(np.mean(losses[990:]))
    assert curve_summary([0.5, 0.25]) == [0.5, 0.25]
