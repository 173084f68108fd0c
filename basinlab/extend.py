"""The extension surface: everything a fork or a script uses to add a model, a step strategy, a callback, an
optimizer or a preset, from one module (docs/extending.md uses only this).

    from basinlab.extend import Callback, StepStrategy, StepResult, register_model

A step strategy turns a batch into an update with a StepContext (forward, check_loss, backward, optimizer_step:
precision, clipping and the callbacks' seam included) and sees the run through a read-only RunInfo; a
callback gets the RunInfo in every hook. `build_method` is the one list of the command line's methods.
"""
from basinlab.engine.callbacks import Callback
from basinlab.engine.precision import Precision
from basinlab.engine.run_info import RunInfo
from basinlab.engine.step_context import StepContext
from basinlab.engine.steps import PlainStep, StepResult, StepStrategy, accumulate_gradient
from basinlab.methods.registry import METHODS, build_method
from basinlab.models import register_model
from basinlab.nn.norms import NormSpec
from basinlab.optim import register_optimizer
from basinlab.presets import register_preset

__all__ = ["Callback", "StepStrategy", "StepResult", "PlainStep", "accumulate_gradient", "StepContext", "RunInfo",
           "Precision", "register_model", "register_optimizer", "register_preset", "NormSpec", "METHODS",
           "build_method"]
