"""Layers: the norm-mode factory, and Online Normalization (loaded on first use)."""

from basinlab.nn.norms import ECM_MODES, NORM_MODES, NormSpec, group_count, init_norm_, is_norm_module

__all__ = ["ECM_MODES", "NORM_MODES", "NormSpec", "group_count", "init_norm_", "is_norm_module",
           "OnlineNorm1d", "OnlineNorm2d"]

_LAZY = {"OnlineNorm1d", "OnlineNorm2d"}


def __getattr__(name):
    # Lazy so that importing basinlab.nn never depends on the online module being importable.
    if name in _LAZY:
        from basinlab.nn import online_norm

        return getattr(online_norm, name)
    raise AttributeError(f"module 'basinlab.nn' has no attribute {name!r}")
