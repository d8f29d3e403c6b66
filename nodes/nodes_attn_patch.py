"""ELITELocalAttnPatch: ELITE's cross-attention (global K/V and the local branch) on an SD1.x MODEL."""

from comfy_api.latest import io

from ..elite_core.comfyui import elite_patch
from ..elite_core.comfyui.socket_checks import check_node_inputs
from .elite_types import CATEGORY, ConceptType, expert, schema

POSITIVE_WIRING = ("Connect ELITE Conditioning's output here AND to the sampler's positive: the detail pass finds "
                   "the concept word in it. Needed with a local mapper (λ above 0).")


class ELITELocalAttnPatch(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return schema(
            search_aliases=["elite", "apply elite", "ip adapter", "personalize", "subject", "concept detail",
                            "local attention"],
            node_id="ELITELocalAttnPatch",
            display_name="ELITE Attention Patch",
            category=CATEGORY,
            description=(
                "Makes the model draw your concept: returns a copy of the MODEL with ELITE's own attention weights "
                "(used for the positive and the negative prompt) and, with a local mapper, a detail pass that copies "
                "the concept's fine detail to where the concept word lands in the picture. Wire ELITE Conditioning "
                "into this node's 'positive' as well as into the sampler's positive. Put LoRA loaders after this node."
            ),
            inputs=[
                io.Model.Input("model", tooltip="The MODEL of an SD1.x checkpoint. Send this node's MODEL on to the "
                                                "sampler."),
                ConceptType.Input("concept", tooltip="The concept, from ELITE Encoder or ELITE Load Concept."),
                io.Conditioning.Input("positive", optional=True, tooltip=POSITIVE_WIRING),
                io.Float.Input(
                    "strength", display_name="λ (local strength)", default=0.8, min=0.0, max=2.0, step=0.05,
                    tooltip="How much of the concept's fine detail is copied: 0.8 is ELITE's default, 0.6 its demo's, "
                            "0 keeps only the word. Higher looks more like the photo, lower follows the prompt more.",
                ),
                expert(io.Float.Input("start_percent", default=0.0, min=0.0, max=1.0, step=0.01,
                                      tooltip="When the detail pass starts, as a fraction of the sampling steps "
                                              "(0 = the first step).")),
                expert(io.Float.Input("end_percent", default=1.0, min=0.0, max=1.0, step=0.01,
                                      tooltip="When the detail pass stops, as a fraction of the sampling steps "
                                              "(1 = the last step).")),
                expert(io.Boolean.Input("global_kv", default=True,
                                        tooltip="Use ELITE's own attention weights (ELITE always does). Off only to "
                                                "compare: the concept then looks much less like the photo.")),
                io.Mask.Input("region", optional=True,
                              tooltip="Where the concept's detail may go (white = yes; any size, it is scaled to the "
                                      "picture). Without it, wherever the concept word lands."),
                expert(io.Boolean.Input("attention_map", default=False, optional=True,
                                        tooltip="Record where the concept lands while sampling, for ELITE Attention "
                                                "Map (a little slower). Off records nothing.")),
            ],
            outputs=[io.Model.Output(tooltip="The model with ELITE's attention: connect it to the sampler.")],
        )

    @classmethod
    def execute(cls, model, concept, positive=None, strength=0.8, start_percent=0.0, end_percent=1.0,
                global_kv=True, region=None, attention_map=False) -> io.NodeOutput:
        check_node_inputs(cls, locals())
        return io.NodeOutput(elite_patch.apply_elite(model, concept, positive, strength, start_percent, end_percent,
                                                     global_kv, attention_map, region))
