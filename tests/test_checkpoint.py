"""Mapper checkpoint IO: official layout, round trips, conversion, and refusals."""

import logging
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from comfyui_elite.elite_core.elite import convert
from comfyui_elite.elite_core.elite.checkpoint import (
    MapperFormatError,
    load_mapper_state_dict,
    read_mapper_kind,
    save_mapper_safetensors,
)
from comfyui_elite.elite_core.elite.mappers import OFFICIAL_WIDTHS, GlobalMapper, LocalMapper, expected_keys
from elite_test_pack.tiny_models import tiny_mapper_state_dict

REPO = Path(__file__).resolve().parents[1]


def test_official_layout_has_132_tensors_and_48m_parameters():
    keys = expected_keys(OFFICIAL_WIDTHS)
    assert len(keys) == 132
    numel = sum(torch.Size(shape).numel() for shape in keys.values())
    assert numel == 48_074_240  # 192,296,960 bytes of fp32, the size of the released files
    assert keys["mapping_patch_4.6.weight"] == (768, 1024)
    assert keys["mapping_0.1.weight"] == (1024,)
    assert keys["mid_block_attentions_0_transformer_blocks_0_attn2_to_v.weight"] == (1280, 768)
    # The reference registers MLPs interleaved, then K/V with the mid block last.
    order = list(keys)
    assert order[:2] == ["mapping_0.0.weight", "mapping_0.0.bias"]
    assert order[10] == "mapping_patch_0.0.weight"
    assert order[-1] == "mid_block_attentions_0_transformer_blocks_0_attn2_to_v.weight"


@pytest.mark.parametrize("kind", [GlobalMapper, LocalMapper])
def test_modules_state_dict_is_the_official_key_set(kind):
    with torch.device("meta"):
        module = kind(OFFICIAL_WIDTHS)
    assert {k: tuple(v.shape) for k, v in module.state_dict().items()} == expected_keys(OFFICIAL_WIDTHS)


@pytest.mark.parametrize("ext", [".safetensors", ".pt", ".pth", ".bin"])
def test_round_trip_is_bit_exact(tmp_path, global_mapper_state, ext):
    path = tmp_path / f"mapper{ext}"
    if ext == ".safetensors":
        save_mapper_safetensors(global_mapper_state, str(path), kind="global")
    else:
        torch.save(global_mapper_state, str(path))
    loaded, widths = load_mapper_state_dict(str(path))
    assert loaded.keys() == global_mapper_state.keys()
    assert all(torch.equal(loaded[k], global_mapper_state[k]) for k in loaded)
    assert (widths.input_dim, widths.hidden_dim, widths.output_dim) == (64, 64, 768)
    assert widths.kv_dims[0] == 32 and max(widths.kv_dims) == 128


def test_ddp_prefix_and_half_precision_are_accepted(tmp_path, global_mapper_state):
    path = tmp_path / "ddp.pt"
    torch.save({f"module.{k}": v.half() for k, v in global_mapper_state.items()}, str(path))
    loaded, _ = load_mapper_state_dict(str(path))
    assert loaded["mapping_0.0.weight"].dtype == torch.float32
    assert torch.equal(loaded["mapping_0.0.weight"], global_mapper_state["mapping_0.0.weight"].half().float())


def test_convert_cli_writes_verified_safetensors(tmp_path, global_mapper_state):
    """`python -m elite_core.convert` as documented, run from the pack folder without ComfyUI."""
    src, dst = tmp_path / "global_mapper.pt", tmp_path / "global_mapper.safetensors"
    torch.save(global_mapper_state, str(src))
    done = subprocess.run(
        [sys.executable, "-m", "elite_core.convert", str(src), str(dst)],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "verified bit-exact" in done.stderr
    loaded, _ = load_mapper_state_dict(str(dst))
    assert all(torch.equal(loaded[k], global_mapper_state[k]) for k in global_mapper_state)


@pytest.mark.parametrize("source, kind_flag, recorded", [
    ("global_mapper.pt", None, "global"), ("local_mapper.pt", None, "local"), ("my_mapper.pt", "local", "local"),
])
def test_converter_records_the_kind_and_the_loaders_refuse_the_other(tmp_path, global_mapper_state, source,
                                                                     kind_flag, recorded):
    src, dst = tmp_path / source, tmp_path / "converted.safetensors"
    torch.save(global_mapper_state, str(src))
    convert.convert(str(src), str(dst), kind_flag)
    assert read_mapper_kind(str(dst)) == recorded
    load_mapper_state_dict(str(dst), kind=recorded)
    other = "global" if recorded == "local" else "local"
    with pytest.raises(MapperFormatError, match=f"'converted.safetensors' is an ELITE {recorded} mapper"):
        load_mapper_state_dict(str(dst), kind=other)


def test_converter_asks_for_the_kind_when_the_name_does_not_say(tmp_path, global_mapper_state, caplog):
    src = tmp_path / "mapper.pt"
    torch.save(global_mapper_state, str(src))
    assert convert.main([str(src), str(tmp_path / "out.safetensors")]) == 1
    assert "pass --kind global or --kind local" in caplog.text
    labelled = tmp_path / "labelled.safetensors"
    save_mapper_safetensors(global_mapper_state, str(labelled), kind="global")
    with pytest.raises(MapperFormatError, match="'labelled.safetensors' is recorded as a global mapper, not local"):
        convert.convert(str(labelled), str(tmp_path / "again.safetensors"), "local")


def test_convert_cli_reports_bad_input(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="elite.convert")
    src = tmp_path / "not_a_mapper.safetensors"
    save_file_like_sd_checkpoint(src)
    assert convert.main([str(src), str(tmp_path / "out.safetensors")]) == 1
    assert "'not_a_mapper.safetensors' is not an ELITE mapper: it is a Stable Diffusion checkpoint" in caplog.text


def save_file_like_sd_checkpoint(path):
    from safetensors.torch import save_file

    save_file({
        "model.diffusion_model.input_blocks.0.0.weight": torch.zeros(4, 4),
        "model.diffusion_model.out.2.weight": torch.zeros(4, 4),
        "first_stage_model.decoder.conv_in.weight": torch.zeros(2),
    }, str(path))


def test_refuses_a_stable_diffusion_checkpoint_with_a_description(tmp_path):
    path = tmp_path / "v1-5-pruned.safetensors"
    save_file_like_sd_checkpoint(path)
    with pytest.raises(MapperFormatError) as err:
        load_mapper_state_dict(str(path))
    message = str(err.value)
    assert message.startswith("'v1-5-pruned.safetensors' is not an ELITE mapper: it is a Stable Diffusion checkpoint.")
    assert "It belongs in models/checkpoints: load it with Load Checkpoint." in message
    assert "read global_mapper.pt and local_mapper.pt (or their .safetensors conversions) from models/elite/" in message


def test_refuses_missing_and_unexpected_keys(tmp_path, global_mapper_state):
    state = dict(global_mapper_state)
    del state["mapping_patch_3.4.bias"]
    state["extra.weight"] = torch.zeros(1)
    path = tmp_path / "broken.safetensors"
    from safetensors.torch import save_file

    save_file(state, str(path))
    with pytest.raises(MapperFormatError, match=r"1 missing \(e.g. mapping_patch_3.4.bias\); 1 unexpected"):
        load_mapper_state_dict(str(path))


def test_refuses_inconsistent_shapes(tmp_path, global_mapper_state):
    state = dict(global_mapper_state)
    state["mapping_2.3.weight"] = torch.zeros(64, 32)
    path = tmp_path / "shapes.pt"
    torch.save(state, str(path))
    with pytest.raises(MapperFormatError, match=r"mapping_2.3.weight \(64, 32\) \(expected \(64, 64\)\)"):
        load_mapper_state_dict(str(path))


def test_refuses_unknown_extension(tmp_path):
    path = tmp_path / "mapper.npz"
    path.write_bytes(b"")
    with pytest.raises(MapperFormatError, match="extension '.npz'"):
        load_mapper_state_dict(str(path))


class _Payload:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_refuses_pickles_with_code(tmp_path, capsys):
    path = tmp_path / "evil.pt"
    torch.save({"mapping_0.0.weight": torch.zeros(1), "x": _Payload()}, str(path), pickle_module=pickle)
    with pytest.raises(MapperFormatError, match="weights-only"):
        load_mapper_state_dict(str(path))
    assert "this must never run" not in capsys.readouterr().out


def test_refuses_non_dict_pickles(tmp_path):
    path = tmp_path / "list.pt"
    torch.save([torch.zeros(1)], str(path))
    with pytest.raises(MapperFormatError, match="holds a list, not a dict of tensors"):
        load_mapper_state_dict(str(path))


def test_tiny_and_official_widths_differ_only_in_numbers():
    tiny = tiny_mapper_state_dict(seed=0)
    assert set(tiny) == set(expected_keys(OFFICIAL_WIDTHS))
