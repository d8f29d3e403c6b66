"""The DreamBench metrics (DINO-I, CLIP-I, CLIP-T) and their encoders from local files, in plain
torch and transformers (docs/reference/dreambench.md)."""
