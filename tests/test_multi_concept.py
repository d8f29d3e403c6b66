"""Several concepts in one image and region masks for the local branch: each concept's local term is
gated by its own placeholder only; a region of ones changes nothing, a region of zeros removes the
local term, and a region follows the layer grids."""

from __future__ import annotations

import pytest
import torch

from comfyui_elite.elite_core.comfyui import elite as comfy_elite
from comfyui_elite.elite_core.comfyui import elite_patch
from comfyui_elite.elite_core.elite import attn2_patches
from comfyui_elite.elite_core.elite.attn2_patches import ELITEAttn2Replace
from comfyui_elite.nodes.nodes_conditioning import ELITEConditioning
from elite_test_pack.unet_calls import cfg_batch, unet_eps

PROMPT = "a photo of S next to T on the beach"


@pytest.fixture(scope="module")
def two(tiny_clip, tiny_clip_vision, global_mapper, local_mapper, concept_image):
    mask = torch.zeros(1, 96, 128)
    mask[:, 16:80, 24:104] = 1.0
    a = comfy_elite.encode_concept(tiny_clip_vision, global_mapper, concept_image, local_mapper, mask)
    b = comfy_elite.encode_concept(tiny_clip_vision, global_mapper, concept_image.flip(2), local_mapper, mask.flip(2))
    assert a.key != b.key
    (positive,) = ELITEConditioning.execute(tiny_clip, a, PROMPT, "S", "primary word", b, "T").result
    negative = tiny_clip.encode_from_tokens_scheduled(tiny_clip.tokenize(""))[0][0]
    ids = [t[0] for t in tiny_clip.tokenize(PROMPT)["l"][0]]
    s_id, t_id = (tiny_clip.tokenize(w)["l"][0][1][0] for w in ("S", "T"))
    return dict(a=a, b=b, positive=positive, pos=positive[0][0], neg=negative, s=ids.index(s_id), t=ids.index(t_id))


def selections(model, two, monkeypatch) -> list[int]:
    """The placeholder position each local term is gated by, per call."""
    seen = []
    real = attn2_patches.local_term

    def spy(q, k, selection, *args, **kwargs):
        seen.append(int(selection[0].argmax()) if selection[0].any() else -1)
        return real(q, k, selection, *args, **kwargs)

    monkeypatch.setattr(attn2_patches, "local_term", spy)
    x, context = cfg_batch(two["pos"], two["neg"], [1, 0], 1)
    unet_eps(model, x, context, [1, 0])
    return seen


def test_each_concept_is_gated_by_its_own_placeholder(tiny_model, two, monkeypatch):
    both_words = two["pos"][0]
    assert not torch.equal(both_words[two["s"]], both_words[two["t"]])
    only_a = elite_patch.apply_elite(tiny_model, two["a"], two["positive"], 0.8)
    assert set(selections(only_a, two, monkeypatch)) == {two["s"]}
    monkeypatch.undo()
    only_b = elite_patch.apply_elite(tiny_model, two["b"], two["positive"], 0.8)
    assert set(selections(only_b, two, monkeypatch)) == {two["t"]}
    monkeypatch.undo()
    # both: 16 sites x 2 terms, each on its own token
    both = elite_patch.apply_elite(only_a, two["b"], two["positive"], 0.8)
    seen = selections(both, two, monkeypatch)
    assert sorted(seen) == sorted([two["s"]] * 16 + [two["t"]] * 16)


def test_both_concepts_words_are_in_the_prompt(tiny_clip, two):
    from comfyui_elite.nodes.nodes_conditioning import ELITEConditioning as Node

    (just_a,) = Node.execute(tiny_clip, two["a"], "a photo of S next to a dog on the beach", "S", "primary word").result
    # CLIP's text encoder is causal: what comes after S does not change S's vector; T's does change
    assert torch.equal(just_a[0][0][0, two["s"]], two["pos"][0, two["s"]])
    assert not torch.equal(just_a[0][0][0, two["t"]], two["pos"][0, two["t"]])


def test_bad_multi_concept_inputs_are_refused(tiny_model, tiny_clip, two):
    with pytest.raises(comfy_elite.ELITEInputError, match="its own placeholder"):
        ELITEConditioning.execute(tiny_clip, two["a"], PROMPT, "S", "primary word", two["b"], "S")
    with pytest.raises(comfy_elite.ELITEInputError, match="primary word"):
        ELITEConditioning.execute(tiny_clip, two["a"], PROMPT, "S", "all five words", two["b"], "T")
    with pytest.raises(comfy_elite.ELITEInputError, match="no placeholder 'T'"):
        ELITEConditioning.execute(tiny_clip, two["a"], "a photo of S", "S", "primary word", two["b"], "T")
    stranger = comfy_elite.ELITEConcept(words=two["a"].words + 1.0, global_kv=two["a"].global_kv, local=two["a"].local)
    with pytest.raises(comfy_elite.ELITEInputError, match="not one of the concepts"):
        elite_patch.apply_elite(tiny_model, stranger, two["positive"], 0.8)


def test_a_region_of_ones_changes_nothing_and_of_zeros_removes_the_local_term(tiny_model, two):
    x, context = cfg_batch(two["pos"], two["neg"], [1, 0], 1)
    plain = elite_patch.apply_elite(tiny_model, two["a"], two["positive"], 0.8)
    ones = elite_patch.apply_elite(tiny_model, two["a"], two["positive"], 0.8, region=torch.ones(1, 40, 40))
    zeros = elite_patch.apply_elite(tiny_model, two["a"], two["positive"], 0.8, region=torch.zeros(1, 40, 40))
    global_only = elite_patch.apply_global_kv(tiny_model, two["a"])
    eps = unet_eps(plain, x, context, [1, 0])
    assert torch.equal(unet_eps(ones, x, context, [1, 0]), eps)
    assert torch.equal(unet_eps(zeros, x, context, [1, 0]), unet_eps(global_only, x, context, [1, 0]))
    half = torch.zeros(1, 40, 40)
    half[:, :, :20] = 1.0
    halfway = unet_eps(elite_patch.apply_elite(tiny_model, two["a"], two["positive"], 0.8, region=half), x, context,
                       [1, 0])
    assert not torch.equal(halfway, eps) and not torch.equal(halfway, unet_eps(global_only, x, context, [1, 0]))


def test_the_region_follows_each_layers_grid():
    region = torch.zeros(1, 64, 64)
    region[:, :, :32] = 1.0  # left half
    replace = ELITEAttn2Replace("k", torch.zeros(1, 4, 8), lambda: torch.zeros(8, 8), lambda: torch.zeros(8, 8),
                                0.8, 1e9, 0.0, attention=None, region=region)
    for tokens, grid in ((16 * 16, 16), (8 * 8, 8), (4 * 4, 4)):
        weights = replace._region_weights(1, tokens, {"original_shape": [2, 4, 16, 16]}, torch.device("cpu"))
        expected = torch.zeros(grid, grid)
        expected[:, :grid // 2] = 1.0
        assert torch.equal(weights.view(grid, grid), expected)
    with pytest.raises(comfy_elite.ELITEInputError, match="NaN"):
        from comfyui_elite.elite_core.comfyui.elite_patch import check_region

        check_region(torch.full((1, 4, 4), float("nan")))
