"""The placeholder reaches the local branch through standard conditioning nodes and long prompts.

Mechanism: ELITE Conditioning stores the placeholder's encoded vector in the conditioning; the
patch's probe finds that exact vector in the UNet's text context at sampling time. These tests
sample for real and record which context token each local-branch call gated on.
"""

import pytest
import torch

import nodes

from comfyui_elite.elite_core.comfyui import elite as comfy_elite
from comfyui_elite.elite_core.comfyui import elite_patch
from comfyui_elite.elite_core.elite import attn2_patches

PROMPT = "a photo of S on the beach"


@pytest.fixture(scope="module")
def concept(tiny_clip_vision, global_mapper, local_mapper, concept_image):
    return comfy_elite.encode_concept(tiny_clip_vision, global_mapper, concept_image, local_mapper)


@pytest.fixture()
def gated_tokens(monkeypatch):
    """Per local-branch call: for each positive row, the gated context token (or None)."""
    calls = []
    original = attn2_patches.local_term

    def spy(q, k, selection, *args, **kwargs):
        calls.append([int(row.argmax()) if row.sum() > 0 else None for row in selection])
        return original(q, k, selection, *args, **kwargs)

    monkeypatch.setattr(attn2_patches, "local_term", spy)
    return calls


def encode(clip, text):
    return clip.encode_from_tokens_scheduled(clip.tokenize(text))


def sample(model, positive, negative, seed=0):
    latent = {"samples": torch.zeros(1, 4, 8, 8)}
    (out,) = nodes.common_ksampler(model, seed, 2, 5.0, "euler", "normal", positive, negative, latent)
    return out["samples"]


def elite_positive(clip, concept, text=PROMPT):
    positive, injection = comfy_elite.concept_conditioning(clip, concept, text, "S", all_words=False)
    return positive, injection.index


def test_direct_conditioning(tiny_model, tiny_clip, concept, gated_tokens):
    positive, index = elite_positive(tiny_clip, concept)
    model = elite_patch.apply_elite(tiny_model, concept, positive, 0.8)
    sample(model, positive, encode(tiny_clip, ""))
    assert gated_tokens and all(call == [index] for call in gated_tokens)


def test_through_timestep_range(tiny_model, tiny_clip, concept, gated_tokens):
    positive, index = elite_positive(tiny_clip, concept)
    (ranged,) = nodes.ConditioningSetTimestepRange().set_range(positive, 0.0, 1.0)
    model = elite_patch.apply_elite(tiny_model, concept, positive, 0.8)
    sample(model, ranged, encode(tiny_clip, ""))
    assert gated_tokens and all(call == [index] for call in gated_tokens)


@pytest.mark.parametrize("elite_first", [True, False])
def test_through_concat(tiny_model, tiny_clip, concept, gated_tokens, elite_first):
    positive, index = elite_positive(tiny_clip, concept)
    other = encode(tiny_clip, "golden hour, film grain")
    concat = nodes.ConditioningConcat()
    (joined,) = concat.concat(positive, other) if elite_first else concat.concat(other, positive)
    model = elite_patch.apply_elite(tiny_model, concept, positive, 0.8)
    sample(model, joined, encode(tiny_clip, ""))
    expected = index if elite_first else 77 + index
    assert gated_tokens and all(call == [expected] for call in gated_tokens)


def test_through_combine_only_the_elite_prompt_is_gated(tiny_model, tiny_clip, concept, gated_tokens):
    positive, index = elite_positive(tiny_clip, concept)
    (combined,) = nodes.ConditioningCombine().combine(positive, encode(tiny_clip, "a watercolor painting"))
    model = elite_patch.apply_elite(tiny_model, concept, positive, 0.8)
    sample(model, combined, encode(tiny_clip, ""))
    # One local-branch call per positive chunk: the ELITE prompt's rows gate on the placeholder,
    # the other prompt's rows on nothing.
    assert gated_tokens.count([index]) == gated_tokens.count([None]) > 0
    assert len(gated_tokens) == 2 * gated_tokens.count([index])


def test_long_prompt_and_longer_negative(tiny_model, tiny_clip, concept, gated_tokens):
    text = " ".join(["red"] * 80) + " S on the beach"
    positive, index = elite_positive(tiny_clip, concept, text)
    assert index > 77
    negative = encode(tiny_clip, " ".join(["blurry"] * 160))  # 3 chunks: the positive gets repeated
    model = elite_patch.apply_elite(tiny_model, concept, positive, 0.8)
    sample(model, positive, negative)
    assert gated_tokens and all(call == [index] for call in gated_tokens)


def test_a_foreign_prompt_gets_no_local_term(tiny_model, tiny_clip, concept, gated_tokens):
    positive, _ = elite_positive(tiny_clip, concept)
    model = elite_patch.apply_elite(tiny_model, concept, positive, 0.8)
    global_only = elite_patch.apply_global_kv(tiny_model, concept)
    other = encode(tiny_clip, "a photo of a dog")
    negative = encode(tiny_clip, "")
    assert torch.equal(sample(model, other, negative), sample(global_only, other, negative))
    assert gated_tokens and all(call == [None] for call in gated_tokens)
