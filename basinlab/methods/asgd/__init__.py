"""Asynchronous SGD: a simulated parameter server and the stability theory of delayed gradients
(see shared/specs/02-async-sgd.md)."""
from basinlab.methods.asgd.stability import (
    KINDS,
    StabilityInputError,
    adjusted_lr,
    characteristic_polynomial,
    closed_form_threshold,
    effective_stability_threshold,
    is_stable,
    spectral_radius,
    stability_table,
    stability_threshold,
)
from basinlab.methods.asgd.schedule import SCHEDULES, make_scheduler
from basinlab.methods.asgd.server import MODES, ParameterServer, ParameterServerStep, resolve_delay

__all__ = [
    "KINDS",
    "MODES",
    "ParameterServer",
    "ParameterServerStep",
    "SCHEDULES",
    "make_scheduler",
    "resolve_delay",
    "StabilityInputError",
    "adjusted_lr",
    "characteristic_polynomial",
    "closed_form_threshold",
    "effective_stability_threshold",
    "is_stable",
    "spectral_radius",
    "stability_table",
    "stability_threshold",
]
