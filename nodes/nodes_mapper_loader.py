"""Loaders for ELITE mapper checkpoints in models/elite."""

from comfy_api.latest import io

from ..elite_core import comfy_adapter
from .elite_types import CATEGORY, GlobalMapperType, LocalMapperType


def _mapper_input(which: str) -> io.Combo.Input:
    return io.Combo.Input(
        "mapper_name",
        options=comfy_adapter.mapper_file_names(),
        tooltip=f"The {which} mapper file in models/elite ({which}_mapper.pt or its .safetensors conversion).",
    )


class ELITEGlobalMapperLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="ELITEGlobalMapperLoader",
            display_name="ELITE Global Mapper Loader",
            category=CATEGORY,
            description=(
                "Loads ELITE's global mapper (global_mapper.pt) from models/elite. It maps a CLIP "
                "ViT-L/14 image to word embeddings and carries ELITE's fine-tuned cross-attention "
                "K/V weights."
            ),
            inputs=[_mapper_input("global")],
            outputs=[GlobalMapperType.Output(display_name="global_mapper")],
        )

    @classmethod
    def execute(cls, mapper_name: str) -> io.NodeOutput:
        return io.NodeOutput(comfy_adapter.load_global_mapper(mapper_name))


class ELITELocalMapperLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="ELITELocalMapperLoader",
            display_name="ELITE Local Mapper Loader",
            category=CATEGORY,
            description=(
                "Loads ELITE's local mapper (local_mapper.pt) from models/elite. It maps the masked "
                "object's CLIP patches to 256 tokens that every cross-attention layer attends to."
            ),
            inputs=[_mapper_input("local")],
            outputs=[LocalMapperType.Output(display_name="local_mapper")],
        )

    @classmethod
    def execute(cls, mapper_name: str) -> io.NodeOutput:
        return io.NodeOutput(comfy_adapter.load_local_mapper(mapper_name))
