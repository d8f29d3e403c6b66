"""ELITEConditioning: prompt text with the concept word at the placeholder -> CONDITIONING."""

from comfy_api.latest import io

from ..elite_core.comfyui import elite as comfy_elite
from ..elite_core.common.checks import ELITEInputError
from .elite_types import CATEGORY, ConceptType, advanced, schema

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
            search_aliases=["elite", "concept prompt", "placeholder", "personalize"],
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
                ConceptType.Input("concept_2", optional=True,
                                  tooltip="A second concept in the same prompt, at its own placeholder."),
                io.String.Input("placeholder_2", default="T", optional=True, **advanced(),
                                tooltip="The second concept's placeholder word (not the first's)."),
            ],
            outputs=[io.Conditioning.Output()],
        )

    @classmethod
    def validate_inputs(cls, words) -> bool | str:
        return words is None or _unknown_words_mode(words) or True  # None: linked, checked in execute

    @classmethod
    def execute(cls, clip, concept, text: str, placeholder: str, words: str, concept_2=None,
                placeholder_2: str = "T") -> io.NodeOutput:
        problem = _unknown_words_mode(words)
        if problem:
            raise ELITEInputError(problem)
        more = [(concept_2, placeholder_2)] if concept_2 is not None else []
        conditioning, _ = comfy_elite.concept_conditioning(
            clip, concept, text, placeholder, all_words=(words == WORD_MODES[1]), more=more
        )
        return io.NodeOutput(conditioning)
