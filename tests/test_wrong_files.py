"""A file in the wrong loader is named in the artist's words: what it is, which folder and node it
belongs to, and what the loader needed instead.

Every file here is built with the real key names of its kind (kohya / diffusers / LyCORIS LoRAs, A1111
and SDXL embeddings, IP-Adapter, SD1.x / SD2.x / SDXL checkpoints, VAE, ControlNet, CLIP vision, text
encoders, upscalers, and the pack's own mappers, concepts and adapters, each written by the pack's own
writer) and the shapes that tell its family apart; the other shapes are kept small. Each goes through
the ELITE mapper loader, the CatVersion adapter loader and ELITE Load Concept, and one of each
through the ComfyUI node as the server runs it.
"""

from __future__ import annotations

import types
from pathlib import Path

import pytest
import torch
from conftest import BASE_DIR, CATVERSION_MODELS, ELITE_MODELS, TINY_GLOBAL_MAPPER
from safetensors.torch import save_file

from comfyui_elite.elite_core.catversion.prefix import (
    CatVersionPrefix,
    read_catversion_file,
    save_catversion_safetensors,
)
from comfyui_elite.elite_core.common import file_kinds
from comfyui_elite.elite_core.common.checks import ELITEInputError
from comfyui_elite.elite_core.elite.checkpoint import MapperFormatError, load_mapper_state_dict, save_mapper_safetensors
from comfyui_elite.elite_core.elite.concept_store import read_concept, write_concept
from elite_test_pack.in_process import submit
from elite_test_pack.tiny_models import tiny_mapper_state_dict
from elite_test_pack.workflows import add_node, node_id, tiny_prompt

REPO = Path(__file__).resolve().parents[1]
CONCEPT_MODELS = BASE_DIR / "models" / "elite_concepts"


def zeros(*shape) -> torch.Tensor:
    return torch.zeros(*shape, dtype=torch.float16)


# --------------------------------------------------------------------------- the files people mix up
# name -> (file name, writer(path)); a writer gets a path with the file's own extension.


def _kohya_lora_sd15():
    block = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k"
    te = "lora_te_text_model_encoder_layers_0_self_attn_k_proj"
    return {f"{block}.lora_down.weight": zeros(8, 768), f"{block}.lora_up.weight": zeros(320, 8),
            f"{block}.alpha": torch.tensor(8.0), f"{te}.lora_down.weight": zeros(8, 768),
            f"{te}.lora_up.weight": zeros(768, 8), f"{te}.alpha": torch.tensor(8.0)}


def _kohya_lora_sdxl():
    block = "lora_unet_input_blocks_4_1_transformer_blocks_0_attn2_to_k"
    return {f"{block}.lora_down.weight": zeros(8, 2048), f"{block}.lora_up.weight": zeros(640, 8),
            f"{block}.alpha": torch.tensor(8.0),
            "lora_te1_text_model_encoder_layers_0_self_attn_k_proj.lora_down.weight": zeros(8, 768),
            "lora_te2_text_model_encoder_layers_0_self_attn_k_proj.lora_down.weight": zeros(8, 1280)}


def _peft_lora_sd15():
    block = "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k"
    return {f"{block}.lora_A.weight": zeros(4, 768), f"{block}.lora_B.weight": zeros(320, 4),
            "unet.down_blocks.0.attentions.0.proj_in.lora_A.weight": zeros(4, 320),
            "unet.down_blocks.0.attentions.0.proj_in.lora_B.weight": zeros(320, 4)}


def _lycoris_loha():
    block = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k"
    conv = "lora_unet_down_blocks_0_resnets_0_conv1"
    return {f"{block}.hada_w1_a": zeros(320, 4), f"{block}.hada_w1_b": zeros(4, 768), f"{block}.hada_w2_a": zeros(320, 4),
            f"{block}.hada_w2_b": zeros(4, 768), f"{block}.alpha": torch.tensor(4.0),
            f"{conv}.lora_down.weight": zeros(4, 320, 3, 3), f"{conv}.lora_up.weight": zeros(320, 4, 1, 1)}


def _ip_adapter_sd15():
    return {"image_proj.proj.weight": zeros(3072, 1024), "image_proj.proj.bias": zeros(3072),
            "image_proj.norm.weight": zeros(768), "image_proj.norm.bias": zeros(768),
            "ip_adapter.1.to_k_ip.weight": zeros(320, 768), "ip_adapter.1.to_v_ip.weight": zeros(320, 768),
            "ip_adapter.31.to_k_ip.weight": zeros(1280, 768)}


def _sd15_checkpoint():
    return {"model.diffusion_model.input_blocks.0.0.weight": zeros(320, 4, 3, 3),
            "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight": zeros(320, 768),
            "cond_stage_model.transformer.text_model.final_layer_norm.weight": zeros(768),
            "first_stage_model.decoder.conv_in.weight": zeros(512, 4, 3, 3),
            "first_stage_model.encoder.conv_in.weight": zeros(128, 3, 3, 3)}


def _sd21_checkpoint():
    return {"model.diffusion_model.input_blocks.0.0.weight": zeros(320, 4, 3, 3),
            "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight": zeros(320, 1024),
            "cond_stage_model.model.ln_final.weight": zeros(1024),
            "cond_stage_model.model.positional_embedding": zeros(77, 1024),
            "first_stage_model.decoder.conv_in.weight": zeros(512, 4, 3, 3)}


def _sdxl_checkpoint():
    return {"model.diffusion_model.input_blocks.0.0.weight": zeros(320, 4, 3, 3),
            "model.diffusion_model.input_blocks.4.1.transformer_blocks.0.attn2.to_k.weight": zeros(640, 2048),
            "model.diffusion_model.label_emb.0.0.weight": zeros(1280, 2816),
            "conditioner.embedders.0.transformer.text_model.final_layer_norm.weight": zeros(768),
            "conditioner.embedders.1.model.ln_final.weight": zeros(1280),
            "first_stage_model.decoder.conv_in.weight": zeros(512, 4, 3, 3)}


def _vae():
    return {"encoder.conv_in.weight": zeros(128, 3, 3, 3), "encoder.conv_in.bias": zeros(128),
            "decoder.conv_in.weight": zeros(512, 4, 3, 3), "quant_conv.weight": zeros(8, 8, 1, 1),
            "post_quant_conv.weight": zeros(4, 4, 1, 1)}


def _controlnet_sd15():
    return {"input_hint_block.0.weight": zeros(16, 3, 3, 3), "zero_convs.0.0.weight": zeros(320, 320, 1, 1),
            "input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight": zeros(320, 768),
            "middle_block_out.0.weight": zeros(1280, 1280, 1, 1)}


def _clip_vision(layers: int, tokens: int, width: int, patch: int = 14):
    state = {"vision_model.embeddings.position_embedding.weight": zeros(tokens, width),
             "vision_model.embeddings.class_embedding": zeros(width),
             "vision_model.embeddings.patch_embedding.weight": zeros(width, 3, patch, patch),
             "vision_model.post_layernorm.weight": zeros(width)}
    for i in range(layers):
        state[f"vision_model.encoder.layers.{i}.layer_norm1.weight"] = zeros(width)
    return state


def _clip_text_l():
    state = {"text_model.embeddings.position_embedding.weight": zeros(77, 768),
             "text_model.final_layer_norm.weight": zeros(768)}
    for i in range(12):
        state[f"text_model.encoder.layers.{i}.layer_norm1.weight"] = zeros(768)
    return state


def _esrgan():
    return {"conv_first.weight": zeros(64, 3, 3, 3), "body.0.rdb1.conv1.weight": zeros(32, 64, 3, 3),
            "conv_up1.weight": zeros(64, 64, 3, 3), "conv_last.weight": zeros(3, 64, 3, 3)}


def _a1111_embedding_pt(path):
    torch.save({"string_to_token": {"*": 265}, "string_to_param": {"*": torch.zeros(2, 768)}, "name": "bad_hands",
                "step": 1500, "sd_checkpoint": "cc6cb27103", "sd_checkpoint_name": "v1-5-pruned-emaonly"}, str(path))


def _ip_adapter_bin(path):
    state = _ip_adapter_sd15()
    torch.save({"image_proj": {k[len("image_proj."):]: v for k, v in state.items() if k.startswith("image_proj.")},
                "ip_adapter": {k[len("ip_adapter."):]: v for k, v in state.items() if k.startswith("ip_adapter.")}},
               str(path))


def _sd15_ckpt(path):
    torch.save({"state_dict": _sd15_checkpoint(), "global_step": 840000}, str(path))


def _safetensors(make, metadata=None):
    return lambda path: save_file(make(), str(path), metadata=metadata)


# name -> (file name, writer, fragments every loader's message has: the kind and where it belongs)
FOREIGN = {
    "kohya LoRA": ("add_detail.safetensors", _safetensors(_kohya_lora_sd15),
                   ["it is a LoRA for Stable Diffusion 1.x", "models/loras", "Load LoRA"]),
    "SDXL LoRA": ("xl_style.safetensors", _safetensors(_kohya_lora_sdxl),
                  ["it is a LoRA for SDXL", "models/loras", "need a Stable Diffusion 1.x checkpoint"]),
    "diffusers LoRA": ("pytorch_lora_weights.safetensors", _safetensors(_peft_lora_sd15),
                       ["it is a LoRA for Stable Diffusion 1.x", "models/loras"]),
    "LyCORIS LoHa": ("loha_style.safetensors", _safetensors(_lycoris_loha), ["it is a LoRA", "models/loras"]),
    "A1111 embedding .pt": ("bad_hands.pt", _a1111_embedding_pt,
                            ["it is a textual-inversion embedding for Stable Diffusion 1.x", "models/embeddings",
                             "embedding:bad_hands"]),
    "embedding": ("easynegative.safetensors", _safetensors(lambda: {"emb_params": zeros(8, 768)}),
                  ["it is a textual-inversion embedding for Stable Diffusion 1.x", "embedding:easynegative"]),
    "SDXL embedding": ("xl_negative.safetensors", _safetensors(lambda: {"clip_l": zeros(8, 768), "clip_g": zeros(8, 1280)}),
                       ["it is a textual-inversion embedding for SDXL", "models/embeddings",
                        "need a Stable Diffusion 1.x checkpoint"]),
    "diffusers embedding": ("learned_embeds.bin", lambda p: torch.save({"<cat-toy>": torch.zeros(768)}, str(p)),
                            ["it is a textual-inversion embedding for Stable Diffusion 1.x", "embedding:learned_embeds"]),
    "IP-Adapter": ("ip-adapter_sd15.safetensors", _safetensors(_ip_adapter_sd15),
                   ["it is an IP-Adapter model for Stable Diffusion 1.x", "models/ipadapter", "IPAdapter nodes"]),
    "IP-Adapter .bin": ("ip-adapter_sd15.bin", _ip_adapter_bin, ["it is an IP-Adapter model", "models/ipadapter"]),
    "SD1.5 checkpoint": ("v1-5-pruned-emaonly.safetensors", _safetensors(_sd15_checkpoint),
                         ["it is a Stable Diffusion 1.x checkpoint", "models/checkpoints", "Load Checkpoint"]),
    "SD1.5 .ckpt": ("v1-5-pruned-emaonly.ckpt", _sd15_ckpt, ["it is a Stable Diffusion 1.x checkpoint", "models/checkpoints"]),
    "SD2.1 checkpoint": ("v2-1_768-ema-pruned.safetensors", _safetensors(_sd21_checkpoint),
                         ["it is a Stable Diffusion 2.x checkpoint", "models/checkpoints",
                          "ELITE and CatVersion need a Stable Diffusion 1.x checkpoint"]),
    "SDXL checkpoint": ("sd_xl_base_1.0.safetensors", _safetensors(_sdxl_checkpoint),
                        ["it is an SDXL checkpoint", "models/checkpoints", "Load Checkpoint",
                         "ELITE and CatVersion need a Stable Diffusion 1.x checkpoint (e.g. "
                         "v1-5-pruned-emaonly-fp16.safetensors)"]),
    "VAE": ("vae-ft-mse-840000-ema-pruned.safetensors", _safetensors(_vae), ["it is a VAE", "models/vae", "Load VAE"]),
    "ControlNet": ("control_v11p_sd15_canny.safetensors", _safetensors(_controlnet_sd15),
                   ["it is a ControlNet for Stable Diffusion 1.x", "models/controlnet", "Load ControlNet Model"]),
    "CLIP vision ViT-H": ("CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors", _safetensors(lambda: _clip_vision(32, 257, 1280)),
                          ["it is a CLIP vision model, ViT-H/14 (32 layers, 1280 wide; the one IP-Adapter uses)",
                           "models/clip_vision", "ELITE Encoder needs CLIP ViT-L/14 (clip-vit-large-patch14.safetensors)"]),
    "CLIP vision ViT-L": ("clip-vit-large-patch14.safetensors", _safetensors(lambda: _clip_vision(24, 257, 1024)),
                          ["it is a CLIP vision model, ViT-L/14 (24 layers, 1024 wide; at 224 px: the one ELITE needs)",
                           "models/clip_vision", "Load CLIP Vision", "ELITE Encoder's clip_vision input"]),
    "CLIP text encoder": ("clip_l.safetensors", _safetensors(_clip_text_l),
                          ["it is a CLIP text encoder, CLIP-L", "models/text_encoders", "Load CLIP"]),
    "upscaler": ("4x-UltraSharp.safetensors", _safetensors(_esrgan),
                 ["it is an upscale model", "models/upscale_models", "Load Upscale Model"]),
}


# --------------------------------------------------------------------------- the pack's own files


def _global_mapper(path):
    save_mapper_safetensors(tiny_mapper_state_dict(seed=10), str(path), kind="global")


def _local_mapper(path):
    save_mapper_safetensors(tiny_mapper_state_dict(seed=11), str(path), kind="local")


def _official_mapper_pt(path):
    torch.save(tiny_mapper_state_dict(seed=10), str(path))


def _catversion_safetensors(path):
    save_catversion_safetensors(CatVersionPrefix(layers=(9, 10, 11), keys=torch.zeros(3, 1, 768),
                                                 values=torch.zeros(3, 1, 768)), str(path))


def _catversion_official_bin(path):
    flat = torch.zeros(2 * 3 * 768)
    torch.save({f"text_model.encoder.layers.{i}.self_attn.prefix_tuning.pool.prefix_tunings.teddybear."
                "clip_text_model_self_prefix.control_trans": flat for i in (9, 10, 11)}, str(path))


def _concept(path):
    write_concept(str(path), torch.zeros(1, 5, 768), torch.zeros(1, 256, 768), None,
                  {"global_mapper": "global_mapper.pt", "global_fingerprint": "0" * 16})


def _exported_embedding(path):
    save_file({"emb_params": zeros(1, 768)}, str(path), metadata={"source": "ELITE concept my_cat_00001.safetensors"})


OWN = {
    "ELITE global mapper": ("my_global.safetensors", _global_mapper,
                            ["it is an ELITE global mapper", "models/elite", "ELITE Global Mapper Loader"]),
    "ELITE local mapper": ("my_local.safetensors", _local_mapper,
                           ["it is an ELITE local mapper", "models/elite", "ELITE Local Mapper Loader"]),
    "official ELITE mapper": ("global_mapper.pt", _official_mapper_pt,
                              ["it is an ELITE mapper", "models/elite", "ELITE Global Mapper Loader"]),
    "CatVersion adapter": ("teddybear.safetensors", _catversion_safetensors,
                           ["it is a CatVersion adapter", "models/catversion", "CatVersion Adapter Loader"]),
    "official CatVersion adapter": ("teddybear.bin", _catversion_official_bin,
                                    ["it is a CatVersion adapter", "models/catversion", "CatVersion Adapter Loader"]),
    "ELITE concept": ("my_cat_00001.safetensors", _concept,
                      ["it is a saved ELITE concept", "models/elite_concepts", "ELITE Load Concept"]),
    "exported embedding": ("my_cat_00001.safetensors", _exported_embedding,
                           ["the textual-inversion embedding ELITE Save Concept exported", "models/embeddings",
                            "embedding:my_cat_00001", "my_cat_00001.safetensors in models/elite_concepts"]),
}
ALL = {**FOREIGN, **OWN}


def write(folder: Path, case: str) -> Path:
    name, writer, _ = ALL[case]
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    writer(path)
    return path


def refusal_of(load, path) -> str:
    with pytest.raises(ValueError) as refused:
        load(str(path))
    return str(refused.value)


def assert_says(message: str, *fragments: str) -> None:
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in: {message}"
    assert "lora_unet" not in message and "mostly under" not in message, message  # no tensor-key talk


# --------------------------------------------------------------------------- the three loaders


MAPPER_LOADER_CASES = [*FOREIGN, "CatVersion adapter", "official CatVersion adapter", "ELITE concept", "exported embedding"]


@pytest.mark.parametrize("case", MAPPER_LOADER_CASES)
def test_mapper_loader_names_what_the_file_is(tmp_path, case):
    name, _, fragments = ALL[case]
    message = refusal_of(lambda p: load_mapper_state_dict(p, kind="global"), write(tmp_path, case))
    assert message.startswith(f"'{name}' is not an ELITE mapper: ")
    assert_says(message, *fragments, "ELITE Global Mapper Loader reads global_mapper.pt (or its .safetensors "
                "conversion) from models/elite/.")


CATVERSION_CASES = [c for c in ALL if "CatVersion" not in c]  # the ELITE files included


@pytest.mark.parametrize("case", CATVERSION_CASES)
def test_catversion_loader_names_what_the_file_is(tmp_path, case):
    name, _, fragments = ALL[case]
    if name.endswith(".ckpt"):
        pytest.skip("models/catversion lists .safetensors, .bin, .pt and .pth files only")
    message = refusal_of(read_catversion_file, write(tmp_path, case))
    assert message.startswith(f"'{name}' is not a CatVersion adapter: ")
    assert_says(message, *fragments, "CatVersion Adapter Loader reads the authors' pytorch_adapter.bin",
                "from models/catversion/.")


CONCEPT_CASES = [c for c in ALL if ALL[c][0].endswith(".safetensors") and c != "ELITE concept"]


@pytest.mark.parametrize("case", CONCEPT_CASES)
def test_load_concept_names_what_the_file_is(tmp_path, case):
    name, _, fragments = ALL[case]
    message = refusal_of(read_concept, write(tmp_path, case))
    assert message.startswith(f"'{name}' is not an ELITE concept: ")
    assert_says(message, *fragments, "ELITE Load Concept reads the files ELITE Save Concept writes into "
                "models/elite_concepts/.")


def test_the_right_files_still_load(tmp_path):
    """The recognition refuses only other kinds: each loader still reads its own files."""
    _, widths = load_mapper_state_dict(str(write(tmp_path, "ELITE global mapper")), kind="global")
    assert widths.input_dim == 64
    _, widths = load_mapper_state_dict(str(write(tmp_path, "official ELITE mapper")), kind="local")
    assert widths.input_dim == 64
    for case in ("CatVersion adapter", "official CatVersion adapter"):
        assert read_catversion_file(str(write(tmp_path, case))).layers == (9, 10, 11)
    tensors, _ = read_concept(str(write(tmp_path, "ELITE concept")))
    assert tensors["words"].shape == (1, 5, 768)


def test_an_elite_mapper_in_the_other_elite_loader_is_named(tmp_path):
    with pytest.raises(MapperFormatError, match="'my_local.safetensors' is an ELITE local mapper .* Load it with "
                                                "'ELITE Local Mapper Loader'"):
        load_mapper_state_dict(str(write(tmp_path, "ELITE local mapper")), kind="global")


def test_a_refused_safetensors_file_is_told_by_its_header_alone(tmp_path, monkeypatch):
    """A 2 GB checkpoint picked by mistake is refused without reading its tensors."""
    from comfyui_elite.elite_core.elite import checkpoint

    def no_tensors(*args, **kwargs):
        raise AssertionError("the tensors were read")

    monkeypatch.setattr(checkpoint, "load_file", no_tensors)
    message = refusal_of(load_mapper_state_dict, write(tmp_path, "SDXL checkpoint"))
    assert "it is an SDXL checkpoint" in message and "ELITE's mapper loaders read global_mapper.pt" in message


def test_unknown_files_keep_saying_what_was_found(tmp_path):
    path = tmp_path / "mystery.safetensors"
    save_file({"foo.weight": zeros(3, 3), "bar.bias": zeros(3)}, str(path))
    assert "Not an ELITE mapper: found 2 tensors" in refusal_of(load_mapper_state_dict, path)
    assert_says(refusal_of(read_catversion_file, path), "'mystery.safetensors' is not a CatVersion adapter, nor another "
                "kind of model file the pack knows (format 'not recorded', 2 tensors, e.g. ",
                "CatVersion Adapter Loader reads")
    assert_says(refusal_of(read_concept, path), "'mystery.safetensors' is not an ELITE concept (made by ELITE Save "
                "Concept)", "ELITE Load Concept reads")


# --------------------------------------------------------------------------- recognition


@pytest.mark.parametrize("geometry, words", [
    ((24, 257, 1024), "ViT-L/14 (24 layers, 1024 wide; at 224 px: the one ELITE needs)"),
    ((24, 577, 1024), "ViT-L/14 at 336 px (24 layers, 1024 wide"),
    ((32, 257, 1280), "ViT-H/14 (32 layers, 1280 wide; the one IP-Adapter uses)"),
    ((48, 257, 1664), "ViT-bigG/14 (48 layers, 1664 wide"),
    ((27, 729, 1152), "SigLIP so400m at 384 px (27 layers, 1152 wide"),
    ((7, 50, 96), "of a size ELITE does not use (7 layers, 96 wide, 50 tokens)"),
])
def test_clip_vision_sizes_in_words(geometry, words):
    assert file_kinds.clip_vision_size(*geometry).startswith(words)


@pytest.mark.parametrize("geometry, size", [
    ((24, 577, 1024), "ViT-L/14 at 336 px"), ((48, 257, 1664), "ViT-bigG/14"), ((27, 729, 1152), "SigLIP so400m at 384 px"),
])
def test_clip_vision_files_are_named_by_their_size(geometry, size):
    shapes = {k: tuple(v.shape) for k, v in _clip_vision(*geometry).items()}
    kind = file_kinds.recognise(shapes)
    assert kind.key == "clip_vision" and size in kind.what and "ELITE Encoder needs CLIP ViT-L/14" in kind.advice


def test_open_clip_and_transformers_layouts_give_the_same_answer():
    shapes = {"visual.positional_embedding": (257, 1280), "visual.class_embedding": (1280,)}
    shapes.update({f"visual.transformer.resblocks.{i}.ln_1.weight": (1280,) for i in range(32)})
    assert "ViT-H/14" in file_kinds.recognise(shapes).what


def test_sd1_parts_do_not_say_sd1_is_needed(tmp_path):
    for case in ("kohya LoRA", "SD1.5 checkpoint", "ControlNet", "embedding"):
        message = refusal_of(load_mapper_state_dict, write(tmp_path, case))
        assert "need a Stable Diffusion 1.x checkpoint" not in message, message


def test_the_named_files_are_the_readmes():
    """The file names the messages send artists to are the README model table's."""
    readme = (REPO / "README.md").read_text()
    for name in (file_kinds.ELITE_CLIP_VISION_FILE, file_kinds.SD1_CHECKPOINT_FILE):
        assert f"| `{name}` |" in readme, name


# --------------------------------------------------------------------------- the ComfyUI nodes


def failure(prompt: dict) -> str:
    executor, refusal = submit(prompt)
    assert executor is not None, refusal
    assert not executor.success
    (error,) = [data for event, data in executor.status_messages if event == "execution_error"]
    return f"{error['node_type']}: {error['exception_message']}"


@pytest.fixture()
def placed():
    """``placed(folder, case)``: the case's file in a model folder of the running ComfyUI, removed afterwards."""
    made = []

    def place(folder: Path, case: str) -> str:
        path = write(folder, case)
        made.append(path)
        return path.name

    yield place
    for path in made:
        path.unlink(missing_ok=True)


def test_global_mapper_loader_node_says_lora(placed):
    name = placed(ELITE_MODELS, "kohya LoRA")
    prompt = tiny_prompt("01_elite_global")
    prompt[node_id(prompt, "ELITEGlobalMapperLoader")]["inputs"]["mapper_name"] = name
    shown = failure(prompt)
    assert shown.startswith("ELITEGlobalMapperLoader: 'add_detail.safetensors' is not an ELITE mapper: it is a LoRA")
    assert_says(shown, "It belongs in models/loras: load it with Load LoRA", "global_mapper.pt")


def test_catversion_loader_node_says_embedding(placed):
    name = placed(CATVERSION_MODELS, "A1111 embedding .pt")
    prompt = tiny_prompt("07_catversion_teddybear")
    prompt[node_id(prompt, "CatVersionLoader")]["inputs"]["adapter_name"] = name
    shown = failure(prompt)
    assert shown.startswith("CatVersionLoader: 'bad_hands.pt' is not a CatVersion adapter: it is a textual-inversion "
                            "embedding")
    assert_says(shown, "models/embeddings", "embedding:bad_hands", "models/catversion/")


def test_load_concept_node_says_elite_mapper(placed):
    name = placed(CONCEPT_MODELS, "ELITE global mapper")
    prompt = {}
    loader = add_node(prompt, "ELITEGlobalMapperLoader", mapper_name=TINY_GLOBAL_MAPPER)
    concept = add_node(prompt, "ELITELoadConcept", concept_name=name, global_mapper=[loader, 0])
    add_node(prompt, "ELITESaveConcept", concept=[concept, 0], filename_prefix="never_written", export_embedding=False)
    shown = failure(prompt)
    assert shown.startswith("ELITELoadConcept: 'my_global.safetensors' is not an ELITE concept: it is an ELITE global "
                            "mapper")
    assert_says(shown, "It belongs in models/elite: load it with ELITE Global Mapper Loader")


def _comfy_clip_vision(config_name: str):
    """ComfyUI's own CLIP vision module for ``config_name`` (e.g. IP-Adapter's ViT-H/14), built on the
    meta device: the real geometry, no memory. ELITE's check refuses it before any forward."""
    import json

    import comfy.clip_model
    import comfy.ops

    config = json.loads((Path(comfy.clip_model.__file__).parent / config_name).read_text())
    with torch.device("meta"):
        model = comfy.clip_model.CLIPVisionModelProjection(config, torch.float16, "meta", comfy.ops.manual_cast)
    # what the Encoder uses of ComfyUI's ClipVisionModel: the module, and encode_image (never reached)
    return types.SimpleNamespace(model=model, encode_image=lambda *args, **kwargs: None)


@pytest.mark.parametrize("config_name, words", [
    ("clip_vision_config_h.json", "This CLIP vision model is ViT-H/14 (32 layers, 1280 wide; the one IP-Adapter uses)"),
    ("clip_vision_config_g.json", "This CLIP vision model is ViT-bigG/14 (48 layers, 1664 wide"),
    ("clip_vision_config_vitl_336.json", "This CLIP vision model is ViT-L/14 at 336 px (24 layers, 1024 wide"),
])
def test_encoder_node_names_the_clip_vision_size(global_mapper, concept_image, config_name, words):
    from comfyui_elite.nodes.nodes_encoder import ELITEEncoder

    with pytest.raises(ELITEInputError) as refused:
        ELITEEncoder.execute(_comfy_clip_vision(config_name), global_mapper, concept_image)
    assert_says(str(refused.value), words, "ELITE needs CLIP ViT-L/14 (24 layers, 257 tokens at 224 px, 1024 wide)",
                "Load clip-vit-large-patch14.safetensors", "models/clip_vision", "Load CLIP Vision")

