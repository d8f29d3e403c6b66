"""Find the ELITE pack's modules from test code, whichever way the pack was loaded.

ComfyUI imports a custom node pack under a module name derived from its path. Tests refer to it as
``comfyui_elite``: once ComfyUI has loaded the pack, :func:`alias_loaded_pack` registers that alias
for the very same module objects, so classes seen by tests and by the executor are identical.
Before that (e.g. a script writing demo weights), ``elite_core`` is imported on its own; it has
no ComfyUI imports outside ``elite_core/comfyui/``.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
PACK_ALIAS = "comfyui_elite"
STANDALONE_CORE = "elite_core"


def alias_loaded_pack() -> object:
    """Alias the pack ComfyUI loaded (and its submodules) as ``comfyui_elite``; return it."""
    if PACK_ALIAS in sys.modules:
        return sys.modules[PACK_ALIAS]
    init = REPO_ROOT / "__init__.py"
    for name, module in list(sys.modules.items()):
        file = getattr(module, "__file__", None)
        if file and Path(file).resolve() == init:
            for sub_name, sub in list(sys.modules.items()):
                if sub_name == name or sub_name.startswith(name + "."):
                    sys.modules[PACK_ALIAS + sub_name[len(name):]] = sub
            return module
    raise RuntimeError("The ELITE pack has not been loaded by ComfyUI in this process.")


def elite_core_module(name: str):
    """``elite_core.<name>`` from the loaded pack, or from a standalone import of elite_core."""
    if PACK_ALIAS in sys.modules:
        return importlib.import_module(f"{PACK_ALIAS}.elite_core.{name}")
    if STANDALONE_CORE not in sys.modules:
        spec = importlib.util.spec_from_file_location(
            STANDALONE_CORE, REPO_ROOT / "elite_core" / "__init__.py",
            submodule_search_locations=[str(REPO_ROOT / "elite_core")],
        )
        module = importlib.util.module_from_spec(spec)
        sys.modules[STANDALONE_CORE] = module
        spec.loader.exec_module(module)
    return importlib.import_module(f"{STANDALONE_CORE}.{name}")
