"""What a model file may ask of the data: convNet's data-regime switches and the seeds' input_transform.

Data-regime keys (set per epoch, see optim/data_regime.py), as convNet.pytorch meant them:
- `cutout`: N or {'holes': H, 'length': N}: H squares of side N (centre uniform over the image, clipped at
  the border) set to 0 after normalisation, on each training image (DeVries & Taylor 2017).
- `duplicates`: M: every example of a training batch appears M times with its own augmentation draws
  ("augment your batch", Hoffer et al. 2019): a batch of B examples is B*M images per step.
- `translate`: N: in-memory crop-and-flip datasets shift each training image by up to N pixels each way with
  reflect padding (airbench's), instead of the zero-padded 4-pixel crop.
- `flip`: `random` (default; each image mirrored with probability 1/2 per epoch), `alternating` (airbench: a
  seeded random half of the examples mirrored in even epochs, the other half in odd ones) or `none`.
- `input_size`: N or [h, w] for training and validation images; `scale_size`: image folders' evaluation
  resize (shorter side) before the centre crop. `autoaugment` is refused (not implemented here).

`input_transform` on a model (the SmoothOut seed's pattern):
- `{'train': T, 'eval': U}`: the seed's per-sample form. T takes a PIL image and returns a PIL image
  (basinlab then normalises it with the dataset's statistics) or a float tensor [C, H, W] (taken as it
  is, as after the seed's ToTensor + Normalize). It replaces basinlab's own augmentation for that split;
  image folders apply it in the loader workers, in-memory datasets on the CPU, image by image.
- `{'train': f, 'eval': g, 'on': 'batch'}`: callables on a normalised float batch [N, C, H, W] on the
  training device, applied after basinlab's augmentation.
Every random draw of a transform comes from a generator seeded with (seed, epoch, example or batch), so
runs are reproducible and a resumed run sees the same images.
"""
from __future__ import annotations

import contextlib
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
import torch

from basinlab.errors import ConfigError
from basinlab.utils.model_state import random_state_kept
from basinlab.utils.schema import shown


@contextlib.contextmanager
def seeded_rngs(seed: int, device: torch.device | None = None):
    """torch's (CPU and `device`'s) and Python's random generators seeded with `seed`, restored after."""
    python_state = random.getstate()
    with random_state_kept(device):
        torch.manual_seed(seed)
        random.seed(seed)
        try:
            yield
        finally:
            random.setstate(python_state)


# ------------------------------------------------------------------------------------------- cutout
MAX_CUTOUT = 65_536  # holes and side lengths: beyond any image


@dataclass(frozen=True)
class Cutout:
    holes: int
    length: int

    @classmethod
    def from_setting(cls, value, where: str) -> Cutout:
        if isinstance(value, Mapping):
            unknown = set(value) - {"holes", "length"}
            holes, length = value.get("holes", 1), value.get("length")
        else:
            unknown, holes, length = set(), 1, value
        for number in (holes, length):
            if unknown or isinstance(number, bool) or not isinstance(number, int) or not 0 < number <= MAX_CUTOUT:
                raise ConfigError(f"{where}: cutout must be a side length N in [1, {MAX_CUTOUT}] or {{'holes': H, "
                                  f"'length': N}}, got {shown(value)}")
        return cls(holes, length)

    def masks(self, generator: torch.Generator, count: int, height: int, width: int) -> torch.Tensor:
        """bool [count, 1, height, width]: True where the image is kept."""
        cy = torch.randint(0, height, (count, self.holes, 1, 1), generator=generator)
        cx = torch.randint(0, width, (count, self.holes, 1, 1), generator=generator)
        rows = torch.arange(height).view(1, 1, height, 1)
        cols = torch.arange(width).view(1, 1, 1, width)
        half = self.length // 2
        covered = ((rows >= cy - half) & (rows < cy + half)) & ((cols >= cx - half) & (cols < cx + half))
        return ~covered.any(dim=1, keepdim=True)


# ---------------------------------------------------------------------------------- input_transform
@dataclass(frozen=True)
class InputTransform:
    train: Callable | None
    eval: Callable | None
    on_batch: bool

    @classmethod
    def from_model(cls, value, model_name: str) -> InputTransform | None:
        if value is None:
            return None
        where = f"model {model_name}: input_transform"
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where} must be a dict {{'train': callable, 'eval': callable}} (optionally "
                              f"'on': 'batch'), got {type(value).__name__}")
        unknown = set(value) - {"train", "eval", "on"}
        if unknown:
            raise ConfigError(f"{where}: unknown key {sorted(unknown)[0]!r}; allowed: train, eval, on")
        on = value.get("on", "sample")
        if on not in ("sample", "batch"):
            raise ConfigError(f"{where}: 'on' must be 'sample' (the seed's per-image form) or 'batch', got {on!r}")
        for split in ("train", "eval"):
            if value.get(split) is not None and not callable(value[split]):
                raise ConfigError(f"{where}: {split!r} must be callable, got {type(value[split]).__name__}")
        return cls(value.get("train"), value.get("eval"), on == "batch")

    def for_split(self, train: bool) -> Callable | None:
        return self.train if train else self.eval


def image_to_tensor(result, where: str) -> torch.Tensor:
    """A per-sample transform's result: uint8 [C, H, W] from a PIL image, or its float tensor as it is."""
    if isinstance(result, torch.Tensor):
        if result.dim() != 3:
            raise ConfigError(f"{where} returned a tensor of shape {list(result.shape)}; expected [C, H, W]")
        return result if result.dtype == torch.uint8 else result.float()
    array = np.asarray(result, dtype=np.uint8)
    if array.ndim == 2:
        array = array[:, :, None]
    if array.ndim != 3:
        raise ConfigError(f"{where} returned {type(result).__name__}; expected a PIL image or a [C, H, W] tensor")
    return torch.from_numpy(array.copy()).permute(2, 0, 1).contiguous()


def uint8_to_image(chw: torch.Tensor):
    """A stored uint8 [C, H, W] image as a PIL image (L for one channel, RGB for three)."""
    from PIL import Image
    array = chw.cpu().numpy()
    return Image.fromarray(array[0]) if array.shape[0] == 1 else Image.fromarray(array.transpose(1, 2, 0))


def as_height_width(size, where: str = "input size") -> tuple[int, int] | None:
    """None, N or (h, w) -> None or (h, w); anything else is refused."""
    if size is None:
        return None
    if isinstance(size, int) and not isinstance(size, bool) and size > 0:
        return (size, size)
    if isinstance(size, (list, tuple)) and len(size) == 2 and all(
            isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in size):
        return (int(size[0]), int(size[1]))
    raise ConfigError(f"{where} must be a positive integer or [height, width], got {size!r}")
