"""ELITELocalAttnPatch: put ELITE's fine-tuned cross-attention K/V into an SD1.x MODEL."""

from comfy_api.latest import io

from ..elite_core import comfy_adapter
from .elite_types import CATEGORY, ConceptType


class ELITELocalAttnPatch(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="ELITELocalAttnPatch",
            display_name="ELITE Attention Patch",
            category=CATEGORY,
            description=(
                "Returns a copy of the MODEL whose 16 cross-attention to_k/to_v weights are ELITE's "
                "fine-tuned ones (for the positive and the negative prompt, as in the reference). "
                "Place LoRA loaders after this node: a LoRA applied before it is overwritten on "
                "those 32 weights."
            ),
            inputs=[
                io.Model.Input("model", tooltip="An SD1.x model."),
                ConceptType.Input("concept"),
            ],
            outputs=[io.Model.Output()],
        )

    @classmethod
    def execute(cls, model, concept) -> io.NodeOutput:
        return io.NodeOutput(comfy_adapter.apply_global_kv(model, concept))
