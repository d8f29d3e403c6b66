"""The command-line trainer's ``train`` on tiny seeded models, under ``accelerate launch`` for several
processes or run directly for one:

    accelerate launch --cpu --num_processes 2 tests/catversion_accelerate_worker.py OUT BATCH STEPS
    python tests/catversion_accelerate_worker.py OUT BATCH STEPS

Every process builds the same models from fixed seeds (RANDOM weights, real SD1.x layouts; the
CLIP is the real-size CLIP-L text encoder). The main process writes OUT.safetensors (the adapter)
and OUT.json (the loss of each step).
"""

import json
import os
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # elite_training, elite_core and the test pack elite_test_pack

import torch  # noqa: E402
from accelerate import Accelerator  # noqa: E402

from elite_core.comfyui.runtime import find_comfyui, start_comfyui  # noqa: E402
from elite_training import catversion as cli  # noqa: E402


def main(out: str, batch: int, steps: int) -> None:
    torch.set_num_threads(1)
    accelerator = Accelerator(cpu=True)
    start_comfyui(find_comfyui(os.environ["ELITE_COMFYUI_DIR"]), cpu=True,
                  base_directory=tempfile.mkdtemp(prefix="catversion-accelerate-"))
    from elite_core.catversion.training import CatVersionRecipe
    from elite_test_pack.tiny_models import build_tiny_clip, build_tiny_sd15_model, build_tiny_vae

    model, clip, vae = build_tiny_sd15_model(seed=0), build_tiny_clip(seed=1, real_size=True), build_tiny_vae(seed=2)
    images = torch.rand(3, 72, 88, 3, generator=torch.Generator().manual_seed(4))
    recipe = CatVersionRecipe(steps=steps, batch_size=batch, learning_rate=0.05, resolution=64, caption="teddybear")
    _, losses, _ = cli.train(accelerator, model, clip, vae, images, recipe, out + ".safetensors", "worker")
    if accelerator.is_main_process:
        with open(out + ".json", "w") as f:
            json.dump({"losses": losses, "processes": accelerator.num_processes}, f)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))
