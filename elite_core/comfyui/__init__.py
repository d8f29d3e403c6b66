"""The ComfyUI glue: model folders, loaders, the UNet and CLIP patches, training and scoring on
ComfyUI's MODEL/CLIP/VAE, and ComfyUI as a library for the command lines. The only modules of the
pack that import ComfyUI (``comfy``, ``comfy_api``, ``folder_paths``, ``server``, ``node_helpers``)."""
