"""Evaluation of the pack's personalisation methods with the papers' metrics (DreamBench protocol).

A command-line package beside the nodes; ComfyUI never imports it. Its extra dependency (matplotlib,
for the report's plot) is in requirements-eval.txt. The metric maths and the encoders are
``elite_core.evaluation.metrics`` and ``elite_core.evaluation.encoders``, which the scoring node uses too.

    python -m elite_eval.run --help
"""
