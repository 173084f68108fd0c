"""Ghost batches and SmoothOut: one optimizer update from several gradient chunks of a batch.

Per update, for each chunk (ghost batch) of M samples: [SmoothOut: save the clean weights, add fresh
noise] -> forward -> backward of the chunk loss times M/B (so the accumulated gradient is the batch
mean) -> [SmoothOut: copy the clean weights back]; then one optimizer step on the clean weights. The
result is exactly "clean weights minus the step computed from the noisy gradient". Each chunk's forward
normalises with its own batch statistics (ghost batch norm); running statistics and online-norm state
advance once per chunk, as in plain training with batches of M.
"""
from __future__ import annotations

import contextlib
import math

from basinlab.choices import STRENGTH_SCHEDULES
from basinlab.data.loader import derive_seed
from basinlab.engine.steps import PlainStep, check_ghost_batch, describe_chunks
from basinlab.errors import ConfigError
from basinlab.methods.flat.chunks import regime_lr_factor
from basinlab.methods.flat.noise import NoiseModel, WeightNoise, noise_generator, perturbed_parameters

SCHEDULES = STRENGTH_SCHEDULES
ANNEAL_INDEX = 0.55  # the reference's --anneal-index default
TANH_SCALE = 10.0    # the reference's --tanh-scale default


def strength_coefficient(schedule: str, step: int, total_steps: int) -> float:
    """The factor c of the noise strength at optimizer step `step` (0-based) of `total_steps`.

    constant: 1; anneal: (1 + t)^(-0.55/2) (the reference took the square root of (1+t)^-0.55);
    tanh: (1 + tanh(10 (t/T - 1/2))) / 2, ramping from ~0 to ~1 over the run. t counts optimizer
    updates, as the reference did (epoch * updates per epoch + update in epoch).
    """
    if schedule == "constant":
        return 1.0
    if schedule == "anneal":
        return (1.0 + step) ** (-ANNEAL_INDEX / 2)
    if schedule == "tanh":
        return 0.5 * (1.0 + math.tanh(TANH_SCALE * (step / max(total_steps, 1) - 0.5)))
    raise ConfigError(f"--smoothout-schedule must be one of {', '.join(SCHEDULES)}; got {schedule!r}")


class GhostBatchStep(PlainStep):
    """The engine's accumulation over ghost batches, with SmoothOut weight noise around each chunk
    (and/or the --lr-scale-batch rule)."""

    def __init__(self, ghost_batch: int | None = None, noise: NoiseModel | None = None, *,
                 schedule: str = "constant", include_norm: bool = False, denoise: bool = True,
                 lr_scale: str | None = None, seed: int = 0):
        super().__init__(ghost_batch)
        self.noise_model = noise
        self.schedule, self.include_norm, self.denoise = schedule, include_norm, denoise
        self.lr_scale, self.seed = lr_scale, seed
        self.name = "ghost-batch" if noise is None else ("adasmoothout" if noise.adapt == "filter" else "smoothout")
        self.noise: WeightNoise | None = None
        self.coef = 1.0
        self.total_steps = 1

    # ------------------------------------------------------------------------------------ setup
    def setup(self, ctx, run) -> None:
        check_ghost_batch(self.ghost_batch, run.batch_size)
        self.total_steps = run.epochs * run.steps_per_epoch
        if self.noise_model is not None and self.noise_model.strength > 0:
            params = perturbed_parameters(ctx.model, self.include_norm)
            # each data-parallel rank draws its own noise for its own chunks
            generator = noise_generator(params, derive_seed("smoothout", self.seed, ctx.dist.rank))
            self.noise = WeightNoise(params, self.noise_model, generator)
        run.log(self.describe(run.batch_size))

    def lr_factor(self, run) -> float:
        return regime_lr_factor(run, self.lr_scale, self.ghost_batch)

    def describe(self, batch: int) -> str:
        text = f"step {self.name}: {describe_chunks(self.ghost_batch, batch)}"
        if self.noise_model is None:
            return text
        count = len(self.noise.params) if self.noise else 0
        norm = "included" if self.include_norm else "excluded"
        return (f"{text}; {self.noise_model.describe()}, schedule {self.schedule}, "
                f"{count} parameter tensors perturbed (norm-layer affine {norm}), "
                f"denoise {'on' if self.denoise else 'off (noise stays in the weights)'}")

    # ------------------------------------------------------------------------------------ the step
    def train_step(self, ctx, x, y):
        if self.noise_model is not None:
            self.coef = strength_coefficient(self.schedule, ctx.updates, self.total_steps)
        return super().train_step(ctx, x, y)

    @property
    def around_chunk(self):
        return self._noisy if self.noise is not None else None

    @contextlib.contextmanager
    def _noisy(self):
        """Fresh noise on the weights for one chunk; the clean weights come back after it (denoise)."""
        self.noise.perturb(self.coef, keep_clean=self.denoise)
        try:
            yield
        finally:
            if self.denoise:
                self.noise.restore()

    # ------------------------------------------------------------------------------------ records
    def epoch_metrics(self, run) -> dict:
        return {} if self.noise_model is None else {"smoothout_c": self.coef}

    def state_dict(self) -> dict:
        return {"generator": self.noise.generator.get_state() if self.noise else None, "coef": self.coef}

    def load_state_dict(self, state: dict) -> None:
        if self.noise is not None and state.get("generator") is not None:
            self.noise.generator.set_state(state["generator"])
        self.coef = state.get("coef", self.coef)
