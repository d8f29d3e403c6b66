"""ELITEEncoder: concept image (+ object mask) -> ELITE concept."""

from comfy_api.latest import io

from ..elite_core.comfyui import elite as comfy_elite
from .elite_types import CATEGORY, ConceptType, GlobalMapperType, LocalMapperType, advanced, schema


class ELITEEncoder(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return schema(
            search_aliases=["elite", "encode concept", "image to word", "personalize", "subject"],
            node_id="ELITEEncoder",
            display_name="ELITE Encoder",
            category=CATEGORY,
            description=(
                "Encodes a concept image with CLIP ViT-L/14: the global mapper gives five word "
                "embeddings (word 0 is the primary word); the optional local mapper gives 256 "
                "object tokens for the local attention branch. The image is squashed to 224x224 "
                "without cropping, as in the reference: crop it around the object first."
            ),
            inputs=[
                io.ClipVision.Input("clip_vision", tooltip="CLIP ViT-L/14 vision model."),
                GlobalMapperType.Input("global_mapper"),
                io.Image.Input("image", tooltip="The concept image, object centred."),
                LocalMapperType.Input("local_mapper", optional=True, tooltip="Adds ELITE's local mapping."),
                io.Mask.Input(
                    "mask", optional=True,
                    tooltip="Object mask, 1 on the object (used by the local mapping). "
                            "Without a mask the whole image is the object.",
                ),
                io.Boolean.Input(
                    "invert_mask", default=False, **advanced(),
                    tooltip="Turn on for a MASK from Load Image, which is 1 on transparent (background) pixels.",
                ),
            ],
            outputs=[ConceptType.Output(display_name="concept")],
        )

    @classmethod
    def execute(cls, clip_vision, global_mapper, image, local_mapper=None, mask=None, invert_mask=False) -> io.NodeOutput:
        return io.NodeOutput(
            comfy_elite.encode_concept(clip_vision, global_mapper, image, local_mapper, mask, invert_mask)
        )
