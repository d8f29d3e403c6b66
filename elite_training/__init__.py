"""Command-line training for the pack's methods, on Hugging Face ``accelerate`` (one GPU or many,
data parallel). ComfyUI never imports this package; its extra dependencies are in
``requirements-train.txt``. The maths is the pack's own ``elite_core``: what is trained here is
exactly what the nodes run.
"""
