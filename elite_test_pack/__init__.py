"""Test and demo node pack: loaders that return tiny RANDOM models in the real SD1.x layouts.

It lets whole ELITE workflows run through a real ComfyUI without any model file. The images it
produces are noise: nothing here is a trained model. RANDOM weights, for the tests and the demo
only; it is not shipped (.comfyignore leaves it out of the Registry package).

Two ways in, one package:

* ComfyUI loads it as a custom node pack: tests/conftest.py links it into
  ``<base>/custom_nodes/elite_test_pack``, loads it with ComfyUI's own loader and registers the
  loaded module as ``elite_test_pack``; scripts/demo.py links it into its demo base folder.
* Scripts and benchmarks import it as ``elite_test_pack`` with the repository root on sys.path.

Besides the nodes, its modules hold the helpers the tests share (none of them is a test):
tiny models (``tiny_models``, ``tiny_metric_models``, ``tiny_training_models``), workflow helpers
(``workflows``, ``in_process``, ``comfy_server``), direct UNet calls (``unet_calls``), the
trainer's command line (``elite_trainer_runs``) and the independent re-statements of the
reference maths that the parity tests compare against (the ``reference_*`` modules).
"""

import functools

from .tiny_models import build_tiny_clip, build_tiny_clip_vision, build_tiny_sd15_model, build_tiny_vae

LABEL = "RANDOM weights, tests/demo only"


# Built once per process and shared by every prompt, like a real checkpoint kept loaded between
# queue runs: a node that changed a model it was given would change the next prompt's image too.
@functools.lru_cache(maxsize=4)
def _tiny_checkpoint(seed: int, context_dim: int, real_size_clip: bool):
    return (build_tiny_sd15_model(seed, context_dim=context_dim), build_tiny_clip(seed + 1, real_size=real_size_clip),
            build_tiny_vae(seed + 2))


@functools.lru_cache(maxsize=4)
def _tiny_clip_vision(seed: int):
    return build_tiny_clip_vision(seed)


class TinySD15Loader:
    CATEGORY = "ELITE/testing"
    FUNCTION = "load"
    RETURN_TYPES = ("MODEL", "CLIP", "VAE")
    DESCRIPTION = f"A tiny SD1.5-layout model, CLIP and VAE ({LABEL})."

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {"seed": ("INT", {"default": 0, "min": 0, "max": 2**31 - 1})},
            # 1024: a UNet whose cross-attention takes 1024-wide text, as SD2 does (not SD1.x).
            "optional": {
                "context_dim": ("INT", {"default": 768, "min": 8, "max": 4096}),
                # The real CLIP-L text encoder (12 layers, 12 heads), as CatVersion needs.
                "real_size_clip": ("BOOLEAN", {"default": False}),
            },
        }

    def load(self, seed, context_dim=768, real_size_clip=False):
        return _tiny_checkpoint(seed, context_dim, real_size_clip)


class TinyCLIPVisionLoader:
    CATEGORY = "ELITE/testing"
    FUNCTION = "load"
    RETURN_TYPES = ("CLIP_VISION",)
    DESCRIPTION = f"A tiny CLIP vision model with ViT-L/14's 24 layers and 257 tokens ({LABEL})."

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"seed": ("INT", {"default": 3, "min": 0, "max": 2**31 - 1})}}

    def load(self, seed):
        return (_tiny_clip_vision(seed),)


class SyntheticImage:
    """A seeded noise IMAGE of any size, 0x0 included, optionally with NaN or inf pixels: the bad
    inputs a broken upstream node could hand to ELITE, which Load Image cannot produce."""

    CATEGORY = "ELITE/testing"
    FUNCTION = "make"
    RETURN_TYPES = ("IMAGE",)
    DESCRIPTION = f"A synthetic IMAGE for tests ({LABEL})."

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "width": ("INT", {"default": 64, "min": 0, "max": 4096}),
            "height": ("INT", {"default": 64, "min": 0, "max": 4096}),
            "defect": (["none", "nan", "inf"],),
            "seed": ("INT", {"default": 0, "min": 0, "max": 2**31 - 1}),
        }}

    def make(self, width, height, defect, seed):
        import torch

        gen = torch.Generator().manual_seed(seed)
        image = torch.randint(0, 256, (1, height, width, 3), generator=gen).float() / 255.0
        if defect != "none" and image.numel():
            image[0, 0, 0, 0] = float(defect)
        return (image,)


NODE_CLASS_MAPPINGS = {
    "ELITETestSyntheticImage": SyntheticImage,
    "ELITETestTinySD15Loader": TinySD15Loader,
    "ELITETestTinyCLIPVisionLoader": TinyCLIPVisionLoader,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "ELITETestSyntheticImage": f"Synthetic Image ({LABEL})",
    "ELITETestTinySD15Loader": f"Tiny SD1.5 ({LABEL})",
    "ELITETestTinyCLIPVisionLoader": f"Tiny CLIP Vision ({LABEL})",
}
