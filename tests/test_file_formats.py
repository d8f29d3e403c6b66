"""The same weights give the same image whatever file they come in: a mapper as the official ``.pt``,
as its ``.safetensors`` conversion and as a renamed copy sample bit-identical latents through the
executor, for both loaders. (safetensors hands back tensors at the file's byte offsets, which the CPU
matmul rounds differently from aligned ones; the loaders copy them into storage of their own.)"""

from __future__ import annotations

import shutil

import pytest
import torch
from conftest import BASE_DIR, ELITE_MODELS
from safetensors.torch import load_file

from comfyui_elite.elite_core.elite.convert import convert
from elite_test_pack.in_process import run_prompt
from elite_test_pack.tiny_models import tiny_mapper_state_dict
from elite_test_pack.workflows import add_node, node_id, tiny_prompt


@pytest.fixture(scope="module")
def mapper_files() -> dict[str, tuple[str, str]]:
    """(global, local) file names of one pair of mappers in each format."""
    for kind, seed in (("global", 20), ("local", 21)):
        torch.save(tiny_mapper_state_dict(seed=seed), str(ELITE_MODELS / f"fmt_{kind}_mapper.pt"))
        convert(str(ELITE_MODELS / f"fmt_{kind}_mapper.pt"), str(ELITE_MODELS / f"fmt_{kind}_mapper.safetensors"))
        shutil.copyfile(ELITE_MODELS / f"fmt_{kind}_mapper.safetensors", ELITE_MODELS / f"fmt_{kind}_copy.safetensors")
    return {"pt": ("fmt_global_mapper.pt", "fmt_local_mapper.pt"),
            "safetensors": ("fmt_global_mapper.safetensors", "fmt_local_mapper.safetensors"),
            "renamed copy": ("fmt_global_copy.safetensors", "fmt_local_copy.safetensors")}


def sampled_latent(global_name: str, local_name: str, tag: str) -> torch.Tensor:
    prompt = tiny_prompt("02_elite_global_local", mapper_name=global_name, local_mapper_name=local_name)
    add_node(prompt, "SaveLatent", samples=[node_id(prompt, "KSampler"), 0], filename_prefix=f"formats/{tag}")
    executor = run_prompt(prompt)
    assert executor.success, [m for m in executor.status_messages if m[0] == "execution_error"]
    (saved,) = sorted((BASE_DIR / "output" / "formats").glob(f"{tag}_*.latent"))
    return load_file(str(saved))["latent_tensor"]


def test_a_mapper_samples_the_same_bits_from_every_file_format(mapper_files):
    latents = {fmt: sampled_latent(*names, tag=fmt.replace(" ", "_")) for fmt, names in mapper_files.items()}
    assert latents["pt"].abs().sum() > 0
    for fmt in ("safetensors", "renamed copy"):
        assert torch.equal(latents[fmt], latents["pt"]), fmt


def test_loaded_tensors_own_aligned_storage(mapper_files):
    """The cause, checked directly: every tensor a loader hands on starts on a 64-byte boundary, as
    torch's allocator gives, not at a file offset."""
    from comfyui_elite.elite_core.elite.checkpoint import load_mapper_state_dict

    for names in mapper_files.values():
        for name in names:
            state, _ = load_mapper_state_dict(str(ELITE_MODELS / name))
            assert all(t.data_ptr() % 64 == 0 for t in state.values()), name
