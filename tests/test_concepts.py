"""Saved concepts: save -> load gives bit-identical words and tokens and the same eps; the exported
embedding, used as embedding:<name> in core CLIP Text Encode, gives ELITE Conditioning's conditioning;
wrong mappers and bad files are refused with their names: damaged contents (NaN, 0 images, the wrong
number of local tokens), damaged or disguised files, and formats Load Concept does not offer, also
by name through the API. Names in any language are saved; names no file system takes are refused."""

from __future__ import annotations

import os

import pytest
import torch
from conftest import BASE_DIR, TINY_GLOBAL_MAPPER
from safetensors.torch import save_file

import folder_paths

from comfyui_elite.elite_core.comfyui import concepts as comfy_concepts
from comfyui_elite.elite_core.comfyui import elite as comfy_elite
from comfyui_elite.elite_core.comfyui import elite_patch
from comfyui_elite.elite_core.comfyui.catversion_files import check_filename_prefix
from comfyui_elite.elite_core.common.checks import InputError, safe_file_stem
from comfyui_elite.elite_core.elite.concept_store import write_concept
from comfyui_elite.nodes.nodes_concepts import ELITELoadConcept, ELITESaveConcept
from elite_test_pack import hostile_files
from elite_test_pack.in_process import submit
from elite_test_pack.unet_calls import cfg_batch, unet_eps
from elite_test_pack.workflows import add_node

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


# --------------------------------------------------------------------------- damaged concept files

CONCEPTS = BASE_DIR / "models" / "elite_concepts"
SAVE_AGAIN = "Save the concept again (ELITE Encoder on its photo, then ELITE Save Concept)"


@pytest.fixture()
def placed():
    """``placed(name, write)``: ``write(path)`` makes models/elite_concepts/<name>, removed afterwards."""
    made = []

    def place(name: str, write) -> str:
        path = CONCEPTS / name
        write(str(path))
        made.append(path)
        return name

    yield place
    for path in made:
        path.unlink(missing_ok=True)


def concept_file(words: torch.Tensor, tokens: torch.Tensor | None = None):
    """A writer of a concept file with these tensors, through the pack's own writer."""
    return lambda path: write_concept(path, words, tokens, None, {})


def good_words(images: int = 1) -> torch.Tensor:
    return torch.randn(images, 5, 768, generator=torch.Generator().manual_seed(images))


def good_tokens(images: int = 1, per_image: int = 256) -> torch.Tensor:
    return torch.randn(images, per_image, 768, generator=torch.Generator().manual_seed(7))


def refusal(name: str, global_mapper, local_mapper=None) -> str:
    with pytest.raises(ValueError) as refused:
        ELITELoadConcept.execute(name, global_mapper, local_mapper)
    return str(refused.value)


def with_nan(tensor: torch.Tensor, value: float = float("nan")) -> torch.Tensor:
    tensor = tensor.clone()
    tensor[0, 1, 2] = value
    return tensor


CONTENT_CASES = {
    # case: (words, local tokens, what the user reads)
    "nan words": (with_nan(good_words()), None,
                  "its words hold 1 NaN or infinite value (of 3,840); they must all be finite numbers"),
    "inf local tokens": (good_words(), with_nan(good_tokens(), float("inf")),
                         "its local tokens hold 1 NaN or infinite value (of 196,608)"),
    "0 images": (torch.zeros(0, 5, 768), None,
                 "it holds 0 images (words (0, 5, 768) float32); a concept has the words of at least one image"),
    "7 local tokens": (good_words(), good_tokens(per_image=7),
                       "its local tokens are 7 per image (1, 7, 768) float32; expected (1, 256, 768): 256 per image"),
    "counts disagree": (good_words(2), good_tokens(1),
                        "its local tokens (1, 256, 768) float32 do not match its words (2, 5, 768) float32: expected "
                        "(2, 256, 768)"),
    "4 words": (torch.zeros(1, 4, 768), None,
                "its words are 4 per image (1, 4, 768) float32; expected (images, 5, width) floats"),
    "whole-number words": (torch.zeros(1, 5, 768, dtype=torch.int32), None,
                           "its words are (1, 5, 768) int32, not floating-point numbers"),
}


@pytest.mark.parametrize("case", CONTENT_CASES)
def test_a_damaged_concept_names_the_file_and_what_was_expected(placed, global_mapper, case):
    words, tokens, says = CONTENT_CASES[case]
    name = placed(case.replace(" ", "_") + ".safetensors", lambda path: write_concept(
        path, words, tokens, None, {}) if words.is_floating_point() else save_file(
        {"words": words}, path, metadata={"format": "elite-concept", "version": "1"}))
    message = refusal(name, global_mapper)
    assert message.startswith(f"'{name}' is a damaged ELITE concept: {says}"), message
    assert SAVE_AGAIN in message and "models/elite_concepts/" in message


def test_a_good_concept_file_of_the_same_writer_loads(placed, global_mapper):
    """The cases above can fail only on what they damaged: the same writer's good file loads."""
    name = placed("good.safetensors", concept_file(good_words(2)))
    (concept,) = ELITELoadConcept.execute(name, global_mapper).result
    assert torch.equal(concept.words, good_words(2))


def _real_concept_bytes(tmp_path) -> bytes:
    path = tmp_path / "real.safetensors"
    write_concept(str(path), good_words(), good_tokens(), None, {"format": "elite-concept"})
    return path.read_bytes()


def test_an_empty_file_says_so(placed, global_mapper):
    name = placed("empty.safetensors", lambda path: open(path, "wb").close())
    message = refusal(name, global_mapper)
    assert message.startswith("'empty.safetensors' is empty (0 bytes). " + SAVE_AGAIN), message


def test_a_huge_header_is_refused_before_it_is_read(placed, global_mapper):
    name = placed("huge_header.safetensors",
                  lambda path: open(path, "wb").write(hostile_files.safetensors_huge_header(2**40)))
    message = refusal(name, global_mapper)
    assert message.startswith("'huge_header.safetensors' is not a safetensors file: its first bytes declare a "
                              "1,099,511,627,776-byte header, and a safetensors header is at most 100,000,000 bytes "
                              "(the file has 27)"), message
    assert SAVE_AGAIN in message


def test_a_truncated_file_says_how_much_is_missing(placed, global_mapper, tmp_path):
    data = _real_concept_bytes(tmp_path)
    name = placed("cut.safetensors", lambda path: open(path, "wb").write(hostile_files.truncated(data, 0.5)))
    message = refusal(name, global_mapper)
    assert message.startswith(f"'cut.safetensors' is truncated: it has {len(data) // 2:,} bytes of the "
                              f"{len(data):,} its header declares. {SAVE_AGAIN}"), message


def test_a_pickle_renamed_to_safetensors_is_named_and_never_unpickled(placed, global_mapper, capsys):
    name = placed("renamed.safetensors", lambda path: hostile_files.pickle_with_payload(path, {"words": good_words()}))
    message = refusal(name, global_mapper)
    assert message.startswith("'renamed.safetensors' is not a safetensors file: it is a pickle (a torch .pt / .ckpt "
                              "file) renamed to .safetensors. It was not opened (loading a pickle can run code). "
                              + SAVE_AGAIN), message
    assert hostile_files.PICKLE_MARKER not in capsys.readouterr().out


def _load_prompt(concept_name: str) -> dict:
    prompt = {}
    loader = add_node(prompt, "ELITEGlobalMapperLoader", mapper_name=TINY_GLOBAL_MAPPER)
    concept = add_node(prompt, "ELITELoadConcept", concept_name=concept_name, global_mapper=[loader, 0])
    add_node(prompt, "ELITESaveConcept", concept=[concept, 0], filename_prefix="never_written", export_embedding=False)
    return prompt


@pytest.mark.parametrize("name", ["by_name.pt", "by_name.ckpt", "by_name.sft"])
def test_another_format_sent_by_name_through_the_api_is_refused_when_validated(placed, capsys, name):
    placed(name, lambda path: hostile_files.pickle_with_payload(path, {"words": good_words()}))
    assert name not in comfy_concepts.concept_file_names()  # not offered in the list
    executor, refused = submit(_load_prompt(name))
    assert executor is None, "the prompt ran"
    _, node_errors = refused
    (details,) = [e["details"] for errors in node_errors.values() for e in errors["errors"]]
    assert details.startswith(f"concept_name - '{name}' is not a concept file ELITE Load Concept opens: it has "
                              f".{name.rsplit('.', 1)[1]}, and concepts are the .safetensors files ELITE Save "
                              "Concept writes into models/elite_concepts/."), details
    assert ("A pickle (.pt, .pth, .bin, .ckpt) is never opened" in details) == (not name.endswith(".sft"))
    assert hostile_files.PICKLE_MARKER not in capsys.readouterr().out
    assert not list(CONCEPTS.glob("never_written*"))


def test_a_damaged_concept_through_the_api_names_the_file(placed):
    name = placed("nan_by_api.safetensors", concept_file(with_nan(good_words())))
    executor, refused = submit(_load_prompt(name))
    assert executor is not None, refused  # a damaged file is only seen when it is read
    (error,) = [data for event, data in executor.status_messages if event == "execution_error"]
    assert error["exception_message"].startswith(f"'{name}' is a damaged ELITE concept: its words hold 1 NaN")


# --------------------------------------------------------------------------- names


@pytest.mark.parametrize("prefix", ["猫_Katze-é", "my..concept", "Ünïcødé.v2"])
def test_names_in_any_language_and_with_dots_inside_are_saved_and_load(encoded, global_mapper, prefix):
    assert ELITESaveConcept.validate_inputs(filename_prefix=prefix) is True
    (name,) = ELITESaveConcept.execute(encoded, prefix, True).result
    assert name == f"{prefix}_00001.safetensors"
    assert (CONCEPTS / name).is_file()
    assert os.path.isfile(os.path.join(folder_paths.get_folder_paths("embeddings")[0], name))
    assert name in comfy_concepts.concept_file_names()
    (loaded,) = ELITELoadConcept.execute(name, global_mapper).result
    assert torch.equal(loaded.words, encoded.words)
    assert check_filename_prefix(prefix) == prefix  # CatVersion's adapters take the same names


@pytest.mark.parametrize("prefix, why", [
    ("../x", "it contains a folder separator ('/' or '\\'): give a name, not a path"),
    ("a\\b", "it contains a folder separator"),
    ("..", "'.' and '..' name folders, not files"),
    (".", "'.' and '..' name folders, not files"),
    ("a:b", "it contains ':', which Windows does not allow in file names"),
    ("what?", "it contains '?', which Windows does not allow"),
    ("tab\there", "it contains the control character U+0009"),
    ("trailing.", "it ends with '.', which Windows drops from file names"),
    (".hidden", "it starts with '.', which hides the file"),
    ("  ", "it is empty"),
])
def test_names_no_file_system_takes_are_refused_by_both_savers(encoded, prefix, why):
    for saver, what in ((lambda p: ELITESaveConcept.execute(encoded, p, False), "The concept name"),
                        (check_filename_prefix, "The adapter name")):
        with pytest.raises(InputError) as refused:
            saver(prefix)
        assert str(refused.value).startswith(f"{what} {prefix!r} cannot be a file name: {why}"), str(refused.value)
        rule = ", spaces and punctuation, except" if what == "The adapter name" else " and punctuation, except spaces, brackets"
        assert f"Use any letters (of any script), digits{rule}" in str(refused.value)
    assert ELITESaveConcept.validate_inputs(filename_prefix=prefix).startswith(f"The concept name {prefix!r} cannot")
    assert not list(CONCEPTS.glob("*x_0*"))


@pytest.mark.parametrize("prefix, kind, example", [("my cat", "spaces", "my_cat"), ("cat(2)", "brackets", "cat_2")])
def test_concept_names_keep_the_embedding_word_typeable(encoded, prefix, kind, example):
    with pytest.raises(InputError) as refused:
        ELITESaveConcept.execute(encoded, prefix, True)
    assert str(refused.value) == (
        f"The concept name {prefix!r} has {kind}: its word is used as embedding:<name> in a prompt, where a space "
        f"ends the name and brackets set a weight. Use '_' or '-' instead, e.g. {example!r}.")
    assert check_filename_prefix(prefix) == prefix  # an adapter's name is no prompt word


def test_a_name_is_saved_in_its_composed_form():
    """'é' typed as e + combining accent (as macOS hands it over) is saved as the one character."""
    assert safe_file_stem("Cafe\u0301", "The name", "x") == "Caf\u00e9"
