"""Sharpness of a trained model, in one namespace: Hessian eigenvalues, trace and spectrum (whole, per block,
the most negative eigenvalue), Gauss-Newton and Fisher curvature, Keskar's epsilon-sharpness, worst- and
average-case (adaptive) sharpness of Andriushchenko et al. (2023). The conventions every function shares
(model, criterion, batches; eval mode; seeded randomness) are in basinlab.metrics.hessian."""
from __future__ import annotations

from basinlab.metrics.adaptive_sharpness import DEFAULT_RHO, AdaptiveSharpness, adaptive_sharpness
from basinlab.metrics.curvature import (
    CURVATURES,
    curvature_eigenvalues,
    curvature_trace,
    curvature_vector_product,
    empirical_fisher_trace,
)
from basinlab.metrics.hessian import SharpnessInputError, hessian_vector_product
from basinlab.metrics.hessian_blocks import BlockSpectrum, block_spectra, min_eigenvalue, parameter_blocks
from basinlab.metrics.hessian_eigen import HessianEigen, hessian_eigenvalues, lambda_max
from basinlab.metrics.hessian_spectrum import (
    HessianTrace,
    SpectralDensity,
    hessian_spectrum,
    hessian_trace,
    slq_density,
)
from basinlab.metrics.keskar import keskar_sharpness

__all__ = [
    "SharpnessInputError",
    "HessianEigen",
    "HessianTrace",
    "SpectralDensity",
    "hessian_vector_product",
    "hessian_eigenvalues",
    "lambda_max",
    "hessian_trace",
    "hessian_spectrum",
    "slq_density",
    "keskar_sharpness",
    "AdaptiveSharpness",
    "DEFAULT_RHO",
    "adaptive_sharpness",
    "BlockSpectrum",
    "parameter_blocks",
    "block_spectra",
    "min_eigenvalue",
    "CURVATURES",
    "curvature_vector_product",
    "curvature_eigenvalues",
    "curvature_trace",
    "empirical_fisher_trace",
]
