"""Mixed precision: which autocast dtype a run gets on its device, or one line saying why not.

--amp bf16 on a CPU runs torch.autocast("cpu", bfloat16): convolutions and matrix products in bfloat16
(oneDNN), everything else float32. It is fast where the CPU computes bfloat16 natively (AVX-512 BF16
or AMX; 1.85x a float32 ResNet-20 step on this project's EPYC) and is refused elsewhere, where oneDNN
emulates it more slowly than float32. Parameters, optimizer state and normalisation statistics stay
float32 in every case (autocast only casts the inputs of the ops it lists; Online Normalization runs
its scans with autocast off). fp16 needs CUDA and its gradient scaler. --amp auto picks bf16 where the
device computes it fast, else none; the default, none, keeps runs bit-reproducible.
"""
from __future__ import annotations

import contextlib

import torch

from basinlab.choices import AMP_MODES
from basinlab.errors import ConfigError

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def cpu_bf16_native() -> tuple[bool, str]:
    """(whether this CPU computes bfloat16 natively, what it has, in words) from torch's own checks."""
    checks = {"AVX-512 BF16": getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False),
              "AMX": getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)}
    found = [name for name, check in checks.items() if check()]
    if found:
        return True, " and ".join(found)
    has_avx512 = getattr(torch.cpu, "_is_avx512_supported", lambda: False)()
    return False, "AVX-512 without BF16" if has_avx512 else "no AVX-512"


def cuda_bf16(device: torch.device) -> bool:
    return device.type == "cuda" and torch.cuda.is_bf16_supported()


def resolve_amp(requested: str, device: torch.device) -> tuple[str, torch.dtype | None, str]:
    """(mode used, autocast dtype or None, a log line) for --amp on `device`; ConfigError when impossible."""
    if requested not in AMP_MODES:
        raise ConfigError(f"--amp must be one of {', '.join(AMP_MODES)}, got {requested!r}")
    if requested == "none":
        return "none", None, "amp none: float32"
    if requested == "auto":
        fast = cuda_bf16(device) or (device.type == "cpu" and cpu_bf16_native()[0])
        if not fast:
            return "none", None, f"amp auto: float32 ({_why_not_bf16(device)})"
        return "bf16", torch.bfloat16, f"amp auto: bf16 autocast on {_describe(device)}; parameters, optimizer " \
                                       f"state and norm statistics float32"
    if requested == "fp16":
        if device.type != "cuda":
            raise ConfigError(f"--amp fp16 needs a CUDA device and its gradient scaler (this run uses {device}); "
                              f"on a CPU use --amp bf16 where it is native, or --amp auto")
        return "fp16", torch.float16, "amp fp16: float16 autocast with a gradient scaler on CUDA"
    if device.type == "cuda" and not cuda_bf16(device):
        raise ConfigError(f"--amp bf16: {torch.cuda.get_device_name(device)} has no bfloat16 support; use --amp fp16")
    if device.type == "cpu" and not cpu_bf16_native()[0]:
        raise ConfigError(f"--amp bf16 on the CPU needs native bfloat16 (AVX-512 BF16 or AMX); this CPU has "
                          f"{cpu_bf16_native()[1]}, where bf16 is emulated and slower than float32: drop --amp")
    if device.type not in ("cpu", "cuda"):
        raise ConfigError(f"--amp bf16 runs on CUDA or a CPU with native bfloat16, not on {device.type}")
    return "bf16", torch.bfloat16, f"amp bf16: bfloat16 autocast on {_describe(device)}; parameters, optimizer " \
                                   f"state and norm statistics float32"


def _describe(device: torch.device) -> str:
    if device.type == "cpu":
        return f"the CPU ({cpu_bf16_native()[1]})"
    return torch.cuda.get_device_name(device) if device.type == "cuda" else str(device)


def _why_not_bf16(device: torch.device) -> str:
    if device.type == "cpu":
        return f"this CPU has {cpu_bf16_native()[1]}: no native bfloat16"
    if device.type == "cuda":
        return "this GPU has no bfloat16"
    return f"no bf16 autocast on {device.type}"


class Precision:
    """A run's numeric precision as a step asks it (Lightning's Precision object): the autocast context, the
    scaled backward, and the optimizer step inside the gradient scaler's overflow check and update."""

    def __init__(self, mode: str, dtype: torch.dtype | None, device: torch.device,
                 eval_dtype: torch.dtype | None = None, note: str = ""):
        self.mode, self.dtype, self.eval_dtype, self.note = mode, dtype, eval_dtype, note
        self.device_type = device.type
        self.scaler = torch.amp.GradScaler("cuda") if mode == "fp16" else None

    @classmethod
    def for_run(cls, amp: str, eval_amp: str, device: torch.device) -> Precision:
        """--amp and --eval-amp on `device` (ConfigError where the device cannot)."""
        mode, dtype, note = resolve_amp(amp, device)
        return cls(mode, dtype, device, eval_dtype=None if eval_amp == "none" else dtype, note=note)

    def autocast(self, dtype: torch.dtype | None = None):
        """Training's autocast (or one in `dtype`); a no-op context without mixed precision."""
        dtype = self.dtype if dtype is None else dtype
        return contextlib.nullcontext() if dtype is None else torch.autocast(self.device_type, dtype=dtype)

    def eval_autocast(self):
        return contextlib.nullcontext() if self.eval_dtype is None else self.autocast(self.eval_dtype)

    def backward(self, loss: torch.Tensor) -> None:
        (self.scaler.scale(loss) if self.scaler else loss).backward()

    def unscale_(self, optimizer) -> None:
        if self.scaler:
            self.scaler.unscale_(optimizer)

    def step(self, optimizer, step=None) -> None:
        """optimizer.step() (or `step()`), skipped where the fp16 gradients overflowed; then the scaler updates."""
        if self.scaler is None:
            (step or optimizer.step)()
        elif step is None:
            self.scaler.step(optimizer)
            self.scaler.update()
        else:  # a strategy's own rule, inside the scaler's own overflow check: it calls optimizer.step()
            optimizer.step = lambda *args, **kwargs: step()  # the instance attribute shadows the method
            try:
                self.scaler.step(optimizer)
            finally:
                del optimizer.step
            self.scaler.update()

    def unscaled(self, value: torch.Tensor) -> torch.Tensor:
        """A quantity computed from scaled gradients, as it would be without scaling (for reports)."""
        return value / self.scaler.get_scale() if self.scaler else value

    def state_dict(self) -> dict | None:
        return self.scaler.state_dict() if self.scaler else None

    def load_state_dict(self, state: dict | None) -> None:
        if self.scaler and state:
            self.scaler.load_state_dict(state)
