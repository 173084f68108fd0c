"""The loader interface shared by in-memory and streamed loaders: batch plan, sharding, seeding.

Randomness is a pure function of (seed, epoch, batch) or (seed, epoch, example): every epoch and
every batch can be regenerated from scratch, so resuming mid-epoch needs no saved RNG state and
results do not depend on the number of data workers.
"""
from __future__ import annotations

import abc
import hashlib
import math
import operator
from collections.abc import Iterator

import torch

from basinlab.data.transforms import Cutout, InputTransform, as_height_width, seeded_rngs
from basinlab.errors import ConfigError


def derive_seed(*parts) -> int:
    """A stable 63-bit seed from a tuple of ints/strings (Python's hash() is salted per process)."""
    # operator.index makes numpy integers hash like Python ints (their repr differs).
    parts = tuple(p if isinstance(p, str) else operator.index(p) for p in parts)
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2**63 - 1)


def make_generator(*parts) -> torch.Generator:
    """A CPU generator (portable across devices) seeded from `parts`."""
    return torch.Generator().manual_seed(derive_seed(*parts))


def normalise(images: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """uint8 -> float32 (x / 255 - mean) / std, with scale = 1/(255 std) and shift = -mean/std."""
    return torch.addcmul(shift, images.float(), scale)


def normalise_constants(mean, std, device) -> tuple[torch.Tensor, torch.Tensor]:
    mean = torch.tensor(mean, dtype=torch.float64).view(1, -1, 1, 1)
    std = torch.tensor(std, dtype=torch.float64).view(1, -1, 1, 1)
    return ((1 / (255 * std)).float().to(device), (-mean / std).float().to(device))


class Loader(abc.ABC):
    """Yields (float32 images, int64 labels) on the device, one epoch at a time.

    Training loaders shuffle and drop the last short batch; `batch_size` is the global batch and
    rank r of W yields rows [r*b/W, (r+1)*b/W) of every global batch. Eval loaders keep order and
    give rank r the examples i with i % W == r, in batches of ceil(b/W), so ranks may see one batch
    more or fewer than each other: reduce sums once after the loop, not per batch.
    """

    subset_notes: list[str] = []  # log lines on the examples kept: links not followed, a --train-limit subset
    source: str = ""              # where the files were found and in which layout (data/locate.py)

    def __init__(self, dataset_name: str, *, num_classes: int, num_examples: int,
                 native_shape: tuple[int, int, int], batch_size: int, train: bool, device,
                 seed: int = 0, rank: int = 0, world_size: int = 1):
        if not 0 <= rank < world_size:
            raise ConfigError(f"rank {rank} is outside world size {world_size}")
        self.dataset_name = dataset_name
        self.num_classes = num_classes
        self.num_examples = num_examples
        self.native_shape = tuple(native_shape)
        self.train = train
        self.device = torch.device(device)
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.input_size: tuple[int, int] | None = None
        self.batch_size = batch_size
        # Set by a model's data regime and input_transform (data/transforms.py); training loaders only
        # use cutout and duplicates.
        self.cutout: Cutout | None = None
        self.duplicates = 1
        self.input_transform: InputTransform | None = None
        self._order: tuple[tuple, torch.Tensor] | None = None  # (seed, epoch, examples), the order permutation() drew

    # ------------------------------------------------------------------------- settings
    @property
    def batch_size(self) -> int:
        return self._batch_size

    @batch_size.setter
    def batch_size(self, value: int) -> None:
        """Settable between epochs (data regimes); validated so a bad regime fails loudly."""
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise ConfigError(f"batch size must be a positive integer, got {value!r}")
        if self.train and value % self.world_size:
            raise ConfigError(f"batch size {value} is not divisible by the world size {self.world_size}")
        if self.train and value > self.num_examples:
            raise ConfigError(f"batch size {value} exceeds the {self.num_examples} training examples of "
                              f"'{self.dataset_name}' (the last short batch is dropped, so no batch would remain)")
        self._batch_size = value

    def set_input_size(self, size) -> None:
        """Input size of the images produced: N (square) or (height, width); None restores the default."""
        self.input_size = as_height_width(size)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        channels = self.native_shape[0]
        if self.input_size is None:
            return self.native_shape
        return (channels, *self.input_size)

    @property
    def images_per_batch(self) -> int:
        """Images in one global training batch: the batch size times the data regime's duplicates."""
        return self.batch_size * (self.duplicates if self.train else 1)

    def sample_transform(self):
        """The model's per-sample input_transform for this loader's split, if any."""
        t = self.input_transform
        return None if t is None or t.on_batch else t.for_split(self.train)

    def copy_rows(self) -> torch.Tensor | slice:
        """This rank's positions in a global training batch laid out copy by copy (duplicates):
        random draws are made for the whole global batch and sliced, so ranks match one process."""
        lo, hi = self.shard_bounds()
        if self.duplicates == 1:
            return slice(lo, hi)
        return torch.cat([torch.arange(c * self.batch_size + lo, c * self.batch_size + hi)
                          for c in range(self.duplicates)])

    def finish_batch(self, images: torch.Tensor, epoch: int, batch: int) -> torch.Tensor:
        """Cutout (training) and the model's batch transform, on the normalised batch."""
        if self.train and self.cutout is not None:
            height, width = images.shape[-2:]
            masks = self.cutout.masks(make_generator("cutout", self.seed, epoch, batch), self.images_per_batch,
                                      height, width)[self.copy_rows()]
            images = images * masks.to(images.device)
        transform = self.input_transform
        if transform is not None and transform.on_batch and transform.for_split(self.train) is not None:
            with seeded_rngs(derive_seed("batch-transform", self.seed, epoch, batch, self.rank), images.device):
                images = transform.for_split(self.train)(images)
        return images

    def examples(self, count: int) -> torch.Tensor:
        """The first `count` examples, normalised and not augmented, for a model's init_from_data."""
        raise ConfigError(f"this model initialises layers from the training images, which needs a dataset held in "
                          f"memory (CIFAR, MNIST and the like); '{self.dataset_name}' is read from image files")

    # ------------------------------------------------------------------------- batch plan
    def use_evaluation_plan(self, batch_size: int | None = None) -> Loader:
        """Yield every example once, in stored order, without dropping a short last batch.

        For measuring on training data (evaluate --split train, sharpness): the augmentation chosen at
        construction is kept, so build the loader with augment=False for clean measurements.
        """
        self.train = False
        if batch_size is not None:
            self.batch_size = batch_size
        return self

    def _local_eval_count(self) -> int:
        return len(range(self.rank, self.num_examples, self.world_size))

    def _local_eval_batch(self) -> int:
        return math.ceil(self.batch_size / self.world_size)

    def __len__(self) -> int:
        """Batches per epoch on this rank."""
        if self.train:
            return self.num_examples // self.batch_size
        return math.ceil(self._local_eval_count() / self._local_eval_batch())

    def shard_bounds(self) -> tuple[int, int]:
        """This rank's rows of a global training batch."""
        b, w = self.batch_size, self.world_size
        return self.rank * b // w, (self.rank + 1) * b // w

    def permutation(self, epoch: int) -> torch.Tensor:
        """The example order of a training epoch (identical on every rank). The last one drawn is kept: a method
        keyed on examples (RunInfo.batch_examples, SAF's store) asks for its batch's indices at every step."""
        key = (self.seed, epoch, self.num_examples)
        if self._order is None or self._order[0] != key:
            self._order = (key, torch.randperm(self.num_examples, generator=make_generator("order", self.seed, epoch)))
        return self._order[1]

    def index_batches(self, epoch: int, start_batch: int = 0, stride: int = 1) -> Iterator[tuple[int, torch.Tensor]]:
        """(batch number, CPU int64 example indices of this rank) for batches start_batch, start_batch + stride, ..
        of an epoch (a stride > 1: one worker's share of the epoch's batch plan, as a real parameter server's
        worker takes it)."""
        if self.train:
            order = self.permutation(epoch)
            lo, hi = self.shard_bounds()
            for j in range(start_batch, len(self), stride):
                yield j, order[j * self.batch_size + lo: j * self.batch_size + hi]
        else:
            mine = torch.arange(self.rank, self.num_examples, self.world_size)
            size = self._local_eval_batch()
            for j in range(start_batch, len(self), stride):
                yield j, mine[j * size:(j + 1) * size]

    @abc.abstractmethod
    def epoch(self, epoch: int, start_batch: int = 0, stride: int = 1) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(float32 images, int64 labels) on the device for batches start_batch, start_batch + stride, .. of
        `epoch`."""

    def __repr__(self) -> str:
        kind = "train" if self.train else "eval"
        return (f"{type(self).__name__}({self.dataset_name!r}, {kind}, {self.num_examples} examples, "
                f"batch {self.batch_size}, shape {self.input_shape}, rank {self.rank}/{self.world_size})")
