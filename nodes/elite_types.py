"""Socket types shared by the ELITE nodes, and schema helpers guarded by ComfyUI feature."""

import inspect

from comfy_api.latest import io

GlobalMapperType = io.Custom("ELITE_GLOBAL_MAPPER")
LocalMapperType = io.Custom("ELITE_LOCAL_MAPPER")
ConceptType = io.Custom("ELITE_CONCEPT")

CATEGORY = "ELITE"

CatVersionType = io.Custom("CATVERSION_ADAPTER")
CATVERSION_CATEGORY = "ELITE/CatVersion"


# Newer ComfyUI releases read search aliases and "advanced" (collapsed) widgets; 0.3.75 has neither.
_SCHEMA_FIELDS = set(inspect.signature(io.Schema).parameters)
_INPUT_TAKES_ADVANCED = "advanced" in inspect.signature(io.Float.Input).parameters


def schema(search_aliases: list[str] | None = None, **fields) -> io.Schema:
    """io.Schema with ``search_aliases`` where the running ComfyUI supports them."""
    if search_aliases and "search_aliases" in _SCHEMA_FIELDS:
        fields["search_aliases"] = search_aliases
    return io.Schema(**fields)


def advanced() -> dict:
    """Keyword arguments that mark an input as advanced where the running ComfyUI supports it."""
    return {"advanced": True} if _INPUT_TAKES_ADVANCED else {}
