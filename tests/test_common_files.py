"""The shared file helpers (elite_core/common/files.py).

One reading of an image file for the whole pack: a phone photo stored sideways with an EXIF
orientation is turned upright, as ComfyUI's Load Image does, by the nodes' helpers, the trainers'
data, CatVersion's command line and the evaluation alike. And one way of saving: atomically, with
the permissions of any new file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from comfyui_elite.elite_core.common.files import open_oriented, read_image, read_mask

REPO = Path(__file__).resolve().parents[1]
ROTATED_90_CW = 6  # EXIF orientation: the stored pixels must be turned 90 degrees clockwise


@pytest.fixture(scope="module")
def sideways(tmp_path_factory) -> tuple[Path, Path, np.ndarray]:
    """A 40 x 24 photo stored sideways (orientation 6) and its mask, and the upright pixels (24 wide, 40 tall)."""
    folder = tmp_path_factory.mktemp("exif")
    gen = np.random.default_rng(0)
    stored = gen.integers(0, 256, (24, 40, 3), dtype=np.uint8)  # H 24, W 40 as stored
    stored[:, :8] = 255  # a bright band on the stored image's left edge
    exif = Image.Exif()
    exif[0x0112] = ROTATED_90_CW
    Image.fromarray(stored).save(folder / "photo.png", exif=exif)
    mask = np.zeros((24, 40), dtype=np.uint8)
    mask[:, :8] = 255
    Image.fromarray(mask).save(folder / "mask.png", exif=exif)
    upright = np.rot90(stored, k=-1)  # 90 degrees clockwise: the left edge becomes the top
    return folder / "photo.png", folder / "mask.png", upright


def test_read_image_and_read_mask_turn_the_photo_upright(sideways):
    photo, mask, upright = sideways
    image = read_image(str(photo))
    assert image.shape == (1, 40, 24, 3)
    assert torch.equal((image[0] * 255).round().to(torch.uint8), torch.from_numpy(upright.copy()))
    object_mask = read_mask(str(mask))
    assert object_mask.shape == (1, 40, 24)
    assert object_mask[0, :8].min() == 1 and object_mask[0, 8:].max() == 0  # the band is now at the top


def test_the_trainers_and_the_evaluation_see_the_same_upright_photo(sideways, monkeypatch):
    photo, mask, upright = sideways
    monkeypatch.syspath_prepend(str(REPO))
    from elite_training.data.objects import read_mask as training_mask

    assert np.array_equal(np.asarray(open_oriented(str(photo)).convert("RGB")), upright)
    assert training_mask(str(mask), (24, 40)).shape == (40, 24)
    assert training_mask(str(mask), (24, 40))[:8].all() and not training_mask(str(mask), (24, 40))[8:].any()
    from elite_eval.scoring import _pil

    assert np.array_equal(np.asarray(_pil(photo)), upright)


def test_saved_files_get_the_permissions_of_any_new_file(tmp_path):
    """safetensors writes owner-only files (0600); what the pack saves is readable as any file the user
    makes (a shared ComfyUI's other users, a backup job), whatever the writer did."""
    from safetensors.torch import save_file

    from comfyui_elite.elite_core.common.files import FILE_MODE, write_atomically

    bare = tmp_path / "bare.safetensors"
    save_file({"x": torch.zeros(2)}, str(bare))
    kept = tmp_path / "kept.safetensors"
    write_atomically(str(kept), lambda partial: save_file({"x": torch.zeros(2)}, partial))
    probe = tmp_path / "probe"
    probe.touch()
    assert FILE_MODE == probe.stat().st_mode & 0o777
    assert kept.stat().st_mode & 0o777 == FILE_MODE
    assert bare.stat().st_mode & 0o777 != FILE_MODE or FILE_MODE == 0o600  # the writer's own choice differs


def test_two_writers_of_one_name_never_write_into_the_same_file_and_the_first_claim_wins(tmp_path):
    """Two processes saving the same numbered name at once (the command-line trainer and the node,
    two ComfyUIs sharing models/): each writes its own temporary file, and a claim that comes second
    gets FileExistsError instead of replacing the first writer's file."""
    from comfyui_elite.elite_core.common.files import write_atomically

    target = tmp_path / "concept_00001.safetensors"
    temporaries = []

    def first(partial):
        temporaries.append(partial)
        # the other process saves its file under the same name while this one is still writing
        write_atomically(str(target), lambda other: (temporaries.append(other), Path(other).write_bytes(b"other")),
                         overwrite=False)
        Path(partial).write_bytes(b"first")

    with pytest.raises(FileExistsError):
        write_atomically(str(target), first, overwrite=False)
    assert len(set(temporaries)) == 2 and target.read_bytes() == b"other"
    assert sorted(p.name for p in tmp_path.iterdir()) == [target.name]  # no temporary file left behind
    write_atomically(str(target), lambda partial: Path(partial).write_bytes(b"replaced"))  # overwrite=True replaces
    assert target.read_bytes() == b"replaced"


# --------------------------------------------------------------------------- refused pickles

TORCH_ADVICE = ("weights_only` set to `False`", "weights_only=False will", "add_safe_globals", "safe_globals(",
                "likely succeed", "trust the source")
WORDINGS = {  # what torch has said for a refused object, by version (the last one: an allowed global's bad class)
    "builtins.print": "Weights only load failed. This file can still be loaded, to do so you have two options. "
                      "(1) Re-running `torch.load` with `weights_only` set to `False` will likely succeed. "
                      "WeightsUnpickler error: Unsupported global: GLOBAL builtins.print was not an allowed global by "
                      "default. Please use `torch.serialization.add_safe_globals([print])`.",
    "posix.system": "Weights only load failed. In PyTorch 2.6, we changed the default value of the `weights_only` "
                    "argument. Re-running `torch.load` with `weights_only` set to `False` will likely succeed.\n\n\n"
                    "Trying to load unsupported GLOBAL posix.system whose module posix is blocked.",
    "collections.Counter": "Weights only load failed. WeightsUnpickler error: Can only build Tensor, Parameter, "
                           "OrderedDict or types allowlisted via `add_safe_globals`, but got <class 'collections.Counter'>",
}


@pytest.mark.parametrize("refused", sorted(WORDINGS))
def test_a_refused_pickle_names_the_object_in_every_wording_and_never_passes_torchs_advice(tmp_path, refused):
    import pickle

    from comfyui_elite.elite_core.common.files import describe_pickle_error

    path = tmp_path / "model.pt"
    path.write_bytes(b"\x80\x02}q\x00.")
    message = describe_pickle_error(str(path), pickle.UnpicklingError(WORDINGS[refused]), "ELITE mappers",
                                    "models/elite/", convert="python -m elite_core.convert")
    assert f"'model.pt' was refused: it needs the Python object '{refused}'" in message
    assert "Get the .safetensors file" in message and "python -m elite_core.convert" in message
    assert not [advice for advice in TORCH_ADVICE if advice in message]


class _RunsAShell:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))


def test_the_loaders_refuse_a_pickle_that_would_run_a_command(tmp_path):
    """A real payload (os.system, blocked by module in this torch) through the mapper and adapter
    loaders: refused by name, with safe advice, and the command never runs."""
    from comfyui_elite.elite_core.catversion.prefix import CatVersionFormatError, read_catversion_file
    from comfyui_elite.elite_core.elite.checkpoint import MapperFormatError, load_mapper_state_dict

    marker = tmp_path / "ran"
    for name, load, error in (("mapper.pt", load_mapper_state_dict, MapperFormatError),
                              ("adapter.bin", read_catversion_file, CatVersionFormatError)):
        path = tmp_path / name
        torch.save({"x": torch.zeros(1), "payload": _RunsAShell(marker)}, str(path))
        with pytest.raises(error) as refused:
            load(str(path))
        message = str(refused.value)
        assert f"'{name}' was refused: it needs the Python object '" in message and "system" in message
        assert "Do not load it with weights_only=False" in message
        assert not [advice for advice in TORCH_ADVICE if advice in message]
    assert not marker.exists()


def test_unreadable_pickles_and_git_lfs_pointers_get_no_torch_text(tmp_path):
    from comfyui_elite.elite_core.elite.checkpoint import MapperFormatError, load_mapper_state_dict

    pointer = tmp_path / "global_mapper.pt"
    pointer.write_text("version https://git-lfs.github.com/spec/v1\noid sha256:0123\nsize 192296960\n")
    with pytest.raises(MapperFormatError, match="'global_mapper.pt' is a Git LFS pointer"):
        load_mapper_state_dict(str(pointer))
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"\x80\x02not a pickle at all")
    with pytest.raises(MapperFormatError) as refused:
        load_mapper_state_dict(str(junk))
    assert "Could not read 'junk.pt' as a weights-only torch checkpoint" in str(refused.value)
    assert not [advice for advice in TORCH_ADVICE if advice in str(refused.value)]
