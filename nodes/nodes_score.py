"""ELITEScore: the papers' metrics inside a workflow. Scores an IMAGE batch against the concept
image (CLIP-I, DINO-I, masked CLIP-I) and the prompt (CLIP-T), so settings can be compared."""

from comfy_api.latest import io, ui

from ..elite_core.comfyui import scoring as comfy_scoring
from .elite_types import CATEGORY, advanced, schema

NOT_SCORED = "-1 when not scored (no model for it, no reference mask, or an empty prompt)."
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


class ELITEScore(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        names = comfy_scoring.encoder_names()
        return schema(
            search_aliases=["elite", "clip score", "dino score", "dreambench", "evaluate", "likeness"],
            node_id="ELITEScore",
            display_name="ELITE Score (CLIP-T, CLIP-I, DINO-I)",
            category=CATEGORY,
            description=(
                "Scores images against the concept image and the prompt with the papers' metrics (raw cosines): "
                "CLIP-T (prompt fidelity), CLIP-I and DINO-I (subject fidelity), and masked CLIP-I (the "
                "background ignored). Encoders from models/elite_eval: CLIP ViT-B/32 and DINO ViT-S/16 as the "
                "papers use, as Hugging Face folders or model.safetensors files."
            ),
            inputs=[
                io.Image.Input("images", tooltip="The generated images to score."),
                io.Image.Input("reference", tooltip="The concept image(s); each image is compared with each."),
                io.String.Input("prompt", default="",
                                tooltip="For CLIP-T: the prompt with the concept's class noun instead of S "
                                        "(e.g. 'a cat on the beach'). Empty: no CLIP-T."),
                io.Combo.Input("clip_model", options=[comfy_scoring.NONE] + names,
                               tooltip="CLIP for CLIP-T, CLIP-I and masked CLIP-I (ViT-B/32 as the papers)."),
                io.Combo.Input("dino_model", options=[comfy_scoring.NONE] + names,
                               tooltip="DINO ViT-S/16 (or DINOv2) for DINO-I."),
                io.Mask.Input("reference_mask", optional=True,
                              tooltip="The concept's object mask (1 on the object): adds masked CLIP-I."),
                io.Mask.Input("image_mask", optional=True,
                              tooltip="Masks of the generated images, e.g. ELITE Attention Map's; without it "
                                      "they are scored whole."),
                io.Boolean.Input("crop_to_mask", default=False, **advanced(),
                                 tooltip="Masked CLIP-I on the object's box only (the background filled white)."),
            ],
            outputs=[
                io.Float.Output(display_name="clip_t", tooltip=f"Batch mean; {NOT_SCORED}"),
                io.Float.Output(display_name="clip_i", tooltip=f"Batch mean; {NOT_SCORED}"),
                io.Float.Output(display_name="dino_i", tooltip=f"Batch mean; {NOT_SCORED}"),
                io.Float.Output(display_name="masked_clip_i", tooltip=f"Batch mean; {NOT_SCORED}"),
                io.String.Output(display_name="report"),
            ],
            is_output_node=True,
        )

    @classmethod
    def validate_inputs(cls, clip_model, dino_model, **_):
        if clip_model == comfy_scoring.NONE and dino_model == comfy_scoring.NONE:
            return ("ELITE Score: choose a CLIP and/or a DINO model (put them in models/elite_eval: "
                    + comfy_scoring.PUT + ").")
        for name in (clip_model, dino_model):
            if name != comfy_scoring.NONE:
                problem = comfy_scoring.missing_file_message(comfy_scoring.MODEL_FOLDER, name, "metric encoder",
                                                             comfy_scoring.PUT)
                if problem:
                    return problem
        return True

    @classmethod
    def execute(cls, images, reference, prompt, clip_model, dino_model, reference_mask=None, image_mask=None,
                crop_to_mask=False) -> io.NodeOutput:
        clip = comfy_scoring.load_metric_encoder(clip_model, "clip") if clip_model != comfy_scoring.NONE else None
        dino = comfy_scoring.load_metric_encoder(dino_model, None) if dino_model != comfy_scoring.NONE else None
        scores = comfy_scoring.score_images(images, reference, prompt, clip, dino, reference_mask, image_mask,
                                            crop_to_mask)
        means = {key: sum(v) / len(v) for key, v in scores.items()}
        report = score_report(scores)
        return io.NodeOutput(means.get("clip_t", -1.0), means.get("clip_i", -1.0), means.get("dino_i", -1.0),
                             means.get("masked_clip_i", -1.0), report, ui=ui.PreviewText(report))
