"""CatVersion training: the loss against the reference formula restated here, learning, frozen
weights, determinism, the training node and its files, refusals, and the accelerate trainer."""

from __future__ import annotations

import errno
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import CATVERSION_MODELS, COMFY_DIR
from PIL import Image, ImageOps

import comfy.model_management
import nodes

from comfyui_elite.elite_core.catversion.prefix import CatVersionPrefix, prefixes_from_flat, read_catversion_file
from comfyui_elite.elite_core.catversion.training import (
    CatVersionRecipe,
    PrefixObjective,
    StepDraw,
    StepSampler,
    initial_prefix,
    posterior_cache,
    scaled_linear_schedule,
    squash_images,
)
from comfyui_elite.elite_core.comfyui import catversion_files, training_progress
from comfyui_elite.elite_core.comfyui import catversion_training as training
from comfyui_elite.elite_core.common.checks import ELITEInputError
from comfyui_elite.nodes.nodes_catversion import CatVersionApply, CatVersionLoader, CatVersionTrain
from elite_test_pack.hostile_files import png_header_only
from elite_test_pack.process_launch import LAUNCH_ENV, launcher
from elite_test_pack.reference_catversion import official_flat_to_layers, reference_text_encoder
from elite_test_pack.tiny_models import build_tiny_clip, build_tiny_sd15_model, build_tiny_vae

REPO = Path(__file__).resolve().parents[1]
CAPTION = "teddybear"
RESOLUTION = 64  # 8x8 latents: the tiny models stay fast
QUICK = CatVersionRecipe(steps=3, resolution=RESOLUTION, caption=CAPTION)


def built_like_comfyui():
    """MODEL, CLIP (the real CLIP-L text layout) and VAE made in inference mode, as ComfyUI's loaders
    run: their weights cannot take part in autograd as they are."""
    with torch.inference_mode():
        return (build_tiny_sd15_model(seed=0), build_tiny_clip(seed=7, real_size=True, std=0.02),
                build_tiny_vae(seed=2))


@pytest.fixture(scope="module")
def sd1():
    return built_like_comfyui()


@pytest.fixture(scope="module")
def photos() -> torch.Tensor:
    """Three uint8-exact photos (IMAGE batch), not square, so the squash matters."""
    gen = torch.Generator().manual_seed(4)
    with torch.inference_mode():
        return torch.randint(0, 256, (3, 72, 88, 3), generator=gen).float() / 255.0


def snapshot(*modules) -> list[dict[str, torch.Tensor]]:
    return [{k: v.detach().clone() for k, v in m.state_dict().items()} for m in modules]


def frozen_modules(sd1):
    model, clip, vae = sd1
    return model.model.diffusion_model, clip.cond_stage_model, vae.first_stage_model


# --------------------------------------------------------------------------- the loss, restated


def reference_pixels(photo: torch.Tensor, flip: bool) -> torch.Tensor:
    """The authors' data loader: uint8 PIL image, bicubic resize to a square, PIL mirror, /127.5 - 1."""
    image = Image.fromarray((photo.numpy() * 255).round().astype(np.uint8))
    image = image.resize((RESOLUTION, RESOLUTION), resample=Image.BICUBIC)
    if flip:
        image = ImageOps.mirror(image)
    return torch.from_numpy(np.asarray(image).astype(np.float32) / 127.5 - 1.0).permute(2, 0, 1)


def reference_alphas_cumprod() -> np.ndarray:
    """SD's "linear" schedule of the reference: betas = linspace(sqrt 0.00085, sqrt 0.012, 1000)^2."""
    betas = np.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=np.float64) ** 2
    return np.cumprod(1.0 - betas)


def test_schedule_is_the_one_the_sd1_model_samples_with(sd1):
    model = sd1[0]
    alphas_cumprod = torch.from_numpy(reference_alphas_cumprod())
    comfy_sigmas = model.model.model_sampling.sigmas.double()
    torch.testing.assert_close(comfy_sigmas, ((1 - alphas_cumprod) / alphas_cumprod).sqrt(), rtol=1e-6, atol=0)
    ours = scaled_linear_schedule()
    torch.testing.assert_close(ours.sqrt_alpha_bar, alphas_cumprod.sqrt().float(), rtol=0, atol=0)


def test_one_step_loss_equals_the_reference_formula(sd1, photos, record_parity):
    from comfy.ldm.modules.distributions.distributions import DiagonalGaussianDistribution

    model, clip, vae = sd1
    flat = torch.randn(4608, generator=torch.Generator().manual_seed(9))
    gen = torch.Generator().manual_seed(10)
    draw = StepDraw(indices=torch.tensor([2, 0]), flips=torch.tensor([True, False]), timesteps=torch.tensor([999, 17]),
                    posterior_noise=torch.randn(2, 4, 8, 8, generator=gen), noise=torch.randn(2, 4, 8, 8, generator=gen))
    with torch.inference_mode(False):
        frozen = training.ComfyFrozenSD1(model, clip, vae, CAPTION, (9, 10, 11))
        frozen.load_for_training()
        with training.frozen_for_autograd(frozen.frozen_modules()):
            mean, std = posterior_cache(frozen, squash_images(photos.clone(), RESOLUTION))
            objective = PrefixObjective(frozen, flat, (9, 10, 11), mean, std, scaled_linear_schedule())
            loss = objective(draw)

            # The reference (docs/reference/catversion.md §6), written out: x0 from the data loader, a sample of
            # the VAE posterior times 0.18215, q_sample with the float32 sqrt(alphas_cumprod) tables, the
            # prefixed CLIP restated in float64, the UNet's epsilon, and the mean over every element.
            alphas_cumprod = reference_alphas_cumprod()
            sqrt_ac = torch.tensor(np.sqrt(alphas_cumprod), dtype=torch.float32)
            sqrt_1m_ac = torch.tensor(np.sqrt(1.0 - alphas_cumprod), dtype=torch.float32)
            fsm = vae.first_stage_model
            x0 = torch.stack([reference_pixels(photos[i], bool(f)) for i, f in zip(draw.indices, draw.flips)])
            with torch.no_grad():
                posterior = DiagonalGaussianDistribution(fsm.quant_conv(fsm.encoder(x0)))
            z0 = (posterior.mean + posterior.std * draw.posterior_noise) * 0.18215
            t = draw.timesteps
            z_t = sqrt_ac[t].view(-1, 1, 1, 1) * z0 + sqrt_1m_ac[t].view(-1, 1, 1, 1) * draw.noise
            token_ids = torch.tensor([[tok[0] for tok in clip.tokenize(CAPTION)["l"][0]]])
            state = {k: v.clone() for k, v in clip.cond_stage_model.state_dict().items()}
            prefixes = {layer: [(k, v, 1.0)] for layer, (k, v) in official_flat_to_layers(flat).items()}
            context, _ = reference_text_encoder(state, token_ids, prefixes)
            with torch.no_grad():
                eps = model.model.diffusion_model(z_t, timesteps=t.float(), context=context.expand(2, -1, -1))
            expected = ((eps - draw.noise) ** 2).mean()
            # and it is a real check: the flip and the timestep both change the loss
            flipped = objective(draw._replace(flips=~draw.flips)).item()
            later = objective(draw._replace(timesteps=draw.timesteps.flip(0))).item()
    record_parity(loss.detach(), expected, "(one-step loss)")
    assert abs(loss.item() - expected.item()) <= 1e-5 * expected.item()
    assert abs(flipped - loss.item()) > 1e-4 and abs(later - loss.item()) > 1e-4


def prefix_gradients(frozen, photos, layers) -> tuple[torch.Tensor, torch.Tensor]:
    """d(loss)/d(keys), d(loss)/d(values), (layers, 1, 768) each, for one fixed draw."""
    flat = torch.randn(len(layers) * 2 * 768, generator=torch.Generator().manual_seed(9))
    gen = torch.Generator().manual_seed(10)
    draw = StepDraw(indices=torch.tensor([0, 1]), flips=torch.tensor([False, True]), timesteps=torch.tensor([400, 17]),
                    posterior_noise=torch.randn(2, 4, 8, 8, generator=gen), noise=torch.randn(2, 4, 8, 8, generator=gen))
    mean, std = posterior_cache(frozen, squash_images(photos.clone(), RESOLUTION))
    objective = PrefixObjective(frozen, flat, layers, mean, std, scaled_linear_schedule())
    objective(draw).backward()
    return prefixes_from_flat(objective.flat.grad.detach().clone(), len(layers))


@pytest.mark.parametrize("last_layer", [-2, -4])
def test_a_clip_skipped_clip_trains_every_prefixed_layer_at_the_final_layer(sd1, photos, last_layer):
    """A CLIP through CLIP Set Last Layer: the caption is still encoded at the final layer, so every
    prefixed layer's keys and values get a gradient (at -2, layer 11's were exactly zero), the very one
    the uncut CLIP gives; the CLIP given keeps its setting."""
    model, clip, vae = sd1
    (skipped,) = nodes.CLIPSetLastLayer().set_last_layer(clip, last_layer)
    layers = QUICK.layers
    grads = {}
    with torch.inference_mode(False):
        for name, which in (("skipped", skipped), ("plain", clip)):
            frozen = training.ComfyFrozenSD1(model, which, vae, CAPTION, layers)
            frozen.load_for_training()
            with training.frozen_for_autograd(frozen.frozen_modules()):
                grads[name] = prefix_gradients(frozen, photos, layers)
    keys, values = grads["skipped"]
    for j, layer in enumerate(layers):
        assert keys[j].abs().max() > 0 and values[j].abs().max() > 0, f"no gradient on layer {layer}'s prefix"
    assert torch.equal(keys, grads["plain"][0]) and torch.equal(values, grads["plain"][1])
    assert skipped.layer_idx == last_layer and clip.layer_idx is None
    assert training.clip_skip_note(clip) is None
    assert training.clip_skip_note(skipped).startswith(
        "This CLIP skips its last layer (CLIP Set Last Layer -2)" if last_layer == -2 else
        "This CLIP skips its last 3 layers (CLIP Set Last Layer -4)")


# --------------------------------------------------------------------------- learning


def held_out_loss(sd1, photos, prefix) -> float:
    """Mean loss of ``prefix`` over 8 fixed draws of 2 samples (the same draws for every prefix)."""
    from comfyui_elite.elite_core.catversion.prefix import flat_from_prefixes

    model, clip, vae = sd1
    with torch.inference_mode(False), torch.no_grad():
        frozen = training.ComfyFrozenSD1(model, clip, vae, CAPTION, (9, 10, 11))
        frozen.load_for_training()
        with training.frozen_for_autograd(frozen.frozen_modules()):
            mean, std = posterior_cache(frozen, squash_images(photos.clone(), RESOLUTION))
            objective = PrefixObjective(frozen, flat_from_prefixes(prefix.keys, prefix.values), prefix.layers, mean,
                                        std, scaled_linear_schedule())
            sampler = StepSampler(3, 2, (4, 8, 8), 0.5, torch.Generator().manual_seed(99))
            return float(np.mean([objective(sampler.draw()).item() for _ in range(8)]))


def test_a_few_dozen_steps_reduce_the_loss_and_train_only_the_prefix(sd1, photos):
    with torch.inference_mode():
        model = build_tiny_sd15_model(seed=0, std=0.1)  # its epsilon depends on the text clearly
    _, clip, vae = sd1
    sd1 = (model, clip, vae)
    before = snapshot(*frozen_modules(sd1))
    flags = [[p.requires_grad for p in m.parameters()] for m in frozen_modules(sd1)]
    patches = dict(clip.patcher.object_patches)
    plain = clip.encode_from_tokens(clip.tokenize("teddybear on the beach"))
    recipe = CatVersionRecipe(steps=30, resolution=RESOLUTION, caption=CAPTION, learning_rate=0.05)
    keys, values = prefixes_from_flat(initial_prefix(recipe, torch.Generator().manual_seed(recipe.seed)), 3)
    initial = CatVersionPrefix(layers=(9, 10, 11), keys=keys, values=values)
    trained, losses = training.train_concept(model, clip, vae, photos, recipe)
    assert len(losses) == 30 and all(np.isfinite(losses))
    start, end = held_out_loss(sd1, photos, initial), held_out_loss(sd1, photos, trained)
    assert end < 0.9 * start, (start, end)  # measured: 2.25 -> 1.50
    # Only the prefix learned: every other weight is bit-identical, none holds a gradient, the
    # gradient flags are as they were, and the input CLIP neither gained patches nor changed output.
    for old, module in zip(before, frozen_modules(sd1)):
        new = module.state_dict()
        assert old.keys() == new.keys() and all(torch.equal(old[k], new[k]) for k in old)
        assert all(p.grad is None for p in module.parameters())
    assert flags == [[p.requires_grad for p in m.parameters()] for m in frozen_modules(sd1)]
    assert dict(clip.patcher.object_patches) == patches
    assert torch.equal(clip.encode_from_tokens(clip.tokenize("teddybear on the beach")), plain)
    assert not torch.equal(trained.keys, initial.keys)


def test_training_is_deterministic_for_a_seed(sd1, photos):
    model, clip, vae = sd1
    a, losses_a = training.train_concept(model, clip, vae, photos, QUICK)
    b, losses_b = training.train_concept(model, clip, vae, photos, QUICK)
    c, _ = training.train_concept(model, clip, vae, photos, CatVersionRecipe(steps=3, resolution=RESOLUTION,
                                                                            caption=CAPTION, seed=24))
    assert torch.equal(a.keys, b.keys) and torch.equal(a.values, b.values) and losses_a == losses_b
    assert not torch.equal(a.keys, c.keys)


# --------------------------------------------------------------------------- the node and its files


def adapter_files(prefix: str) -> list[str]:
    return sorted(f for f in os.listdir(CATVERSION_MODELS) if f.startswith(prefix))


def test_train_node_saves_an_adapter_that_apply_loads(sd1, photos):
    model, clip, vae = sd1
    (adapter,) = CatVersionTrain.execute(photos, model, clip, vae, CAPTION, "node_test", 2, 0.01, 2, RESOLUTION, True,
                                         23).result
    (adapter_again,) = CatVersionTrain.execute(photos, model, clip, vae, CAPTION, "node_test", 2, 0.01, 2, RESOLUTION,
                                               True, 23, True).result  # retrain
    assert adapter_files("node_test") == ["node_test_00001.safetensors", "node_test_00002.safetensors"]
    assert adapter.name == "node_test_00001.safetensors"  # a second run never overwrites the first
    (loaded,) = CatVersionLoader.execute("node_test_00001.safetensors").result
    assert torch.equal(loaded.keys, adapter.keys) and torch.equal(loaded.values, adapter_again.values)
    tokens = clip.tokenize("teddybear on the beach")
    direct = CatVersionApply.execute(clip, adapter, 1.0).result[0].encode_from_tokens(tokens)
    from_file = CatVersionApply.execute(clip, loaded, 1.0).result[0].encode_from_tokens(tokens)
    assert torch.equal(direct, from_file)
    assert not torch.equal(direct, clip.encode_from_tokens(tokens))


def test_interrupt_keeps_the_steps_done_and_leaves_no_partial_file(sd1, photos, monkeypatch):
    model, clip, vae = sd1
    real_on_step = training_progress.ComfyProgress.on_step

    def interrupt_during_step_3(self, report):  # the user presses Cancel while step 3 runs
        real_on_step(self, report)
        if report.step == 2:
            comfy.model_management.interrupt_current_processing(True)

    monkeypatch.setattr(training_progress.ComfyProgress, "on_step", interrupt_during_step_3)
    try:
        with pytest.raises(comfy.model_management.InterruptProcessingException):
            CatVersionTrain.execute(photos, model, clip, vae, CAPTION, "interrupted", 5, 0.01, 2, RESOLUTION, True, 23)
    finally:
        comfy.model_management.interrupt_current_processing(False)
    assert adapter_files("interrupted") == ["interrupted_00001_step2_of_5.safetensors"]
    saved = read_catversion_file(str(CATVERSION_MODELS / "interrupted_00001_step2_of_5.safetensors"))
    assert saved.layers == (9, 10, 11)
    from safetensors import safe_open

    with safe_open(str(CATVERSION_MODELS / "interrupted_00001_step2_of_5.safetensors"), "pt") as f:
        assert f.metadata()["steps"] == "2" and f.metadata()["planned_steps"] == "5"
    # the file holds the prefix of step 2 exactly: the same run stopped by steps=2 gives it
    recipe = CatVersionRecipe(steps=2, resolution=RESOLUTION, caption=CAPTION)
    two_steps, _ = training.train_concept(model, clip, vae, photos, recipe)
    assert torch.equal(saved.keys, two_steps.keys) and torch.equal(saved.values, two_steps.values)


def test_a_failed_write_leaves_no_file(monkeypatch, tmp_path, sd1, photos):
    adapter, _ = training.train_concept(*sd1, photos, CatVersionRecipe(steps=1, resolution=RESOLUTION))

    def disk_full(prefix, path, metadata=None):
        Path(path).write_bytes(b"half an adapter")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(catversion_files, "save_catversion_safetensors", disk_full)
    with pytest.raises(OSError, match="No space left"):
        catversion_files.save_adapter_atomically(adapter, str(tmp_path / "a.safetensors"), {})
    assert list(tmp_path.iterdir()) == []


def test_a_final_save_that_fails_keeps_the_trained_adapter_under_a_safe_name(sd1, photos, monkeypatch):
    """The save of the finished run fails (here: the name is too long for the file system): the
    adapter is written as catversion_<date>-<time>_00001.safetensors with the trained values, the
    error names that file, and the next run with the same photos and settings loads it."""
    model, clip, vae = sd1

    def name_too_long(*args, **kwargs):
        raise OSError(errno.ENAMETOOLONG, "File name too long")

    monkeypatch.setattr(catversion_files, "save_trained_adapter", name_too_long)
    before = set(os.listdir(CATVERSION_MODELS))
    with pytest.raises(catversion_files.AdapterSaveError) as failed:
        CatVersionTrain.execute(photos, model, clip, vae, CAPTION, "lost_name", 2, 0.01, 2, RESOLUTION, True, 31)
    (kept,) = set(os.listdir(CATVERSION_MODELS)) - before
    assert re.fullmatch(r"catversion_\d{8}-\d{6}_00001\.safetensors", kept), kept
    assert str(CATVERSION_MODELS / kept) in str(failed.value) and "file name is too long" in str(failed.value)
    saved = read_catversion_file(str(CATVERSION_MODELS / kept))
    recipe = CatVersionRecipe(steps=2, batch_size=2, learning_rate=0.01, resolution=RESOLUTION, flip_probability=0.5,
                              seed=31, caption=CAPTION)
    trained, _ = training.train_concept(model, clip, vae, photos, recipe)
    assert torch.equal(saved.keys, trained.keys) and torch.equal(saved.values, trained.values)
    monkeypatch.undo()
    try:
        (again,) = CatVersionTrain.execute(photos, model, clip, vae, CAPTION, "lost_name", 2, 0.01, 2, RESOLUTION, True,
                                           31).result
        assert again.name == kept and torch.equal(again.keys, trained.keys)
        assert set(os.listdir(CATVERSION_MODELS)) - before == {kept}  # loaded, not trained and saved again
    finally:
        os.remove(CATVERSION_MODELS / kept)


def test_an_adapter_no_folder_of_comfyui_takes_goes_to_the_temporary_folder(tmp_path, monkeypatch):
    gen = torch.Generator().manual_seed(5)
    prefix = CatVersionPrefix(layers=(9, 10, 11), keys=torch.randn(3, 4, 768, generator=gen),
                              values=torch.randn(3, 4, 768, generator=gen))

    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    blocked = tmp_path / "a_file"
    blocked.write_text("")  # models/catversion "inside" a file: nothing can be written there
    (tmp_path / "tmp").mkdir()
    monkeypatch.setattr(catversion_files, "save_trained_adapter", disk_full)
    monkeypatch.setattr(catversion_files, "save_folder", lambda folder: str(blocked / "catversion"))
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path / "tmp"))
    path, failure = catversion_files.keep_trained_adapter(prefix, "name", CatVersionRecipe(steps=5), 3, 3)
    assert failure.errno == errno.ENOSPC and os.path.dirname(path) == str(tmp_path / "tmp")
    assert re.fullmatch(r"catversion_\d{8}-\d{6}_00001_step3_of_5\.safetensors", os.path.basename(path))
    saved = read_catversion_file(path)
    assert torch.equal(saved.keys, prefix.keys) and torch.equal(saved.values, prefix.values)
    message = catversion_files.kept_elsewhere_message("name", path, failure, 3)
    assert path in message and "the disk is full" in message and "move it into models/catversion/" in message


# --------------------------------------------------------------------------- refusals


def other_clip(kind: str):
    """An SD2 (OpenCLIP-H) or SDXL (CLIP-L + bigG) CLIP, weights left empty: refused before use."""
    import comfy.sd
    import comfy.sdxl_clip
    import comfy.supported_models_base
    from comfy.text_encoders import sd2_clip

    tokenizer, encoder = {"sd2": (sd2_clip.SD2Tokenizer, sd2_clip.SD2ClipModel),
                          "sdxl": (comfy.sdxl_clip.SDXLTokenizer, comfy.sdxl_clip.SDXLClipModel)}[kind]
    target = comfy.supported_models_base.ClipTarget(tokenizer, encoder)
    return comfy.sd.CLIP(target, model_options={"dtype": torch.float16})


@pytest.mark.parametrize("case, message", [
    ("sd2 clip", r"text encoders \['h'\]; CatVersion adapters are trained for Stable Diffusion 1.x"),
    ("sdxl clip", r"text encoders \['g', 'l'\]; CatVersion adapters are trained for Stable Diffusion 1.x"),
    ("small clip", r"not the SD1.x CLIP ViT-L/14 text encoder \(12 layers, 768 wide, 12 heads\)"),
    ("sd2-wide unet", r"not a Stable Diffusion 1.x UNet that CatVersion can train with: .*attn2.to_k.weight is "
                      r"\(\d+, 1024\), but SD1.x cross-attention takes 768-wide CLIP-L text"),
    ("empty batch", r"The training IMAGE batch is empty \(0 images\)"),
    ("nan pixels", r"The training IMAGE contains 1 non-finite values"),
    ("prefixed clip", r"This CLIP already carries a CatVersion adapter"),
    ("bad name", r"The adapter name 'my/teddy' cannot be a file name"),
    ("zero steps", r"steps must be a whole number of at least 1"),
])
def test_bad_inputs_are_refused_before_training_and_leave_no_file(sd1, photos, case, message, request):
    model, clip, vae = sd1
    images, name, steps = photos, "refused", 2
    if case in ("sd2 clip", "sdxl clip"):
        clip = other_clip(case.split()[0])
    elif case == "small clip":
        clip = build_tiny_clip(seed=1)
    elif case == "sd2-wide unet":
        model = build_tiny_sd15_model(seed=0, context_dim=1024)
    elif case == "empty batch":
        images = photos[:0]
    elif case == "nan pixels":
        images = photos.clone()
        images[1, 2, 3, 0] = float("nan")
    elif case == "prefixed clip":
        request.getfixturevalue("catversion_data")
        clip = CatVersionApply.execute(clip, CatVersionLoader.execute("teddybear.bin").result[0], 1.0).result[0]
    elif case == "bad name":
        name = "my/teddy"
    elif case == "zero steps":
        steps = 0
    with pytest.raises(ELITEInputError, match=message):
        CatVersionTrain.execute(images, model, clip, vae, CAPTION, name, steps, 0.01, 2, RESOLUTION, True, 23)
    assert adapter_files("refused") == [] and adapter_files("my") == []
    assert not any(f.endswith(".partial") for f in os.listdir(CATVERSION_MODELS))


def test_bad_name_is_refused_when_the_prompt_is_validated():
    assert "cannot be a file name" in CatVersionTrain.validate_inputs(filename_prefix="../escape")
    assert CatVersionTrain.validate_inputs(filename_prefix="my teddy-bear_v2") is True
    assert CatVersionTrain.validate_inputs(filename_prefix=None) is True


# --------------------------------------------------------------------------- the accelerate trainer


def accelerate_launch(tmp_path: Path, processes: int, batch: int, steps: int = 3) -> tuple[dict, dict]:
    """The command-line trainer's ``train`` under ``accelerate launch`` on the CPU (gloo)."""
    out = tmp_path / f"p{processes}_b{batch}"
    command = [*launcher(processes), str(REPO / "tests" / "catversion_accelerate_worker.py"), str(out), str(batch), str(steps)]
    env = {**LAUNCH_ENV, "ELITE_COMFYUI_DIR": str(COMFY_DIR)}
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-4000:]
    from safetensors.torch import load_file

    return json.loads(out.with_suffix(".json").read_text()), load_file(str(out.with_suffix(".safetensors")))


@pytest.fixture(scope="module")
def accelerate_runs(tmp_path_factory):
    """The same global batch of 2 as two processes x batch 1 and as one process x batch 2, and one
    process x batch 1: (log, adapter) of each."""
    root = tmp_path_factory.mktemp("catversion-accelerate")
    return {"two": accelerate_launch(root, processes=2, batch=1), "one": accelerate_launch(root, processes=1, batch=2),
            "alone": accelerate_launch(root, processes=1, batch=1)}


# the step's ComfyUI code is checked on every version by the tests above: these run with the first ComfyUI only


@pytest.mark.first_comfyui_only
def test_accelerate_runs_the_number_of_processes_asked_for(accelerate_runs):
    (two, _), (one, _) = accelerate_runs["two"], accelerate_runs["one"]
    assert (two["processes"], one["processes"]) == (2, 1)


@pytest.mark.first_comfyui_only
def test_two_processes_under_accelerate_log_the_losses_of_one_with_the_same_global_batch(accelerate_runs):
    (two, _), (one, _) = accelerate_runs["two"], accelerate_runs["one"]
    np.testing.assert_allclose(two["losses"], one["losses"], rtol=1e-5)


@pytest.mark.first_comfyui_only
def test_two_processes_under_accelerate_train_the_adapter_of_one_with_the_same_global_batch(accelerate_runs):
    (_, two_adapter), (_, one_adapter) = accelerate_runs["two"], accelerate_runs["one"]
    assert two_adapter.keys() == one_adapter.keys()
    for key in one_adapter:
        torch.testing.assert_close(two_adapter[key], one_adapter[key], atol=1e-3, rtol=0)


@pytest.mark.first_comfyui_only
def test_the_processes_really_split_the_batch(accelerate_runs):
    """One process with batch 1 sees other samples than one with batch 2."""
    (alone, _), (one, _) = accelerate_runs["alone"], accelerate_runs["one"]
    assert abs(alone["losses"][0] - one["losses"][0]) > 1e-4


def run_cli(*args: str, tmp_path: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    return subprocess.run([sys.executable, "-m", "elite_training.catversion", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)


def test_command_line_refuses_bad_setups_with_a_message(tmp_path):
    empty = tmp_path / "photos"
    empty.mkdir()
    cases = [
        (["--comfyui", str(tmp_path)], "ComfyUI was not found at"),
        (["--comfyui", str(COMFY_DIR), "--images", str(tmp_path / "none")], "is not a folder"),
        (["--comfyui", str(COMFY_DIR), "--images", str(empty)], "holds no images"),
    ]
    for extra, message in cases:
        args = ["--checkpoint", "missing.safetensors", "--images", str(empty), "--cpu", *extra]
        done = run_cli(*args, tmp_path=tmp_path)
        assert done.returncode == 2 and message in done.stderr, done.stderr[-2000:]
        assert "Traceback" not in done.stderr
    Image.new("RGB", (32, 32)).save(empty / "a.png")
    done = run_cli("--checkpoint", "missing.safetensors", "--images", str(empty), "--cpu", "--comfyui", str(COMFY_DIR),
                   tmp_path=tmp_path)
    assert done.returncode == 2 and "Checkpoint 'missing.safetensors' was not found" in done.stderr, done.stderr[-2000:]


def test_command_line_refuses_an_output_it_could_not_write_before_loading_anything(tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    Image.new("RGB", (32, 32)).save(photos / "a.png")
    cases = [
        (tmp_path / "missing" / "a.safetensors", "the folder", "does not exist"),
        (photos, "is a folder", "give the adapter file to write"),
        (tmp_path / ("x" * 300 + ".safetensors"), "is too long for a file name", "at most"),
        (tmp_path / ("日" * 82 + ".safetensors"), "94 characters, 258 bytes in UTF-8", "at most"),
    ]
    for output, *messages in cases:
        done = run_cli("--checkpoint", "missing.safetensors", "--images", str(photos), "--cpu", "--comfyui",
                       str(COMFY_DIR), "--output", str(output), tmp_path=tmp_path)
        assert done.returncode == 2 and all(m in done.stderr for m in messages), done.stderr[-2000:]
        assert "Checkpoint" not in done.stderr and "Traceback" not in done.stderr  # refused before the checkpoint


@pytest.mark.first_comfyui_only
def test_command_line_keeps_the_adapter_when_its_output_cannot_be_written_at_the_end(tmp_path, accelerate_runs):
    """The worker's ``train`` with an --output whose folder is gone by the end: the adapter of the
    same run as accelerate_runs' "alone" is kept under a safe name, and the error names it."""
    out = tmp_path / "gone" / "alone"
    env = {**os.environ, "ELITE_COMFYUI_DIR": str(COMFY_DIR), "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run([sys.executable, str(REPO / "tests" / "catversion_accelerate_worker.py"), str(out), "1", "3"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode != 0
    found = re.search(r"Training finished, but .*gone/alone.safetensors could not be written \(.*\); the adapter of 3 "
                      r"step\(s\) is kept as (\S+catversion_\d{8}-\d{6}_00001\.safetensors)\.", done.stderr)
    assert found, done.stderr[-3000:]
    from safetensors.torch import load_file

    kept, expected = load_file(found.group(1)), accelerate_runs["alone"][1]
    assert kept.keys() == expected.keys() and all(torch.equal(kept[k], expected[k]) for k in kept)


class _Payload:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_command_line_refuses_tiny_photos_bombs_and_files_that_are_no_checkpoint(tmp_path):
    """Each case ends with one message naming the culprit, exit 2, no traceback; the payload never runs."""
    tiny, bomb, good = tmp_path / "tiny", tmp_path / "bomb", tmp_path / "good"
    for folder in (tiny, bomb, good):
        folder.mkdir()
        Image.new("RGB", (32, 32)).save(folder / "a.png")
    Image.new("RGB", (1, 1)).save(tiny / "b.png")
    (bomb / "b.png").write_bytes(png_header_only(30000, 30000))
    text = tmp_path / "notes.ckpt"
    text.write_text("not a model\n")
    marker = tmp_path / "ran"
    malicious = tmp_path / "model.ckpt"
    torch.save({"state_dict": _Payload(marker)}, malicious)
    cases = [
        (tiny, "missing.safetensors", "'b.png' in", "is 1x1 pixels"),
        (bomb, "missing.safetensors", "'b.png' in", "decompression bomb"),
        (good, str(text), "notes.ckpt' cannot be read as an SD1.x checkpoint", "not a model file"),
        (good, str(malicious), "'model.ckpt' was refused", "posix.system"),
    ]
    for images, checkpoint, *messages in cases:
        done = run_cli("--checkpoint", checkpoint, "--images", str(images), "--cpu", "--comfyui", str(COMFY_DIR),
                       tmp_path=tmp_path)
        assert done.returncode == 2, done.stderr[-2000:]
        assert all(m in done.stderr for m in messages) and "Traceback" not in done.stderr, done.stderr[-2000:]
    assert not marker.exists()


def test_the_class_word_is_caption_text_and_only_the_file_name_is_made_safe():
    from comfyui_elite.elite_core.comfyui.catversion_files import check_filename_prefix
    from elite_training.catversion import file_stem

    assert file_stem("teddy bear's") == "teddy_bear_s"
    assert file_stem("") == file_stem("  ") == "catversion_concept"
    for word in ("teddy bear's", "../../etc", "a/b\\c", "..", "Plüsch-Bär", "x" * 300, "my..concept", "-dash"):
        check_filename_prefix(file_stem(word))  # every class word gives a usable file name
