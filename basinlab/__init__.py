"""basinlab: train CNN image classifiers and study the minima they find.

    import basinlab
    run = basinlab.train(epochs=2)            # the options of `basinlab train`, underscores for dashes
    basinlab.load_run(run.path).history

The API (basinlab.api) is loaded on first use, so `import basinlab` costs nothing.
"""
from __future__ import annotations

from basinlab._version import __version__

_API = ("train", "build_run", "load_run", "load_model", "make_config", "evaluate_checkpoint", "export_safetensors",
        "model_from_checkpoint")


def __getattr__(name):
    if name in _API:
        from basinlab import api
        return getattr(api, name)
    raise AttributeError(f"module 'basinlab' has no attribute {name!r}")


__all__ = [*_API, "__version__"]
