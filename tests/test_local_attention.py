"""ELITE's local branch inside ComfyUI's UNet: parity with the reference maths, and invariants."""

import copy

import pytest
import torch
from conftest import ELITE_PROMPT

from comfyui_elite.elite_core.comfyui import elite as comfy_elite
from comfyui_elite.elite_core.comfyui import elite_patch
from comfyui_elite.elite_core.elite import attn2_patches, local_attention
from comfyui_elite.elite_core.elite.concept import ELITEConcept
from comfyui_elite.elite_core.elite.sites import SD1_ATTN2_SITES
from elite_test_pack.reference_attention import install_reference
from elite_test_pack.tiny_models import build_tiny_sd15_model
from elite_test_pack.unet_calls import cfg_batch, row_indices, unet_eps

LAMBDA = 0.8


@pytest.fixture(scope="module")
def reference_model():
    """A second tiny UNet with the same seeded weights, whose attn2 layers get the reference maths."""
    return build_tiny_sd15_model(seed=0)


def reference_eps(reference_model, elite, x, context, indices, llambda=LAMBDA, local=True):
    install_reference(
        reference_model.model.diffusion_model, SD1_ATTN2_SITES, elite["concept"].global_kv,
        local_kv=elite["local_kv"] if local else None,
        local=elite["concept"].local_tokens() if local else None, indices=indices, llambda=llambda,
    )
    with torch.no_grad():
        return reference_model.model.diffusion_model(
            x, timesteps=torch.full((x.shape[0],), 500.0), context=context, transformer_options={}
        )


@pytest.mark.parametrize("cond_or_uncond", [[0], [1, 0], [0, 1]], ids=["cfg1", "uncond-first", "cond-first"])
@pytest.mark.parametrize("batch", [1, 2, 3])
def test_unet_matches_reference(tiny_model, reference_model, elite, cond_or_uncond, batch, record_parity):
    patched = elite_patch.apply_elite(tiny_model, elite["concept"], elite["positive"], LAMBDA)
    x, context = cfg_batch(elite["pos"], elite["neg"], cond_or_uncond, batch)
    ours = unet_eps(patched, x, context, cond_or_uncond)
    expected = reference_eps(reference_model, elite, x, context, row_indices(cond_or_uncond, batch, elite["index"]))
    record_parity(ours, expected, "(UNet ε)")
    torch.testing.assert_close(ours, expected, atol=1e-5, rtol=0)
    # The local branch is really there: the global-only model predicts something else.
    global_only = unet_eps(elite_patch.apply_global_kv(tiny_model, elite["concept"]), x, context, cond_or_uncond)
    assert (ours - global_only).abs().max() > 1e-4


def _attn2_modules(diffusion_model):
    for site in SD1_ATTN2_SITES:
        module = diffusion_model
        for part in site.comfy_prefix[len("diffusion_model."):].split("."):
            module = getattr(module, part)
        yield site, module


def test_every_attn2_output_matches_reference(tiny_model, reference_model, elite, record_parity):
    patched = elite_patch.apply_elite(tiny_model, elite["concept"], elite["positive"], LAMBDA)
    x, context = cfg_batch(elite["pos"], elite["neg"], [1, 0], 1)
    captured = {"ours": {}, "ref": {}}
    handles = [m.to_out.register_forward_hook(lambda m, i, o, s=s: captured["ours"].__setitem__(s.block, o))
               for s, m in _attn2_modules(patched.model.diffusion_model)]
    try:
        unet_eps(patched, x, context, [1, 0])
    finally:
        for h in handles:
            h.remove()
    handles = [m.register_forward_hook(lambda m, i, o, s=s: captured["ref"].__setitem__(s.block, o))
               for s, m in _attn2_modules(reference_model.model.diffusion_model)]
    try:
        reference_eps(reference_model, elite, x, context, row_indices([1, 0], 1, elite["index"]))
    finally:
        for h in handles:
            h.remove()
    assert set(captured["ours"]) == {s.block for s in SD1_ATTN2_SITES}
    worst = max(record_parity(captured["ours"][s.block], captured["ref"][s.block], f"attn2 {s.block}")
                for s in SD1_ATTN2_SITES)
    assert worst <= 1e-5


def test_sites_that_run_are_exactly_the_16(tiny_model, elite, monkeypatch):
    seen = []
    original = attn2_patches.ELITEAttn2Replace.__call__

    def spy(self, q, k, v, extra_options):
        seen.append(extra_options["block"])
        return original(self, q, k, v, extra_options)

    monkeypatch.setattr(attn2_patches.ELITEAttn2Replace, "__call__", spy)
    patched = elite_patch.apply_elite(tiny_model, elite["concept"], elite["positive"], LAMBDA)
    x, context = cfg_batch(elite["pos"], elite["neg"], [1, 0], 1)
    unet_eps(patched, x, context, [1, 0])
    assert seen == [s.block for s in SD1_ATTN2_SITES]


def test_lambda_zero_is_exactly_global_only(tiny_model, elite):
    x, context = cfg_batch(elite["pos"], elite["neg"], [1, 0], 2)
    zero = elite_patch.apply_elite(tiny_model, elite["concept"], elite["positive"], strength=0.0)
    global_only = elite_patch.apply_global_kv(tiny_model, elite["concept"])
    assert torch.equal(unet_eps(zero, x, context, [1, 0]), unet_eps(global_only, x, context, [1, 0]))


def test_global_off_and_lambda_zero_is_exactly_the_unpatched_model(tiny_model, elite):
    x, context = cfg_batch(elite["pos"], elite["neg"], [1, 0], 1)
    off = elite_patch.apply_elite(tiny_model, elite["concept"], elite["positive"], strength=0.0, global_kv=False)
    assert torch.equal(unet_eps(off, x, context, [1, 0]), unet_eps(tiny_model, x, context, [1, 0]))


def test_outside_the_schedule_window_the_replace_adds_exactly_nothing(tiny_model, elite):
    """start/end gate on the device: outside the window the installed replace returns the text
    attention bit for bit; inside it adds the local term."""
    patched = elite_patch.apply_elite(tiny_model, elite["concept"], elite["positive"], LAMBDA,
                                        start_percent=0.5, end_percent=1.0)
    assert len(patched.model_options["transformer_options"]["patches_replace"]["attn2"]) == 16
    sampling = tiny_model.get_model_object("model_sampling")
    early, late = float(sampling.sigma_max), float(sampling.percent_to_sigma(0.9))
    global_only = elite_patch.apply_global_kv(tiny_model, elite["concept"])
    x, context = cfg_batch(elite["pos"], elite["neg"], [1, 0], 1)
    assert torch.equal(unet_eps(patched, x, context, [1, 0], sigma=early),
                       unet_eps(global_only, x, context, [1, 0], sigma=early))
    assert (unet_eps(patched, x, context, [1, 0], sigma=late)
            - unet_eps(global_only, x, context, [1, 0], sigma=late)).abs().max() > 1e-4


def test_zero_mask_makes_the_local_branch_a_no_op(tiny_model, tiny_clip_vision, global_mapper, local_mapper,
                                                   concept_image, elite):
    empty = comfy_elite.encode_concept(tiny_clip_vision, global_mapper, concept_image, local_mapper,
                                         torch.zeros(1, 96, 128))
    assert torch.count_nonzero(empty.local.tokens) == 0
    patched = elite_patch.apply_elite(tiny_model, empty, elite["positive"], LAMBDA)
    global_only = elite_patch.apply_global_kv(tiny_model, empty)
    x, context = cfg_batch(elite["pos"], elite["neg"], [1, 0], 1)
    assert torch.equal(unet_eps(patched, x, context, [1, 0]), unet_eps(global_only, x, context, [1, 0]))


def test_two_elite_patches_add_their_terms(tiny_model, elite):
    """Stacked, each patch adds its own local term: twice the same concept equals λ doubled."""
    once = elite_patch.apply_elite(tiny_model, elite["concept"], elite["positive"], LAMBDA)
    twice = elite_patch.apply_elite(once, elite["concept"], elite["positive"], LAMBDA)
    double = elite_patch.apply_elite(tiny_model, elite["concept"], elite["positive"], 2 * LAMBDA)
    x, context = cfg_batch(elite["pos"], elite["neg"], [1, 0], 1)
    torch.testing.assert_close(unet_eps(twice, x, context, [1, 0]), unet_eps(double, x, context, [1, 0]),
                               atol=1e-5, rtol=0)
    assert len(twice.model_options["transformer_options"]["patches"]["attn2_patch"]) == 2


class ForeignReplace:
    """Another pack's attn2 replace (IPAdapter registers 2-tuple keys): text attention plus a term."""

    def __init__(self):
        self.calls = []

    def __call__(self, q, k, v, extra_options):
        from comfy.ldm.modules.attention import optimized_attention

        self.calls.append(extra_options["block"])
        return optimized_attention(q, k, v, extra_options["n_heads"]) + 0.05 * q

    def __deepcopy__(self, memo):
        return self


def test_elite_wraps_a_foreign_replace(tiny_model, elite):
    foreign = ForeignReplace()
    other = tiny_model.clone()
    for site in SD1_ATTN2_SITES:
        other.set_model_attn2_replace(foreign, site.block[0], site.block[1])
    options_before = copy.deepcopy(other.model_options)
    patched = elite_patch.apply_elite(other, elite["concept"], elite["positive"], LAMBDA)
    assert other.model_options == options_before  # the upstream MODEL is untouched
    x, context = cfg_batch(elite["pos"], elite["neg"], [1, 0], 1)
    unet_eps(patched, x, context, [1, 0])
    assert foreign.calls == [s.block for s in SD1_ATTN2_SITES]

    # Per site: ELITE's output minus the foreign output is exactly ELITE's own term.
    replaces = patched.model_options["transformer_options"]["patches_replace"]["attn2"]
    plain = elite_patch.apply_elite(tiny_model, elite["concept"], elite["positive"], LAMBDA)
    plain_replace = plain.model_options["transformer_options"]["patches_replace"]["attn2"][("input", 1, 0)]
    wrapped = replaces[("input", 1, 0)]
    gen = torch.Generator().manual_seed(3)
    q, k, v = torch.randn(2, 64, 32, generator=gen), torch.randn(2, 77, 32, generator=gen), torch.randn(2, 77, 32, generator=gen)
    selection = torch.zeros(2, 77)
    selection[1, elite["index"]] = 1.0
    options = {"n_heads": 8, "dim_head": 4, "cond_or_uncond": [1, 0], "block": ("input", 1),
               wrapped.key: selection, plain_replace.key: selection}
    from comfy.ldm.modules.attention import optimized_attention

    elite_term = plain_replace(q, k, v, dict(options)) - optimized_attention(q, k, v, 8)
    torch.testing.assert_close(wrapped(q, k, v, dict(options)) - foreign(q, k, v, options), elite_term,
                               atol=1e-6, rtol=0)


def test_upstream_model_options_are_unchanged(tiny_model, elite):
    before = copy.deepcopy(tiny_model.model_options)
    patched = elite_patch.apply_elite(tiny_model, elite["concept"], elite["positive"], LAMBDA)
    elite_patch.apply_elite(patched, elite["concept"], elite["positive"], LAMBDA)
    assert tiny_model.model_options == before
    assert tiny_model.patches == {}


def test_patch_objects_survive_clone_and_to(tiny_model, elite):
    patched = elite_patch.apply_elite(tiny_model, elite["concept"], elite["positive"], LAMBDA)
    replaces = patched.model_options["transformer_options"]["patches_replace"]["attn2"]
    clone = patched.clone()  # deep-copies model_options on 0.3.75; shares leaves on newer releases
    cloned = clone.model_options["transformer_options"]["patches_replace"]["attn2"]
    assert all(cloned[key] is replaces[key] for key in replaces)
    clone.model_patches_to(torch.device("cpu"))
    clone.model_patches_to(torch.float32)
    assert all(cloned[key] is replaces[key] for key in replaces)
    x, context = cfg_batch(elite["pos"], elite["neg"], [1, 0], 1)
    assert torch.equal(unet_eps(clone, x, context, [1, 0]), unet_eps(patched, x, context, [1, 0]))


def test_local_kv_weights_are_loaded_with_the_unet(tiny_model, elite, local_mapper):
    import comfy.model_management

    patched = elite_patch.apply_elite(tiny_model, elite["concept"], elite["positive"], LAMBDA)
    assert local_mapper.kv_patcher in patched.model_patches_models()
    comfy.model_management.load_models_gpu([patched])
    loaded = [m.model for m in comfy.model_management.current_loaded_models]
    assert local_mapper.kv_patcher in loaded


def test_local_keys_and_values_are_projected_once(tiny_model, elite):
    patched = elite_patch.apply_elite(tiny_model, elite["concept"], elite["positive"], LAMBDA)
    replace = patched.model_options["transformer_options"]["patches_replace"]["attn2"][("middle", 0, 0)]
    x, context = cfg_batch(elite["pos"], elite["neg"], [1, 0], 1)
    unet_eps(patched, x, context, [1, 0])
    first = dict(replace._local_kv._cache)
    unet_eps(patched, x, context, [1, 0], sigma=1.0)
    assert list(replace._local_kv._cache) == [(torch.device("cpu"), torch.float32)]
    assert all(replace._local_kv._cache[key][0] is first[key][0] for key in first)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_runs_and_stays_close(elite, dtype):
    full = build_tiny_sd15_model(seed=0)
    half = build_tiny_sd15_model(seed=0, dtype=dtype)
    x, context = cfg_batch(elite["pos"], elite["neg"], [1, 0], 2)
    outs = []
    for model in (full, half):
        patched = elite_patch.apply_elite(model, elite["concept"], elite["positive"], LAMBDA)
        outs.append(unet_eps(patched, x, context, [1, 0]))
    assert torch.isfinite(outs[1]).all()
    scale = outs[0].abs().max()
    assert (outs[1] - outs[0]).abs().max() <= 0.05 * scale


def test_local_branch_needs_elite_conditioning(tiny_model, elite, tiny_clip):
    plain_positive = tiny_clip.encode_from_tokens_scheduled(tiny_clip.tokenize(ELITE_PROMPT))
    with pytest.raises(comfy_elite.ELITEInputError, match="Connect ELITE Conditioning's output to 'positive'"):
        elite_patch.apply_elite(tiny_model, elite["concept"], plain_positive, LAMBDA)
    with pytest.raises(comfy_elite.ELITEInputError, match="needs the positive prompt from ELITE Conditioning"):
        elite_patch.apply_elite(tiny_model, elite["concept"], None, LAMBDA)


def test_global_only_concept_ignores_lambda(tiny_model, elite):
    words_only = ELITEConcept(words=elite["concept"].words, global_kv=elite["concept"].global_kv)
    patched = elite_patch.apply_elite(tiny_model, words_only, None, LAMBDA)
    assert "patches_replace" not in patched.model_options["transformer_options"]


@pytest.mark.parametrize("start, end, message", [
    (0.6, 0.4, r"start_percent \(0.6\) is after end_percent \(0.4\)"),
    (-0.1, 1.0, r"start_percent is -0.1; it must be from 0.0 to 1.0"),
    (0.0, 1.5, r"end_percent is 1.5; it must be from 0.0 to 1.0"),
])
def test_bad_schedule_window_is_refused(tiny_model, elite, start, end, message):
    with pytest.raises(comfy_elite.ELITEInputError, match=message):
        elite_patch.apply_elite(tiny_model, elite["concept"], elite["positive"], LAMBDA, start, end)


def _sdpa(q, k, v, heads, attn_precision=None):
    b, n, inner = q.shape
    heads_first = [x.view(x.shape[0], x.shape[1], heads, -1).transpose(1, 2) for x in (q, k, v)]
    return torch.nn.functional.scaled_dot_product_attention(*heads_first).transpose(1, 2).reshape(b, n, inner)


def _branch_inputs(dtype, heads=4, width=32, tokens=64, placeholder=5):
    g = torch.Generator().manual_seed(3)
    q, k = (torch.randn(2, n, width, generator=g).mul(2).to(dtype) for n in (tokens, 77))
    k_local, v_local = (torch.randn(1, 256, width, generator=g).to(dtype) for _ in range(2))
    selection = torch.zeros(2, 77, dtype=dtype)
    selection[:, placeholder] = 1
    return q, k, selection, k_local, v_local, heads


@pytest.mark.parametrize("grad", [False, True], ids=["inference", "training"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_gate_rounds_as_the_log_sum_exp_of_the_text_logits(dtype, grad):
    """The gate's numerics are pinned: exp(logit - logsumexp(logits)) over fp32 logits, the parity
    figures' formula. A softmax formed another way (exp over a sum, scale inside the product) rounds
    differently and moves every parity figure."""
    q, k, selection, _, _, heads = _branch_inputs(dtype)
    q.requires_grad_(grad)
    heads_first = [x.view(2, x.shape[1], heads, -1).transpose(1, 2) for x in (q.detach(), k)]
    logits = torch.matmul(heads_first[0], heads_first[1].transpose(-1, -2)).float() * (32 // heads) ** -0.5
    column = torch.exp(logits[..., 5] - torch.logsumexp(logits, dim=-1))
    expected = column / column.amax(dim=(1, 2), keepdim=True)
    gate = local_attention.placeholder_gate(q, k, selection, heads)
    assert torch.equal(gate.detach(), expected)
    if grad:
        gate.sum().backward()  # the in-place reductions leave the graph intact
        assert torch.isfinite(q.grad).all() and q.grad.abs().sum() > 0


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_term_added_in_place_rounds_as_the_reference_sum(dtype):
    """``into`` adds λ·A·local as ``hidden + term`` does, bit for bit (a fused multiply-add would not)."""
    inputs = _branch_inputs(dtype)
    hidden = torch.randn(2, 64, 32, generator=torch.Generator().manual_seed(4)).to(dtype)
    expected = hidden + local_attention.local_term(*inputs, LAMBDA, _sdpa)
    assert torch.equal(local_attention.local_term(*inputs, LAMBDA, _sdpa, into=hidden.clone()), expected)
