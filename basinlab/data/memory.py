"""In-memory datasets: uint8 tensors on the training device, augmented a whole batch at a time.

No per-image Python work: a training batch is one H2D copy of its indices and crop/flip draws,
one gather that selects, crops and flips, and one fused normalisation.
"""
from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
import torch.nn.functional as F

from basinlab.data.catalog import PAD_CROP_FLIP
from basinlab.data.loader import Loader, derive_seed, make_generator, normalise, normalise_constants
from basinlab.data.transforms import image_to_tensor, seeded_rngs, uint8_to_image

PAD = 4


def crop_flip_params(seed: int, epoch: int, batch: int, batch_size: int, pad: int = PAD) -> torch.Tensor:
    """int64 [3, batch_size]: row offset, column offset (0..2*pad) and flip flag of a global batch."""
    generator = make_generator("augment", seed, epoch, batch)
    offsets = torch.randint(0, 2 * pad + 1, (2, batch_size), generator=generator)
    flips = torch.randint(0, 2, (1, batch_size), generator=generator)
    return torch.cat([offsets, flips])


def reflected(index: torch.Tensor, size: int) -> torch.Tensor:
    """Positions in [-size + 1, 2 size - 2] mirrored into [0, size - 1] without repeating the edge (reflect
    padding: -1 -> 1, size -> size - 2)."""
    return (size - 1) - ((size - 1) - index.abs()).abs()


class CropFlip:
    """Selects a batch from zero-padded images, crops HxW windows at per-sample offsets and mirrors
    the flagged ones: an index_select and two gathers (rows, then columns; the flip is a reversed
    column index). One 4-index advanced-indexing gather does the same but is 30x slower on CPU."""

    def __init__(self, height: int, width: int, channels: int, device):
        self.rows = torch.arange(height, device=device)
        self.cols = torch.arange(width, device=device)
        self.cols_flipped = self.cols.flip(0)

    def __call__(self, padded: torch.Tensor, index: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor,
                 flip: torch.Tensor) -> torch.Tensor:
        cols = dx[:, None] + torch.where(flip[:, None].bool(), self.cols_flipped, self.cols)
        return self.windows(padded, index, dy[:, None] + self.rows, cols)

    def reflect_shifted(self, padded: torch.Tensor, index: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor,
                        flip: torch.Tensor, margin: int) -> torch.Tensor:
        """The images shifted by (dy, dx) with reflect padding, mirrored where flagged: the same gathers at
        reflected positions inside the stored images' zero `margin`."""
        rows = margin + reflected(dy[:, None] + self.rows, len(self.rows))
        cols = margin + reflected(dx[:, None] + self.cols, len(self.cols))
        return self.windows(padded, index, rows, torch.where(flip[:, None].bool(), cols.flip(1), cols))

    def windows(self, padded: torch.Tensor, index: torch.Tensor, rows: torch.Tensor,
                cols: torch.Tensor) -> torch.Tensor:
        """Rows [b, H] and columns [b, W] (positions in `padded`) of the images `index` selects."""
        batch = padded.index_select(0, index)                                          # [b, C, Hp, Wp]
        b, channels, _, padded_width = batch.shape
        height, width = len(self.rows), len(self.cols)
        batch = batch.gather(2, rows.view(b, 1, height, 1).expand(b, channels, height, padded_width))
        return batch.gather(3, cols.view(b, 1, 1, width).expand(b, channels, height, width))


def flip_flags(mode: str, drawn: torch.Tensor, base: torch.Tensor | None, index: torch.Tensor,
               epoch: int, duplicates: int = 1) -> torch.Tensor:
    """Which images of a batch are mirrored: `random` as drawn; `alternating` (airbench): a fixed random half of
    the examples in even epochs and the other half in odd ones, so every image is seen both ways every two
    epochs (with duplicates, odd copies the other way from even ones); `none` none."""
    if mode == "random":
        return drawn
    if mode == "none":
        return torch.zeros_like(drawn)
    copy = torch.arange(len(index)) // (len(index) // duplicates)   # index is copy-major (see MemoryLoader.epoch)
    return base[index] ^ (epoch % 2) ^ (copy % 2)


class MemoryLoader(Loader):
    """A dataset held as uint8 [N, C, H, W] on the device; see Loader for order and sharding."""

    def __init__(self, dataset_name: str, images, labels, *, num_classes: int, mean, std,
                 batch_size: int, train: bool, augmentation: str | None = None, device="cpu",
                 seed: int = 0, rank: int = 0, world_size: int = 1):
        images = torch.as_tensor(np.ascontiguousarray(images) if isinstance(images, np.ndarray) else images)
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise ValueError(f"images must be uint8 [N, C, H, W], got {images.dtype} {list(images.shape)}")
        super().__init__(dataset_name, num_classes=num_classes, num_examples=len(images),
                         native_shape=tuple(images.shape[1:]), batch_size=batch_size, train=train,
                         device=device, seed=seed, rank=rank, world_size=world_size)
        self.augmentation = augmentation if train else None
        self.labels = torch.as_tensor(np.asarray(labels), dtype=torch.int64).to(self.device)
        self.scale, self.shift = normalise_constants(mean, std, self.device)
        channels, height, width = self.native_shape
        if self.augmentation == PAD_CROP_FLIP:
            # Padded once here, not per batch: the crop then reads straight from the stored tensor.
            self.images = F.pad(images.to(self.device), (PAD, PAD, PAD, PAD))
            self.crop_flip = CropFlip(height, width, channels, self.device)
        elif self.augmentation in (None, "none"):
            self.images = images.to(self.device)
        else:
            raise ValueError(f"in-memory loaders do not implement augmentation {augmentation!r}")
        self.translate: int | None = None  # data regime: shifts of up to N pixels (reflect padding), not the crop
        self.flip = "random"
        self._base_flips: torch.Tensor | None = None

    def set_augmentation(self, translate: int | None = None, flip: str = "random") -> None:
        """The data regime's crop-and-flip variant: `translate` N replaces the zero-padded 4-pixel crop by shifts
        of up to N pixels with reflect padding; `flip` random, alternating or none (data/transforms.py)."""
        self.translate, self.flip = translate, flip
        if flip == "alternating" and self._base_flips is None:
            generator = make_generator("alternating-flip", self.seed)
            self._base_flips = torch.randint(0, 2, (self.num_examples,), generator=generator)

    def epoch(self, epoch: int, start_batch: int = 0, stride: int = 1) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for batch, index in self.index_batches(epoch, start_batch, stride):
            if self.train and self.duplicates > 1:
                index = index.repeat(self.duplicates)   # copy-major: [copy 0, copy 1, ...]
            transform = self.sample_transform()
            if transform is not None:
                images = self._transformed(transform, epoch, index)
            elif self.augmentation == PAD_CROP_FLIP:
                images = self._augmented(epoch, batch, index)
            else:
                images = self.images[index.to(self.device)]
            labels = self.labels[index.to(self.device)]
            if images.dtype == torch.uint8:
                images = normalise(images, self.scale, self.shift)
            yield self.finish_batch(self._resize(images), epoch, batch), labels

    def _augmented(self, epoch: int, batch: int, index: torch.Tensor) -> torch.Tensor:
        # Draws cover the global batch so every rank's slice matches a single process exactly.
        pad = PAD if self.translate is None else self.translate
        params = crop_flip_params(self.seed, epoch, batch, self.images_per_batch, pad)[:, self.copy_rows()]
        if self.flip != "random":
            params[2] = flip_flags(self.flip, params[2], self._base_flips, index, epoch,
                                   self.duplicates if self.train else 1)
        packed = torch.cat([index[None], params]).to(self.device)   # one small host-to-device copy
        index, dy, dx, flip = packed
        if self.translate is None:
            return self.crop_flip(self.images, index, dy, dx, flip)
        return self.crop_flip.reflect_shifted(self.images, index, dy - pad, dx - pad, flip, PAD)

    def examples(self, count: int) -> torch.Tensor:
        """The first `count` stored examples, normalised and not augmented (a model's init_from_data)."""
        return normalise(self.raw_images()[:count], self.scale, self.shift)

    def _transformed(self, transform, epoch: int, index: torch.Tensor) -> torch.Tensor:
        """The model's per-sample input_transform, image by image on the CPU (the seed's form)."""
        stored = self.raw_images()
        copies = torch.arange(self.duplicates).repeat_interleave(len(index) // self.duplicates) if self.train \
            else torch.zeros(len(index), dtype=torch.int64)
        out = []
        for i, copy in zip(index.tolist(), copies.tolist()):
            with seeded_rngs(derive_seed("sample-transform", self.seed, epoch, i, copy)):
                out.append(image_to_tensor(transform(uint8_to_image(stored[i])), "input_transform"))
        return torch.stack(out).to(self.device)

    def _resize(self, images: torch.Tensor) -> torch.Tensor:
        size = self.input_size
        if size is None or tuple(images.shape[-2:]) == size:
            return images
        return F.interpolate(images, size=size, mode="bilinear", align_corners=False)

    def raw_images(self) -> torch.Tensor:
        """The stored uint8 images without padding (for analysis tools and tests)."""
        if self.augmentation == PAD_CROP_FLIP:
            return self.images[:, :, PAD:-PAD, PAD:-PAD]
        return self.images
