"""CatVersion nodes: load a concept adapter from models/catversion and apply it to an SD1.x CLIP."""

from comfy_api.latest import io

from ..elite_core import comfy_catversion
from .elite_types import CATVERSION_CATEGORY, CatVersionType


class CatVersionLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="CatVersionLoader",
            display_name="CatVersion Adapter Loader",
            category=CATVERSION_CATEGORY,
            description=(
                "Loads a CatVersion concept adapter from models/catversion: the authors' pytorch_adapter.bin "
                "or a CatVersion .safetensors. It holds key/value prefixes for CLIP-L text layers 9-11."
            ),
            inputs=[io.Combo.Input("adapter_name", options=comfy_catversion.adapter_file_names(),
                                   tooltip="The adapter file in models/catversion.")],
            outputs=[CatVersionType.Output(display_name="catversion")],
        )

    @classmethod
    def validate_inputs(cls, adapter_name) -> bool | str:
        # None: the name comes from a link and is only known when the node runs (execute checks it then).
        return adapter_name is None or comfy_catversion.missing_adapter_message(adapter_name) or True

    @classmethod
    def execute(cls, adapter_name: str) -> io.NodeOutput:
        return io.NodeOutput(comfy_catversion.load_adapter(adapter_name))


class CatVersionApply(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="CatVersionApply",
            display_name="CatVersion Apply",
            category=CATVERSION_CATEGORY,
            description=(
                "Returns a copy of an SD1.x CLIP whose text layers 9-11 attend to the concept's learned "
                "key/value prefix (CatVersion, Zhao et al. 2023). Prompt with the concept's class word "
                "(e.g. 'teddybear on the beach'); encode the negative prompt with the original CLIP, as the "
                "authors do. Chain two Apply nodes for two concepts."
            ),
            inputs=[
                io.Clip.Input("clip", tooltip="An SD1.x CLIP (keep the last layer at -1: the prefixes sit in layers 9-11)."),
                CatVersionType.Input("catversion"),
                io.Float.Input("strength", default=1.0, min=0.0, max=10.0, step=0.05,
                               tooltip="1 = the paper. Multiplies the prefix's attention weight before the softmax; 0 removes it."),
            ],
            outputs=[io.Clip.Output()],
        )

    @classmethod
    def execute(cls, clip, catversion, strength=1.0) -> io.NodeOutput:
        return io.NodeOutput(comfy_catversion.apply_catversion(clip, catversion, strength))
