"""Flat-minima training: ghost batches, SmoothOut / AdaSmoothOut, SAM and ASAM.

`configure(cfg)` turns the options of the "flat minima" section of TrainConfig into a step strategy:

    --ghost-batch M                                    (the engine's PlainStep accumulates over chunks of M)
    --ghost-batch M --lr-scale-batch sqrt|linear       GhostBatchStep (the same, with the regime's lr scaled)
    --smoothout A [--smoothout-noise/-adapt/-schedule/-include-bn, --no-denoise, --ghost-batch M]
                                                       GhostBatchStep with weight noise
    --sam RHO | --asam RHO [--asam-eta, --ghost-batch M, --sam-m M, --sam-interval K]
                                                       SharpnessAwareStep (both passes over the chunks; an
                                                       eps per micro-batch of M; SAM every K steps)

The strategies live in smoothout.py and sam.py (the lr rule in chunks.py); the noise models in noise.py.
"""
from __future__ import annotations

from basinlab.config import TrainConfig
from basinlab.errors import ConfigError
from basinlab.methods.flat.chunks import lr_scale_factor
from basinlab.methods.flat.noise import NoiseModel
from basinlab.methods.flat.sam import SharpnessAwareStep, asam_perturbation, sam_perturbation
from basinlab.methods.flat.smoothout import GhostBatchStep, strength_coefficient
from basinlab.utils.checks import check_number

METHOD_NAME = "--smoothout/--sam/--asam (flat minima)"

__all__ = ["configure", "GhostBatchStep", "SharpnessAwareStep", "sam_perturbation", "asam_perturbation",
           "strength_coefficient", "lr_scale_factor"]

def _check_values(cfg: TrainConfig) -> None:
    """What the option statements cannot say: the radii are numbers the steps can use."""
    for name in ("sam", "asam"):
        if getattr(cfg, name) is not None:
            check_number(getattr(cfg, name), "--" + name)
    check_number(cfg.asam_eta, "--asam-eta", allow_zero=True)


def _check_micro_batch(cfg: TrainConfig, world_size: int) -> None:
    """--sam-m against --ghost-batch and the perturbation rule (against the batch: SharpnessAwareStep.setup)."""
    if cfg.sam_m is None:
        return
    if cfg.ghost_batch is not None and cfg.sam_m % cfg.ghost_batch:
        raise ConfigError(f"--sam-m {cfg.sam_m} must be a multiple of --ghost-batch {cfg.ghost_batch}: each "
                          f"micro-batch is cut into ghost batches, and any other size would leave one smaller than "
                          f"{cfg.ghost_batch}")
    if world_size > 1 and cfg.sam_perturbation == "global":
        raise ConfigError(f"--sam-m gives each micro-batch its own eps and --sam-perturbation global one eps for all "
                          f"{world_size} processes: drop one (with --sam-m each process's micro-batches are those of "
                          f"a single-process run)")


def _check_processes(cfg: TrainConfig, world_size: int) -> None:
    if world_size > 1 and cfg.smoothout is not None and not cfg.denoise:
        raise ConfigError(f"--no-denoise with --smoothout leaves each process's own noise in its weights, so the "
                          f"{world_size} model copies would drift apart; keep --denoise or run one process")
    _check_micro_batch(cfg, world_size)


def configure(cfg: TrainConfig, world_size: int = 1, workflow: str = "train"):
    """(step strategy or None, callbacks) for the flat-minima options of `cfg`; in the LR range test every
    step is this strategy's, as in training (--sam-interval counts the sweep's steps as it counts training's).
    Detail options without their main option, and methods that cannot be combined, were refused with the config
    (their `needs` and `conflicts`, config.check_relations)."""
    if workflow == "lr-range" and cfg.lr_scale_batch is not None:
        raise ConfigError("--lr-scale-batch scales the regime's lr, which the LR range test replaces by its sweep: "
                          "it would change nothing there; drop it")
    if cfg.smoothout is None and cfg.sam is None and cfg.asam is None and cfg.lr_scale_batch is None:
        return None, []  # plain training; a --ghost-batch alone is the engine's gradient accumulation
    _check_values(cfg)
    _check_processes(cfg, world_size)
    if cfg.sam is not None or cfg.asam is not None:
        adaptive = cfg.asam is not None
        return SharpnessAwareStep(cfg.asam if adaptive else cfg.sam, adaptive=adaptive, eta=cfg.asam_eta,
                                  ghost_batch=cfg.ghost_batch, lr_scale=cfg.lr_scale_batch,
                                  asam_scope=cfg.asam_scope, perturbation=cfg.sam_perturbation,
                                  m=cfg.sam_m, interval=cfg.sam_interval), []
    noise = None
    if cfg.smoothout is not None:
        noise = NoiseModel(cfg.smoothout, cfg.smoothout_noise, cfg.smoothout_adapt)
    return GhostBatchStep(cfg.ghost_batch, noise, schedule=cfg.smoothout_schedule,
                          include_norm=cfg.smoothout_include_bn, denoise=cfg.denoise,
                          lr_scale=cfg.lr_scale_batch, seed=cfg.seed), []
