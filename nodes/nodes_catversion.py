"""CatVersion nodes: load a concept adapter from models/catversion, apply it to an SD1.x CLIP, and
learn a new one from a few photos."""

from comfy_api.latest import io, ui

from ..elite_core.catversion.training import CatVersionRecipe
from ..elite_core.comfyui import catversion as comfy_catversion
from ..elite_core.comfyui import catversion_files as comfy_catversion_files
from ..elite_core.comfyui import catversion_training as comfy_catversion_training
from ..elite_core.comfyui.socket_checks import check_node_inputs
from .elite_types import CATVERSION_CATEGORY, CatVersionType, check_widget_values, expert, schema

TRAIN_ALIASES = ["catversion", "train concept", "textual inversion", "dreambooth", "personalize", "subject", "fine tune"]


class CatVersionLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return schema(
            search_aliases=["catversion", "load concept", "concept adapter", "personalize", "subject",
                            "textual inversion"],
            node_id="CatVersionLoader",
            display_name="CatVersion Adapter Loader",
            category=CATVERSION_CATEGORY,
            description=(
                "Loads a CatVersion concept (a small file learned from a few photos of one subject) from "
                "models/catversion: the authors' pytorch_adapter.bin, renamed after its subject, or a file CatVersion "
                "Train Concept saved. Connect it to CatVersion Apply."
            ),
            inputs=[io.Combo.Input("adapter_name", options=comfy_catversion.adapter_file_names(),
                                   tooltip="The concept file in models/catversion.")],
            outputs=[CatVersionType.Output(display_name="catversion", tooltip="To CatVersion Apply.")],
        )

    @classmethod
    def validate_inputs(cls, adapter_name) -> bool | str:
        # None: the name comes from a link and is only known when the node runs (execute checks it then).
        return adapter_name is None or comfy_catversion.missing_adapter_message(adapter_name) or True

    @classmethod
    def execute(cls, adapter_name: str) -> io.NodeOutput:
        check_node_inputs(cls, locals())
        return io.NodeOutput(comfy_catversion.load_adapter(adapter_name))


class CatVersionApply(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return schema(
            search_aliases=["catversion", "apply concept", "personalize", "subject", "textual inversion"],
            node_id="CatVersionApply",
            display_name="CatVersion Apply",
            category=CATVERSION_CATEGORY,
            description=(
                "Teaches the CLIP your CatVersion concept (Zhao et al. 2023): returns a copy of an SD1.x CLIP that "
                "draws the subject whenever the prompt names its kind, e.g. 'teddybear on the beach' (no placeholder "
                "word). Encode the positive prompt with this CLIP and the negative prompt with the original CLIP, as "
                "the authors do. Chain two Apply nodes for two concepts."
            ),
            inputs=[
                io.Clip.Input("clip", tooltip="The CLIP of an SD1.x checkpoint. Leave CLIP Set Last Layer at -1, before "
                                              "and after this node: the concept lives in the last three layers."),
                CatVersionType.Input("catversion", tooltip="From CatVersion Adapter Loader or CatVersion Train Concept."),
                io.Float.Input("strength", default=1.0, min=0.0, max=10.0, step=0.05,
                               tooltip="How strongly the concept shows: 1 as in the paper, 0 turns it off, "
                                       "above 1 stronger."),
            ],
            outputs=[io.Clip.Output(tooltip="For the positive prompt's CLIP Text Encode.")],
        )

    @classmethod
    def execute(cls, clip, catversion, strength=1.0) -> io.NodeOutput:
        check_node_inputs(cls, locals())
        return io.NodeOutput(comfy_catversion.apply_catversion(clip, catversion, strength))


class CatVersionTrain(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        recipe = CatVersionRecipe()
        return schema(search_aliases=TRAIN_ALIASES,
            node_id="CatVersionTrain",
            display_name="CatVersion Train Concept",
            category=CATVERSION_CATEGORY,
            is_output_node=True,
            description=(
                "Teaches CLIP a new concept from 3-10 photos of it (CatVersion, with the authors' recipe) and saves "
                "it as a small adapter file, models/catversion/<name>_00001.safetensors; the MODEL, CLIP and VAE are "
                "not changed. The defaults are the paper's (1000 steps): minutes on a GPU, hours on a CPU. Press Run "
                "again with the same photos, settings and models and the saved adapter is loaded instead of training "
                "again (switch on retrain to train anew). While it trains the node shows the step, the loss and a "
                "loss curve; stopping it keeps the adapter so far under its own name."
            ),
            inputs=[
                io.Image.Input("images", tooltip="3-10 photos of the concept as one IMAGE batch (e.g. Batch Images). "
                                                 "Each is squashed to resolution x resolution, as in the paper."),
                io.Model.Input("model", tooltip="The SD1.x MODEL (frozen)."),
                io.Clip.Input("clip", tooltip="The SD1.x CLIP (frozen; the prefix is learned for its layers 9-11, at "
                                              "its final layer even after CLIP Set Last Layer)."),
                io.Vae.Input("vae", tooltip="The SD1.x VAE (frozen; encodes the photos)."),
                io.String.Input("class_word", default="", tooltip=(
                    "The training caption: the concept's class word (e.g. 'teddybear'), as the authors advise. "
                    "Prompt with the same word afterwards. Empty = the authors' released code (empty caption).")),
                io.String.Input("filename_prefix", default="catversion_concept",
                                tooltip="Saved as models/catversion/<prefix>_00001.safetensors (never overwrites)."),
                io.Int.Input("steps", default=recipe.steps, min=1, max=100000, tooltip="Optimizer steps (paper: 1000)."),
                io.Float.Input("learning_rate", default=recipe.learning_rate, min=1e-6, max=1.0, step=0.0001,
                               tooltip="AdamW learning rate (paper: 0.005 x batch 2 = 0.01)."),
                io.Int.Input("batch_size", default=recipe.batch_size, min=1, max=64, tooltip="Images per step (paper: 2)."),
                io.Int.Input("resolution", default=recipe.resolution, min=64, max=2048, step=64,
                             tooltip="Training size in pixels (paper: 512)."),
                io.Boolean.Input("random_flip", default=True, tooltip="Mirror each image with probability 0.5 (paper: on)."),
                # fixed, never randomized after a run: a new seed means a new training (hours on a CPU)
                io.Int.Input("seed", default=recipe.seed, min=0, max=2**63 - 1, control_after_generate=False,
                             tooltip="Seeds the prefix init and every random draw: the same seed gives the same adapter."),
                # optional: API prompts saved before this input existed keep running
                expert(io.Boolean.Input("retrain", default=False, optional=True,
                                        tooltip="Off: an adapter in models/catversion trained from the same photos, "
                                                "settings and models is loaded instead of training again. On: train "
                                                "anew (a new numbered file); switch it off again afterwards.")),
            ],
            outputs=[CatVersionType.Output(display_name="catversion")],
            hidden=[io.Hidden.unique_id],
        )

    @classmethod
    def validate_inputs(cls, filename_prefix=None, **values) -> bool | str:
        # **values: ComfyUI then skips its own checks of every widget, so check_widget_values makes them
        checked = check_widget_values(cls, {"filename_prefix": filename_prefix, **values})
        if checked is not True or filename_prefix is None:
            return checked
        try:
            steps = values.get("steps")
            comfy_catversion_files.check_adapter_name_length(filename_prefix, steps if isinstance(steps, int) else None)
            comfy_catversion_training.check_filename_prefix(filename_prefix)
        except ValueError as exc:
            return str(exc)
        return True

    @classmethod
    def execute(cls, images, model, clip, vae, class_word, filename_prefix, steps, learning_rate, batch_size,
                resolution, random_flip, seed, retrain=False) -> io.NodeOutput:
        check_node_inputs(cls, locals())
        recipe = CatVersionRecipe(steps=steps, batch_size=batch_size, learning_rate=learning_rate, resolution=resolution,
                                  flip_probability=0.5 if random_flip else 0.0, seed=seed, caption=class_word)
        node_id = cls.hidden.unique_id if cls.hidden else None
        result = comfy_catversion_training.train_or_reuse(model, clip, vae, images, recipe, filename_prefix, retrain,
                                                          node_id)
        shown = ui.PreviewText(result.message).as_dict()
        if result.curve is not None:
            shown.update(ui.PreviewImage(result.curve, cls=cls).as_dict())
        return io.NodeOutput(result.adapter, ui=shown)
