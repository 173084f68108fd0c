"""Asynchronous SGD: stability theory of delayed gradients (see shared/specs/02-async-sgd.md)."""
from .stability import (
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

__all__ = [
    "KINDS",
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
