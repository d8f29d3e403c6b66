"""Test and demo node pack: loaders that return tiny RANDOM models in the real SD1.x layouts.

It lets whole ELITE workflows run through a real ComfyUI without any model file. The images it
produces are noise: nothing here is a trained model.
"""

from .tiny_models import build_tiny_clip, build_tiny_clip_vision, build_tiny_sd15_model, build_tiny_vae

LABEL = "RANDOM weights, tests/demo only"


class TinySD15Loader:
    CATEGORY = "ELITE/testing"
    FUNCTION = "load"
    RETURN_TYPES = ("MODEL", "CLIP", "VAE")
    DESCRIPTION = f"A tiny SD1.5-layout model, CLIP and VAE ({LABEL})."

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"seed": ("INT", {"default": 0, "min": 0, "max": 2**31 - 1})}}

    def load(self, seed):
        return (build_tiny_sd15_model(seed), build_tiny_clip(seed + 1), build_tiny_vae(seed + 2))


class TinyCLIPVisionLoader:
    CATEGORY = "ELITE/testing"
    FUNCTION = "load"
    RETURN_TYPES = ("CLIP_VISION",)
    DESCRIPTION = f"A tiny CLIP vision model with ViT-L/14's 24 layers and 257 tokens ({LABEL})."

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"seed": ("INT", {"default": 3, "min": 0, "max": 2**31 - 1})}}

    def load(self, seed):
        return (build_tiny_clip_vision(seed),)


NODE_CLASS_MAPPINGS = {
    "ELITETestTinySD15Loader": TinySD15Loader,
    "ELITETestTinyCLIPVisionLoader": TinyCLIPVisionLoader,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "ELITETestTinySD15Loader": f"Tiny SD1.5 ({LABEL})",
    "ELITETestTinyCLIPVisionLoader": f"Tiny CLIP Vision ({LABEL})",
}
