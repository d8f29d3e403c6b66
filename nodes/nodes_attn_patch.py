"""ELITELocalAttnPatch: ELITE's cross-attention (global K/V and the local branch) on an SD1.x MODEL."""

from comfy_api.latest import io

from ..elite_core.comfyui import elite_patch
from .elite_types import CATEGORY, ConceptType, advanced, schema


class ELITELocalAttnPatch(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return schema(
            search_aliases=["elite", "local attention", "concept detail", "personalize"],
            node_id="ELITELocalAttnPatch",
            display_name="ELITE Attention Patch",
            category=CATEGORY,
            description=(
                "Returns a copy of the MODEL with ELITE's fine-tuned cross-attention K/V weights (for "
                "the positive and the negative prompt, as in the reference) and, when the concept has "
                "a local mapping, the local attention branch on the positive prompt. Put LoRA loaders "
                "after this node."
            ),
            inputs=[
                io.Model.Input("model", tooltip="An SD1.x model."),
                ConceptType.Input("concept"),
                io.Conditioning.Input(
                    "positive", optional=True,
                    tooltip="The output of ELITE Conditioning: the local branch finds the placeholder there.",
                ),
                io.Float.Input(
                    "strength", display_name="λ (local strength)", default=0.8, min=0.0, max=2.0, step=0.05,
                    tooltip="Weight of the local branch. 0.8 is the reference default, 0.6 its demo's; 0 disables it.",
                ),
                io.Float.Input("start_percent", default=0.0, **advanced(), min=0.0, max=1.0, step=0.01,
                               tooltip="Fraction of the schedule where the local branch starts."),
                io.Float.Input("end_percent", default=1.0, **advanced(), min=0.0, max=1.0, step=0.01,
                               tooltip="Fraction of the schedule where the local branch stops."),
                io.Boolean.Input("global_kv", default=True, **advanced(),
                                 tooltip="Use ELITE's fine-tuned cross-attention K/V weights (the reference always does)."),
                io.Mask.Input("region", optional=True,
                              tooltip="Where the local branch adds the concept's detail (1 = yes, any size; it is "
                                      "scaled to the image). Without it, wherever the placeholder's attention goes."),
                io.Boolean.Input("attention_map", default=False, optional=True,
                                 tooltip="Record where the concept goes while sampling, for ELITE Attention Map "
                                         "(costs a little time; off records nothing)."),
            ],
            outputs=[io.Model.Output()],
        )

    @classmethod
    def execute(cls, model, concept, positive=None, strength=0.8, start_percent=0.0, end_percent=1.0,
                global_kv=True, region=None, attention_map=False) -> io.NodeOutput:
        return io.NodeOutput(elite_patch.apply_elite(model, concept, positive, strength, start_percent, end_percent,
                                                     global_kv, attention_map, region))
