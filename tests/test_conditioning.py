"""ELITEConditioning against an independent text-encoder computation (docs/reference/elite.md §6)."""

import pytest
import torch
from conftest import COMFY_DIR
from transformers import CLIPTokenizer

from comfyui_elite.elite_core.comfyui import elite as comfy_elite
from comfyui_elite.elite_core.elite.concept import ELITEConcept
from comfyui_elite.nodes.nodes_conditioning import ELITEConditioning


@pytest.fixture(scope="module")
def concept(global_mapper):
    gen = torch.Generator().manual_seed(21)
    return ELITEConcept(words=torch.randn(1, 5, 768, generator=gen), global_kv=global_mapper.kv)


@pytest.fixture(scope="module")
def hf_tokenizer():
    return CLIPTokenizer.from_pretrained(str(COMFY_DIR / "comfy" / "sd1_tokenizer"))


def reference_encode(clip, ids: list[int], words: torch.Tensor | None = None, k: int = 0) -> torch.Tensor:
    """ELITE's injected text forward, restated: raw token embeddings, the L words written at k with
    the following tokens shifted right by L-1 (last L-1 fall off), then positions and the encoder."""
    text_model = clip.cond_stage_model.clip_l.transformer.text_model
    ids_t = torch.tensor(ids)
    emb = text_model.embeddings.token_embedding.weight[ids_t].float()
    e = emb.clone()
    if words is not None:
        n = words.shape[0]
        e[k + n:] = emb[k + 1: len(ids) - n + 1]
        e[k:k + n] = words
    with torch.no_grad():
        return text_model(embeds=e[None], input_tokens=ids_t[None])[0]


def encode(clip, concept, text, placeholder="S", words="primary word"):
    (conditioning,) = ELITEConditioning.execute(clip, concept, text, placeholder, words).result
    assert len(conditioning) == 1 and "pooled_output" in conditioning[0][1]
    return conditioning[0][0]


def plain(clip, text):
    return clip.encode_from_tokens_scheduled(clip.tokenize(text))[0][0]


def test_primary_word_matches_reference_and_changes_only_later_positions(tiny_clip, concept, hf_tokenizer,
                                                                        record_parity):
    text = "a photo of S on the beach"
    ids = hf_tokenizer(text, padding="max_length", max_length=77).input_ids
    k = ids.index(338)
    assert k == 4  # BOS a photo of S
    cond = encode(tiny_clip, concept, text)
    expected = reference_encode(tiny_clip, ids, concept.words[0, :1], k)
    record_parity(cond, expected, "(conditioning, w0)")
    torch.testing.assert_close(cond, expected, atol=1e-5, rtol=0)
    base = plain(tiny_clip, text)
    assert torch.equal(cond[:, :k], base[:, :k])
    assert ((cond[0, k:] - base[0, k:]).abs().amax(dim=-1) > 1e-4).all()


def test_all_five_words_shift_like_the_reference(tiny_clip, concept, hf_tokenizer, record_parity):
    text = "a S wearing sunglasses"
    ids = hf_tokenizer(text, padding="max_length", max_length=77).input_ids
    cond = encode(tiny_clip, concept, text, words="all five words")
    expected = reference_encode(tiny_clip, ids, concept.words[0], ids.index(338))
    record_parity(cond, expected, "(conditioning, five words)")
    torch.testing.assert_close(cond, expected, atol=1e-5, rtol=0)


def test_prompt_weight_on_the_placeholder_is_kept(tiny_clip, concept, hf_tokenizer):
    weighted = encode(tiny_clip, concept, "a photo of (S:1.3)")
    ids = hf_tokenizer("a photo of S", padding="max_length", max_length=77).input_ids
    unweighted = reference_encode(tiny_clip, ids, concept.words[0, :1], 4)
    empty = plain(tiny_clip, "")
    # ComfyUI weights a token by pushing it away from the empty prompt's encoding.
    expected = unweighted.clone()
    expected[:, 4] = (unweighted[:, 4] - empty[:, 4]) * 1.3 + empty[:, 4]
    torch.testing.assert_close(weighted, expected, atol=1e-5, rtol=0)


def test_placeholder_in_the_second_chunk_of_a_long_prompt(tiny_clip, concept):
    filler = " ".join(["red"] * 80)
    text = f"{filler} S in a garden"
    cond, injection = comfy_elite.concept_conditioning(tiny_clip, concept, text, "S", all_words=False)
    base = plain(tiny_clip, text)
    assert cond[0][0].shape == base.shape == (1, 154, 768)
    assert injection.index >= 77
    k = injection.index
    assert torch.equal(cond[0][0][:, :k], base[:, :k])
    assert (cond[0][0][0, k] - base[0, k]).abs().max() > 1e-4
    ids = [t for t, _ in tiny_clip.tokenize(text)["l"][1]]
    expected = reference_encode(tiny_clip, ids, concept.words[0, :1], k - 77)
    torch.testing.assert_close(cond[0][0][:, 77:], expected, atol=1e-5, rtol=0)


def test_every_occurrence_is_replaced_and_the_last_is_the_index(tiny_clip, concept):
    _, injection = comfy_elite.concept_conditioning(tiny_clip, concept, "S next to S", "S", all_words=False)
    assert injection.positions == (1, 4)
    assert injection.index == 4


def test_placeholder_is_matched_as_a_token_not_a_substring(tiny_clip, concept):
    # "S," is found (punctuation splits), "Sam" is a different token and is not.
    _, injection = comfy_elite.concept_conditioning(tiny_clip, concept, "a photo of S, smiling", "S", False)
    assert injection.positions == (4,)
    with pytest.raises(comfy_elite.ELITEInputError, match="The prompt has no placeholder 'S'"):
        comfy_elite.concept_conditioning(tiny_clip, concept, "a photo of Sam", "S", False)


def test_custom_placeholder(tiny_clip, concept):
    cond_custom = encode(tiny_clip, concept, "a photo of sks", placeholder="sks")
    cond_default = encode(tiny_clip, concept, "a photo of S")
    torch.testing.assert_close(cond_custom[:, 4:], cond_default[:, 4:], atol=1e-6, rtol=0)


@pytest.mark.parametrize(
    "placeholder, message",
    [
        ("elitetokenthing", "becomes 3 CLIP tokens; it must be exactly one"),
        ("my concept", "must be a single word without spaces"),
        ("(S:1.2)", "must be a single word without spaces"),
        ("", "must be a single word"),
    ],
)
def test_unusable_placeholders_are_refused(tiny_clip, concept, placeholder, message):
    with pytest.raises(comfy_elite.ELITEInputError, match=message.replace("(", r"\(")):
        encode(tiny_clip, concept, f"a photo of {placeholder}", placeholder=placeholder)


def test_five_words_that_do_not_fit_the_chunk_are_refused(tiny_clip, concept):
    text = " ".join(["red"] * 73) + " S"
    with pytest.raises(comfy_elite.ELITEInputError, match="too close to the end of a 77-token chunk"):
        encode(tiny_clip, concept, text, words="all five words")


def test_non_sd1_clip_is_refused(concept):
    class SDXLClip:
        def tokenize(self, text):
            return {"g": [[(49406, 1.0)]], "l": [[(49406, 1.0)]]}

        def encode_from_tokens(self, tokens, return_pooled=False):
            raise AssertionError("an SDXL CLIP must be refused before it encodes")

    with pytest.raises(comfy_elite.ELITEInputError, match=r"text encoders \['g', 'l'\]; ELITE works with Stable Diffusion 1.x"):
        encode(SDXLClip(), concept, "a photo of S")


def test_mapper_width_must_match_sd1_text_width(tiny_clip, global_mapper):
    narrow = ELITEConcept(words=torch.zeros(1, 5, 1024), global_kv=global_mapper.kv)
    with pytest.raises(comfy_elite.ELITEInputError, match="1024 wide; SD1.x CLIP needs 768"):
        encode(tiny_clip, narrow, "a photo of S")
