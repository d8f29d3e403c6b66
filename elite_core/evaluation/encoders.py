"""The encoders of the DreamBench metrics, loaded from local files only: nothing is ever downloaded.

* CLIP (CLIP-I and CLIP-T): ViT-B/32 as in the DreamBooth / Textual Inversion / CatVersion lineage, or ViT-L/14
  (not comparable with ViT-B/32 numbers). transformers' ``CLIPModel``.
* DINO ViT-S/16 (DINO-I): transformers' ``ViTModel`` in the layout of ``facebook/dino-vits16``.
* DINOv2 (ViT-S/14 ... g/14): transformers' ``Dinov2Model`` in the layout of ``facebook/dinov2-small`` etc.

Each accepts a Hugging Face model folder (config.json + model.safetensors, and for CLIP the tokenizer files
vocab.json + merges.txt) or the single model.safetensors file those repos ship, whose config is then inferred
from the tensor shapes (OpenAI CLIP: heads = width / 64, quick_gelu, LayerNorm eps 1e-5; other CLIPs, e.g.
open_clip's ViT-H with 80-wide heads, need their folder with config.json; DINO: heads = width / 64, eps 1e-12 as
facebook/dino-vits16's config.json says, where the original torch.hub model uses 1e-6, an effect of about 1e-6
relative on unit-variance activations, far below the reported precision; DINOv2: heads = width / 64, layer scale, eps 1e-6).
Pickles (.pt/.bin/.pth/.ckpt) are refused: they can run code when loaded.

Preprocessing follows each metric's reference pipeline on PIL images: CLIP resizes the shorter side to the
model's image size (bicubic, e.g. 336 for ViT-L/14-336) and centre-crops it, with CLIP's mean/std; DINO and DINOv2
resize the shorter side to 256 (bicubic), centre-crop 224 and use ImageNet's mean/std (DreamBooth's DINO protocol,
as ImagenHub runs it), whatever the config's image size (DINOv2's 518 is its pre-training size).
Embeddings are float32 and L2-normalised: CLIP's projected image/text features, DINO's [CLS] token after the
final LayerNorm.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence

import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file
from torchvision import transforms

from ..common.files import PICKLE_EXTENSIONS
from ..common.images import CLIP_MEAN, CLIP_STD

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DINO_RESIZE, DINO_CROP = 256, 224
CLIP_MAX_TOKENS = 77
TOKENIZER_FILES = ("vocab.json", "merges.txt")
KINDS = ("clip", "dino", "dinov2")
EXPECTED = {
    "clip": "CLIP (e.g. ViT-B/32) in Hugging Face layout: a folder with config.json, model.safetensors and the "
            "tokenizer files (vocab.json, merges.txt), or the model.safetensors file itself (e.g. from "
            "openai/clip-vit-base-patch32)",
    "dino": "DINO ViT-S/16 in Hugging Face layout: a folder with config.json and model.safetensors, or the "
            "model.safetensors file itself (from facebook/dino-vits16)",
    "dinov2": "DINOv2 in Hugging Face layout: a folder with config.json and model.safetensors, or the "
              "model.safetensors file itself (e.g. from facebook/dinov2-small)",
}
_VIT_SIZES = {384: "S", 512: "B", 768: "B", 1024: "L", 1280: "H", 1536: "g"}  # CLIP B's text tower is 512 wide


class EvalModelError(ValueError):
    """A file or folder that is not a usable metric encoder; the message says what was expected."""


class ImageEncoder:
    """A metric's image encoder: ``encode_images(pil_images)`` -> (n, d) float32, L2-normalised, on the CPU."""

    def __init__(self, kind: str, name: str, model, preprocess, device="cpu", batch_size: int = 32):
        self.kind, self.name, self.preprocess, self.batch_size = kind, name, preprocess, batch_size
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()

    def _features(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values=pixels).last_hidden_state[:, 0]  # [CLS] after the final LayerNorm

    @torch.inference_mode()
    def encode_images(self, images: Sequence[Image.Image]) -> torch.Tensor:
        out = []
        for start in range(0, len(images), self.batch_size):
            batch = [self.preprocess(img.convert("RGB")) for img in images[start:start + self.batch_size]]
            out.append(self._features(torch.stack(batch).to(self.device)).float().cpu())
        if not out:
            raise ValueError(f"No images to encode with {self.name}.")
        return torch.nn.functional.normalize(torch.cat(out), dim=-1)


class ClipEncoder(ImageEncoder):
    """CLIP: projected image features (CLIP-I) and, with ``encode_texts``, projected text features (CLIP-T)."""

    def __init__(self, name: str, model, preprocess, tokenizer, device="cpu", batch_size: int = 32):
        super().__init__("clip", name, model, preprocess, device, batch_size)
        self.tokenizer = tokenizer

    def _features(self, pixels: torch.Tensor) -> torch.Tensor:
        return _pooled(self.model.get_image_features(pixel_values=pixels))

    @torch.inference_mode()
    def encode_texts(self, texts: Sequence[str]) -> torch.Tensor:
        out = []
        for start in range(0, len(texts), self.batch_size):
            tokens = self.tokenizer(list(texts[start:start + self.batch_size]), padding=True, truncation=True,
                                    max_length=CLIP_MAX_TOKENS, return_tensors="pt").to(self.device)
            out.append(_pooled(self.model.get_text_features(**tokens)).float().cpu())
        if not out:
            raise ValueError(f"No texts to encode with {self.name}.")
        return torch.nn.functional.normalize(torch.cat(out), dim=-1)


def _pooled(output) -> torch.Tensor:
    return output.pooler_output if hasattr(output, "pooler_output") else output  # transformers 5 / 4


def preprocess_for(kind: str, image_size: int = 224) -> transforms.Compose:
    """The PIL -> tensor pipeline of a metric (see the module docstring); ``image_size`` is CLIP's input size."""
    if kind == "clip":
        resize, crop, mean, std = image_size, image_size, CLIP_MEAN, CLIP_STD
    elif kind in ("dino", "dinov2"):
        resize, crop, mean, std = DINO_RESIZE, DINO_CROP, IMAGENET_MEAN, IMAGENET_STD
    else:
        raise ValueError(f"Unknown encoder kind {kind!r}; expected one of {KINDS}.")
    return transforms.Compose([
        transforms.Resize(resize, interpolation=transforms.InterpolationMode.BICUBIC),
        transforms.CenterCrop(crop), transforms.ToTensor(), transforms.Normalize(mean, std),
    ])


# --------------------------------------------------------------------------- recognising and inferring


def detect_kind(keys, name: str = "the file") -> str:
    """'clip', 'dino' or 'dinov2' from the tensor names of a Hugging Face model.safetensors; else refuse."""
    keys = set(keys)
    if {"text_model.embeddings.token_embedding.weight", "visual_projection.weight"} <= keys:
        return "clip"
    if "embeddings.patch_embeddings.projection.weight" in keys and "embeddings.register_tokens" not in keys:
        if any(".layer_scale1." in k for k in keys):
            return "dinov2"
        if any(".layernorm_before." in k for k in keys):
            return "dino"
    hint = ""
    if "vision_model.embeddings.patch_embedding.weight" in keys:
        hint = (" It is a CLIP vision tower alone (like ComfyUI's models/clip_vision files); CLIP-I and CLIP-T "
                "need the whole CLIP model, text and vision.")
    elif "embeddings.register_tokens" in keys:
        hint = " It is DINOv2 with registers, which is not supported: use facebook/dinov2-small (or -base, -large)."
    elif any(k.startswith("visual.") for k in keys) or "patch_embed.proj.weight" in keys:
        hint = (" It is in the original (OpenAI CLIP / torch.hub / timm) layout: use the Hugging Face conversion, "
                "the model.safetensors of openai/clip-vit-base-patch32 or facebook/dino-vits16.")
    sample = ", ".join(sorted(keys)[:3]) or "no tensors"
    raise EvalModelError(
        f"{name} is not a CLIP, DINO or DINOv2 model in the Hugging Face layout (it holds {sample}, ...).{hint} "
        f"Expected {EXPECTED['clip']}; or {EXPECTED['dino']}; or {EXPECTED['dinov2']}."
    )


def _layers(shapes: dict, prefix: str) -> int:
    return 1 + max(int(k[len(prefix):].split(".")[0]) for k in shapes if k.startswith(prefix))


def _grid_size(num_positions: int, patch: int) -> int:
    return int(round((num_positions - 1) ** 0.5)) * patch


def infer_config(kind: str, shapes: dict):
    """The transformers config of a Hugging Face model.safetensors from its tensor shapes ``{name: shape}``."""
    from transformers import CLIPConfig, Dinov2Config, ViTConfig

    if kind == "clip":
        vocab, text_width = shapes["text_model.embeddings.token_embedding.weight"]
        vision_width, _, patch, _ = shapes["vision_model.embeddings.patch_embedding.weight"]
        common = {"hidden_act": "quick_gelu", "layer_norm_eps": 1e-5}
        text = dict(common, vocab_size=vocab, hidden_size=text_width, num_attention_heads=text_width // 64,
                    intermediate_size=shapes["text_model.encoder.layers.0.mlp.fc1.weight"][0],
                    num_hidden_layers=_layers(shapes, "text_model.encoder.layers."),
                    max_position_embeddings=shapes["text_model.embeddings.position_embedding.weight"][0])
        vision = dict(common, hidden_size=vision_width, num_attention_heads=vision_width // 64, patch_size=patch,
                      intermediate_size=shapes["vision_model.encoder.layers.0.mlp.fc1.weight"][0],
                      num_hidden_layers=_layers(shapes, "vision_model.encoder.layers."),
                      image_size=_grid_size(shapes["vision_model.embeddings.position_embedding.weight"][0], patch))
        return CLIPConfig(text_config=text, vision_config=vision, projection_dim=shapes["visual_projection.weight"][0])
    width, _, patch, _ = shapes["embeddings.patch_embeddings.projection.weight"]
    vit = dict(hidden_size=width, num_attention_heads=width // 64, patch_size=patch,
               num_hidden_layers=_layers(shapes, "encoder.layer."),
               image_size=_grid_size(shapes["embeddings.position_embeddings"][1], patch),
               qkv_bias="encoder.layer.0.attention.attention.query.bias" in shapes)
    if kind == "dino":
        return ViTConfig(**vit, intermediate_size=shapes["encoder.layer.0.intermediate.dense.weight"][0],
                         hidden_act="gelu", layer_norm_eps=1e-12)
    swiglu = "encoder.layer.0.mlp.weights_in.weight" in shapes
    ratio = 4 if swiglu else shapes["encoder.layer.0.mlp.fc1.weight"][0] / width  # giant (SwiGLU) uses 4
    mlp_ratio = int(ratio) if float(ratio).is_integer() else ratio  # transformers 5 wants an int here
    return Dinov2Config(**vit, mlp_ratio=mlp_ratio, use_swiglu_ffn=swiglu, layer_norm_eps=1e-6,
                        use_mask_token="embeddings.mask_token" in shapes)


# --------------------------------------------------------------------------- loading


def _vit_name(label: str, width: int, patch: int, image_size: int, native: int) -> str:
    size = _VIT_SIZES.get(width, f"{width}-wide")
    return f"{label} ViT-{size}/{patch}" + (f" at {image_size} px" if image_size != native else "")


def _find_weights(path: str, kind: str | None) -> tuple[str, str | None]:
    """(model.safetensors, its folder or None) for a folder or a file; refuse what cannot be read."""
    expected = EXPECTED[kind] if kind else "; or ".join(EXPECTED.values())
    if not os.path.exists(path):
        raise FileNotFoundError(f"No model at '{path}'. Expected {expected}.")
    folder = path if os.path.isdir(path) else None
    weights = os.path.join(path, "model.safetensors") if folder else path
    pickles = [f for f in os.listdir(path) if f.endswith(PICKLE_EXTENSIONS)] if folder else [path]
    if weights.lower().endswith(PICKLE_EXTENSIONS) or (folder and not os.path.isfile(weights) and pickles):
        raise EvalModelError(
            f"'{os.path.basename(pickles[0])}' is a pickle checkpoint, which can run code when loaded and is never "
            "read here. Convert it to safetensors (safetensors.torch.save_file(torch.load(path, weights_only=True), "
            "'model.safetensors')) or take model.safetensors from the same Hugging Face repo."
        )
    if not os.path.isfile(weights):
        raise FileNotFoundError(f"The folder '{path}' has no model.safetensors. Expected {expected}.")
    return weights, folder


def load_encoder(path: str, kind: str | None = None, tokenizer_dir: str | None = None, device="cpu",
                 batch_size: int = 32) -> ImageEncoder:
    """Load a metric encoder from a Hugging Face folder or a single model.safetensors (see the module docstring).

    ``kind`` ('clip', 'dino', 'dinov2') is checked against the file when given, detected otherwise. CLIP gives
    a :class:`ClipEncoder`; its tokenizer comes from the folder or else from ``tokenizer_dir`` (ComfyUI ships
    the CLIP BPE tokenizer in ``<ComfyUI>/comfy/sd1_tokenizer``).
    """
    from transformers import CLIPConfig, CLIPModel, CLIPTokenizer, Dinov2Config, Dinov2Model, ViTConfig, ViTModel

    if kind is not None and kind not in KINDS:
        raise ValueError(f"Unknown encoder kind {kind!r}; expected one of {KINDS}.")
    weights, folder = _find_weights(path, kind)
    name = f"'{os.path.basename(weights)}'"
    try:
        with safe_open(weights, "pt") as f:
            shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except Exception as exc:  # safetensors raises its own error type for unreadable files
        raise EvalModelError(f"{name} is not a readable safetensors file ({exc}). Expected "
                             f"{EXPECTED[kind] if kind else 'a model.safetensors in Hugging Face layout'}.") from None
    found = detect_kind(shapes, name)
    if kind is not None and found != kind:
        raise EvalModelError(f"{name} holds a {found} model, but a {kind} model was asked for. Expected {EXPECTED[kind]}.")
    model_cls, config_cls = {"clip": (CLIPModel, CLIPConfig), "dino": (ViTModel, ViTConfig),
                             "dinov2": (Dinov2Model, Dinov2Config)}[found]
    if folder and os.path.isfile(os.path.join(folder, "config.json")):
        config = config_cls.from_pretrained(folder, local_files_only=True)
    else:
        config = infer_config(found, shapes)
    state = {k: v for k, v in load_file(weights).items() if not k.startswith("pooler.")}
    extra = {"add_pooling_layer": False} if found == "dino" else {}
    try:
        model, info = model_cls.from_pretrained(None, config=config, state_dict=state, output_loading_info=True,
                                                dtype=torch.float32, **extra)
    except (RuntimeError, ValueError) as exc:
        raise EvalModelError(f"{name} does not match its config ({exc}). Expected {EXPECTED[found]}.") from None
    if info["missing_keys"]:
        raise EvalModelError(
            f"{name} lacks {len(info['missing_keys'])} tensors of a {found} model (e.g. "
            f"{sorted(info['missing_keys'])[0]}): it is damaged or incomplete. Expected {EXPECTED[found]}."
        )
    log.info("Loaded %s encoder from %s", found, weights)
    if found != "clip":
        label = "DINO" if found == "dino" else "DINOv2"
        title = _vit_name(label, config.hidden_size, config.patch_size, config.image_size, config.image_size)
        return ImageEncoder(found, title, model, preprocess_for(found), device, batch_size)
    vision = config.vision_config
    title = _vit_name("CLIP", vision.hidden_size, vision.patch_size, vision.image_size, 224)
    sources = [d for d in (folder, tokenizer_dir) if d]
    tok_dir = next((d for d in sources if all(os.path.isfile(os.path.join(d, f)) for f in TOKENIZER_FILES)), None)
    if tok_dir is None:
        looked = " and ".join(f"'{d}'" for d in sources) or "nowhere (no folder and no tokenizer_dir given)"
        raise EvalModelError(
            f"No CLIP tokenizer for {name}: looked in {looked} for vocab.json and merges.txt. Give the Hugging "
            "Face CLIP folder, or tokenizer_dir=<ComfyUI>/comfy/sd1_tokenizer (the same CLIP BPE tokenizer)."
        )
    tokenizer = CLIPTokenizer.from_pretrained(tok_dir, local_files_only=True)
    return ClipEncoder(title, model, preprocess_for("clip", vision.image_size), tokenizer, device, batch_size)

