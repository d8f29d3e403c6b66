"""ELITEExampleConcept: one of the concept photos shipped with the pack, with its object mask."""

from comfy_api.latest import io

from ..elite_core.elite import examples
from .elite_types import CATEGORY


class ELITEExampleConcept(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="ELITEExampleConcept",
            display_name="ELITE Example Concept",
            category=CATEGORY,
            description=(
                "A concept photo shipped with the pack (ELITE's own test images, Apache-2.0) and its object "
                "mask (1 on the object), so the example workflows run as they are. Replace it with Load Image "
                "for your own concept."
            ),
            inputs=[io.Combo.Input("example", options=list(examples.EXAMPLES), default="cat")],
            outputs=[io.Image.Output(display_name="image"), io.Mask.Output(display_name="mask")],
        )

    @classmethod
    def validate_inputs(cls, example) -> bool | str:
        if example is None or example in examples.EXAMPLES:
            return True
        return f"example must be one of {list(examples.EXAMPLES)}, got {example!r}."

    @classmethod
    def execute(cls, example="cat") -> io.NodeOutput:
        return io.NodeOutput(*examples.load_example(example))
