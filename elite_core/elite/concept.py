"""The ELITE concept: what the encoder computes from a concept image, passed between nodes."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Callable

import torch

from .sites import SD1_ATTN2_SITES

KVWeights = dict[str, tuple[torch.Tensor, torch.Tensor]]  # site ckpt_prefix -> (to_k, to_v), (C, D)
WORDS_PER_IMAGE = 5  # the global mapper's words of one image (w0 and four more)
LOCAL_TOKENS = 256  # the local mapper's tokens of one image: one per patch of CLIP's 16x16 grid at 224 px


@dataclass(frozen=True, eq=False)
class LocalBranch:
    """The local mapping of a concept: masked patch tokens and the local mapper's per-site K/V.

    ``tokens`` is (num_images, 256, D), fp32 on the CPU, background patches already zero.
    ``kv`` returns the current per-site weights (they may live on the GPU while sampling);
    ``models`` are the ComfyUI models to keep loaded while sampling (opaque to the core).
    """

    tokens: torch.Tensor
    kv: Callable[[], KVWeights]
    models: tuple = ()
    name: str = "local mapper"  # the local mapper's file name, for messages

    def __post_init__(self):
        if self.tokens.dim() != 3 or self.tokens.shape[1] != LOCAL_TOKENS:
            raise ValueError(f"local tokens must be (num_images, {LOCAL_TOKENS}, width), got {tuple(self.tokens.shape)}")


@dataclass(frozen=True, eq=False)
class ELITEConcept:
    """Mapped word embeddings of the concept image(s), ELITE's fine-tuned attn2 K/V weights, and
    optionally the local branch.

    ``words`` is (num_images, 5, D), fp32 on the CPU; word 0 is the primary word (w0).
    ``global_kv`` maps each site's checkpoint prefix to its (to_k, to_v) weights (C, D).
    """

    words: torch.Tensor
    global_kv: KVWeights
    local: LocalBranch | None = field(default=None)
    global_name: str = "global mapper"  # the global mapper's file name, for messages

    def __post_init__(self):
        if self.words.dim() != 3 or self.words.shape[1] != WORDS_PER_IMAGE or self.words.shape[0] == 0:
            raise ValueError(f"words must be (num_images >= 1, {WORDS_PER_IMAGE}, width), got {tuple(self.words.shape)}")
        missing = [s.ckpt_prefix for s in SD1_ATTN2_SITES if s.ckpt_prefix not in self.global_kv]
        if missing:
            raise ValueError(f"global_kv lacks {len(missing)} cross-attention sites, e.g. {missing[0]}")

    @property
    def key(self) -> str:
        """A short hash of the concept's words: which concept a placeholder belongs to, when a
        prompt holds several."""
        return hashlib.sha256(self.words.detach().float().cpu().contiguous().numpy().tobytes()).hexdigest()[:16]

    @property
    def num_images(self) -> int:
        return self.words.shape[0]

    @property
    def text_width(self) -> int:
        return self.words.shape[-1]

    def prompt_words(self, all_words: bool) -> torch.Tensor:
        """The word(s) to put at the placeholder, (L, width): w0 alone, or all five.

        With several concept images the words are averaged over the images.
        """
        words = self.words.mean(dim=0)
        return words if all_words else words[:1]

    def local_tokens(self) -> torch.Tensor | None:
        """All images' local tokens side by side, (1, num_images * 256, D), or None."""
        if self.local is None:
            return None
        return self.local.tokens.reshape(1, -1, self.local.tokens.shape[-1])
