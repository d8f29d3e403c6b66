"""ELITE Score: the papers' metrics inside a workflow. Scores an IMAGE batch against the concept
image (CLIP-I, DINO-I, masked CLIP-I) and the prompt (CLIP-T), so settings can be compared."""

from comfy_api.latest import io, ui

from ..elite_core.comfyui import scoring as comfy_scoring
from ..elite_core.comfyui.socket_checks import check_node_inputs
from .elite_types import CATEGORY, check_widget_values, expert, schema

NOT_SCORED = "-1 when not scored (no model for it, no concept mask, or an empty prompt)."
TITLES = {"clip_t": "CLIP-T", "clip_i": "CLIP-I", "masked_clip_i": "masked CLIP-I", "dino_i": "DINO-I"}


def score_report(scores: dict[str, list[float]]) -> str:
    """A small text table: one line per metric, the batch mean and each image's value."""
    lines = []
    for key, title in TITLES.items():
        if key in scores:
            values = scores[key]
            lines.append(f"{title}: {sum(values) / len(values):.4f}  (per image: "
                         + ", ".join(f"{v:.4f}" for v in values) + ")")
    return "\n".join(lines) if lines else "no metric: choose a CLIP and/or a DINO model"


class _ScoreNode(io.ComfyNode):
    # Two registered nodes share this schema: ELITE Score and its first id (ComfyUI caches a schema's
    # values on the class that registers it, so neither subclasses the other).
    SCORE_ID = ""
    SCORE_NAME = ""
    OLD_ID = False

    @classmethod
    def define_schema(cls):
        names = comfy_scoring.encoder_names()
        description = (
            "Measures how well the pictures match the prompt (CLIP-T) and how much they look like the concept photo "
            "(CLIP-I, DINO-I; masked CLIP-I ignores the background), with the numbers the ELITE and DreamBooth "
            "papers report, so settings such as λ can be compared on your own subject. Needs the metric models in "
            "models/elite_eval (CLIP ViT-B/32, DINO ViT-S/16); nothing is downloaded."
        )
        if cls.OLD_ID:
            description = ("The old id of ELITE Score, kept so saved workflows still run; hidden from search. Add "
                           "ELITE Score in its place. " + description)
        return schema(
            search_aliases=["elite", "clip score", "dino score", "dreambench", "evaluate", "likeness",
                            "subject fidelity", "compare settings"],
            node_id=cls.SCORE_ID,
            display_name=cls.SCORE_NAME,
            category=CATEGORY,
            description=description,
            is_deprecated=cls.OLD_ID,
            inputs=[
                io.Image.Input("images", tooltip="The generated pictures to score."),
                io.Image.Input("reference", tooltip="The concept photo(s); each picture is compared with each."),
                io.String.Input("prompt", default="",
                                tooltip="For CLIP-T: the prompt with the subject's plain name instead of S "
                                        "(e.g. 'a cat on the beach'). Empty: no CLIP-T."),
                io.Combo.Input("clip_model", options=[comfy_scoring.NONE] + names,
                               tooltip="The CLIP model for CLIP-T, CLIP-I and masked CLIP-I (ViT-B/32, as the "
                                       "papers), from models/elite_eval."),
                io.Combo.Input("dino_model", options=[comfy_scoring.NONE] + names,
                               tooltip="The DINO model (ViT-S/16, or DINOv2) for DINO-I, from models/elite_eval."),
                io.Mask.Input("reference_mask", optional=True,
                              tooltip="Optional: the concept's mask (white on the subject): adds masked CLIP-I."),
                io.Mask.Input("image_mask", optional=True,
                              tooltip="Optional: masks of the pictures, e.g. ELITE Attention Map's; without one "
                                      "they are scored whole."),
                expert(io.Boolean.Input("crop_to_mask", default=False,
                                        tooltip="Masked CLIP-I on the subject's box only (the background white).")),
            ],
            outputs=[
                io.Float.Output(display_name="clip_t", tooltip=f"Matches the prompt: batch mean; {NOT_SCORED}"),
                io.Float.Output(display_name="clip_i", tooltip=f"Looks like the concept (CLIP): batch mean; {NOT_SCORED}"),
                io.Float.Output(display_name="dino_i", tooltip=f"Looks like the concept (DINO): batch mean; {NOT_SCORED}"),
                io.Float.Output(display_name="masked_clip_i",
                                tooltip=f"Looks like the concept, background ignored: batch mean; {NOT_SCORED}"),
                io.String.Output(display_name="report", tooltip="Every picture's numbers as text, also shown on the node."),
            ],
            is_output_node=True,
        )

    @classmethod
    def validate_inputs(cls, clip_model, dino_model, **values):
        if clip_model == comfy_scoring.NONE and dino_model == comfy_scoring.NONE:
            return ("ELITE Score: choose a CLIP and/or a DINO model (put them in models/elite_eval: "
                    + comfy_scoring.PUT + ").")
        for name in (clip_model, dino_model):
            if name != comfy_scoring.NONE:
                problem = comfy_scoring.missing_file_message(comfy_scoring.MODEL_FOLDER, name, "metric encoder",
                                                             comfy_scoring.PUT)
                if problem:
                    return problem
        # **values: ComfyUI then skips its own checks of every widget, so check_widget_values makes them
        return check_widget_values(cls, {"clip_model": clip_model, "dino_model": dino_model, **values})

    @classmethod
    def execute(cls, images, reference, prompt, clip_model, dino_model, reference_mask=None, image_mask=None,
                crop_to_mask=False) -> io.NodeOutput:
        check_node_inputs(cls, locals())
        clip = comfy_scoring.load_metric_encoder(clip_model, "clip") if clip_model != comfy_scoring.NONE else None
        dino = comfy_scoring.load_metric_encoder(dino_model, None) if dino_model != comfy_scoring.NONE else None
        scores = comfy_scoring.score_images(images, reference, prompt, clip, dino, reference_mask, image_mask,
                                            crop_to_mask)
        means = {key: sum(v) / len(v) for key, v in scores.items()}
        report = score_report(scores)
        return io.NodeOutput(means.get("clip_t", -1.0), means.get("clip_i", -1.0), means.get("dino_i", -1.0),
                             means.get("masked_clip_i", -1.0), report, ui=ui.PreviewText(report))


class ELITEScore(_ScoreNode):
    # The frontend lists the nodes whose id or name starts with what was typed, shortest first: under its
    # first id, "ELITEScore", the shortest of the pack, a search for "elite" listed this evaluation node first.
    SCORE_ID = "ELITEEvaluationScore"
    SCORE_NAME = "ELITE Score (CLIP-T, CLIP-I, DINO-I)"


class ELITEScoreOldId(_ScoreNode):
    """ELITE Score under its first id, so workflows saved with it load and run as before; the frontend
    hides deprecated nodes from search and the node library."""

    SCORE_ID = "ELITEScore"
    SCORE_NAME = "ELITE Score (old)"
    OLD_ID = True
