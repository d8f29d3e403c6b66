"""ELITE for ComfyUI: personalise Stable Diffusion 1.x from one concept image (Wei et al., ICCV 2023)."""

from comfy_api.latest import ComfyExtension

from .elite_core.comfyui import catversion, concepts, elite, scoring
from .nodes import ELITE_NODES
from .nodes.elite_types import register_prompt_check

WEB_DIRECTORY = "./web"  # web/docs/<node id>.md: the frontend's help page of each node

elite.register_model_folder()
catversion.register_model_folder()
concepts.register_concept_folder()
scoring.register_model_folder()
register_prompt_check(ELITE_NODES)  # widget values of the wrong type ("yes" for a boolean) refused as posted


class ELITEExtension(ComfyExtension):
    async def get_node_list(self):
        return list(ELITE_NODES)


async def comfy_entrypoint() -> ComfyExtension:
    return ELITEExtension()
