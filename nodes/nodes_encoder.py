"""ELITEEncoder: concept image (+ object mask) -> ELITE concept."""

from comfy_api.latest import io

from ..elite_core.comfyui import elite as comfy_elite
from ..elite_core.comfyui.socket_checks import check_node_inputs
from .elite_types import CATEGORY, ConceptType, GlobalMapperType, LocalMapperType, expert, schema


class ELITEEncoder(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return schema(
            search_aliases=["elite", "reference image", "subject", "personalize", "ip adapter", "image prompt",
                            "encode concept", "image to word"],
            node_id="ELITEEncoder",
            display_name="ELITE Encoder",
            category=CATEGORY,
            description=(
                "Turns one photo of your subject (the reference image) into a concept, in one step and without "
                "training: a word for the prompt (from the global mapper) and, with the local mapper, the fine "
                "detail ELITE Attention Patch copies. The photo is squashed to a square without cropping: crop it "
                "around the subject first (ELITE Prepare Concept does it)."
            ),
            inputs=[
                io.ClipVision.Input("clip_vision", tooltip="CLIP ViT-L/14 vision, from Load CLIP Vision "
                                                           "(clip-vit-large-patch14); other CLIP vision models are refused."),
                GlobalMapperType.Input("global_mapper", tooltip="From ELITE Global Mapper Loader."),
                io.Image.Input("image", tooltip="The photo of your subject, cropped around it (ELITE Prepare Concept)."),
                LocalMapperType.Input("local_mapper", optional=True,
                                      tooltip="Optional, from ELITE Local Mapper Loader: adds the subject's fine detail."),
                io.Mask.Input(
                    "mask", optional=True,
                    tooltip="Optional: the subject's mask, white on the subject (used for the fine detail). "
                            "Without one the whole photo is the subject.",
                ),
                expert(io.Boolean.Input(
                    "invert_mask", default=False,
                    tooltip="Turn on for Load Image's MASK, which is white on the transparent background. "
                            "Off for ELITE Prepare Concept's mask.",
                )),
            ],
            outputs=[ConceptType.Output(display_name="concept",
                                        tooltip="To ELITE Conditioning and ELITE Attention Patch (and ELITE Save Concept).")],
        )

    @classmethod
    def execute(cls, clip_vision, global_mapper, image, local_mapper=None, mask=None, invert_mask=False) -> io.NodeOutput:
        check_node_inputs(cls, locals())
        return io.NodeOutput(
            comfy_elite.encode_concept(clip_vision, global_mapper, image, local_mapper, mask, invert_mask)
        )
