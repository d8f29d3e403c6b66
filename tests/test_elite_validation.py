"""The trainer's validation images (elite_training.elite_validation) on tiny seeded RANDOM models: the
sampler restated from docs/reference/elite.md §8 (LMS, CFG with separate passes, w0 injected, uncond "" with
no injection and no local branch), seeding, and that sampling leaves the training stage untouched."""

from __future__ import annotations

import copy
import logging
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import COMFY_DIR
from PIL import Image

from elite_test_pack.reference_elite_training import ReferenceLocalAttention, reference_context
from elite_test_pack.tiny_models import TINY_VISION_WIDTH
from elite_test_pack.tiny_training_models import build_training_models

pytestmark = pytest.mark.comfyui_independent  # the trainers never import ComfyUI code

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from elite_core.elite.mappers import MapperWidths  # noqa: E402
from elite_core.elite.objectives import (
    GlobalStage,
    LocalStage,
    attn2_modules,
    new_global_mapper,
    new_local_mapper,
    posterior_sample,
)
from elite_core.elite.sites import SD1_ATTN2_SITES  # noqa: E402
from elite_training import elite_validation  # noqa: E402
from elite_training.elite_validation import save_validation, validation_images  # noqa: E402

transformers = pytest.importorskip("transformers")
diffusers = pytest.importorskip("diffusers")

STEPS = 3
RESOLUTION = 32  # the tiny VAE halves it: 16 x 16 latents
# The latents / 0.18215 reach ~300 (random UNets predict little of the noise); SDPA and diffusers' own
# attention round differently, amplified by CFG 5 and σ_max ≈ 14.6: measured up to 8e-4.
TOLERANCE = 5e-3


@pytest.fixture(scope="module")
def models():
    unet, text, vision, vae, _ = build_training_models()
    tokenizer = transformers.CLIPTokenizer.from_pretrained(str(COMFY_DIR / "comfy" / "sd1_tokenizer"))
    return SimpleNamespace(unet=unet, text=text, vision=vision, vae=vae, tokenizer=tokenizer)


def as_tuple(m, unet, vae=None):
    """The trainer's order: (unet, vae, text_encoder, tokenizer, image_encoder)."""
    return unet, vae or m.vae, m.text, m.tokenizer, m.vision


def widths(unet) -> MapperWidths:
    kv = tuple(attn2_modules(unet)[site.ckpt_prefix].to_k.weight.shape[0] for site in SD1_ATTN2_SITES)
    return MapperWidths(input_dim=TINY_VISION_WIDTH, hidden_dim=64, output_dim=768, kv_dims=kv)


def perturbed(mapper, seed):
    """A "trained" mapper: weights (MLPs and K/V) moved away from where they started."""
    with torch.no_grad():
        for i, p in enumerate(mapper.parameters()):
            p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(seed * 1000 + i)) * 0.05)
    return mapper


def global_stage(m):
    unet = copy.deepcopy(m.unet)
    mapper = perturbed(new_global_mapper(unet, widths(unet), seed=1), 1)
    return GlobalStage(mapper, unet, m.text, m.vision), unet


def local_stage(m):
    unet = copy.deepcopy(m.unet)
    global_mapper = perturbed(new_global_mapper(unet, widths(unet), seed=1), 1)
    local_mapper = perturbed(new_local_mapper(unet, widths(unet), seed=2), 2)
    return LocalStage(local_mapper, global_mapper, unet, m.text, m.vision), unet


def make_samples():
    gen = torch.Generator().manual_seed(11)
    samples = []
    for i in range(2):
        segmentation = torch.zeros(3, 224, 224)
        segmentation[:, 30 + 40 * i:170, 50:200 - 30 * i] = 1.0
        samples.append(SimpleNamespace(
            pixels=torch.rand(3, RESOLUTION, RESOLUTION, generator=gen) * 2 - 1,
            pixels_clip=torch.randn(3, 224, 224, generator=gen),
            pixels_object=torch.randn(3, 224, 224, generator=gen) * segmentation,
            object_segmentation=segmentation))
    return samples


def loss_batch(m, local: bool):
    gen = torch.Generator().manual_seed(5)
    pixels = torch.rand(2, 3, RESOLUTION, RESOLUTION, generator=gen) * 2 - 1
    with torch.no_grad():
        latents = posterior_sample(m.vae, pixels, torch.randn(2, 4, 16, 16, generator=gen))
    ids = m.tokenizer(["a photo of a S", "S on a table"], padding="max_length", max_length=77,
                      return_tensors="pt").input_ids
    batch = dict(latents=latents, noise=torch.randn(2, 4, 16, 16, generator=gen), timesteps=torch.tensor([900, 40]),
                 pixels_clip=torch.randn(2, 3, 224, 224, generator=gen), input_ids=ids,
                 placeholder_index=torch.tensor([5, 1]))
    if local:
        segmentation = torch.zeros(2, 3, 224, 224)
        segmentation[:, :, 40:180, 60:200] = 1.0
        mask = torch.ones(2, 1, 16, 16)
        mask[1, :, :4] = 0.0
        batch.update(pixels_object=torch.randn(2, 3, 224, 224, generator=gen) * segmentation,
                     object_segmentation=segmentation, mask=mask)
    return batch


def arrays(images):
    return [np.asarray(image).astype(np.int16) for image in images]


def state(stage, unet):
    """What sampling must leave as it found: processors (the same objects), modes, gradients, RNG."""
    holder = getattr(stage, "_inputs", None)  # the local stage's inputs of its last training call
    return (dict(unet.attn_processors), [m.training for m in stage.modules()],
            [p.grad for p in stage.parameters()], torch.get_rng_state(), dict(vars(holder)) if holder else {})


def assert_same_state(before, after):
    assert before[0].keys() == after[0].keys() and all(before[0][k] is after[0][k] for k in before[0])
    assert before[1] == after[1]
    assert all(a is None and b is None for a, b in zip(before[2], after[2]))
    assert torch.equal(before[3], after[3])
    assert before[4].keys() == after[4].keys() and all(before[4][k] is after[4][k] for k in before[4])


@pytest.mark.parametrize("kind", ["global", "local"])
def test_validation_is_seeded_and_leaves_the_training_stage_untouched(models, kind):
    stage, unet = (global_stage if kind == "global" else local_stage)(models)
    batch, samples = loss_batch(models, kind == "local"), make_samples()
    stage.train()
    loss_before = stage(**batch)[0].detach()
    before = state(stage, unet)
    scale = 0.8  # not training's λ = 1: the stage must get its own back
    images = validation_images(stage, as_tuple(models, unet), samples, steps=STEPS, seed=7, scale=scale)
    after = state(stage, unet)
    assert_same_state(before, after)
    assert stage.training and all(m.training for m in stage.modules())
    if kind == "local":
        assert stage.global_mapper.training is False
    assert torch.equal(stage(**batch)[0].detach(), loss_before)

    assert len(images) == 2 and all(image.size == (2 * RESOLUTION, RESOLUTION) for image in images)
    for image, sample in zip(arrays(images), samples):  # right: the sample's own image, [-1, 1] -> 0..255
        expected = ((sample.pixels.permute(1, 2, 0).numpy() + 1) * 127.5).round()
        assert np.abs(image[:, RESOLUTION:] - expected).max() <= 1
    again, latents = sample_with_latents(stage, models, unet, samples, seed=7, scale=scale)
    assert all(np.array_equal(a, b) for a, b in zip(arrays(images), arrays(again)))
    other = sample_with_latents(stage, models, unet, samples, seed=8, scale=scale)[1]
    assert all((a - b).abs().mean() > 1.0 for a, b in zip(latents, other))  # another seed, another image
    assert (latents[0] - latents[1]).abs().mean() > 0.1  # another object, another image from the same noise


class RecordingVAE:
    """The VAE, keeping the latents it decodes."""

    def __init__(self, vae):
        self.vae, self.config, self.decoded = vae, vae.config, []

    def decode(self, z):
        self.decoded.append(z.clone())
        return self.vae.decode(z)


def reference_sampling(m, cond_unet, uncond_unet, cond, guidance, seed, steps=STEPS):
    """docs/reference/elite.md §8 restated with diffusers' LMSDiscreteScheduler: z = randn(seed) · σ_max; per step x = z/√(σ²+1),
    ε = ε_u + g (ε_c − ε_u) from two separate passes (ε = ε_c alone when g = 1), LMS step; x / 0.18215."""
    scheduler = diffusers.LMSDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                               num_train_timesteps=1000)
    scheduler.set_timesteps(steps)
    assert abs(scheduler.timesteps[0].item() - 999.0) < 1e-4  # docs/reference/elite.md §8: t from 999, σ_max 14.614647
    assert abs(float(scheduler.init_noise_sigma) - 14.614647) < 1e-4
    uncond_ids = m.tokenizer([""], padding="max_length", max_length=77, return_tensors="pt").input_ids
    uncond = m.text(input_ids=uncond_ids).last_hidden_state
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        z = torch.randn(1, 4, 16, 16) * scheduler.init_noise_sigma
    for t in scheduler.timesteps:
        x = scheduler.scale_model_input(z, t)
        eps_c = cond_unet(x, t, encoder_hidden_states=cond).sample
        if guidance == 1.0:
            eps = eps_c
        else:
            eps_u = uncond_unet(x, t, encoder_hidden_states=uncond).sample
            eps = eps_u + guidance * (eps_c - eps_u)
        z = scheduler.step(eps, t, z).prev_sample
    return z / 0.18215


def twin_with_global_kv(unet, mapper):
    """A copy of the UNet with diffusers' own attention and the mapper's K/V as its attn2 to_k/to_v."""
    twin = copy.deepcopy(unet)
    twin.set_attn_processor(diffusers.models.attention_processor.AttnProcessor())
    for prefix, attn in attn2_modules(twin).items():
        attn.to_k.weight.data.copy_(getattr(mapper, f"{prefix}_to_k").weight)
        attn.to_v.weight.data.copy_(getattr(mapper, f"{prefix}_to_v").weight)
    return twin


def reference_features(m, pixels):
    hidden = m.vision(pixel_values=pixels[None], output_hidden_states=True).hidden_states
    return [hidden[24], hidden[4], hidden[8], hidden[12], hidden[16]]


def w0_context(m, mapper, sample):
    ids = m.tokenizer(["a photo of a S"], padding="max_length", max_length=77, return_tensors="pt").input_ids
    assert ids[0, 5] == m.tokenizer.convert_tokens_to_ids("s</w>")  # [BOS, a, photo, of, a, S, ...]
    w0 = mapper(reference_features(m, sample.pixels_clip))[:, 0:1]
    return reference_context(m.text, ids, torch.tensor([5]), w0)


def sample_with_latents(stage, m, unet, samples, seed=3, **kwargs):
    """The validation images and the latents / 0.18215 they were decoded from."""
    vae = RecordingVAE(m.vae)
    images = validation_images(stage, as_tuple(m, unet, vae), samples, steps=STEPS, seed=seed, **kwargs)
    return images, vae.decoded


def decoded_latents(stage, m, unet, samples, **kwargs):
    return sample_with_latents(stage, m, unet, samples, **kwargs)[1]


@torch.no_grad()
def test_global_validation_follows_the_reference_sampler(models):
    """CFG 5 as docs/reference/elite.md §8 writes it, and CFG 1 equal to sampling with the conditional prediction alone."""
    stage, unet = global_stage(models)
    sample = make_samples()[0]
    twin = twin_with_global_kv(models.unet, stage.mapper)
    cond = w0_context(models, stage.mapper, sample)
    ours = {}
    for guidance in (1.0, 5.0):
        (ours[guidance],) = decoded_latents(stage, models, unet, [sample], guidance=guidance)
        expected = reference_sampling(models, twin, twin, cond, guidance, seed=3)
        torch.testing.assert_close(ours[guidance], expected, rtol=1e-4, atol=TOLERANCE)
    assert (ours[5.0] - ours[1.0]).abs().mean() > 1.0  # a real check: the guidance matters far beyond the tolerance


@torch.no_grad()
def test_local_validation_adds_the_local_branch_to_the_conditional_pass_only(models):
    """λ = 1: the conditional pass is docs/reference/elite.md §7's local attention (restated in test_elite_training; batch 1, so
    its batch-wide gate maximum is the per-sample one of inference), the unconditional pass the global
    K/V only. λ = 0: both passes are the global branch, w0 injected."""
    stage, unet = local_stage(models)
    sample = make_samples()[0]
    plain = twin_with_global_kv(models.unet, stage.global_mapper)
    tokens = stage.local_mapper(reference_features(models, sample.pixels_object))
    seg = torch.nn.functional.interpolate(sample.object_segmentation[None], (16, 16), mode="nearest")
    tokens = tokens * seg[:, 0].reshape(1, -1, 1)
    with_local = copy.deepcopy(plain)
    processors = dict(with_local.attn_processors)
    for site in SD1_ATTN2_SITES:
        p = site.ckpt_prefix
        weights = [getattr(mapper, f"{p}_to_{w}").weight for mapper, w in
                   ((stage.global_mapper, "k"), (stage.global_mapper, "v"), (stage.local_mapper, "k"),
                    (stage.local_mapper, "v"))]
        processors[f"{site.diffusers}.processor"] = ReferenceLocalAttention(weights, tokens, torch.tensor([5]), [])
    with_local.set_attn_processor(processors)
    cond = w0_context(models, stage.global_mapper, sample)
    ours = {}
    for scale, cond_twin in ((1.0, with_local), (0.0, plain)):
        (ours[scale],) = decoded_latents(stage, models, unet, [sample], scale=scale)
        expected = reference_sampling(models, cond_twin, plain, cond, 5.0, seed=3)
        torch.testing.assert_close(ours[scale], expected, rtol=1e-4, atol=TOLERANCE)
    assert (ours[1.0] - ours[0.0]).abs().mean() > 0.1  # a real check: λ matters far beyond the tolerance


@torch.no_grad()
def test_validation_runs_with_half_precision_models(models):
    """--mixed-precision: bf16 frozen models, fp32 mappers (as the trainer holds them)."""
    half = SimpleNamespace(**{k: copy.deepcopy(v).to(torch.bfloat16) if isinstance(v, torch.nn.Module) else v
                              for k, v in vars(models).items()})
    global_mapper = perturbed(new_global_mapper(models.unet, widths(models.unet), seed=1), 1)
    stage = LocalStage(new_local_mapper(models.unet, widths(models.unet), seed=2), global_mapper, half.unet,
                       half.text, half.vision)
    images = validation_images(stage, as_tuple(half, half.unet), make_samples()[:1], steps=2)
    assert len(images) == 1 and images[0].size == (2 * RESOLUTION, RESOLUTION)
    assert np.asarray(images[0])[:, :RESOLUTION].std() > 0


def test_validation_samples_are_fixed_and_not_a_training_steps_draws():
    class Dataset:
        def __len__(self):
            return 3

        def sample(self, index, gen):
            return index, torch.rand(4, generator=gen)

    first = elite_validation.validation_samples(Dataset(), 5, seed=2)
    again = elite_validation.validation_samples(Dataset(), 2, seed=2)
    assert [i for i, _ in first] == [0, 1, 2] and all(torch.equal(a[1], b[1]) for a, b in zip(first, again))
    from elite_training.data.samples import sample_generator

    assert all(not torch.equal(draw, torch.rand(4, generator=sample_generator(2, step, i)))
               for i, draw in first for step in range(100))


def test_save_validation_writes_the_grid(tmp_path):
    images = [Image.fromarray(np.full((8, 16, 3), 40 * i, np.uint8)) for i in range(3)]
    path = save_validation(images, str(tmp_path), 200)
    assert path == str(tmp_path / "validation" / "step_000200.png")
    grid = np.asarray(Image.open(path))
    assert grid.shape == (24, 16, 3)
    assert [int(grid[8 * i, 0, 0]) for i in range(3)] == [0, 40, 80]
    assert sorted(p.name for p in (tmp_path / "validation").iterdir()) == ["step_000200.png"]  # no partial left


def test_tensorboard_is_optional(monkeypatch, caplog):
    real = elite_validation.importlib.util.find_spec
    monkeypatch.setattr(elite_validation.importlib.util, "find_spec",
                        lambda name, *a: None if name == "tensorboard" else real(name, *a))
    with caplog.at_level(logging.WARNING, logger="elite.train.validation"):
        assert elite_validation.tensorboard_logging() is None
    assert len(caplog.records) == 1 and "TensorBoard" in caplog.records[0].getMessage()


def test_save_validation_logs_to_tensorboard(tmp_path):
    pytest.importorskip("tensorboard")
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    assert elite_validation.tensorboard_logging() == "tensorboard"
    images = [Image.fromarray(np.full((8, 16, 3), 40 * i, np.uint8)) for i in range(2)]
    try:
        accelerator = Accelerator(cpu=True, log_with="tensorboard", project_dir=str(tmp_path))
        accelerator.init_trackers("elite")
        tracker = elite_validation.tensorboard_tracker(accelerator)
        assert tracker is accelerator.get_tracker("tensorboard")
        save_validation(images, str(tmp_path), 400, tracker)
        accelerator.end_training()
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)
    events = EventAccumulator(str(tmp_path / "elite"), size_guidance={"images": 0})
    events.Reload()
    (logged,) = events.Images("validation")
    assert logged.step == 400 and (logged.width, logged.height) == (16, 16)
