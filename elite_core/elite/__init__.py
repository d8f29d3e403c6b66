"""ELITE (Wei et al., ICCV 2023): its mappers, file formats, prompt injection and modified
cross-attention, in plain torch (docs/reference/elite.md)."""
