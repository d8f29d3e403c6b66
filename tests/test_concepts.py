"""Saved concepts: save -> load gives bit-identical words and tokens and the same eps; the exported
embedding, used as embedding:<name> in core CLIP Text Encode, gives ELITE Conditioning's conditioning;
wrong mappers and bad files are refused with their names."""

from __future__ import annotations

import os

import pytest
import torch
from conftest import BASE_DIR
from safetensors.torch import save_file

import folder_paths

from comfyui_elite.elite_core.comfyui import elite as comfy_elite
from comfyui_elite.elite_core.comfyui import elite_patch
from comfyui_elite.nodes.nodes_concepts import ELITELoadConcept, ELITESaveConcept
from elite_test_pack.unet_calls import cfg_batch, unet_eps

PROMPT = "a photo of S on the beach"


@pytest.fixture(scope="module")
def encoded(tiny_clip_vision, global_mapper, local_mapper, concept_image):
    mask = torch.zeros(1, 96, 128)
    mask[:, 16:80, 24:104] = 1.0
    return comfy_elite.encode_concept(tiny_clip_vision, global_mapper, concept_image, local_mapper, mask)


def eps(model, clip, concept):
    positive, _ = comfy_elite.concept_conditioning(clip, concept, PROMPT, "S", all_words=False)
    negative = clip.encode_from_tokens_scheduled(clip.tokenize(""))[0][0]
    patched = elite_patch.apply_elite(model, concept, positive, 0.8)
    x, context = cfg_batch(positive[0][0], negative, [1, 0], 1)
    return unet_eps(patched, x, context, [1, 0])


def test_save_then_load_gives_the_same_concept_and_eps(encoded, global_mapper, local_mapper, concept_image,
                                                       tiny_model, tiny_clip):
    (name,) = ELITESaveConcept.execute(encoded, "roundtrip", True, concept_image).result
    assert name == "roundtrip_00001.safetensors"
    assert os.path.isfile(BASE_DIR / "models" / "elite_concepts" / name)
    assert ELITESaveConcept.execute(encoded, "roundtrip", False).result[0] == "roundtrip_00002.safetensors"
    result = ELITELoadConcept.execute(name, global_mapper, local_mapper)
    (loaded,) = result.result
    assert result.ui is not None  # the stored preview
    assert torch.equal(loaded.words, encoded.words)
    assert torch.equal(loaded.local.tokens, encoded.local.tokens)
    assert torch.equal(eps(tiny_model, tiny_clip, loaded), eps(tiny_model, tiny_clip, encoded))
    # the comparison can fail: another concept gives another eps
    other = comfy_elite.ELITEConcept(words=encoded.words + 0.5, global_kv=encoded.global_kv, local=encoded.local)
    assert not torch.equal(eps(tiny_model, tiny_clip, other), eps(tiny_model, tiny_clip, encoded))


def test_the_exported_embedding_gives_elite_conditionings_text_conditioning(encoded):
    import nodes

    from elite_test_pack.tiny_models import build_tiny_clip

    tiny_clip = build_tiny_clip(seed=1, embedding_directory=folder_paths.get_folder_paths("embeddings"))
    ELITESaveConcept.execute(encoded, "as_embedding", True)
    assert os.path.isfile(os.path.join(folder_paths.get_folder_paths("embeddings")[0], "as_embedding_00001.safetensors"))
    (core,) = nodes.CLIPTextEncode().encode(tiny_clip, "a photo of embedding:as_embedding_00001 on the beach")
    positive, _ = comfy_elite.concept_conditioning(tiny_clip, encoded, PROMPT, "S", all_words=False)
    assert core[0][0].shape == positive[0][0].shape
    torch.testing.assert_close(core[0][0], positive[0][0], rtol=0, atol=1e-6)
    plain = nodes.CLIPTextEncode().encode(tiny_clip, PROMPT)[0]
    assert (plain[0][0] - positive[0][0]).abs().max() > 1e-3  # the embedding is not ignored


def test_other_mappers_and_bad_files_are_refused_with_names(encoded, global_mapper, local_mapper):
    (name,) = ELITESaveConcept.execute(encoded, "strict", False).result
    other = comfy_elite.LoadedMapper(**{**vars(global_mapper), "kv": {**global_mapper.kv, **{
        p: (w + 0.01, v) for p, (w, v) in list(global_mapper.kv.items())[:1]}}, "name": "other.safetensors"})
    with pytest.raises(ValueError, match="different weights: load"):
        ELITELoadConcept.execute(name, other, local_mapper)
    folder = folder_paths.get_folder_paths("elite_concepts")[0]
    save_file({"x": torch.zeros(2)}, os.path.join(folder, "not_a_concept.safetensors"))
    with pytest.raises(ValueError, match="not an ELITE concept"):
        ELITELoadConcept.execute("not_a_concept.safetensors", global_mapper)
    assert "was not found" in ELITELoadConcept.validate_inputs("missing.safetensors")
    with pytest.raises(ValueError, match="cannot be a file name"):
        ELITESaveConcept.execute(encoded, "../escape", False)
