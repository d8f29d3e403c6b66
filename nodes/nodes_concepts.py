"""ELITESaveConcept / ELITELoadConcept: keep an encoded concept in models/elite_concepts and use it
again without encoding; the primary word also as a textual-inversion embedding."""

from comfy_api.latest import io, ui

from ..elite_core.comfyui import concepts as comfy_concepts
from ..elite_core.comfyui.socket_checks import check_node_inputs
from ..elite_core.common.checks import ELITEInputError
from .elite_types import CATEGORY, ConceptType, GlobalMapperType, LocalMapperType, schema


class ELITESaveConcept(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return schema(
            search_aliases=["elite", "save concept", "save subject", "save embedding", "textual inversion",
                            "export textual inversion"],
            node_id="ELITESaveConcept",
            display_name="ELITE Save Concept",
            category=CATEGORY,
            description=(
                "Keeps a concept so you can use it again without the photo: saves it to "
                "models/elite_concepts/<name>_00001.safetensors (a new number each time, nothing is overwritten), "
                "for ELITE Load Concept. With export_embedding, its word also goes to models/embeddings/ as a "
                "textual-inversion embedding, for 'embedding:<name>_00001' in CLIP Text Encode (the full likeness "
                "still needs ELITE Attention Patch)."
            ),
            inputs=[
                ConceptType.Input("concept", tooltip="The concept, from ELITE Encoder."),
                io.String.Input("filename_prefix", default="elite_concept",
                                tooltip="The file's name, in any language; no spaces, brackets, folders or < > : \" | ? *. "
                                        "A counter is added."),
                io.Boolean.Input("export_embedding", default=True,
                                 tooltip="Also save the concept's word as a textual-inversion embedding."),
                io.Image.Input("image", optional=True, tooltip="Optional: the concept photo, kept as a small preview."),
            ],
            outputs=[io.String.Output(display_name="concept_name", tooltip="The saved file's name.")],
            is_output_node=True,
        )

    @classmethod
    def validate_inputs(cls, filename_prefix=None, export_embedding=True) -> bool | str:
        # not a string: the name comes from a link and is only known when the node runs (execute checks it then)
        if not isinstance(filename_prefix, str):
            return True
        try:
            comfy_concepts.check_concept_name(filename_prefix)
            comfy_concepts.check_concept_name_length(filename_prefix, export_embedding is not False)
        except ELITEInputError as exc:
            return str(exc)
        return True

    @classmethod
    def execute(cls, concept, filename_prefix="elite_concept", export_embedding=True, image=None) -> io.NodeOutput:
        check_node_inputs(cls, locals())
        path, embedding = comfy_concepts.save_concept(concept, filename_prefix, image, export_embedding)
        name = path.rsplit("/", 1)[-1].rsplit("\\", 1)[-1]
        text = f"saved {name}" + (f"; use embedding:{name[:-len('.safetensors')]}" if embedding else "")
        return io.NodeOutput(name, ui=ui.PreviewText(text))


class ELITELoadConcept(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return schema(
            search_aliases=["elite", "load concept", "saved concept", "load subject", "load embedding",
                            "textual inversion"],
            node_id="ELITELoadConcept",
            display_name="ELITE Load Concept",
            category=CATEGORY,
            description=(
                "Loads a concept saved by ELITE Save Concept: the same concept, without the photo or encoding it "
                "again. Connect the mapper files it was made with (they hold ELITE's attention weights); other "
                "mappers are refused with the right file's name."
            ),
            inputs=[
                io.Combo.Input("concept_name", options=comfy_concepts.concept_file_names(),
                               tooltip="A saved concept in models/elite_concepts."),
                GlobalMapperType.Input("global_mapper", tooltip="From ELITE Global Mapper Loader: the file the "
                                                                "concept was made with."),
                LocalMapperType.Input("local_mapper", optional=True,
                                      tooltip="Optional, from ELITE Local Mapper Loader: needed for the concept's "
                                              "fine detail."),
            ],
            outputs=[ConceptType.Output(display_name="concept",
                                        tooltip="To ELITE Conditioning and ELITE Attention Patch.")],
        )

    @classmethod
    def validate_inputs(cls, concept_name) -> bool | str:
        return concept_name is None or comfy_concepts.missing_concept_message(concept_name) or True

    @classmethod
    def execute(cls, concept_name, global_mapper, local_mapper=None) -> io.NodeOutput:
        check_node_inputs(cls, locals())
        try:
            concept, preview = comfy_concepts.load_concept(concept_name, global_mapper, local_mapper)
        except ELITEInputError as exc:
            raise ValueError(str(exc)) from None
        shown = ui.PreviewImage(preview.float() / 255.0, cls=cls) if preview is not None else None
        return io.NodeOutput(concept, ui=shown)
