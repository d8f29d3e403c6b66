"""ELITEConditioning: prompt text with the concept word at the placeholder -> CONDITIONING."""

from comfy_api.latest import io

from ..elite_core import comfy_adapter
from .elite_types import CATEGORY, ConceptType

WORD_MODES = ("primary word", "all five words")


class ELITEConditioning(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="ELITEConditioning",
            display_name="ELITE Conditioning",
            category=CATEGORY,
            description=(
                "Encodes the prompt like CLIP Text Encode, with the concept's word embedding in place "
                "of the placeholder token (default S). Prompt weights such as (S:1.2) and prompts "
                "longer than 77 tokens work."
            ),
            inputs=[
                io.Clip.Input("clip", tooltip="An SD1.x CLIP."),
                ConceptType.Input("concept"),
                io.String.Input("text", multiline=True, dynamic_prompts=True, default="a photo of S"),
                io.String.Input(
                    "placeholder",
                    default="S",
                    tooltip="The word in the prompt that stands for the concept. Every occurrence is replaced.",
                ),
                io.Combo.Input(
                    "words",
                    options=list(WORD_MODES),
                    default=WORD_MODES[0],
                    tooltip=(
                        "primary word: the reference default (w0 from the last CLIP layer). all five "
                        "words: the placeholder becomes five tokens, one per CLIP layer."
                    ),
                ),
            ],
            outputs=[io.Conditioning.Output()],
        )

    @classmethod
    def execute(cls, clip, concept, text: str, placeholder: str, words: str) -> io.NodeOutput:
        conditioning, _ = comfy_adapter.concept_conditioning(
            clip, concept, text, placeholder, all_words=(words == WORD_MODES[1])
        )
        return io.NodeOutput(conditioning)
