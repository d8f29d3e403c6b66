"""ELITEAttentionMap: where the concept went in the sampled image (the placeholder's attention map
that gates ELITE's local branch), as a MASK and as an overlay."""

import logging

import torch
import torch.nn.functional as F

from comfy_api.latest import io, ui

from ..elite_core.comfyui import elite_patch
from ..elite_core.comfyui.socket_checks import check_node_inputs
from ..elite_core.elite.attention_maps import overlay
from .elite_types import CATEGORY, schema

log = logging.getLogger("elite")


def attention_mask(model, samples: dict, images: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(MASK (b, H, W), IMAGE (b, H, W, 3)): the recorded map at the image's size (the latent's x 8
    without images) and the overlay (the map in grey without images)."""
    recorder = elite_patch.attention_recorder(model)
    if recorder is None:
        raise ValueError("ELITE Attention Map: this MODEL records no attention map. Turn on 'attention_map' in "
                         "ELITE Attention Patch (with λ above 0 and a local mapper) and connect its MODEL here.")
    latent = samples["samples"]
    size = tuple(images.shape[1:3]) if images is not None else (latent.shape[-2] * 8, latent.shape[-1] * 8)
    recorded = recorder.mean()
    batch = images.shape[0] if images is not None else latent.shape[0]
    if recorded is None:
        log.warning("ELITE Attention Map: nothing was recorded (no placeholder in the positive prompt, or the local "
                    "branch was never active): the map is empty.")
        mask = torch.zeros(batch, *size)
    else:
        mask = F.interpolate(recorded[:, None], size=size, mode="bilinear", align_corners=False)[:, 0].clamp(0, 1)
        if mask.shape[0] != batch:
            mask = mask[:1].expand(batch, -1, -1) if mask.shape[0] == 1 else mask[:batch]
    shown = overlay(images[..., :3].float().cpu(), mask) if images is not None else mask[..., None].expand(-1, -1, -1, 3)
    return mask.contiguous(), shown.contiguous()


class ELITEAttentionMap(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return schema(
            search_aliases=["elite", "attention heatmap", "where the concept goes", "subject mask", "concept mask"],
            node_id="ELITEAttentionMap",
            display_name="ELITE Attention Map",
            category=CATEGORY,
            description=(
                "Shows where the concept landed in the picture: a mask that is bright where the concept word drew "
                "(the same map that steers where ELITE copies the concept's detail), averaged over the sampling "
                "steps. Turn on 'attention_map' among ELITE Attention Patch's advanced inputs; connect that MODEL, "
                "the sampler's LATENT and, for an overlay, the decoded images."
            ),
            inputs=[
                io.Model.Input("model", tooltip="The MODEL from ELITE Attention Patch, with attention_map on."),
                io.Latent.Input("samples", tooltip="The sampler's LATENT: the map is read after sampling."),
                io.Image.Input("images", optional=True, tooltip="Optional: the decoded pictures, for the overlay."),
            ],
            outputs=[io.Mask.Output(display_name="attention",
                                    tooltip="Where the concept landed, 0 to 1, at the picture's size: use it to "
                                            "inpaint or composite, or as ELITE Score's image_mask."),
                     io.Image.Output(display_name="overlay", tooltip="The map over the pictures (grey without them).")],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, model, samples, images=None) -> io.NodeOutput:
        check_node_inputs(cls, locals())
        mask, shown = attention_mask(model, samples, images)
        return io.NodeOutput(mask, shown, ui=ui.PreviewImage(shown, cls=cls))
