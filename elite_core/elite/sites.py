"""The 16 SD1.x cross-attention (attn2) sites: the single source of truth for their names.

Each site is known by four names:

* ``diffusers`` - the module path in a diffusers ``UNet2DConditionModel``;
* ``comfy_prefix`` - the ComfyUI/LDM state-dict prefix of that attention module;
* ``block`` - the ``(block_name, number)`` pair ComfyUI's attn2 replace patches are keyed by;
* ``ckpt_prefix`` - the prefix of its ``to_k``/``to_v`` linears in an ELITE mapper checkpoint
  (the diffusers path with dots replaced by underscores).

Order follows ComfyUI's forward pass (``transformer_index`` 0..15): input 1,2,4,5,7,8, middle,
output 3..11.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class AttnSite:
    diffusers: str
    comfy_prefix: str
    block: tuple[str, int]
    base_channels_mult: int  # query width = model_channels * this (320/640/1280 on SD1.x)

    @property
    def ckpt_prefix(self) -> str:
        return self.diffusers.replace(".", "_")

    @property
    def comfy_to_k(self) -> str:
        return f"{self.comfy_prefix}.to_k.weight"

    @property
    def comfy_to_v(self) -> str:
        return f"{self.comfy_prefix}.to_v.weight"

    @property
    def ckpt_to_k(self) -> str:
        return f"{self.ckpt_prefix}_to_k.weight"

    @property
    def ckpt_to_v(self) -> str:
        return f"{self.ckpt_prefix}_to_v.weight"


def _site(diffusers_block: str, comfy_block: str, block: tuple[str, int], mult: int) -> AttnSite:
    return AttnSite(
        diffusers=f"{diffusers_block}.transformer_blocks.0.attn2",
        comfy_prefix=f"diffusion_model.{comfy_block}.transformer_blocks.0.attn2",
        block=block,
        base_channels_mult=mult,
    )


SD1_ATTN2_SITES: tuple[AttnSite, ...] = (
    _site("down_blocks.0.attentions.0", "input_blocks.1.1", ("input", 1), 1),
    _site("down_blocks.0.attentions.1", "input_blocks.2.1", ("input", 2), 1),
    _site("down_blocks.1.attentions.0", "input_blocks.4.1", ("input", 4), 2),
    _site("down_blocks.1.attentions.1", "input_blocks.5.1", ("input", 5), 2),
    _site("down_blocks.2.attentions.0", "input_blocks.7.1", ("input", 7), 4),
    _site("down_blocks.2.attentions.1", "input_blocks.8.1", ("input", 8), 4),
    _site("mid_block.attentions.0", "middle_block.1", ("middle", 0), 4),
    _site("up_blocks.1.attentions.0", "output_blocks.3.1", ("output", 3), 4),
    _site("up_blocks.1.attentions.1", "output_blocks.4.1", ("output", 4), 4),
    _site("up_blocks.1.attentions.2", "output_blocks.5.1", ("output", 5), 4),
    _site("up_blocks.2.attentions.0", "output_blocks.6.1", ("output", 6), 2),
    _site("up_blocks.2.attentions.1", "output_blocks.7.1", ("output", 7), 2),
    _site("up_blocks.2.attentions.2", "output_blocks.8.1", ("output", 8), 2),
    _site("up_blocks.3.attentions.0", "output_blocks.9.1", ("output", 9), 1),
    _site("up_blocks.3.attentions.1", "output_blocks.10.1", ("output", 10), 1),
    _site("up_blocks.3.attentions.2", "output_blocks.11.1", ("output", 11), 1),
)

SITES_BY_BLOCK = {site.block: site for site in SD1_ATTN2_SITES}
SITES_BY_CKPT_PREFIX = {site.ckpt_prefix: site for site in SD1_ATTN2_SITES}

SD1_TEXT_WIDTH = 768  # CLIP ViT-L/14 text width: the input width of every attn2 to_k/to_v


def sd1_base_width(kv_rows: tuple[int, ...] | list[int]) -> int | None:
    """The UNet width ``c`` (model_channels) for which ``kv_rows[i] == c * mult_i`` at all 16 sites
    (320 for every SD1.x checkpoint), or None when the rows do not follow the SD1.x layout."""
    if len(kv_rows) != len(SD1_ATTN2_SITES) or kv_rows[0] <= 0:
        return None
    base = kv_rows[0] // SD1_ATTN2_SITES[0].base_channels_mult
    if any(rows != base * site.base_channels_mult for rows, site in zip(kv_rows, SD1_ATTN2_SITES)):
        return None
    return base


def describe_sd1_kv_layout(base: int, text_width: int = SD1_TEXT_WIDTH) -> str:
    """The to_k/to_v shapes of an SD1.x UNet of width ``base``, e.g. '(320, 768) / (640, 768) / (1280, 768)'."""
    rows = sorted({base * site.base_channels_mult for site in SD1_ATTN2_SITES})
    return " / ".join(f"({r}, {text_width})" for r in rows)


def first_off_layout_site(kv_rows: tuple[int, ...] | list[int]) -> tuple[AttnSite, int, int] | None:
    """(site, rows found, rows expected) of the first site that breaks the layout set by site 0."""
    base = kv_rows[0] // SD1_ATTN2_SITES[0].base_channels_mult
    for rows, site in zip(kv_rows, SD1_ATTN2_SITES):
        if rows != base * site.base_channels_mult:
            return site, rows, base * site.base_channels_mult
    return None
