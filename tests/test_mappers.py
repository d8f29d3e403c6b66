"""Mapper forward passes against an independent re-statement of ELITE's formulas."""

import torch

from comfyui_elite.elite_core.elite.checkpoint import widths_from_state_dict
from comfyui_elite.elite_core.elite.mappers import GlobalMapper, LocalMapper, build_mapper
from elite_test_pack.reference_encoder import reference_mlp


def random_features(batch=2, width=64, seed=7):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, 257, width, generator=gen) for _ in range(5)]


def test_global_mapper_matches_reference_formula(global_mapper_state):
    features = random_features()
    mapper = build_mapper(GlobalMapper, global_mapper_state, widths_from_state_dict(global_mapper_state))
    words = mapper(features)
    assert words.shape == (2, 5, 768)
    for i, f in enumerate(features):
        cls_term = reference_mlp(global_mapper_state, f"mapping_{i}", f[:, 0])
        patch_term = torch.stack(
            [reference_mlp(global_mapper_state, f"mapping_patch_{i}", f[:, p]) for p in range(1, 257)]
        ).mean(0)
        torch.testing.assert_close(words[:, i], cls_term + patch_term, atol=1e-5, rtol=0)


def test_local_mapper_matches_reference_formula(global_mapper_state):
    features = random_features(batch=1)
    mapper = build_mapper(LocalMapper, global_mapper_state, widths_from_state_dict(global_mapper_state))
    tokens = mapper(features)
    assert tokens.shape == (1, 256, 768)
    expected = sum(
        reference_mlp(global_mapper_state, f"mapping_{i}", f[:, :1])
        + reference_mlp(global_mapper_state, f"mapping_patch_{i}", f[:, 1:])
        for i, f in enumerate(features)
    ) / 5
    torch.testing.assert_close(tokens, expected, atol=1e-5, rtol=0)


def test_words_depend_on_the_image(global_mapper_state):
    mapper = build_mapper(GlobalMapper, global_mapper_state, widths_from_state_dict(global_mapper_state))
    a, b = mapper(random_features(seed=1)), mapper(random_features(seed=2))
    assert (a - b).abs().max() > 1e-3


def test_build_adopts_tensors_without_random_init(global_mapper_state):
    mapper = build_mapper(GlobalMapper, global_mapper_state, widths_from_state_dict(global_mapper_state))
    for key, value in mapper.state_dict().items():
        assert torch.equal(value, global_mapper_state[key])
    assert not any(p.requires_grad for p in mapper.parameters())
