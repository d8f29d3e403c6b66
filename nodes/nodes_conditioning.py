"""ELITEConditioning: prompt text with the concept word at the placeholder -> CONDITIONING."""

from comfy_api.latest import io

from ..elite_core.comfyui import elite as comfy_elite
from ..elite_core.comfyui.socket_checks import check_node_inputs
from ..elite_core.common.checks import ELITEInputError
from .elite_types import CATEGORY, ConceptType, expert, schema

WORD_MODES = ("primary word", "all five words")


def _unknown_words_mode(words) -> str | None:
    # ComfyUI 0.3.75 does not check V3 combo values, so an API client's typo would reach execute.
    if words in WORD_MODES:
        return None
    return f"words is {words!r}; it must be one of: {', '.join(repr(m) for m in WORD_MODES)}."


class ELITEConditioning(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return schema(
            search_aliases=["elite", "concept prompt", "placeholder", "personalize", "subject", "textual inversion",
                            "text encode concept"],
            node_id="ELITEConditioning",
            display_name="ELITE Conditioning",
            category=CATEGORY,
            description=(
                "Your prompt with the concept in it: works like CLIP Text Encode, with the concept's word in place of "
                "the placeholder (S by default: 'a photo of S on the beach'). Connect the output to the sampler's "
                "positive AND to ELITE Attention Patch's positive. Prompt weights such as (S:1.2) and long prompts work."
            ),
            inputs=[
                io.Clip.Input("clip", tooltip="The CLIP of an SD1.x checkpoint."),
                ConceptType.Input("concept", tooltip="The concept, from ELITE Encoder or ELITE Load Concept."),
                io.String.Input("text", multiline=True, dynamic_prompts=True, default="a photo of S",
                                tooltip="The prompt. Write the placeholder (S) where the concept goes."),
                io.String.Input(
                    "placeholder",
                    default="S",
                    tooltip="The word in the prompt that stands for the concept (one short word). Every occurrence "
                            "is replaced.",
                ),
                expert(io.Combo.Input(
                    "words",
                    options=list(WORD_MODES),
                    default=WORD_MODES[0],
                    tooltip=(
                        "primary word: ELITE's default, one word for the concept. all five words: the placeholder "
                        "becomes all five of the concept's words (ELITE's 'full' option; one concept only)."
                    ),
                )),
                ConceptType.Input("concept_2", optional=True,
                                  tooltip="Optional: a second concept in the same prompt, written as T (e.g. 'a photo "
                                          "of S and T'). Then use one ELITE Attention Patch per concept."),
                expert(io.String.Input("placeholder_2", default="T", optional=True,
                                       tooltip="The second concept's placeholder word (not the first's). Shown while "
                                               "a second concept is connected.")),
            ],
            outputs=[io.Conditioning.Output(tooltip="To the sampler's positive AND to ELITE Attention Patch's "
                                                    "positive.")],
        )

    @classmethod
    def validate_inputs(cls, words) -> bool | str:
        return words is None or _unknown_words_mode(words) or True  # None: linked, checked in execute

    @classmethod
    def execute(cls, clip, concept, text: str, placeholder: str, words: str, concept_2=None,
                placeholder_2: str = "T") -> io.NodeOutput:
        check_node_inputs(cls, locals())
        problem = _unknown_words_mode(words)
        if problem:
            raise ELITEInputError(problem)
        more = [(concept_2, placeholder_2)] if concept_2 is not None else []
        conditioning, _ = comfy_elite.concept_conditioning(
            clip, concept, text, placeholder, all_words=(words == WORD_MODES[1]), more=more
        )
        return io.NodeOutput(conditioning)
