"""Cost of one CatVersion training step against one textual-inversion step, CPU.

Both steps run the same frozen models (a real-size SD1.x CLIP-L text encoder with random weights, a
tiny SD1.5-layout UNet, or the real-size UNet with ``--real-unet``), on the same batch and draws
(images, flips, timesteps, noise), through the same loss and AdamW. They differ only in what is
learned: CatVersion's prefix in text layers 9-11, so its backward stops at layer 9; a textual
inversion token embedding (the class word's row, replaced by a learned vector as textual inversion
does), whose gradient has to pass all 12 text layers. The two take turns step by step in one
process (``bench/rounds.py``: one untimed warm-up round, then ``--rounds`` rounds, who goes first
rotating, both on the round's draws); the script prints the ratio CatVersion / textual inversion of
each round summarised by its median, quartiles and range, against the target: a CatVersion step costs
no more than a textual-inversion step (<= 1.00x), since its backward stops at text layer 9.

    .cache/venv/bin/python bench/bench_catversion_train.py [--rounds 7] [--real-unet] [--resolution 256]

The defaults (tiny UNet, 256 px, batch 2, 7 rounds) take a few minutes on 2 CPU cores; the real
UNet at 512 px is the training node's real cost, much slower on a CPU.

This is a benchmark, not a test: it asserts nothing about absolute times.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch
from rounds import alternate, ratios, spread, timed

REPO = Path(__file__).resolve().parents[1]
WARMUP = 1
TARGET = 1.00  # a CatVersion step / a textual-inversion step, docs/development.md#benches


def setup_comfy():
    sys.path.insert(0, os.environ.get("ELITE_COMFYUI_DIR", str(REPO / ".cache" / "comfyui")))
    # the repository root, for elite_test_pack and elite_core: after ComfyUI, whose nodes.py the
    # repository's nodes/ must not shadow
    sys.path.insert(1, str(REPO))
    from comfy.cli_args import args

    args.cpu = True
    import comfy.model_management  # noqa: F401


class TextualInversionText:
    """``FrozenSD1.encode_caption`` for textual inversion: the caption with its class word's embedding
    replaced by a learned vector; the prefix arguments are ignored."""

    def __init__(self, frozen, caption_word: str, embedding: torch.nn.Parameter):
        from elite_core.elite.prompt_tokens import placeholder_token_id

        self.frozen, self.embedding = frozen, embedding
        self.token_id = placeholder_token_id(frozen.clip.tokenize(caption_word)["l"][0], caption_word)
        self.device, self.latent_scale = frozen.device, frozen.latent_scale

    def posterior(self, pixels):
        return self.frozen.posterior(pixels)

    def predict_noise(self, latents, timesteps, context):
        return self.frozen.predict_noise(latents, timesteps, context)

    def encode_caption(self, keys, values):
        from elite_core.elite.prompt_tokens import inject_words

        tokens = dict(self.frozen.tokens)
        tokens["l"], _ = inject_words(tokens["l"], self.token_id, self.embedding[None])
        return self.frozen.clip.encode_from_tokens(tokens).to(self.device)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--resolution", type=int, default=256)
    parser.add_argument("--real-unet", action="store_true", help="the real SD1.5 UNet size (slow on a CPU)")
    args = parser.parse_args(argv)
    setup_comfy()
    from elite_core.catversion.training import (
        CatVersionRecipe,
        PrefixObjective,
        StepSampler,
        initial_prefix,
        posterior_cache,
        scaled_linear_schedule,
        squash_images,
    )
    from elite_core.comfyui.catversion_training import ComfyFrozenSD1, frozen_for_autograd
    from elite_test_pack.tiny_models import build_tiny_clip, build_tiny_sd15_model, build_tiny_vae

    torch.manual_seed(0)
    overrides = {"model_channels": 320} if args.real_unet else {}
    model = build_tiny_sd15_model(seed=0, **overrides)
    clip, vae = build_tiny_clip(seed=7, real_size=True), build_tiny_vae(seed=2)
    recipe = CatVersionRecipe(resolution=args.resolution, caption="dog", batch_size=args.batch)
    photos = torch.rand(4, args.resolution, args.resolution, 3, generator=torch.Generator().manual_seed(1))
    frozen = ComfyFrozenSD1(model, clip, vae, recipe.caption, recipe.layers)  # gradients from layer 9 on
    plain_frozen = ComfyFrozenSD1(model, clip, vae, recipe.caption, (), grad_from_layer=0)  # through all 12 layers
    frozen.load_for_training()
    with frozen_for_autograd(frozen.frozen_modules()):
        mean, std = posterior_cache(frozen, squash_images(photos, recipe.resolution))
        schedule = scaled_linear_schedule()
        flat = initial_prefix(recipe, torch.Generator().manual_seed(recipe.seed))
        catversion = PrefixObjective(frozen, flat, recipe.layers, mean, std, schedule)
        embedding = torch.nn.Parameter(torch.randn(768, generator=torch.Generator().manual_seed(2)) * 0.01)
        inversion = PrefixObjective(TextualInversionText(plain_frozen, "dog", embedding), flat, recipe.layers, mean,
                                    std, schedule)
        sampler = StepSampler(4, args.batch, tuple(mean.shape[2:]), 0.5, torch.Generator().manual_seed(3))
        draws = [sampler.draw() for _ in range(WARMUP + args.rounds)]  # both variants get each round's draw

        def step(objective, optimizer):
            def run(round_index):
                loss = objective(draws[round_index])
                loss.backward()
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)

            return timed(run)

        times = alternate({"catversion": step(catversion, torch.optim.AdamW([catversion.flat], lr=1e-2)),
                           "textual inversion": step(inversion, torch.optim.AdamW([embedding], lr=5e-3))},
                          args.rounds, WARMUP)
        assert inversion.flat.grad is None and embedding.requires_grad  # the baseline learned only its embedding
    unet = "real-size SD1.5 UNet" if args.real_unet else "tiny SD1.5-layout UNet"
    print(f"CatVersion step vs textual-inversion step ({unet}, real-size CLIP-L, batch {args.batch}, "
          f"{args.resolution} px, CPU, {torch.get_num_threads()} threads; {WARMUP} warm-up + {args.rounds} "
          f"alternating rounds, ratios per round)")
    ratio = spread(ratios(times, "catversion", "textual inversion"))
    print(f"  catversion / textual inversion: {ratio.describe(target=TARGET)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
