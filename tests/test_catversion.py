"""CatVersion: the official adapters on ComfyUI's SD1.x CLIP, against an independent re-statement."""

from __future__ import annotations

import logging
import math

import pytest
import torch
from conftest import CATVERSION_CONCEPTS, CATVERSION_DATA, CATVERSION_MODELS, ELITE_MODELS, TINY_GLOBAL_MAPPER

import nodes

from comfyui_elite.elite_core.catversion.prefix import (
    CatVersionFormatError,
    CatVersionPrefix,
    flat_from_prefixes,
    prefixes_from_flat,
    read_catversion_file,
    save_catversion_safetensors,
)
from comfyui_elite.elite_core.common.checks import ELITEInputError
from comfyui_elite.nodes.nodes_catversion import CatVersionApply, CatVersionLoader
from elite_test_pack.reference_catversion import official_flat_to_layers, reference_text_encoder
from elite_test_pack.tiny_models import build_tiny_clip

PROMPTS = ["teddybear on the beach", "a colorful_teapot cake, studio light"]
TEXT_LAYERS = "clip_l.transformer.text_model.encoder.layers"


@pytest.fixture(scope="module")
def clip_l():
    """The real CLIP-L text layout (12 layers, 12 heads) with random weights. At std 0.02 the prefix
    changes the output by about 1.8 and its +1.0 bias by about 0.6 (see the negative controls)."""
    clip = build_tiny_clip(seed=7, real_size=True, std=0.02)
    global PLAIN_STATE
    PLAIN_STATE = {k: v.clone() for k, v in clip.cond_stage_model.state_dict().items()}
    return clip


def encode(clip, text: str) -> torch.Tensor:
    return clip.encode_from_tokens(clip.tokenize(text))


def token_ids(clip, text: str) -> torch.Tensor:
    return torch.tensor([[token[0] for token in clip.tokenize(text)["l"][0]]])


def encode_with_layers(clip, text: str) -> tuple[torch.Tensor, list[torch.Tensor]]:
    layers = clip.cond_stage_model.clip_l.transformer.text_model.encoder.layers
    seen = []
    hooks = [layer.register_forward_hook(lambda m, i, o: seen.append(o.detach().clone())) for layer in layers]
    try:
        cond = encode(clip, text)
    finally:
        for hook in hooks:
            hook.remove()
    return cond, seen


def official_layers(concept: str) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
    state = torch.load(CATVERSION_DATA / concept / "pytorch_adapter.bin", map_location="cpu", weights_only=True)
    (flat,) = {v.data_ptr(): v for k, v in state.items()}.values()  # four keys alias one storage
    return official_flat_to_layers(flat)


def reference_prefixes(*concepts: tuple[str, float]) -> dict[int, list]:
    prefixes: dict[int, list] = {}
    for concept, strength in concepts:
        for layer, (k, v) in official_layers(concept).items():
            prefixes.setdefault(layer, []).append((k, v, 1.0 + math.log(strength)))
    return prefixes


PLAIN_STATE: dict[str, torch.Tensor] = {}


def clip_state(clip) -> dict[str, torch.Tensor]:
    """The CLIP's own weights, copied before any test ran: ComfyUI patches weights in place while a
    patched clone is loaded, so the live state dict may hold another clone's LoRA."""
    assert clip.cond_stage_model.clip_l.transformer.text_model.embeddings.token_embedding.weight.shape[0] == 49408
    return PLAIN_STATE


@pytest.mark.parametrize("concept", CATVERSION_CONCEPTS)
@pytest.mark.parametrize("file_kind", ["bin", "safetensors"])
def test_prefixed_clip_matches_the_reference(clip_l, catversion_data, concept, file_kind, record_parity):
    (adapter,) = CatVersionLoader.execute(f"{concept}.{file_kind}").result
    (patched,) = CatVersionApply.execute(clip_l, adapter, 1.0).result
    for text in PROMPTS:
        cond, layers = encode_with_layers(patched, text)
        expected, expected_layers = reference_text_encoder(clip_state(clip_l), token_ids(clip_l, text),
                                                           reference_prefixes((concept, 1.0)))
        record_parity(cond[0], expected[0], f"(final, '{text}')")
        torch.testing.assert_close(cond[0], expected[0], atol=1e-5, rtol=0)
        for i, (ours, theirs) in enumerate(zip(layers, expected_layers)):
            torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-6, msg=f"layer {i}")
        record_parity(torch.stack(layers), torch.stack(expected_layers), f"(12 layers, '{text}')")


def test_the_prefix_and_its_plus_one_bias_both_matter(clip_l, catversion_data):
    """Negative controls: the checks above could fail. Without the prefix, or without the +1.0 on
    its logit, the reference is far from the patched CLIP."""
    (adapter,) = CatVersionLoader.execute("teddybear.safetensors").result
    cond = encode(CatVersionApply.execute(clip_l, adapter, 1.0).result[0], PROMPTS[0])[0]
    ids, state = token_ids(clip_l, PROMPTS[0]), clip_state(clip_l)
    no_prefix, _ = reference_text_encoder(state, ids, {})
    no_bias = {layer: [(k, v, 0.0)] for layer, (k, v) in official_layers("teddybear").items()}
    without_bias, _ = reference_text_encoder(state, ids, no_bias)
    assert (cond - no_prefix[0]).abs().max() > 0.1
    assert (cond - without_bias[0]).abs().max() > 1e-3


def test_bin_and_safetensors_give_identical_conditioning(clip_l, catversion_data):
    for concept in CATVERSION_CONCEPTS:
        conds = [encode(CatVersionApply.execute(clip_l, CatVersionLoader.execute(f"{concept}.{ext}").result[0], 1.0)
                        .result[0], PROMPTS[0]) for ext in ("bin", "safetensors")]
        assert torch.equal(conds[0], conds[1])


def test_official_files_read_as_documented(catversion_data):
    binary = read_catversion_file(str(CATVERSION_MODELS / "teddybear.bin"))
    assert binary.layers == (9, 10, 11) and binary.keys.shape == (3, 1, 768) and binary.logit_bias == 1.0
    state = torch.load(CATVERSION_DATA / "teddybear" / "pytorch_adapter.bin", map_location="cpu", weights_only=True)
    flat = next(iter(state.values()))
    assert torch.equal(flat_from_prefixes(binary.keys, binary.values), flat)
    for layer, (k, v) in official_layers("teddybear").items():
        assert torch.equal(binary.layer_prefix(layer)[0], k) and torch.equal(binary.layer_prefix(layer)[1], v)


def test_no_adapter_strength_zero_and_the_input_clip_are_untouched(clip_l, catversion_data):
    """Strength 0 is the unpatched CLIP bit for bit; the CLIP given to Apply, used afterwards (e.g. for
    the negative prompt, as the authors do), encodes exactly as before the patched one ran."""
    plain = encode(clip_l, PROMPTS[0])
    empty_plain = encode(clip_l, "")
    (adapter,) = CatVersionLoader.execute("teddybear.bin").result
    assert torch.equal(encode(CatVersionApply.execute(clip_l, adapter, 0.0).result[0], PROMPTS[0]), plain)
    patched = CatVersionApply.execute(clip_l, adapter, 1.0).result[0]
    assert not torch.equal(encode(patched, PROMPTS[0]), plain)
    assert torch.equal(encode(clip_l, ""), empty_plain)
    assert torch.equal(encode(clip_l, PROMPTS[0]), plain)
    assert not [key for key in clip_l.patcher.object_patches if key.endswith(".self_attn")]
    assert torch.equal(encode(patched, PROMPTS[0]), encode(patched, PROMPTS[0]))  # and the clone still works


def test_strength_and_two_concepts_follow_the_reference(clip_l, catversion_data, record_parity):
    """strength s adds ln(s) to the prefix logit; a second Apply adds its rows to the same softmax."""
    teddy = CatVersionLoader.execute("teddybear.safetensors").result[0]
    teapot = CatVersionLoader.execute("colorful_teapot.bin").result[0]
    both = CatVersionApply.execute(CatVersionApply.execute(clip_l, teddy, 0.7).result[0], teapot, 1.5).result[0]
    cond = encode(both, PROMPTS[1])
    expected, _ = reference_text_encoder(clip_state(clip_l), token_ids(clip_l, PROMPTS[1]),
                                         reference_prefixes(("teddybear", 0.7), ("colorful_teapot", 1.5)))
    record_parity(cond[0], expected[0], "(two concepts, strengths 0.7 / 1.5)")
    torch.testing.assert_close(cond[0], expected[0], atol=1e-5, rtol=0)


def cut_warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "elite.catversion" and r.levelno == logging.WARNING
            and "CLIP Set Last Layer" in r.getMessage()]


@pytest.mark.parametrize("order", ["set last layer, then apply", "apply, then set last layer"])
def test_clip_set_last_layer_cuts_prefixes_and_warns_once_in_either_order(clip_l, catversion_data, caplog, order):
    """CLIP Set Last Layer -2 before or after CatVersion Apply (ComfyUI's nodes): layer 11's prefix has
    no effect, as in the reference stopped at layer 10, and the log says so once: when Apply sees the
    cut, or when the prompt is encoded for a cut made after it."""
    (adapter,) = CatVersionLoader.execute("teddybear.bin").result
    set_last_layer, text_encode = nodes.CLIPSetLastLayer(), nodes.CLIPTextEncode()
    with caplog.at_level(logging.WARNING, logger="elite.catversion"):
        if order.startswith("set"):
            patched = CatVersionApply.execute(set_last_layer.set_last_layer(clip_l, -2)[0], adapter, 1.0).result[0]
            assert len(cut_warnings(caplog)) == 1  # seen when applied
        else:
            patched = set_last_layer.set_last_layer(CatVersionApply.execute(clip_l, adapter, 1.0).result[0], -2)[0]
            assert cut_warnings(caplog) == []  # nothing to see yet: the cut acts when the prompt is encoded
        ((cond, _),) = text_encode.encode(patched, PROMPTS[0])[0]
        text_encode.encode(patched, PROMPTS[1])
    (warning,) = cut_warnings(caplog)
    assert warning.startswith("CatVersion (teddybear.bin): the CLIP stops at layer -2")
    assert "the adapter's layers after the cut are not used: the prefixes of layers [11] have no effect" in warning
    assert ("before CatVersion Apply" if order.startswith("set") else "after CatVersion Apply") in warning
    expected, _ = reference_text_encoder(clip_state(clip_l), token_ids(clip_l, PROMPTS[0]),
                                         reference_prefixes(("teddybear", 1.0)), last_layer=10)
    torch.testing.assert_close(cond[0], expected[0], atol=1e-5, rtol=0)


def test_an_uncut_clip_and_the_plain_clip_after_an_apply_stay_silent(clip_l, catversion_data, caplog):
    """No cut warning for the patched CLIP at -1, nor for the CLIP given to Apply cut afterwards (it
    carries no adapter, e.g. for the negative prompt)."""
    (adapter,) = CatVersionLoader.execute("teddybear.bin").result
    set_last_layer, text_encode = nodes.CLIPSetLastLayer(), nodes.CLIPTextEncode()
    with caplog.at_level(logging.WARNING, logger="elite.catversion"):
        patched = CatVersionApply.execute(clip_l, adapter, 1.0).result[0]
        text_encode.encode(set_last_layer.set_last_layer(patched, -1)[0], PROMPTS[0])
        text_encode.encode(set_last_layer.set_last_layer(clip_l, -2)[0], PROMPTS[0])
        text_encode.encode(patched, PROMPTS[0])
    assert cut_warnings(caplog) == []


@pytest.mark.parametrize("lora_first", [True, False], ids=["lora-then-catversion", "catversion-then-lora"])
def test_weight_patches_on_the_prefixed_layers_still_apply(clip_l, catversion_data, lora_first):
    """A LoRA-style weight patch on a prefixed layer's k_proj acts through the CatVersion wrapper,
    whether the LoRA is applied before or after CatVersion Apply."""
    key = f"{TEXT_LAYERS}.10.self_attn.k_proj.weight"
    delta = 0.05 * torch.randn(768, 768, generator=torch.Generator().manual_seed(3))
    (adapter,) = CatVersionLoader.execute("teddybear.bin").result

    def with_lora(clip):
        clip = clip.clone()
        clip.add_patches({key: ("diff", (delta,))}, 1.0)
        return clip

    if lora_first:
        patched = CatVersionApply.execute(with_lora(clip_l), adapter, 1.0).result[0]
    else:
        patched = with_lora(CatVersionApply.execute(clip_l, adapter, 1.0).result[0])
    cond = encode(patched, PROMPTS[0])
    state = dict(clip_state(clip_l))
    state[key] = state[key] + delta
    expected, _ = reference_text_encoder(state, token_ids(clip_l, PROMPTS[0]), reference_prefixes(("teddybear", 1.0)))
    torch.testing.assert_close(cond[0], expected[0], atol=1e-5, rtol=0)
    encode(clip_l, "")  # loading the plain CLIP takes the LoRA out of the shared weights again
    assert torch.equal(clip_l.cond_stage_model.state_dict()[key], PLAIN_STATE[key])


def test_half_precision_stays_close(catversion_data):
    adapter = CatVersionLoader.execute("teddybear.bin").result[0]
    reference = encode(CatVersionApply.execute(build_tiny_clip(seed=7, real_size=True, std=0.02), adapter, 1.0)
                       .result[0], PROMPTS[0])
    for dtype in (torch.bfloat16, torch.float16):
        clip = build_tiny_clip(seed=7, real_size=True, std=0.02)
        clip.cond_stage_model.to(dtype)
        cond = encode(CatVersionApply.execute(clip, adapter, 1.0).result[0], PROMPTS[0]).float()
        assert (cond - reference).abs().max() < 0.05 * reference.abs().max(), dtype


# --------------------------------------------------------------------------- refusals


def test_a_clip_that_is_not_sd1_clip_l_is_refused(catversion_data):
    (adapter,) = CatVersionLoader.execute("teddybear.bin").result
    small = build_tiny_clip(seed=1)  # 2 layers, 4 heads
    with pytest.raises(ELITEInputError, match=r"not the SD1.x CLIP ViT-L/14 text encoder \(12 layers, 768 wide, 12 heads\)"):
        CatVersionApply.execute(small, adapter, 1.0)


def test_other_files_are_refused_with_what_they_hold(tmp_path):
    with pytest.raises(CatVersionFormatError,
                       match=r"'tiny_global_mapper.safetensors' is not a CatVersion adapter: it is an ELITE global "
                             r"mapper. It belongs in models/elite: load it with ELITE Global Mapper Loader."):
        read_catversion_file(str(ELITE_MODELS / TINY_GLOBAL_MAPPER))
    empty = tmp_path / "empty.bin"
    empty.write_bytes(b"")
    with pytest.raises(CatVersionFormatError, match=r"'empty.bin' is empty \(0 bytes\)"):
        read_catversion_file(str(empty))
    odd = tmp_path / "odd.bin"
    torch.save({"text_model.encoder.layers.9.self_attn.prefix_tuning.pool.prefix_tunings.x."
                "clip_text_model_self_prefix.control_trans": torch.zeros(1000)}, str(odd))
    with pytest.raises(CatVersionFormatError, match=r"'odd.bin' looks like a CatVersion adapter but is damaged or incomplete "
                                                         r"\(a flat prefix of 1000 values does not split into 1 layers"):
        read_catversion_file(str(odd))
    keys, values = torch.zeros(3, 1, 768), torch.zeros(3, 1, 768)
    keys[1, 0, 5] = math.nan
    with pytest.raises(CatVersionFormatError, match="non-finite"):
        CatVersionPrefix(layers=(9, 10, 11), keys=keys, values=values, name="nan.safetensors")


def test_missing_adapter_gets_the_packs_message():
    message = CatVersionLoader.validate_inputs("teddybear_v2.bin")
    assert "CatVersion adapter 'teddybear_v2.bin' was not found" in message
    assert str(CATVERSION_MODELS) in message and "into models/catversion/" in message
    assert CatVersionLoader.validate_inputs(None) is True


def test_pack_safetensors_round_trip(tmp_path, catversion_data):
    adapter = read_catversion_file(str(CATVERSION_MODELS / "colorful_teapot.bin"))
    path = tmp_path / "teapot.safetensors"
    save_catversion_safetensors(adapter, str(path), {"class_word": "colorful_teapot"})
    again = read_catversion_file(str(path))
    assert again.layers == adapter.layers and torch.equal(again.keys, adapter.keys) and torch.equal(again.values, adapter.values)
    shipped = read_catversion_file(str(CATVERSION_MODELS / "colorful_teapot.safetensors"))
    assert torch.equal(shipped.keys, adapter.keys) and torch.equal(shipped.values, adapter.values)


def test_flat_layout_is_key_value_alternating_per_layer():
    flat = torch.arange(2 * 3 * 768 * 2, dtype=torch.float32)  # P = 2
    keys, values = prefixes_from_flat(flat, 3)
    rows = flat.view(2, 6, 768)
    assert torch.equal(keys[1, 0], rows[0, 2]) and torch.equal(values[2, 1], rows[1, 5])
    assert torch.equal(flat_from_prefixes(keys, values), flat)
