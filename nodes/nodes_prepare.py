"""ELITEPrepareConcept: crop a photo around its object for ELITE's encoder, with a preview of what
the encoder sees."""

from comfy_api.latest import io, ui

from ..elite_core.elite import concept_prep
from .elite_types import CATEGORY, advanced, schema


class ELITEPrepareConcept(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return schema(
            search_aliases=["elite", "crop object", "prepare concept image"],
            node_id="ELITEPrepareConcept",
            display_name="ELITE Prepare Concept",
            category=CATEGORY,
            description=(
                "Crops the concept photo around its object (with a margin) so the object fills ELITE's "
                "224x224 CLIP input, and fixes the mask polarity. The preview shows the exact CLIP input "
                "and, beside it, the 16x16 patches the local branch keeps (dropped ones darkened). Feed "
                "both outputs to ELITE Encoder (invert_mask off)."
            ),
            inputs=[
                io.Image.Input("image", tooltip="One photo of the concept."),
                io.Mask.Input("mask", optional=True,
                              tooltip="The object's mask, or Load Image's MASK (its alpha). Without one the whole "
                                      "photo is the object."),
                io.Float.Input("margin", default=0.1, min=0.0, max=2.0, step=0.01,
                               tooltip="Space kept around the object, as a fraction of its height and width."),
                io.Combo.Input("fit", options=list(concept_prep.FITS), default="squash",
                               tooltip="squash: leave the crop as it is; the encoder squashes it to a square as "
                                       "the reference does. pad: pad the crop to a square with black, keeping "
                                       "the object's proportions."),
                io.Combo.Input("mask_polarity", options=list(concept_prep.POLARITIES), default="auto", **advanced(),
                               tooltip="auto: the side of the mask that covers most of the photo's border is "
                                       "the background (works for Load Image's alpha and painted masks)."),
            ],
            outputs=[io.Image.Output(display_name="image"), io.Mask.Output(display_name="mask")],
        )

    @classmethod
    def validate_inputs(cls, margin=0.1, fit="squash", mask_polarity="auto"):
        if fit not in concept_prep.FITS or mask_polarity not in concept_prep.POLARITIES:
            return f"fit must be one of {concept_prep.FITS} and mask_polarity one of {concept_prep.POLARITIES}."
        return True

    @classmethod
    def execute(cls, image, mask=None, margin=0.1, fit="squash", mask_polarity="auto") -> io.NodeOutput:
        try:
            prepared, prepared_mask = concept_prep.prepare_concept(image, mask, margin, fit, mask_polarity)
        except concept_prep.PrepareError as exc:
            raise ValueError(f"ELITE Prepare Concept: {exc}") from None
        return io.NodeOutput(prepared, prepared_mask,
                             ui=ui.PreviewImage(concept_prep.preview(prepared, prepared_mask), cls=cls))
