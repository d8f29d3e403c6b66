"""Loaders for ELITE mapper checkpoints in models/elite.

``validate_inputs`` replaces ComfyUI's own combo check for ``mapper_name`` (newer ComfyUI runs that
check before ``execute``, 0.3.75 does not), so on every version a missing file is reported with the
pack's message: where it looked, what is there, where to put the file.
"""

from comfy_api.latest import io

from ..elite_core.comfyui import elite as comfy_elite
from ..elite_core.comfyui.socket_checks import check_node_inputs
from .elite_types import CATEGORY, GlobalMapperType, LocalMapperType, schema


class _MapperLoader(io.ComfyNode):
    KIND = ""  # "global" or "local"

    @classmethod
    def mapper_input(cls) -> io.Combo.Input:
        return io.Combo.Input(
            "mapper_name",
            options=comfy_elite.mapper_file_names(),
            tooltip=f"The {cls.KIND} mapper file in models/elite ({cls.KIND}_mapper.pt, or its .safetensors conversion).",
        )

    @classmethod
    def validate_inputs(cls, mapper_name) -> bool | str:
        # None: the name comes from a link and is only known when the node runs (execute checks it then).
        return mapper_name is None or comfy_elite.missing_mapper_message(mapper_name, cls.KIND) or True


class ELITEGlobalMapperLoader(_MapperLoader):
    KIND = "global"

    @classmethod
    def define_schema(cls):
        return schema(
            search_aliases=["elite", "elite model", "load elite", "mapper loader", "global mapper", "ip adapter model",
                            "personalize"],
            node_id="ELITEGlobalMapperLoader",
            display_name="ELITE Global Mapper Loader",
            category=CATEGORY,
            description=(
                "Loads ELITE's main model file, the global mapper (global_mapper.pt from ELITE-library/ELITE), from "
                "models/elite. It turns the concept photo into a word for the prompt and holds ELITE's attention "
                "weights; every ELITE graph needs it."
            ),
            inputs=[cls.mapper_input()],
            outputs=[GlobalMapperType.Output(display_name="global_mapper",
                                             tooltip="To ELITE Encoder (or ELITE Load Concept).")],
        )

    @classmethod
    def execute(cls, mapper_name: str) -> io.NodeOutput:
        check_node_inputs(cls, locals())
        return io.NodeOutput(comfy_elite.load_global_mapper(mapper_name))


class ELITELocalMapperLoader(_MapperLoader):
    KIND = "local"

    @classmethod
    def define_schema(cls):
        return schema(
            search_aliases=["elite", "elite model", "load elite", "mapper loader", "local mapper", "fine detail"],
            node_id="ELITELocalMapperLoader",
            display_name="ELITE Local Mapper Loader",
            category=CATEGORY,
            description=(
                "Loads ELITE's second model file, the local mapper (local_mapper.pt from ELITE-library/ELITE), from "
                "models/elite. It carries the subject's fine detail (textures, patterns, markings) into the picture; "
                "without it ELITE uses the word alone."
            ),
            inputs=[cls.mapper_input()],
            outputs=[LocalMapperType.Output(display_name="local_mapper",
                                            tooltip="To ELITE Encoder (or ELITE Load Concept).")],
        )

    @classmethod
    def execute(cls, mapper_name: str) -> io.NodeOutput:
        check_node_inputs(cls, locals())
        return io.NodeOutput(comfy_elite.load_local_mapper(mapper_name))
