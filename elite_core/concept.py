"""The ELITE concept: what the encoder computes from one concept image, passed between nodes."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .sites import SD1_ATTN2_SITES


@dataclass(frozen=True, eq=False)
class ELITEConcept:
    """Mapped word embeddings of the concept image(s) plus ELITE's fine-tuned attn2 K/V weights.

    ``words`` is (num_images, 5, text_width), fp32 on the CPU; word 0 is the primary word (w0).
    ``global_kv`` maps each site's checkpoint prefix to its (to_k, to_v) weights (C, text_width).
    """

    words: torch.Tensor
    global_kv: dict[str, tuple[torch.Tensor, torch.Tensor]]

    def __post_init__(self):
        if self.words.dim() != 3 or self.words.shape[1] != 5:
            raise ValueError(f"words must be (num_images, 5, width), got {tuple(self.words.shape)}")
        missing = [s.ckpt_prefix for s in SD1_ATTN2_SITES if s.ckpt_prefix not in self.global_kv]
        if missing:
            raise ValueError(f"global_kv lacks {len(missing)} cross-attention sites, e.g. {missing[0]}")

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
