"""models/elite registration, extra_model_paths.yaml, and what the loaders say about bad files."""

import os

import pytest
import torch
from conftest import ELITE_MODELS, TINY_GLOBAL_MAPPER, TINY_LOCAL_MAPPER
from safetensors.torch import save_file

import folder_paths

from comfyui_elite.elite_core.comfyui import elite as comfy_elite
from comfyui_elite.elite_core.elite.checkpoint import MapperFormatError
from comfyui_elite.nodes.nodes_mapper_loader import ELITEGlobalMapperLoader, ELITELocalMapperLoader


@pytest.fixture()
def restore_elite_folder():
    saved = folder_paths.folder_names_and_paths["elite"]
    yield
    folder_paths.folder_names_and_paths["elite"] = saved


def test_default_folder_and_mapper_extensions_only(tmp_path):
    assert str(ELITE_MODELS) in folder_paths.get_folder_paths("elite")
    (ELITE_MODELS / "readme.txt").write_text("not a model")
    try:
        names = comfy_elite.mapper_file_names()
    finally:
        (ELITE_MODELS / "readme.txt").unlink()
    assert TINY_GLOBAL_MAPPER in names and TINY_LOCAL_MAPPER in names
    assert "readme.txt" not in names


def test_extra_model_paths_yaml_is_honoured(tmp_path, restore_elite_folder):
    from utils.extra_config import load_extra_path_config

    extra = tmp_path / "shared_models" / "elite_mappers"
    extra.mkdir(parents=True)
    (extra / "shared_global.safetensors").write_bytes((ELITE_MODELS / TINY_GLOBAL_MAPPER).read_bytes())
    config = tmp_path / "extra_model_paths.yaml"
    config.write_text(f"mine:\n  base_path: {tmp_path / 'shared_models'}\n  elite: elite_mappers\n")
    load_extra_path_config(str(config))
    comfy_elite.register_model_folder()  # as at start-up: the YAML may be read before or after the pack
    assert str(extra) in folder_paths.get_folder_paths("elite")
    assert str(ELITE_MODELS) in folder_paths.get_folder_paths("elite")
    (mapper,) = ELITEGlobalMapperLoader.execute("shared_global.safetensors").result
    assert mapper.widths.input_dim == 64


def test_loader_refuses_a_file_that_is_not_a_mapper():
    bogus = ELITE_MODELS / "lora_by_mistake.safetensors"
    save_file({"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": torch.zeros(4, 4)}, str(bogus))
    try:
        with pytest.raises(MapperFormatError, match=r"'lora_by_mistake.safetensors' is not an ELITE mapper: it is a LoRA\. "
                                                    r"It belongs in models/loras: load it with Load LoRA"):
            ELITELocalMapperLoader.execute("lora_by_mistake.safetensors")
    finally:
        bogus.unlink()


def test_local_loader_keeps_kv_in_a_managed_module():
    (mapper,) = ELITELocalMapperLoader.execute(TINY_LOCAL_MAPPER).result
    assert mapper.kv_patcher is not None
    weights = mapper.kv_patcher.model.weights()
    assert len(weights) == 16
    assert not any(name.endswith("_to_k.weight") for name in mapper.module.state_dict())  # MLPs only


def test_the_pack_creates_its_model_folders_at_start_up(base_dir):
    """The test bed makes models/elite itself before ComfyUI loads the pack; the other three exist only
    because the pack created them when ComfyUI loaded it."""
    for folder in ("elite", "catversion", "elite_concepts", "elite_eval"):
        assert (base_dir / "models" / folder).is_dir(), folder
        assert str(base_dir / "models" / folder) == folder_paths.get_folder_paths(folder)[0]


def test_a_numbered_save_takes_the_next_number_when_another_process_takes_its_own_meanwhile():
    """The counter is read before the file is written; if another writer claims that number in the
    meantime, the save goes to the next one and the other file is left as it was."""
    from comfyui_elite.elite_core.comfyui.folders import next_numbered_path, save_numbered

    folder = folder_paths.get_folder_paths("elite")[0]
    first = next_numbered_path("elite", "race")
    second = first.replace(first[-len("00001.safetensors"):], f"{int(first[-17:-12]) + 1:05d}.safetensors")

    def write(partial):
        if not os.path.exists(first):  # the other process finishes its save of the same number first
            with open(first, "wb") as other:
                other.write(b"the other process")
        with open(partial, "wb") as mine:
            mine.write(b"mine")

    try:
        saved = save_numbered("elite", "race", write)
        assert saved == second
        with open(first, "rb") as f:
            assert f.read() == b"the other process"
        with open(second, "rb") as f:
            assert f.read() == b"mine"
        assert not [n for n in os.listdir(folder) if n.endswith(".partial")]
    finally:
        for path in (first, second):
            if os.path.exists(path):
                os.remove(path)
