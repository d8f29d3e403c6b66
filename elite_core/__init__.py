"""What ComfyUI imports: the maths of each method in plain torch, and the ComfyUI glue on top.

``common/`` (pure helpers every method uses) → ``elite/``, ``catversion/``, ``evaluation/`` (each
method's maths and file formats, pure, none importing another) → ``comfyui/`` (the only modules
that import ComfyUI). ``tests/test_layout.py`` keeps these rules.
"""
