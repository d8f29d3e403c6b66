"""elite_training.base_models: the trainers' SD1.x base models from a diffusers folder or from a
single-file checkpoint in the original LDM layout (as ComfyUI users have it), offline; and the
shipped SD v1.5 configs against ComfyUI's own SD1.5 layout."""

from __future__ import annotations

import json
import shutil
import socket
import sys
from pathlib import Path

import pytest
import torch
from conftest import COMFY_DIR
from safetensors.torch import load_file, save_file

from elite_test_pack.tiny_models import (
    build_tiny_clip,
    build_tiny_sd15_model,
    build_tiny_vae,
    seeded_init_,
    tiny_sd15_unet_config,
)
from elite_test_pack.tiny_training_models import build_training_models

pytestmark = pytest.mark.comfyui_independent  # the trainers never import ComfyUI code

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from elite_training.base_models import SD15_CONFIG, load_models  # noqa: E402
from elite_training.data.objects import DataError  # noqa: E402

diffusers = pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")
single_file_utils = pytest.importorskip("diffusers.loaders.single_file_utils")


def tiny_vae():
    """The SD VAE's four levels (ComfyUI's diffusers-to-LDM VAE map numbers four), 32 channels wide."""
    vae = diffusers.AutoencoderKL(block_out_channels=(32,) * 4, down_block_types=("DownEncoderBlock2D",) * 4,
                                  up_block_types=("UpDecoderBlock2D",) * 4, latent_channels=4, norm_num_groups=32,
                                  layers_per_block=1)
    return seeded_init_(vae, 30, std=0.05).eval().requires_grad_(False)


def ldm_state_dict(unet, vae, text) -> dict[str, torch.Tensor]:
    """The three models under the original single-file keys, by ComfyUI's own diffusers-to-LDM maps."""
    import comfy.diffusers_convert
    import comfy.utils

    unet_sd = unet.state_dict()
    key_map = comfy.utils.unet_to_diffusers(tiny_sd15_unet_config())
    ldm = {"model.diffusion_model." + key_map[key]: value for key, value in unet_sd.items()}
    vae_sd = comfy.diffusers_convert.convert_vae_state_dict(vae.state_dict())
    ldm.update({"first_stage_model." + key: value for key, value in vae_sd.items()})
    ldm.update({"cond_stage_model.transformer.text_model." + key.removeprefix("text_model."): value
                for key, value in text.state_dict().items()})
    return {key: value.contiguous() for key, value in ldm.items()}


def outputs(unet, vae, text):
    gen = torch.Generator().manual_seed(5)
    latents, context = torch.randn(1, 4, 8, 8, generator=gen), torch.randn(1, 7, 768, generator=gen)
    pixels = torch.rand(1, 3, 16, 16, generator=gen) * 2 - 1
    ids = torch.randint(0, 49408, (1, 16), generator=gen)
    with torch.no_grad():
        return dict(unet=unet(latents, torch.tensor([981]), encoder_hidden_states=context).sample,
                    encoded=vae.encode(pixels).latent_dist.mean, decoded=vae.decode(latents).sample,
                    text=text(input_ids=ids).last_hidden_state)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """The original tiny models, their diffusers folder (the configs) and their single file."""
    root = tmp_path_factory.mktemp("tiny-sd1")
    unet, text, vision, _, _ = build_training_models()
    vae = tiny_vae()
    folder = root / "diffusers"
    unet.save_pretrained(folder / "unet")
    vae.save_pretrained(folder / "vae")
    text.save_pretrained(folder / "text_encoder")
    vision.save_pretrained(root / "image_encoder")
    shutil.copytree(COMFY_DIR / "comfy" / "sd1_tokenizer", folder / "tokenizer")
    single = root / "tiny-sd15.safetensors"
    save_file(ldm_state_dict(unet, vae, text), str(single))
    return dict(unet=unet, vae=vae, text=text, folder=folder, single=single, vision=root / "image_encoder",
                outputs=outputs(unet, vae, text))


@pytest.fixture()
def offline(monkeypatch):
    """Network connections fail, and the test fails if one was tried."""
    attempts = []

    def refuse(*args, **kwargs):
        attempts.append(args)
        raise OSError("no network in this test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    yield
    assert not attempts, "network access while loading the base models"


def test_the_single_file_has_comfyui_sd1_checkpoint_layout(tiny):
    """ComfyUI's own SD1.x models of the same sizes take the file's UNet, VAE and CLIP weights."""
    state = load_file(str(tiny["single"]))

    def part(prefix):
        return {key.removeprefix(prefix): value for key, value in state.items() if key.startswith(prefix)}

    build_tiny_sd15_model().model.diffusion_model.load_state_dict(part("model.diffusion_model."), strict=True)
    build_tiny_vae().first_stage_model.load_state_dict(part("first_stage_model."), strict=True)
    missing, unexpected = build_tiny_clip().cond_stage_model.clip_l.load_state_dict(
        part("cond_stage_model."), strict=False)
    assert not unexpected and set(missing) == {"transformer.text_projection.weight", "logit_scale"}


@pytest.mark.parametrize("source", ["single", "folder"])
def test_single_file_and_folder_give_the_original_models(tiny, offline, source):
    unet, vae, text, tokenizer, vision = load_models(str(tiny[source]), str(tiny["vision"]), "cpu", torch.float32,
                                                     config=str(tiny["folder"]))
    got = outputs(unet, vae, text)
    for name, value in tiny["outputs"].items():
        assert torch.equal(got[name], value), name
    assert vae.config.scaling_factor == tiny["vae"].config.scaling_factor
    assert tokenizer("a photo of S").input_ids == [49406, 320, 1125, 539, 338, 49407]
    assert vision.config.num_hidden_layers == 24
    for module in (unet, vae, text, vision):
        assert not any(p.requires_grad for p in module.parameters())
        assert not module.training


def test_single_file_in_half_precision_and_the_tokenizer_from_comfyui(tiny, offline, tmp_path):
    """Without ``config``'s tokenizer/, ComfyUI's comfy/sd1_tokenizer is used."""
    config = tmp_path / "config"
    for part in ("unet", "vae", "text_encoder"):
        shutil.copytree(tiny["folder"] / part, config / part)
    unet, vae, text, tokenizer, _ = load_models(str(tiny["single"]), str(tiny["vision"]), "cpu", torch.bfloat16,
                                                config=str(config))
    assert {p.dtype for m in (unet, vae, text) for p in m.parameters()} == {torch.bfloat16}
    original = tiny["unet"].state_dict()
    assert all(torch.equal(value, original[key].to(torch.bfloat16)) for key, value in unet.state_dict().items())
    assert tokenizer.name_or_path.rstrip("/").endswith("sd1_tokenizer")
    assert tokenizer("a photo of S").input_ids == [49406, 320, 1125, 539, 338, 49407]


def write(path: Path, state: dict) -> str:
    save_file({key: value.contiguous() for key, value in state.items()}, str(path))
    return str(path)


def load_error(tiny, pretrained, **kwargs) -> str:
    with pytest.raises(DataError) as error:
        load_models(pretrained, str(tiny["vision"]), "cpu", torch.float32, config=str(tiny["folder"]), **kwargs)
    return str(error.value)


def test_pickled_missing_and_other_files_are_refused(tiny, tmp_path):
    ckpt = tmp_path / "model.ckpt"
    ckpt.write_bytes(b"pickle")
    assert "pickled checkpoint" in load_error(tiny, str(ckpt)) and ".safetensors" in load_error(tiny, str(ckpt))
    assert "does not exist" in load_error(tiny, str(tmp_path / "absent.safetensors"))
    (tmp_path / "broken.safetensors").write_bytes(b"\x00" * 16)
    assert "not a readable safetensors file" in load_error(tiny, str(tmp_path / "broken.safetensors"))
    (tmp_path / "notes.txt").write_text("")
    assert "neither a folder nor a .safetensors file" in load_error(tiny, str(tmp_path / "notes.txt"))
    with pytest.raises(DataError, match="Cannot load the base models.*--image-encoder a CLIP vision folder"):
        load_models(str(tiny["folder"]), str(tmp_path / "absent"), "cpu", torch.float32)


def test_checkpoints_of_other_families_are_refused(tiny, tmp_path):
    state = ldm_state_dict(tiny["unet"], tiny["vae"], tiny["text"])
    sdxl = {key.replace("cond_stage_model.", "conditioner.embedders.0."): value for key, value in state.items()}
    message = load_error(tiny, write(tmp_path / "sdxl.safetensors", sdxl))
    assert "not an SD1.x checkpoint" in message and "cond_stage_model.transformer.text_model.*" in message
    assert "its keys are those of an SDXL checkpoint" in message
    sd2 = {key.replace("cond_stage_model.transformer.text_model.", "cond_stage_model.model."): value
           for key, value in state.items()}
    assert "those of an SD2.x checkpoint" in load_error(tiny, write(tmp_path / "sd2.safetensors", sd2))
    wide = {key: torch.zeros(value.shape[0], 1024) if key.endswith("attn2.to_k.weight") else value
            for key, value in state.items()}
    message = load_error(tiny, write(tmp_path / "wide.safetensors", wide))
    assert "text context is [1024] wide, SD1.x's is 768" in message
    no_vae = {key: value for key, value in state.items() if not key.startswith("first_stage_model.")}
    assert "no first_stage_model.* weights" in load_error(tiny, write(tmp_path / "no_vae.safetensors", no_vae))
    partial = {key: value for key, value in state.items() if "input_blocks.1.1.proj_in" not in key}
    message = load_error(tiny, write(tmp_path / "partial.safetensors", partial))
    assert "does not hold the UNet weights" in message and "lacks 2 of them" in message and "proj_in" in message
    inpaint = {**state, "model.diffusion_model.input_blocks.0.0.weight": torch.zeros(32, 9, 3, 3)}
    message = load_error(tiny, write(tmp_path / "inpaint.safetensors", inpaint))
    assert "conv_in.weight is (32, 9, 3, 3), not (32, 4, 3, 3)" in message


def test_text_encoder_keys_without_the_text_model_level(tiny, tmp_path):
    state = ldm_state_dict(tiny["unet"], tiny["vae"], tiny["text"])
    old = {key.replace("transformer.text_model.", "transformer."): value for key, value in state.items()}
    assert not any("text_model" in key for key in old)
    _, _, text, _, _ = load_models(write(tmp_path / "old.safetensors", old), str(tiny["vision"]), "cpu",
                                   torch.float32, config=str(tiny["folder"]))
    loaded, original = ({key.removeprefix("text_model."): value for key, value in model.state_dict().items()}
                        for model in (text, tiny["text"]))
    assert loaded.keys() == original.keys() and all(torch.equal(value, original[key]) for key, value in loaded.items())


def test_the_tokenizer_lookup_without_an_importable_comfyui(tiny, tmp_path, monkeypatch):
    """Not importable: ComfyUI is looked for as the trainers do ($COMFYUI_DIR, the pack's ComfyUI)."""
    import elite_core.comfyui.runtime as comfy_runtime
    import elite_training.base_models as base_models

    monkeypatch.setattr(base_models, "find_spec", lambda name: None)
    monkeypatch.setattr(comfy_runtime, "PACK_DIR", tmp_path / "custom_nodes" / "pack")
    monkeypatch.setenv("COMFYUI_DIR", str(tmp_path))
    config = tmp_path / "config"
    for part in ("unet", "vae", "text_encoder"):
        shutil.copytree(tiny["folder"] / part, config / part)
    args = (str(tiny["single"]), str(tiny["vision"]), "cpu", torch.float32)
    with pytest.raises(DataError, match="No CLIP tokenizer was found.*--tokenizer <ComfyUI>/comfy/sd1_tokenizer"):
        load_models(*args, config=str(config))
    tokenizer = load_models(*args, config=str(config), tokenizer=str(tiny["folder"] / "tokenizer"))[3]
    assert tokenizer("S").input_ids == [49406, 338, 49407]
    monkeypatch.setenv("COMFYUI_DIR", str(COMFY_DIR))
    tokenizer = load_models(*args, config=str(config))[3]
    assert Path(tokenizer.name_or_path) == COMFY_DIR / "comfy" / "sd1_tokenizer"


def shapes(state: dict) -> dict[str, tuple]:
    return {key: tuple(value.shape) for key, value in state.items()}


def test_shipped_sd15_configs_match_comfyui_sd15_layout():
    """Real-size SD1.5 models built on the meta device from the shipped JSON configs have exactly the
    weights (names and shapes) that diffusers' converters make of ComfyUI's SD1.5 UNet, VAE and CLIP-L."""
    from accelerate import init_empty_weights

    import comfy.model_detection
    import comfy.sd1_clip
    import comfy.supported_models
    from comfy.ldm.models.autoencoder import AutoencoderKL

    with init_empty_weights():
        unet = diffusers.UNet2DConditionModel.from_config(
            diffusers.UNet2DConditionModel.load_config(SD15_CONFIG, subfolder="unet"))
        vae = diffusers.AutoencoderKL.from_config(diffusers.AutoencoderKL.load_config(SD15_CONFIG, subfolder="vae"))
        text = transformers.CLIPTextModel(transformers.CLIPTextConfig.from_pretrained(SD15_CONFIG / "text_encoder"))
    model_config = comfy.model_detection.model_config_from_diffusers_unet(unet.state_dict())
    assert type(model_config) is comfy.supported_models.SD15  # ComfyUI recognises the UNet as SD1.5
    assert unet.config.attention_head_dim == model_config.unet_config["num_heads"] == 8  # diffusers' SD1.x naming
    assert vae.config.scaling_factor == model_config.latent_format.scale_factor
    comfy_text = json.loads((COMFY_DIR / "comfy" / "sd1_clip_config.json").read_text())
    for key in ("hidden_act", "hidden_size", "intermediate_size", "num_attention_heads", "num_hidden_layers",
                "max_position_embeddings", "vocab_size", "layer_norm_eps", "eos_token_id"):
        assert getattr(text.config, key) == comfy_text[key], key
    with torch.device("meta"):
        comfy_unet = model_config.get_model({}, "").diffusion_model
        comfy_vae = AutoencoderKL(embed_dim=4, ddconfig={  # the SD1.x VAE of ComfyUI's VAE loader
            "double_z": True, "z_channels": 4, "resolution": 256, "in_channels": 3, "out_ch": 3, "ch": 128,
            "ch_mult": [1, 2, 4, 4], "num_res_blocks": 2, "attn_resolutions": [], "dropout": 0.0})
        comfy_clip = comfy.sd1_clip.SDClipModel(device="meta", dtype=torch.float32)
    ldm = {"model.diffusion_model." + key: value for key, value in comfy_unet.state_dict().items()}
    ldm.update({"first_stage_model." + key: value for key, value in comfy_vae.state_dict().items()})
    ldm.update({"cond_stage_model." + key: value for key, value in comfy_clip.state_dict().items()})
    assert shapes(single_file_utils.convert_ldm_unet_checkpoint(ldm, unet.config)) == shapes(unet.state_dict())
    assert shapes(single_file_utils.convert_ldm_vae_checkpoint(ldm, vae.config)) == shapes(vae.state_dict())
    clip = shapes(single_file_utils.convert_ldm_clip_checkpoint(ldm))
    assert clip.pop("text_projection.weight") == (768, 768)  # CLIPTextModel has no projection
    flat = lambda d: {key.removeprefix("text_model."): value for key, value in d.items()}  # noqa: E731
    assert flat(clip) == flat(shapes(text.state_dict()))


def test_the_trainer_trains_from_a_single_file(tiny, tmp_path):
    """`--pretrained file.safetensors --config <diffusers folder>` through accelerate, one step."""
    import numpy as np
    from PIL import Image
    from safetensors import safe_open

    from elite_test_pack.elite_trainer_runs import launch

    images = tmp_path / "objects" / "images"
    images.mkdir(parents=True)
    Image.fromarray(np.random.default_rng(3).integers(0, 256, (72, 88, 3), dtype=np.uint8)).save(images / "a.png")
    out = launch(tmp_path, tiny["single"], tmp_path / "objects", "run", "--steps", "1", "--batch-size", "1",
                 "--config", str(tiny["folder"]), "--image-encoder", str(tiny["vision"]))
    with safe_open(str(out / "global_mapper.safetensors"), "pt") as f:
        assert f.metadata()["base_model"] == "tiny-sd15.safetensors"
