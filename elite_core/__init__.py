"""ELITE core: mappers, checkpoint IO, preprocessing and prompt injection in plain torch.

Only ``comfy_adapter`` imports ComfyUI; the other modules run anywhere torch does.
"""
