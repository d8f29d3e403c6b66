"""Putting ELITE's word embeddings into a tokenized prompt.

ComfyUI's SD1 tokenizer returns rows of 77 entries ``(token, weight, ...)`` where ``token`` is an
int id or an embedding tensor that the text encoder inserts before position embeddings. ELITE's
reference (``train_global.py``, injected text forward) overwrites the placeholder token's embedding
with the mapped word(s); with L words the following tokens shift right by L - 1 and the last L - 1
entries of the chunk fall off. Doing that on the token list reproduces it exactly, keeps prompt
weights such as ``(S:1.2)``, and works for prompts split over several 77-token chunks.

The placeholder is found from the tokenizer output (a standalone token id), not by splitting the
prompt on spaces, so ``"S,"`` or ``"(S:1.2)"`` are found too.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


class PlaceholderError(ValueError):
    """The prompt or the placeholder cannot be used for ELITE conditioning."""


class PlaceholderMissing(PlaceholderError):
    """The prompt does not contain the placeholder token."""


@dataclass(frozen=True)
class Injection:
    """Where the concept words went: flat token indices (chunk * chunk_len + position)."""

    positions: tuple[int, ...]  # first injected word of every occurrence, in prompt order
    chunk_len: int

    @property
    def index(self) -> int:
        """The placeholder index ELITE's local branch uses: the last occurrence, as in the reference."""
        return self.positions[-1]


def placeholder_token_id(placeholder_row: list, placeholder: str) -> int:
    """The single token id of ``placeholder``, from the tokenized row of the placeholder alone.

    ``placeholder_row`` is the first row of ``clip.tokenize(placeholder)``: BOS, tokens, EOS/pads.
    """
    ids = [entry[0] for entry in placeholder_row]
    if not ids:
        raise PlaceholderError("The tokenizer returned nothing for the placeholder.")
    start, end = ids[0], ids[-1]
    body = [t for t in ids[1:] if t != end]
    if len(body) != 1 or not isinstance(body[0], int) or body[0] == start:
        raise PlaceholderError(
            f"The placeholder '{placeholder}' becomes {len(body)} CLIP tokens; it must be exactly one "
            "(a short word such as S, the ELITE default)."
        )
    return body[0]


def inject_words(rows: list[list[tuple]], token_id: int, words: torch.Tensor) -> tuple[list[list[tuple]], Injection]:
    """Replace every occurrence of ``token_id`` with the rows of ``words`` (L, D).

    Entries keep their weight (and word id, when present). Each chunk keeps its length.
    """
    if words.dim() != 2 or words.shape[0] < 1:
        raise ValueError(f"words must be (num_words, width), got {tuple(words.shape)}")
    num_words = words.shape[0]
    new_rows, positions = [], []
    for r, row in enumerate(rows):
        chunk_len = len(row)
        new_row = []
        for entry in row:
            token = entry[0]
            if isinstance(token, int) and token == token_id:
                if len(new_row) + num_words > chunk_len:
                    raise PlaceholderError(
                        "The placeholder sits too close to the end of a 77-token chunk for the "
                        f"{num_words} words to fit; move it earlier or use the primary word only."
                    )
                positions.append(r * chunk_len + len(new_row))
                new_row.extend((words[i],) + tuple(entry[1:]) for i in range(num_words))
            else:
                new_row.append(entry)
        new_rows.append(new_row[:chunk_len])
    if not positions:
        raise PlaceholderMissing("The prompt does not contain the placeholder token.")
    return new_rows, Injection(positions=tuple(positions), chunk_len=len(rows[0]))
