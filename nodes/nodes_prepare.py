"""ELITEPrepareConcept: crop a photo around its object for ELITE's encoder, with a preview of what
the encoder sees."""

from comfy_api.latest import io, ui

from ..elite_core.comfyui.socket_checks import check_node_inputs
from ..elite_core.elite import concept_prep
from .elite_types import CATEGORY, expert, schema


class ELITEPrepareConcept(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return schema(
            search_aliases=["elite", "reference image", "subject", "crop subject", "crop object",
                            "prepare concept image"],
            node_id="ELITEPrepareConcept",
            display_name="ELITE Prepare Concept",
            category=CATEGORY,
            description=(
                "Crops your photo around the subject (with a margin) so the subject fills the square ELITE looks "
                "at, and makes the mask white on the subject. The preview shows exactly what ELITE sees and, beside "
                "it, the parts of the subject it copies detail from (the rest darkened). Connect both outputs to "
                "ELITE Encoder (invert_mask off)."
            ),
            inputs=[
                io.Image.Input("image", tooltip="One photo of your subject."),
                io.Mask.Input("mask", optional=True,
                              tooltip="Optional: the subject's mask, painted or Load Image's MASK (a cut-out PNG's "
                                      "transparency). Without one the whole photo is the subject."),
                io.Float.Input("margin", default=0.1, min=0.0, max=2.0, step=0.01,
                               tooltip="Space kept around the subject, as a fraction of its height and width."),
                io.Combo.Input("fit", options=list(concept_prep.FITS), default="squash",
                               tooltip="squash: keep the crop; ELITE Encoder squashes it to a square, as ELITE does. "
                                       "pad: add black bars to make it square, keeping the subject's proportions."),
                expert(io.Combo.Input("mask_polarity", options=list(concept_prep.POLARITIES), default="auto",
                                      tooltip="auto: the side of the mask that touches most of the photo's border "
                                              "is the background (works for Load Image's MASK and painted masks).")),
            ],
            outputs=[io.Image.Output(display_name="image", tooltip="The cropped photo, to ELITE Encoder's image."),
                     io.Mask.Output(display_name="mask", tooltip="White on the subject, to ELITE Encoder's mask.")],
        )

    @classmethod
    def validate_inputs(cls, margin=0.1, fit="squash", mask_polarity="auto"):
        if fit not in concept_prep.FITS or mask_polarity not in concept_prep.POLARITIES:
            return f"fit must be one of {concept_prep.FITS} and mask_polarity one of {concept_prep.POLARITIES}."
        return True

    @classmethod
    def execute(cls, image, mask=None, margin=0.1, fit="squash", mask_polarity="auto") -> io.NodeOutput:
        check_node_inputs(cls, locals())
        try:
            prepared, prepared_mask = concept_prep.prepare_concept(image, mask, margin, fit, mask_polarity)
        except concept_prep.PrepareError as exc:
            raise ValueError(f"ELITE Prepare Concept: {exc}") from None
        return io.NodeOutput(prepared, prepared_mask,
                             ui=ui.PreviewImage(concept_prep.preview(prepared, prepared_mask), cls=cls))
