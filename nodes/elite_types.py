"""Socket types shared by the ELITE nodes."""

from comfy_api.latest import io

GlobalMapperType = io.Custom("ELITE_GLOBAL_MAPPER")
LocalMapperType = io.Custom("ELITE_LOCAL_MAPPER")
ConceptType = io.Custom("ELITE_CONCEPT")

CATEGORY = "ELITE"

CatVersionType = io.Custom("CATVERSION_ADAPTER")
CATVERSION_CATEGORY = "ELITE/CatVersion"
