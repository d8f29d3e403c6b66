"""ELITEEncoder: concept image -> ELITE concept (mapped word embeddings)."""

from comfy_api.latest import io

from ..elite_core import comfy_adapter
from .elite_types import CATEGORY, ConceptType, GlobalMapperType


class ELITEEncoder(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="ELITEEncoder",
            display_name="ELITE Encoder",
            category=CATEGORY,
            description=(
                "Encodes a concept image with CLIP ViT-L/14 and the ELITE global mapper into five "
                "word embeddings (word 0 is the primary word). The image is squashed to 224x224 "
                "without cropping, as in the reference; crop it around the object first. Several "
                "images in the batch are averaged into one concept."
            ),
            inputs=[
                io.ClipVision.Input("clip_vision", tooltip="CLIP ViT-L/14 vision model."),
                GlobalMapperType.Input("global_mapper"),
                io.Image.Input("image", tooltip="The concept image, object centred."),
            ],
            outputs=[ConceptType.Output(display_name="concept")],
        )

    @classmethod
    def execute(cls, clip_vision, global_mapper, image) -> io.NodeOutput:
        return io.NodeOutput(comfy_adapter.encode_concept(clip_vision, global_mapper, image))
