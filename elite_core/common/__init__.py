"""Pure helpers shared by every method: tensor and image files, IMAGE/uint8/CLIP conversions, input
checks, SD1.x's noise schedule and per-device tensor copies. Imports nothing else of the pack."""
