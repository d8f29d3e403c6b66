"""Learning a CatVersion concept (Zhao et al., arXiv 2311.14631): the authors' recipe in pure torch.

Only the flat prefix (2 x 768 values per prefixed layer, N(0, 1) init) is trained; the UNet, the
VAE and the CLIP text encoder stay frozen. One step, per sample of the batch:

    x0   = image squashed to resolution x resolution (PIL bicubic, no crop), flipped with p = 0.5, in [-1, 1]
    z0   = (mean + std * n) * 0.18215       a fresh sample of the VAE posterior
    t    ~ U{0..999}                         scaled-linear betas: linspace(sqrt 0.00085, sqrt 0.012)^2
    z_t  = sqrt(a_t) z0 + sqrt(1 - a_t) eps
    loss = mean((eps_hat(z_t, t, CLIP_prefixed(caption)) - eps)^2)   over every element
    AdamW(prefix, lr 1e-2 = 5e-3 x batch 2, betas 0.9/0.999, eps 1e-8, weight decay 0.01), no schedule

The VAE posterior of each image (and of its mirror image) is computed once: a fresh sample from it
each step is what the reference's per-step encoding draws.

The models come in through :class:`FrozenSD1` (ComfyUI's, in ``elite_core.comfyui.catversion_training``) and
the process group through :class:`TrainingRun` (one process here; ``accelerate`` in the command-line
trainer). All random draws of a step are made for the whole global batch from one seeded CPU
generator, the same in every process; each process takes its own slice. So a run is deterministic
for a seed on the CPU, and N processes x batch b compute the same mean loss as 1 process x N*b.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from typing import Callable, NamedTuple, Protocol

import torch
import torch.nn.functional as F

from ..common.checks import ELITEInputError
from ..common.fingerprint import Fingerprint
from ..common.images import squash_uint8
from ..common.noise_schedule import NUM_TRAIN_TIMESTEPS, NoiseSchedule, add_noise, scaled_linear_schedule
from .prefix import OFFICIAL_LAYERS, TEXT_WIDTH, CatVersionPrefix, prefixes_from_flat

BASE_LEARNING_RATE = 5e-3  # the reference scales it by the total batch (2 x 1 GPU -> 1e-2)


@dataclass(frozen=True)
class CatVersionRecipe:
    """The reference recipe (docs/reference/catversion.md §6) as defaults. ``batch_size`` is per process."""

    steps: int = 1000
    batch_size: int = 2
    learning_rate: float = BASE_LEARNING_RATE * 2
    flip_probability: float = 0.5
    resolution: int = 512
    seed: int = 23
    caption: str = ""
    weight_decay: float = 0.01  # torch's AdamW default, which the reference keeps
    init_std: float = 1.0
    layers: tuple[int, ...] = OFFICIAL_LAYERS

    def checked(self) -> "CatVersionRecipe":
        """The recipe when every value is usable; otherwise a message that names the value."""
        problems = []
        if not isinstance(self.steps, int) or self.steps < 1:
            problems.append(f"steps must be a whole number of at least 1 (got {self.steps!r})")
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            problems.append(f"batch_size must be a whole number of at least 1 (got {self.batch_size!r})")
        if not (isinstance(self.learning_rate, (int, float)) and math.isfinite(self.learning_rate) and self.learning_rate > 0):
            problems.append(f"learning_rate must be a positive number (got {self.learning_rate!r}; the paper uses 0.01)")
        if not 0.0 <= self.flip_probability <= 1.0:
            problems.append(f"flip_probability must be from 0 to 1 (got {self.flip_probability!r})")
        if not isinstance(self.resolution, int) or self.resolution < 64 or self.resolution % 64:
            problems.append(f"resolution must be a multiple of 64, at least 64 (got {self.resolution!r}; the paper uses 512)")
        if problems:
            raise ELITEInputError("CatVersion training: " + "; ".join(problems) + ".")
        return replace(self, learning_rate=float(self.learning_rate), caption=str(self.caption).strip())


# --------------------------------------------------------------------------- what made an adapter

FINGERPRINT_KIND = "CatVersion training v1"  # a new definition of the fingerprint gets a new kind


def training_fingerprint(images, recipe: CatVersionRecipe, base_models: str) -> str:
    """What a trained adapter was made from, as a hex digest: the photos (dtype, size and every value
    of each IMAGE, in order), the whole recipe (steps, batch, learning rate, resolution, flip
    probability, seed, caption, weight decay, init, layers; as :meth:`CatVersionRecipe.checked` gives
    it) and ``base_models``, the frozen models' own fingerprint (the ComfyUI side computes it). The
    same inputs give the same adapter (training is deterministic for a seed), so a file that carries
    this fingerprint need not be trained again."""
    fingerprint = Fingerprint(FINGERPRINT_KIND)
    batches = [images] if isinstance(images, torch.Tensor) else list(images)
    fingerprint.add_value(len(batches))
    for batch in batches:
        fingerprint.add_tensor(batch)
    fields = asdict(recipe.checked())
    fields["layers"] = list(fields["layers"])
    fingerprint.add_value(fields)
    fingerprint.add_text(base_models)
    return fingerprint.hexdigest()


# --------------------------------------------------------------------------- maths


def squash_images(images: torch.Tensor, resolution: int) -> torch.Tensor:
    """ComfyUI IMAGE (B, H, W, C) in [0, 1] -> (B, 3, r, r) in [-1, 1]: PIL bicubic on uint8 pixels to a
    square, without crop or keeping the aspect, as the reference's data loader does."""
    return squash_uint8(images, resolution) * 2.0 - 1.0


def squash_image_set(images, resolution: int) -> torch.Tensor:
    """:func:`squash_images` of an IMAGE batch or of a list of IMAGEs of different sizes."""
    batches = [images] if isinstance(images, torch.Tensor) else list(images)
    return torch.cat([squash_images(batch, resolution) for batch in batches])


class StepDraw(NamedTuple):
    """The random choices of one training step, one row per sample."""

    indices: torch.Tensor  # which image
    flips: torch.Tensor  # bool: mirrored
    timesteps: torch.Tensor  # int64 in [0, 1000)
    posterior_noise: torch.Tensor  # (B, 4, h, w): the VAE posterior sample
    noise: torch.Tensor  # (B, 4, h, w): the diffusion noise

    def shard(self, rank: int, world: int) -> "StepDraw":
        per = self.indices.shape[0] // world
        return StepDraw(*(t[rank * per:(rank + 1) * per] for t in self))


class StepSampler:
    """Draws each step's global batch from one seeded CPU generator: images in shuffled epochs
    (as a shuffling data loader), flips, timesteps and both noises."""

    def __init__(self, num_images: int, global_batch: int, latent_shape: tuple[int, ...], flip_probability: float,
                 generator: torch.Generator):
        self.num_images, self.global_batch, self.latent_shape = num_images, global_batch, tuple(latent_shape)
        self.flip_probability, self.generator = flip_probability, generator
        self._order: list[int] = []

    def _next_indices(self) -> torch.Tensor:
        while len(self._order) < self.global_batch:
            self._order += torch.randperm(self.num_images, generator=self.generator).tolist()
        taken, self._order = self._order[:self.global_batch], self._order[self.global_batch:]
        return torch.tensor(taken, dtype=torch.long)

    def draw(self) -> StepDraw:
        g, b = self.generator, self.global_batch
        indices = self._next_indices()
        flips = torch.rand(b, generator=g) < self.flip_probability
        timesteps = torch.randint(0, NUM_TRAIN_TIMESTEPS, (b,), generator=g)
        posterior_noise = torch.randn((b,) + self.latent_shape, generator=g)
        noise = torch.randn((b,) + self.latent_shape, generator=g)
        return StepDraw(indices, flips, timesteps, posterior_noise, noise)


# --------------------------------------------------------------------------- the frozen models


class FrozenSD1(Protocol):
    """What training needs from a frozen SD1.x model, CLIP and VAE."""

    device: torch.device
    latent_scale: float  # 0.18215 for SD1.x

    def posterior(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """VAE posterior (mean, std) of (B, 3, r, r) pixels in [-1, 1], unscaled, fp32."""

    def encode_caption(self, keys: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        """The caption through the CLIP text encoder with these (layers, P, 768) prefixes: (1, 77, 768)."""

    def predict_noise(self, latents: torch.Tensor, timesteps: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """The UNet's epsilon prediction (fp32) for noisy latents at integer timesteps."""


class PrefixObjective(torch.nn.Module):
    """The trainable prefix (the only parameter) and the loss of one step's samples.

    The frozen models and the posterior cache are held outside the module's parameters, so a
    data-parallel wrapper synchronises exactly the prefix.
    """

    def __init__(self, frozen: FrozenSD1, flat: torch.Tensor, layers: tuple[int, ...], posterior_mean: torch.Tensor,
                 posterior_std: torch.Tensor, schedule: NoiseSchedule):
        super().__init__()
        self.flat = torch.nn.Parameter(flat.float().clone())
        self.layers = tuple(layers)
        self._frozen = (frozen,)  # a tuple: not a submodule
        self._posterior = (posterior_mean, posterior_std)  # (images, 2 flips, 4, h, w) on the device
        self._schedule = schedule

    def prefix(self, name: str = "CatVersion adapter") -> CatVersionPrefix:
        keys, values = prefixes_from_flat(self.flat.detach().float().cpu(), len(self.layers))
        return CatVersionPrefix(layers=self.layers, keys=keys, values=values, name=name)

    def forward(self, draw: StepDraw) -> torch.Tensor:
        frozen = self._frozen[0]
        device = frozen.device
        mean, std = self._posterior
        index, flip = draw.indices.to(device), draw.flips.long().to(device)
        z0 = (mean[index, flip] + std[index, flip] * draw.posterior_noise.to(device)) * frozen.latent_scale
        noise = draw.noise.to(device)
        timesteps = draw.timesteps.to(device)
        noisy = add_noise(z0, noise, timesteps, self._schedule)
        keys, values = prefixes_from_flat(self.flat, len(self.layers))
        context = frozen.encode_caption(keys, values)
        context = context.expand(noisy.shape[0], *context.shape[1:])
        predicted = frozen.predict_noise(noisy, timesteps, context)
        return F.mse_loss(predicted.float(), noise.float())


# --------------------------------------------------------------------------- the loop


class TrainingRun:
    """One process: the default. The command-line trainer passes an ``accelerate`` twin."""

    rank = 0
    world_size = 1

    def prepare(self, objective: torch.nn.Module, optimizer: torch.optim.Optimizer):
        return objective, optimizer

    def backward(self, loss: torch.Tensor) -> None:
        loss.backward()

    def unwrap(self, objective: torch.nn.Module) -> PrefixObjective:
        return objective

    def mean_loss(self, loss: torch.Tensor) -> float:
        """The loss averaged over every process (the global batch)."""
        return loss.item()


class StepReport(NamedTuple):
    step: int  # 1-based, completed steps
    steps: int
    loss: float  # of the global batch
    prefix: Callable[[], CatVersionPrefix]  # the prefix after this step


def initial_prefix(recipe: CatVersionRecipe, generator: torch.Generator) -> torch.Tensor:
    """The N(0, 1) init of the flat prefix (``torch.randn``, as the authors' FlatPrefixTuning)."""
    return torch.randn(len(recipe.layers) * 2 * TEXT_WIDTH, generator=generator) * recipe.init_std


def posterior_cache(frozen: FrozenSD1, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, std), each (images, 2, 4, h, w): the VAE posterior of each image as is and mirrored."""
    with torch.no_grad():
        plain, mirrored = frozen.posterior(pixels), frozen.posterior(pixels.flip(-1))
    return torch.stack([plain[0], mirrored[0]], 1), torch.stack([plain[1], mirrored[1]], 1)


def train_catversion(frozen: FrozenSD1, images, recipe: CatVersionRecipe, run: TrainingRun | None = None,
                     on_step: Callable[[StepReport], None] | None = None, name: str = "CatVersion adapter",
                     on_abort: Callable[[StepReport, BaseException], None] | None = None,
                     ) -> tuple[CatVersionPrefix, list[float]]:
    """Learn a prefix from ``images`` (a ComfyUI IMAGE, B x H x W x C in [0, 1], or a list of them);
    returns it and the loss of every step. ``on_step`` runs after each optimizer step (progress);
    ``on_abort`` gets the last completed step when the run stops early (to keep its prefix)."""
    run = run or TrainingRun()
    recipe = recipe.checked()
    generator = torch.Generator().manual_seed(recipe.seed)
    flat = initial_prefix(recipe, generator)
    pixels = squash_image_set(images, recipe.resolution).to(frozen.device)
    mean, std = posterior_cache(frozen, pixels)
    del pixels
    objective = PrefixObjective(frozen, flat, recipe.layers, mean, std, scaled_linear_schedule()).to(frozen.device)
    optimizer = torch.optim.AdamW([objective.flat], lr=recipe.learning_rate, weight_decay=recipe.weight_decay)
    objective, optimizer = run.prepare(objective, optimizer)
    sampler = StepSampler(mean.shape[0], recipe.batch_size * run.world_size, tuple(mean.shape[2:]),
                          recipe.flip_probability, generator)
    unwrapped = run.unwrap(objective)
    losses, completed = [], None
    try:
        for step in range(recipe.steps):
            loss = objective(sampler.draw().shard(run.rank, run.world_size))
            run.backward(loss)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(run.mean_loss(loss.detach()))
            completed = StepReport(step + 1, recipe.steps, losses[-1], lambda: unwrapped.prefix(name))
            if on_step is not None:
                on_step(completed)
    except BaseException as exc:  # an interrupt (ComfyUI's, Ctrl-C) or an error in the middle of a step
        if on_abort is not None and completed is not None:
            on_abort(completed, exc)
        raise
    return unwrapped.prefix(name), losses
