"""ELITESaveConcept / ELITELoadConcept: keep an encoded concept in models/elite_concepts and use it
again without encoding; the primary word also as a textual-inversion embedding."""

from comfy_api.latest import io, ui

from ..elite_core.comfyui import concepts as comfy_concepts
from ..elite_core.common.checks import ELITEInputError
from .elite_types import CATEGORY, ConceptType, GlobalMapperType, LocalMapperType, schema


class ELITESaveConcept(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return schema(
            search_aliases=["elite", "save embedding", "export textual inversion"],
            node_id="ELITESaveConcept",
            display_name="ELITE Save Concept",
            category=CATEGORY,
            description=(
                "Saves an encoded concept (its words, local tokens and which mappers made them) to "
                "models/elite_concepts/<name>_00001.safetensors; a new number each time, nothing is overwritten. "
                "With export_embedding, the primary word also goes to models/embeddings/ with the same name, "
                "for 'embedding:<name>' in CLIP Text Encode (ELITE's K/V patch is still needed for full fidelity)."
            ),
            inputs=[
                ConceptType.Input("concept"),
                io.String.Input("filename_prefix", default="elite_concept",
                                tooltip="Letters, digits, '.', '_' and '-'; a counter is added."),
                io.Boolean.Input("export_embedding", default=True,
                                 tooltip="Also write the primary word as a textual-inversion embedding."),
                io.Image.Input("image", optional=True, tooltip="The concept image, kept as a small preview."),
            ],
            outputs=[io.String.Output(display_name="concept_name")],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, concept, filename_prefix="elite_concept", export_embedding=True, image=None) -> io.NodeOutput:
        path, embedding = comfy_concepts.save_concept(concept, filename_prefix, image, export_embedding)
        name = path.rsplit("/", 1)[-1].rsplit("\\", 1)[-1]
        text = f"saved {name}" + (f"; use embedding:{name[:-len('.safetensors')]}" if embedding else "")
        return io.NodeOutput(name, ui=ui.PreviewText(text))


class ELITELoadConcept(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="ELITELoadConcept",
            display_name="ELITE Load Concept",
            category=CATEGORY,
            description=(
                "Loads a concept saved by ELITE Save Concept, without encoding the image again. Connect the "
                "mapper files it was made with (they hold the K/V weights sampling needs); other mappers are "
                "refused with their names."
            ),
            inputs=[
                io.Combo.Input("concept_name", options=comfy_concepts.concept_file_names(),
                               tooltip="A concept file in models/elite_concepts."),
                GlobalMapperType.Input("global_mapper"),
                LocalMapperType.Input("local_mapper", optional=True,
                                      tooltip="Needed for the concept's local tokens."),
            ],
            outputs=[ConceptType.Output(display_name="concept")],
        )

    @classmethod
    def validate_inputs(cls, concept_name) -> bool | str:
        return concept_name is None or comfy_concepts.missing_concept_message(concept_name) or True

    @classmethod
    def execute(cls, concept_name, global_mapper, local_mapper=None) -> io.NodeOutput:
        try:
            concept, preview = comfy_concepts.load_concept(concept_name, global_mapper, local_mapper)
        except ELITEInputError as exc:
            raise ValueError(str(exc)) from None
        shown = ui.PreviewImage(preview.float() / 255.0, cls=cls) if preview is not None else None
        return io.NodeOutput(concept, ui=shown)
