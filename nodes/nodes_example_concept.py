"""ELITEExampleConcept: one of the concept photos shipped with the pack, with its object mask."""

from comfy_api.latest import io

from ..elite_core.comfyui.socket_checks import check_node_inputs
from ..elite_core.elite import examples
from .elite_types import CATEGORY, schema


class ELITEExampleConcept(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return schema(
            search_aliases=["elite", "example image", "sample concept", "reference image", "subject", "demo"],
            node_id="ELITEExampleConcept",
            display_name="ELITE Example Concept",
            category=CATEGORY,
            description=(
                "A ready-made concept photo shipped with the pack (a cat, a dog or a flower: ELITE's own test "
                "images, Apache-2.0) and its mask, so the templates run without any photo of yours. For your own "
                "subject, use Load Image and ELITE Prepare Concept instead."
            ),
            inputs=[io.Combo.Input("example", options=list(examples.EXAMPLES), default="cat",
                                   tooltip="Which example photo.")],
            outputs=[io.Image.Output(display_name="image", tooltip="The photo, to ELITE Encoder's image."),
                     io.Mask.Output(display_name="mask", tooltip="White on the subject, to ELITE Encoder's mask.")],
        )

    @classmethod
    def validate_inputs(cls, example) -> bool | str:
        if example is None or example in examples.EXAMPLES:
            return True
        return f"example must be one of {list(examples.EXAMPLES)}, got {example!r}."

    @classmethod
    def execute(cls, example="cat") -> io.NodeOutput:
        check_node_inputs(cls, locals())
        return io.NodeOutput(*examples.load_example(example))
