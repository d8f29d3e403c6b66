"""``python -m elite_eval.run``'s command line on tiny seeded models, under ``accelerate launch`` for
several processes or run directly for one:

    accelerate launch --cpu --num_processes 2 tests/eval_accelerate_worker.py BENCHMARK --out OUT ...
    python tests/eval_accelerate_worker.py BENCHMARK --out OUT ...

Every argument is the runner's; only the generation models differ: each process builds tiny models
from the same seeds (RANDOM weights, real SD1.x layouts; the two-layer text CLIP, as no CatVersion
adapter runs here) instead of loading a checkpoint, and loads the mapper files given with
--global-mapper / --local-mapper.
"""

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # elite_eval, elite_core and the test pack elite_test_pack

import torch  # noqa: E402

from elite_eval import run  # noqa: E402


def tiny_models(args, benchmark, methods):
    from elite_core.comfyui import elite as comfy_elite
    from elite_core.comfyui.runtime import name_in_folder
    from elite_eval.generate import Models
    from elite_test_pack.tiny_models import build_tiny_clip, build_tiny_clip_vision, build_tiny_sd15_model, build_tiny_vae

    models = Models(build_tiny_sd15_model(seed=0), build_tiny_clip(seed=7), build_tiny_vae(seed=2),
                    clip_vision=build_tiny_clip_vision(seed=3))
    comfy_elite.register_model_folder()
    models.global_mapper = comfy_elite.load_global_mapper(name_in_folder("elite", args.global_mapper))
    models.local_mapper = comfy_elite.load_local_mapper(name_in_folder("elite", args.local_mapper))
    return models


if __name__ == "__main__":
    torch.set_num_threads(1)  # one process alone computes as each of several does, bit for bit
    sys.exit(run.main(sys.argv[1:], load=tiny_models))
