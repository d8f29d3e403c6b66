"""Loader for ELITE mapper checkpoints in models/elite."""

from comfy_api.latest import io

from ..elite_core import comfy_adapter
from .elite_types import CATEGORY, GlobalMapperType


class ELITEGlobalMapperLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="ELITEGlobalMapperLoader",
            display_name="ELITE Global Mapper Loader",
            category=CATEGORY,
            description=(
                "Loads ELITE's global mapper (global_mapper.pt or .safetensors) from models/elite. "
                "It maps a CLIP ViT-L/14 image to word embeddings and carries ELITE's fine-tuned "
                "cross-attention K/V weights."
            ),
            inputs=[
                io.Combo.Input(
                    "mapper_name",
                    options=comfy_adapter.mapper_file_names(),
                    tooltip="The global mapper file in models/elite (not local_mapper.pt).",
                ),
            ],
            outputs=[GlobalMapperType.Output(display_name="global_mapper")],
        )

    @classmethod
    def execute(cls, mapper_name: str) -> io.NodeOutput:
        return io.NodeOutput(comfy_adapter.load_global_mapper(mapper_name))
