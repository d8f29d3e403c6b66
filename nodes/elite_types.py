"""Socket types shared by the ELITE nodes, and schema helpers guarded by ComfyUI feature."""

import inspect

from comfy_api.latest import io

GlobalMapperType = io.Custom("ELITE_GLOBAL_MAPPER")
LocalMapperType = io.Custom("ELITE_LOCAL_MAPPER")
ConceptType = io.Custom("ELITE_CONCEPT")

CATEGORY = "ELITE"

CatVersionType = io.Custom("CATVERSION_ADAPTER")
CATVERSION_CATEGORY = "ELITE/CatVersion"


# Newer ComfyUI releases read search aliases; 0.3.75 does not. The frontend folds "advanced" (expert)
# inputs away; 0.33.0 takes the flag as an argument, 0.3.75 passes it on through an input's extra_dict.
_SCHEMA_FIELDS = set(inspect.signature(io.Schema).parameters)
_INPUT_TAKES_ADVANCED = "advanced" in inspect.signature(io.Float.Input).parameters
SUPPORTS_SEARCH_ALIASES = "search_aliases" in _SCHEMA_FIELDS


def schema(search_aliases: list[str] | None = None, **fields) -> io.Schema:
    """io.Schema with ``search_aliases`` where the running ComfyUI supports them."""
    if search_aliases and SUPPORTS_SEARCH_ALIASES:
        fields["search_aliases"] = search_aliases
    return io.Schema(**fields)


def expert(item: io.Input) -> io.Input:
    """Marks an input as an expert setting: object_info says ``"advanced": true`` on every supported
    ComfyUI, and the frontend shows it only when the node's advanced inputs are shown (Nodes 2.0 by
    itself, the classic canvas with web/js/elite_widgets.js)."""
    if _INPUT_TAKES_ADVANCED:
        item.advanced = True
    elif isinstance(getattr(item, "extra_dict", None), dict):
        item.extra_dict["advanced"] = True
    return item
