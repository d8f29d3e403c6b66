"""``catversion_training.TrainingRun`` on Hugging Face ``accelerate``: data-parallel processes that
all-reduce the prefix's gradient (DDP), on one GPU, several, or several machines."""

from __future__ import annotations

import torch
from accelerate import Accelerator

from elite_core.catversion.training import TrainingRun


class AccelerateRun(TrainingRun):
    def __init__(self, accelerator: Accelerator):
        self.accelerator = accelerator
        self.rank = accelerator.process_index
        self.world_size = accelerator.num_processes

    def prepare(self, objective, optimizer):
        return self.accelerator.prepare(objective, optimizer)

    def backward(self, loss: torch.Tensor) -> None:
        self.accelerator.backward(loss)

    def unwrap(self, objective):
        return self.accelerator.unwrap_model(objective)

    def mean_loss(self, loss: torch.Tensor) -> float:
        return self.accelerator.reduce(loss.detach().clone(), reduction="mean").item()
