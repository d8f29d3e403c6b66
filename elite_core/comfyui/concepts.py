"""Saved concepts in ComfyUI: ``models/elite_concepts/`` files (:mod:`..elite.concept_store`), and the
primary word exported as a textual-inversion embedding in ``models/embeddings/`` that core CLIP Text
Encode reads as ``embedding:<name>``."""

from __future__ import annotations

import logging
import os
import re

import numpy as np
import torch
from PIL import Image
from safetensors.torch import save_file

import folder_paths

from ..common import files
from ..common.checks import ELITEInputError, safe_file_stem
from ..common.images import image_to_uint8
from ..elite.concept import ELITEConcept, LocalBranch
from ..elite.concept_store import (
    CONCEPT_EXTENSIONS,
    ConceptFileError,
    kv_fingerprint,
    read_concept,
    write_concept,
    wrong_extension_message,
)
from .elite import LoadedMapper
from .folders import check_numbered_name_length, missing_file_message, register_folder, save_numbered

log = logging.getLogger("elite")

CONCEPT_FOLDER = "elite_concepts"
EMBEDDING_FOLDER = "embeddings"
PREVIEW_SIZE = 96
# the exported word is typed as embedding:<name> in a prompt, where a space ends the name and brackets weigh it
_NOT_IN_EMBEDDING_NAMES = re.compile(r"[\s()]")
_CONCEPT_NAME_RULE = ("any letters (of any script), digits and punctuation, except spaces, brackets, / \\ < > : \" | ? * "
                      "and control characters")


def register_concept_folder() -> None:
    register_folder(CONCEPT_FOLDER, set(CONCEPT_EXTENSIONS))


def concept_file_names() -> list[str]:
    return folder_paths.get_filename_list(CONCEPT_FOLDER)


def _preview(image: torch.Tensor | None) -> torch.Tensor | None:
    if image is None:
        return None
    frame = Image.fromarray(image_to_uint8(image[:1])[0]).resize((PREVIEW_SIZE, PREVIEW_SIZE), Image.BICUBIC)
    return torch.from_numpy(np.asarray(frame).copy())[None]


def check_concept_name(filename_prefix) -> str:
    """The concept's file name (before its counter): one every file system takes (:func:`safe_file_stem`),
    without spaces or brackets, so that ``embedding:<name>`` works in a prompt."""
    name = safe_file_stem(filename_prefix, "The concept name", "my_cat", _CONCEPT_NAME_RULE)
    found = _NOT_IN_EMBEDDING_NAMES.search(name)
    if found:
        kind = "brackets" if found.group() in "()" else "spaces"
        example = _NOT_IN_EMBEDDING_NAMES.sub("_", name).strip("_") or "my_cat"
        raise ELITEInputError(
            f"The concept name {filename_prefix!r} has {kind}: its word is used as embedding:<name> in a prompt, "
            f"where a space ends the name and brackets set a weight. Use '_' or '-' instead, e.g. {example!r}.")
    return name


def save_concept(concept: ELITEConcept, filename_prefix: str, image: torch.Tensor | None = None,
                 export_embedding: bool = True) -> tuple[str, str | None]:
    """Save ``concept`` as ``models/elite_concepts/<prefix>_<n>.safetensors`` and, with
    ``export_embedding``, its primary word (averaged over the images) as ``models/embeddings/<same
    name>.safetensors``. Returns the two paths."""
    name = check_concept_name(filename_prefix)
    check_concept_name_length(name, export_embedding)
    metadata = {"global_mapper": concept.global_name, "global_fingerprint": kv_fingerprint(concept.global_kv)}
    tokens = None
    if concept.local is not None:
        tokens = concept.local.tokens
        metadata.update(local_mapper=concept.local.name, local_fingerprint=kv_fingerprint(concept.local.kv()))
    preview = _preview(image)
    path = save_numbered(CONCEPT_FOLDER, name, lambda partial: write_concept(partial, concept.words, tokens, preview,
                                                                             metadata))
    log.info("ELITE: concept saved to %s", path)
    embedding = None
    if export_embedding:
        stem = os.path.splitext(os.path.basename(path))[0]
        embedding = os.path.join(folder_paths.get_folder_paths(EMBEDDING_FOLDER)[0], stem + ".safetensors")
        os.makedirs(os.path.dirname(embedding), exist_ok=True)
        word = concept.prompt_words(all_words=False).float().contiguous()  # (1, D)
        try:
            files.write_atomically(embedding, lambda partial: save_file(
                {"emb_params": word}, partial, metadata={"source": "ELITE concept " + os.path.basename(path)}),
                overwrite=False)
            log.info("ELITE: primary word exported as embedding:%s", stem)
        except FileExistsError:  # somebody's own embedding of that name: never replaced
            log.warning("ELITE: models/embeddings/%s.safetensors exists already and is kept; the concept's word was "
                        "not exported (the concept itself is saved as %s).", stem, path)
            embedding = None
    return path, embedding


def check_concept_name_length(filename_prefix: str, export_embedding: bool = True) -> None:
    """Refuse a name whose concept file (or exported embedding, named alike) would be too long for
    its folder's file system: ``<name>_00001.safetensors`` and the temporary name of the atomic write."""
    name = (filename_prefix or "").strip()
    check_numbered_name_length(CONCEPT_FOLDER, name, "concept name")
    if export_embedding:
        check_numbered_name_length(EMBEDDING_FOLDER, name, "concept name")


def missing_concept_message(concept_name) -> str | None:
    """Why ``concept_name`` cannot be loaded before it is opened (a format Load Concept does not offer, or
    no such file), or None. Load Concept's ``validate_inputs`` returns it: ComfyUI then skips its own
    check that the name is one of the listed files, so this is where an API prompt's other names stop."""
    if isinstance(concept_name, str) and os.path.splitext(concept_name)[1].lower() not in CONCEPT_EXTENSIONS:
        return wrong_extension_message(concept_name)
    return missing_file_message(CONCEPT_FOLDER, concept_name, "ELITE concept", "a concept saved by ELITE Save Concept")


def load_concept(concept_name: str, global_mapper: LoadedMapper, local_mapper: LoadedMapper | None = None
                 ) -> tuple[ELITEConcept, torch.Tensor | None]:
    """A saved concept, with the K/V of the mapper files it was made with. Returns it and its preview."""
    missing = missing_concept_message(concept_name)
    if missing:
        raise ELITEInputError(missing)
    path = folder_paths.get_full_path(CONCEPT_FOLDER, concept_name)
    try:
        tensors, metadata = read_concept(path)
    except ConceptFileError as exc:
        raise ELITEInputError(str(exc)) from None
    _check_mapper(metadata, "global", global_mapper.kv, global_mapper.name, concept_name)
    words = tensors["words"]
    if words.shape[-1] != global_mapper.widths.output_dim:
        raise ELITEInputError(f"The concept '{concept_name}' has {words.shape[-1]}-wide words; the global mapper "
                              f"'{global_mapper.name}' makes {global_mapper.widths.output_dim}-wide ones.")
    local = None
    if "local_tokens" in tensors:
        if local_mapper is None:
            log.warning("ELITE: the concept '%s' has local tokens; connect its local mapper (%s) to use them.",
                        concept_name, metadata.get("local_mapper"))
        else:
            _check_mapper(metadata, "local", local_mapper.kv_patcher.model.weights(), local_mapper.name, concept_name)
            if local_mapper.widths.output_dim != words.shape[-1]:
                raise ELITEInputError(
                    f"The concept '{concept_name}' has {words.shape[-1]}-wide local tokens; the local mapper "
                    f"'{local_mapper.name}' makes {local_mapper.widths.output_dim}-wide ones.")
            local = LocalBranch(tokens=tensors["local_tokens"], kv=local_mapper.kv_patcher.model.weights,
                                models=(local_mapper.kv_patcher,), name=local_mapper.name)
    elif local_mapper is not None:
        raise ELITEInputError(f"The concept '{concept_name}' was saved without local tokens: disconnect the local "
                              "mapper, or encode the image again with it and save that concept.")
    concept = ELITEConcept(words=words, global_kv=global_mapper.kv, local=local, global_name=global_mapper.name)
    return concept, tensors.get("preview")


def _check_mapper(metadata: dict, kind: str, kv, name: str, concept_name: str) -> None:
    expected = metadata.get(f"{kind}_fingerprint")
    if expected and kv_fingerprint(kv) != expected:
        raise ELITEInputError(
            f"The concept '{concept_name}' was made with the {kind} mapper '{metadata.get(f'{kind}_mapper')}', but the "
            f"connected {kind} mapper '{name}' has different weights: load '{metadata.get(f'{kind}_mapper')}'.")
