"""ELITE on an SD1.x ModelPatcher: the global K/V weight patches and the local attention branch.

Every patch goes onto a clone, so the input
MODEL is never changed. Before patching, the mapper's K/V are checked against the MODEL, and the
message says which side is wrong: the MODEL (not SD1.x) or the mapper file (made for another UNet).
"""

from __future__ import annotations

import logging
import uuid

import torch

from comfy.ldm.modules.attention import optimized_attention

from ..common.checks import ELITEInputError, check_number
from ..elite.attention_maps import AttentionRecorder
from ..elite.attn2_patches import ELITEAttn2Replace, PlaceholderProbe
from ..elite.concept import ELITEConcept, KVWeights
from ..elite.sites import SD1_ATTN2_SITES, SD1_TEXT_WIDTH, describe_sd1_kv_layout, first_off_layout_site, sd1_base_width

log = logging.getLogger("elite")

PLACEHOLDER_KEY = "elite_placeholder"  # conditioning dict entry: the placeholder's encoded vector(s)
CONCEPT_PLACEHOLDERS_KEY = "elite_placeholders"  # {concept key: its placeholder's encoded vector}
_USE_SD1 = "Use an SD1.x checkpoint (v1-4, v1-5 or a fine-tune of them)."


def _model_kind(model) -> str:
    return type(getattr(model.model, "model_config", model.model)).__name__


def model_sd1_width(model, method: str = "ELITE can patch") -> int:
    """The MODEL's UNet width (320 for SD1.x) read from its 16 attn2 K/V weights; refuse a MODEL
    that is not an SD1.x UNet, naming the first weight that does not fit (and ``method``)."""
    state = model.model_state_dict()
    rows = []
    for site in SD1_ATTN2_SITES:
        wk, wv = state.get(site.comfy_to_k), state.get(site.comfy_to_v)
        if wk is None or wv is None:
            problem = f"it has no {site.comfy_to_k if wk is None else site.comfy_to_v}"
        elif wk.dim() != 2 or wk.shape[1] != SD1_TEXT_WIDTH or wv.shape != wk.shape:
            problem = (f"{site.comfy_to_k} is {tuple(wk.shape)}, but SD1.x cross-attention takes "
                       f"{SD1_TEXT_WIDTH}-wide CLIP-L text")
        else:
            rows.append(wk.shape[0])
            continue
        raise ELITEInputError(
            f"This MODEL ({_model_kind(model)}) is not a Stable Diffusion 1.x UNet that {method}: "
            f"{problem}. {_USE_SD1}"
        )
    base = sd1_base_width(rows)
    if base is None:
        site, found, expected = first_off_layout_site(rows)
        raise ELITEInputError(
            f"This MODEL ({_model_kind(model)}) is not a Stable Diffusion 1.x UNet that {method}: "
            f"{site.comfy_to_k} has {found} rows where the SD1.x layout has {expected}. {_USE_SD1}"
        )
    return base


def check_kv_fits_model(model, kv: KVWeights, mapper_name: str, which: str) -> None:
    """Refuse mapper K/V that do not fit ``model``. The MODEL is checked against the SD1.x site
    table first (the mapper file was checked when it was loaded), so the message blames the right one."""
    shapes = [tuple(kv[site.ckpt_prefix][0].shape) for site in SD1_ATTN2_SITES]
    mapper_base = sd1_base_width([rows for rows, _ in shapes]) or shapes[0][0]
    try:
        base = model_sd1_width(model)
    except ELITEInputError as exc:
        raise ELITEInputError(
            f"{exc} (The ELITE {which} mapper '{mapper_name}' is for SD1.x UNets: its cross-attention "
            f"K/V are {describe_sd1_kv_layout(mapper_base, shapes[0][1])} by layer.)"
        ) from None
    expected = [(base * site.base_channels_mult, SD1_TEXT_WIDTH) for site in SD1_ATTN2_SITES]
    if shapes == expected and all(tuple(kv[s.ckpt_prefix][1].shape) == e for s, e in zip(SD1_ATTN2_SITES, expected)):
        return
    raise ELITEInputError(
        f"The ELITE {which} mapper '{mapper_name}' does not fit this MODEL: its cross-attention K/V are "
        f"{describe_sd1_kv_layout(mapper_base, shapes[0][1])} by layer, but this SD1.x MODEL needs "
        f"{describe_sd1_kv_layout(base)}. The mapper file was made for a different UNet; use the "
        f"official {which}_mapper.pt (made for SD v1-4, it fits every SD1.x checkpoint)."
    )


def _set_global_kv(patched, concept: ELITEConcept) -> None:
    check_kv_fits_model(patched, concept.global_kv, concept.global_name, "global")
    patches = {}
    for site in SD1_ATTN2_SITES:
        wk, wv = concept.global_kv[site.ckpt_prefix]
        patches[site.comfy_to_k] = ("set", (wk,))
        patches[site.comfy_to_v] = ("set", (wv,))
    added = patched.add_patches(patches, 1.0, 1.0)
    if len(added) != 2 * len(SD1_ATTN2_SITES):
        raise RuntimeError(f"ELITE patched {len(added)} of {2 * len(SD1_ATTN2_SITES)} attn2 K/V weights.")


def apply_global_kv(model, concept: ELITEConcept):
    """A clone of ``model`` whose 16 attn2 to_k/to_v weights are ELITE's (weight patches)."""
    patched = model.clone()
    _set_global_kv(patched, concept)
    return patched


def placeholder_fingerprints(positive, concept: ELITEConcept | None = None) -> torch.Tensor | None:
    """The placeholder vectors ELITE Conditioning stored in a CONDITIONING for ``concept``, (m, D),
    or None. Conditioning with several concepts keeps one vector per concept; a concept not among
    them is refused (its local branch would otherwise follow another concept's word)."""
    found = []
    for _, extras in positive or []:
        by_concept = extras.get(CONCEPT_PLACEHOLDERS_KEY)
        if concept is not None and by_concept and len(by_concept) > 1:
            if concept.key not in by_concept:
                raise ELITEInputError(
                    "This concept is not one of the concepts of the positive prompt's ELITE Conditioning: connect "
                    "the same concept to both nodes.")
            found.append(by_concept[concept.key])
        elif PLACEHOLDER_KEY in extras:
            found.append(extras[PLACEHOLDER_KEY])
    return torch.cat(found) if found else None


def _existing_attn2_replace(model, block: tuple[str, int]):
    replaces = model.model_options.get("transformer_options", {}).get("patches_replace", {}).get("attn2", {})
    found = replaces.get((block[0], block[1], 0))
    return found if found is not None else replaces.get(block)


RECORDER_KEY = "elite_attention_recorder"


def check_region(region: torch.Tensor | None) -> torch.Tensor | None:
    """A region MASK as (1 or batch, H, W) floats in [0, 1], or None."""
    if region is None:
        return None
    region = region.unsqueeze(0) if region.dim() == 2 else region
    if region.dim() != 3 or region.shape[-1] < 1 or region.shape[-2] < 1:
        raise ELITEInputError(f"The region must be a MASK (batch, height, width); got shape {tuple(region.shape)}.")
    if not torch.isfinite(region).all():
        raise ELITEInputError("The region MASK holds NaN or infinite values; check the node that made it.")
    return region.float().clamp(0, 1)


def attention_recorder(model) -> AttentionRecorder | None:
    """The recorder ELITE Attention Patch put on ``model`` (or on the model it was cloned from)."""
    return model.model_options.get("transformer_options", {}).get(RECORDER_KEY)


def add_local_attention(patched, concept: ELITEConcept, positive, strength: float,
                        start_percent: float, end_percent: float, recorder: AttentionRecorder | None = None,
                        region: torch.Tensor | None = None) -> None:
    """Install ELITE's local branch on all 16 attn2 sites of ``patched`` (already a clone)."""
    fingerprints = placeholder_fingerprints(positive, concept)
    if fingerprints is None:
        raise ELITEInputError(
            "The local mapping needs the positive prompt from ELITE Conditioning (it finds the "
            "placeholder word there). Connect ELITE Conditioning's output to 'positive'."
        )
    kv = concept.local.kv
    check_kv_fits_model(patched, kv(), concept.local.name, "local")
    sampling = patched.get_model_object("model_sampling")
    sigma_start = sampling.percent_to_sigma(start_percent)
    sigma_end = sampling.percent_to_sigma(end_percent)
    key = f"elite_selection_{uuid.uuid4().hex}"
    patched.set_model_attn2_patch(PlaceholderProbe(key, fingerprints, models=concept.local.models))
    tokens = concept.local_tokens()
    for site in SD1_ATTN2_SITES:
        replace = ELITEAttn2Replace(
            key, tokens,
            weight_k=lambda p=site.ckpt_prefix: kv()[p][0],
            weight_v=lambda p=site.ckpt_prefix: kv()[p][1],
            scale=strength, sigma_start=sigma_start, sigma_end=sigma_end,
            attention=optimized_attention, previous=_existing_attn2_replace(patched, site.block),
            recorder=recorder, region=region,
        )
        patched.set_model_attn2_replace(replace, site.block[0], site.block[1], 0)


def apply_elite(model, concept: ELITEConcept, positive=None, strength: float = 0.8,
                start_percent: float = 0.0, end_percent: float = 1.0, global_kv: bool = True,
                record_attention: bool = False, region: torch.Tensor | None = None):
    """A clone of ``model`` with ELITE's global K/V weights and, when the concept has a local
    mapping and ``strength`` > 0, the local attention branch; with ``record_attention``, the branch
    records the placeholder's attention map (read it with :func:`attention_recorder`); ``region``
    (a MASK, 1 = yes) limits where the local branch adds detail."""
    strength = check_number("strength (λ)", strength, 0.0, 2.0)
    start_percent = check_number("start_percent", start_percent, 0.0, 1.0)
    end_percent = check_number("end_percent", end_percent, 0.0, 1.0)
    if start_percent > end_percent:
        raise ELITEInputError(
            f"start_percent ({start_percent}) is after end_percent ({end_percent}); the local branch runs "
            "from start to end, so start_percent must not be larger."
        )
    patched = model.clone()
    if global_kv:
        _set_global_kv(patched, concept)
    else:
        model_sd1_width(patched)
    if strength != 0.0 and concept.local is not None:
        recorder = None
        if record_attention:
            recorder = AttentionRecorder()
            options = patched.model_options.setdefault("transformer_options", {})
            options[RECORDER_KEY] = recorder
        add_local_attention(patched, concept, positive, strength, start_percent, end_percent, recorder,
                            check_region(region))
    elif strength != 0.0:
        log.info("ELITE: the concept has no local mapping (no local mapper connected); global mapping only.")
    return patched
