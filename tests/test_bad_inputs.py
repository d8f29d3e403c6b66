"""Every file and value that cannot work is refused with a message that names the culprit.

Each case sends a prompt through ComfyUI's own validation and executor, asserts the text the user
sees (the validation error's details, or the execution error's message), and then checks that the
next good prompt still renders exactly the image it rendered before the bad one.
"""

from __future__ import annotations

import math
import pickle

import numpy as np
import pytest
import torch
from conftest import BASE_DIR, ELITE_MODELS, TINY_GLOBAL_MAPPER, TINY_GLOBAL_MAPPER_PT, TINY_LOCAL_MAPPER
from PIL import Image
from safetensors.torch import save_file

from comfyui_elite.elite_core.elite.checkpoint import save_mapper_safetensors
from comfyui_elite.elite_core.elite.concept import ELITEConcept
from comfyui_elite.nodes.nodes_attn_patch import ELITELocalAttnPatch
from elite_test_pack.in_process import submit as validate_and_run
from elite_test_pack.tiny_models import tiny_mapper_state_dict
from elite_test_pack.workflows import add_node, node_id, save_node_id, tiny_prompt

# The nodes the cases change, by class (the good prompt runs the tiny models: its checkpoint loader is
# the test pack's).
CKPT, GLOBAL_LOADER, ENCODER = "ELITETestTinySD15Loader", "ELITEGlobalMapperLoader", "ELITEEncoder"
CONDITIONING, PATCH, LOCAL_LOADER = "ELITEConditioning", "ELITELocalAttnPatch", "ELITELocalMapperLoader"


def submit(prompt: dict) -> tuple[str, object]:
    """Validate and run ``prompt`` as the server does. Returns ("refused", the validation text the
    frontend shows), ("failed", the execution error's message) or ("ok", the saved image's pixels)."""
    executor, refusal = validate_and_run(prompt)
    if executor is None:
        error, node_errors = refusal
        shown = [f"{e['message']}: {e['details']}" for node in node_errors.values() for e in node["errors"]]
        return "refused", " | ".join(shown) or f"{error['message']}: {error['details']}"
    if not executor.success:
        (failure,) = [data for event, data in executor.status_messages if event == "execution_error"]
        return "failed", f"{failure['node_type']}: {failure['exception_message']}"
    (image,) = executor.history_result["outputs"][save_node_id(prompt)]["images"]
    return "ok", np.asarray(Image.open(BASE_DIR / "output" / image["subfolder"] / image["filename"]))


def good_prompt() -> dict:
    return tiny_prompt("02_elite_global_local")


@pytest.fixture(scope="module")
def good_pixels() -> np.ndarray:
    outcome, pixels = submit(good_prompt())
    assert outcome == "ok", pixels
    return pixels


def assert_refused(prompt: dict, good_pixels: np.ndarray, *fragments: str, when: str = "failed") -> str:
    """The user sees every fragment; then the good prompt renders the same image as before."""
    outcome, shown = submit(prompt)
    assert outcome == when, shown
    for fragment in fragments:
        assert fragment in shown, shown
    outcome, pixels = submit(good_prompt())
    assert outcome == "ok" and np.array_equal(pixels, good_pixels)
    return shown


@pytest.fixture()
def mapper_file(request):
    """``mapper_file(name, writer)``: a file in models/elite for one test, removed afterwards."""
    made = []

    def make(name: str, write) -> str:
        path = ELITE_MODELS / name
        write(path)
        made.append(path)
        return name

    yield make
    for path in made:
        path.unlink(missing_ok=True)


def with_inputs(class_type: str, **inputs) -> dict:
    """The good prompt with some inputs of its (only) node of ``class_type`` changed."""
    prompt = good_prompt()
    prompt[node_id(prompt, class_type)]["inputs"].update(inputs)
    return prompt


# --------------------------------------------------------------------------- missing files, combos


def test_missing_mapper_file_gives_the_packs_message_on_every_version(good_pixels):
    shown = assert_refused(with_inputs(GLOBAL_LOADER, mapper_name="global_mapper.pt"), good_pixels,
                           "ELITE mapper 'global_mapper.pt' was not found", f"Searched: {BASE_DIR / 'models' / 'elite'}",
                           TINY_LOCAL_MAPPER, "Put global_mapper.pt", "into models/elite/", when="refused")
    assert "Value not in list" not in shown
    shown = assert_refused(with_inputs(LOCAL_LOADER, mapper_name="local_mapper.pt"), good_pixels,
                           "ELITE mapper 'local_mapper.pt' was not found", "Put local_mapper.pt", when="refused")


def test_unknown_combo_value_is_refused_not_mapped_to_a_default(good_pixels):
    assert_refused(with_inputs(CONDITIONING, words="all the words"), good_pixels,
                   "words is 'all the words'; it must be one of: 'primary word', 'all five words'", when="refused")


# --------------------------------------------------------------------------- K/V that do not fit


def test_local_mapper_whose_kv_do_not_fit_the_model(mapper_file, good_pixels):
    """A local mapper made for a wider UNet (a consistent SD1.x layout at width 64): the mapper is blamed."""
    name = mapper_file("wide_local.safetensors", lambda p: save_mapper_safetensors(
        tiny_mapper_state_dict(seed=21, model_channels=64), str(p), kind="local"))
    assert_refused(with_inputs(LOCAL_LOADER, mapper_name=name), good_pixels,
                   "ELITELocalAttnPatch: The ELITE local mapper 'wide_local.safetensors' does not fit this MODEL",
                   "its cross-attention K/V are (64, 768) / (128, 768) / (256, 768) by layer",
                   "this SD1.x MODEL needs (32, 768) / (64, 768) / (128, 768)", "use the official local_mapper.pt")


def test_global_mapper_whose_kv_do_not_fit_the_model(mapper_file, good_pixels):
    name = mapper_file("wide_global.safetensors", lambda p: save_mapper_safetensors(
        tiny_mapper_state_dict(seed=22, model_channels=64), str(p), kind="global"))
    assert_refused(with_inputs(GLOBAL_LOADER, mapper_name=name), good_pixels,
                   "The ELITE global mapper 'wide_global.safetensors' does not fit this MODEL",
                   "this SD1.x MODEL needs (32, 768) / (64, 768) / (128, 768)")


def test_mapper_file_off_the_sd1_site_table_is_blamed_on_the_file(mapper_file, good_pixels):
    state = tiny_mapper_state_dict(seed=23)
    site = "down_blocks_2_attentions_1_transformer_blocks_0_attn2"
    state[f"{site}_to_k.weight"] = torch.zeros(96, 768)
    state[f"{site}_to_v.weight"] = torch.zeros(96, 768)
    name = mapper_file("odd_layout.safetensors", lambda p: save_file(state, str(p)))
    assert_refused(with_inputs(GLOBAL_LOADER, mapper_name=name), good_pixels,
                   "ELITEGlobalMapperLoader: 'odd_layout.safetensors': its cross-attention K/V do not have the SD1.x layout",
                   f"'{site}_to_k.weight' is (96, 768), expected (128, 768)", "The mapper file is damaged")


def test_model_that_is_not_sd1_is_blamed_on_the_model(good_pixels):
    prompt = good_prompt()
    prompt[node_id(prompt, CKPT)]["inputs"]["context_dim"] = 1024
    assert_refused(prompt, good_pixels, "This MODEL (SD15) is not a Stable Diffusion 1.x UNet that ELITE can patch",
                   "attn2.to_k.weight is (32, 1024), but SD1.x cross-attention takes 768-wide CLIP-L text",
                   f"The ELITE global mapper '{TINY_GLOBAL_MAPPER}' is for SD1.x UNets: its cross-attention K/V are "
                   "(32, 768) / (64, 768) / (128, 768) by layer")


# --------------------------------------------------------------------------- damaged files


def _truncate(source: str, keep: float):
    def write(path):
        data = (ELITE_MODELS / source).read_bytes()
        path.write_bytes(data[: int(len(data) * keep)])
    return write


@pytest.mark.parametrize("name, write, fragments", [
    ("empty.safetensors", lambda p: p.write_bytes(b""), ["'empty.safetensors' is empty (0 bytes)"]),
    ("empty.pt", lambda p: p.write_bytes(b""), ["'empty.pt' is empty (0 bytes)"]),
    ("cut.safetensors", _truncate(TINY_GLOBAL_MAPPER, 0.5), ["'cut.safetensors' is truncated: it has", "bytes of the"]),
    ("cut_header.safetensors", _truncate(TINY_GLOBAL_MAPPER, 0.0001),
     ["'cut_header.safetensors' is truncated or not a safetensors file"]),
    ("cut.pt", _truncate(TINY_GLOBAL_MAPPER_PT, 0.5),
     ["'cut.pt' is truncated or damaged: it is not a complete torch checkpoint"]),
])
def test_empty_and_truncated_files_say_so(mapper_file, good_pixels, name, write, fragments):
    mapper_file(name, write)
    assert_refused(with_inputs(GLOBAL_LOADER, mapper_name=name), good_pixels, *fragments, "fetch it again")


@pytest.mark.parametrize("value", [math.nan, math.inf])
def test_non_finite_mapper_values_say_so(mapper_file, good_pixels, value):
    state = tiny_mapper_state_dict(seed=10)
    state["mapping_patch_2.3.weight"][0, 0] = value
    name = mapper_file(f"diverged_{value}.safetensors", lambda p: save_file(state, str(p)))
    assert_refused(with_inputs(GLOBAL_LOADER, mapper_name=name), good_pixels,
                   f"'{name}': it contains non-finite values (NaN or inf) in 1 of 132 tensors (e.g. mapping_patch_2.3.weight)")


def test_refused_pickle_names_the_refused_global(mapper_file, good_pixels, capsys):
    class Payload:
        def __reduce__(self):
            return (print, ("this must never run",))

    def write(path):
        torch.save({**tiny_mapper_state_dict(seed=10), "extra": Payload()}, str(path), pickle_module=pickle)

    name = mapper_file("with_code.pt", write)
    assert_refused(with_inputs(GLOBAL_LOADER, mapper_name=name), good_pixels,
                   "'with_code.pt' was refused: it needs the Python object 'print'", "refused for safety")
    assert "this must never run" not in capsys.readouterr().out


# --------------------------------------------------------------------------- global vs local


def test_each_loader_refuses_the_other_kind(good_pixels):
    assert_refused(with_inputs(GLOBAL_LOADER, mapper_name=TINY_LOCAL_MAPPER), good_pixels,
                   f"'{TINY_LOCAL_MAPPER}' is an ELITE local mapper (its metadata says so), but it was given to "
                   "the global mapper loader", "Load it with 'ELITE Local Mapper Loader'")
    assert_refused(with_inputs(LOCAL_LOADER, mapper_name=TINY_GLOBAL_MAPPER), good_pixels,
                   f"'{TINY_GLOBAL_MAPPER}' is an ELITE global mapper (its metadata says so), but it was given to "
                   "the local mapper loader", "choose the local mapper file")


def test_pt_files_without_metadata_load_in_either_loader():
    """The official .pt files carry no kind (documented: the loader picked decides)."""
    outcome, pixels = submit(with_inputs(LOCAL_LOADER, mapper_name=TINY_GLOBAL_MAPPER_PT))
    assert outcome == "ok", pixels


# --------------------------------------------------------------------------- numbers


@pytest.mark.parametrize("name, label", [
    ("strength", "strength (λ)"), ("start_percent", "start_percent"), ("end_percent", "end_percent"),
])
def test_nan_numbers_are_refused_by_the_node(good_pixels, name, label):
    assert_refused(with_inputs(PATCH, **{name: math.nan}), good_pixels,
                   f"ELITELocalAttnPatch: {label} is NaN (not a number); it must be a number from")


@pytest.mark.parametrize("name, value", [("strength", math.inf), ("start_percent", -math.inf), ("end_percent", math.inf)])
def test_infinite_numbers_are_refused(good_pixels, name, value, tiny_model, global_mapper):
    """ComfyUI's own range check refuses an infinite widget value; one that arrives through a link
    (never range-checked) is refused by the node itself."""
    shown = assert_refused(with_inputs(PATCH, **{name: value}), good_pixels, name, "inf", when="refused")
    assert "Value" in shown
    kwargs = {"strength": 0.6, "start_percent": 0.0, "end_percent": 1.0, name: value}
    concept = ELITEConcept(words=torch.zeros(1, 5, global_mapper.widths.output_dim), global_kv=global_mapper.kv)
    with pytest.raises(ValueError, match="is infinite; it must be a number from"):
        ELITELocalAttnPatch.execute(tiny_model, concept, None, global_kv=True, **kwargs)


# --------------------------------------------------------------------------- images


def synthetic_image_prompt(width: int, height: int, defect: str = "none") -> dict:
    prompt = good_prompt()
    image = add_node(prompt, "ELITETestSyntheticImage", width=width, height=height, defect=defect, seed=0)
    encoder = prompt[node_id(prompt, ENCODER)]
    encoder["inputs"]["image"] = [image, 0]
    del encoder["inputs"]["mask"]
    return prompt


@pytest.mark.parametrize("width, height", [(0, 64), (64, 0), (1, 64), (64, 1), (1, 1)])
def test_degenerate_images_are_refused(good_pixels, width, height):
    assert_refused(synthetic_image_prompt(width, height), good_pixels,
                   f"ELITEEncoder: The concept IMAGE is {width}x{height} pixels", "at least 2x2")


@pytest.mark.parametrize("defect", ["nan", "inf"])
def test_non_finite_pixels_are_refused(good_pixels, defect):
    assert_refused(synthetic_image_prompt(64, 48, defect), good_pixels,
                   "ELITEEncoder: The concept IMAGE contains 1 non-finite values (NaN or inf)")


def test_non_finite_mask_is_refused(tiny_clip_vision, global_mapper, local_mapper, concept_image):
    from comfyui_elite.elite_core.comfyui import elite as comfy_elite

    mask = torch.ones(1, 96, 128)
    mask[0, 3, 4] = math.nan
    with pytest.raises(comfy_elite.ELITEInputError, match=r"The object MASK contains 1 non-finite values"):
        comfy_elite.encode_concept(tiny_clip_vision, global_mapper, concept_image, local_mapper, mask)
    with pytest.raises(comfy_elite.ELITEInputError, match=r"The object MASK is empty"):
        comfy_elite.encode_concept(tiny_clip_vision, global_mapper, concept_image, local_mapper, torch.ones(1, 0, 5))


def test_two_pixel_image_is_still_encoded(good_pixels):
    outcome, pixels = submit(synthetic_image_prompt(2, 2))
    assert outcome == "ok", pixels
