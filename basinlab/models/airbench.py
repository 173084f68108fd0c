"""airbench94 (Jordan 2024, "94% on CIFAR-10 in 3.29 seconds on a single GPU"): the network, its whitening
initialisation, test-time augmentation and optimiser, trained by basinlab's engine.

The network, as airbench94 documents it: a 2x2 conv with 24 filters initialised to whiten 2x2 patches of the
training images (weights frozen; its bias trains for the first 3 epochs, `--whiten-bias-epochs`), GELU, three
conv groups [conv3x3 - max-pool 2 - BatchNorm - GELU - conv3x3 - BatchNorm - GELU] of widths 64, 256, 256,
max-pool 3, a linear layer without bias and logits scaled by 1/9. Convs start as identity on their first
in_channels filters (Dirac); BatchNorm has no scale (weight frozen at 1), eps 1e-12 and running statistics
that keep 0.6 of their value per batch (torch momentum 0.4).

What the engine reads from this model:
- `regime`: Nesterov SGD, momentum 0.85. airbench sums the loss over a batch of 1024 and uses lr 11.5 / 1024 /
  (1 + 1/(1 - 0.85)) and weight decay 0.0153 * 1024 / 11.5; with basinlab's mean loss the same update is lr 1.5
  and weight decay 0.0153 / 11.5 (both scaled by the batch). The lr rises linearly from 0.2x to 1x over the
  first 23% of the run, then falls linearly to 0.07x: in epochs of a 10-epoch run (airbench runs 9.9 epochs).
- `parameter_groups()`: BatchNorm biases get 64x the lr and 1/64 of the weight decay (the same decay per step).
- `data_regime`: batch 1024, translation by up to 2 pixels (reflect padding) and alternating flip.
- `init_from_data(images)`: the whitening layer from the first `data_init_examples` training images.
- `evaluation_forward(x)`: with `tta` 2 (the default) the mean logits of 6 views (mirror, and a one-pixel shift
  up-left and down-right, weighted as airbench's `infer_mirror_translate`); 1 mirror only; 0 none. The engine's
  validation and `basinlab evaluate` use it; `forward` is always the plain network, so the Hessian, sharpness,
  landscape and noise tools measure the function training differentiates.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from basinlab.errors import ConfigError
from basinlab.models.common import check_choice, check_widths, finish_model, input_spec, resolve_norm
from basinlab.models.registry import register_model

__all__ = ["Airbench94", "whitening_weights", "AIRBENCH94_REGIME", "AIRBENCH94_DATA_REGIME"]

MOMENTUM = 0.85
LR = 11.5 / (1 + 1 / (1 - MOMENTUM))   # 1.5: airbench's lr per 1024 examples, for a mean loss over 1024
WEIGHT_DECAY = 0.0153 / 11.5           # airbench's decoupled decay, as torch's coupled weight_decay of a mean loss
EPOCHS, WARMUP = 10, 0.23
AIRBENCH94_REGIME = [
    {"epoch": 0, "optimizer": "NAG", "lr": LR, "momentum": MOMENTUM, "weight_decay": WEIGHT_DECAY,
     "schedule": {"name": "linear_warmup", "epochs": WARMUP * EPOCHS, "from_lr": 0.2 * LR}},
    {"epoch": WARMUP * EPOCHS, "schedule": {"name": "linear", "epochs": (1 - WARMUP) * EPOCHS, "end_lr": 0.07 * LR}},
]
AIRBENCH94_DATA_REGIME = [{"epoch": 0, "batch_size": 1024, "translate": 2, "flip": "alternating"}]
BIAS_SCALER = 64.0
WHITEN_EPS = 5e-4


class DiracConv(nn.Conv2d):
    """A conv whose first in_channels filters start as the identity (the rest keep torch's init); no bias."""

    def reset_parameters(self) -> None:
        super().reset_parameters()   # draws as nn.Conv2d does, so a seed gives airbench's weights
        if self.bias is not None:
            self.bias.data.zero_()
        nn.init.dirac_(self.weight.data[:self.in_channels])


def frozen_scale_batch_norm(channels: int, keep: float) -> nn.BatchNorm2d:
    norm = nn.BatchNorm2d(channels, eps=1e-12, momentum=1 - keep)
    norm.weight.requires_grad_(False)  # no learned scale: the next conv can scale
    return norm


class ConvGroup(nn.Module):
    def __init__(self, channels_in: int, channels_out: int, keep: float):
        super().__init__()
        self.conv1 = DiracConv(channels_in, channels_out, 3, padding="same", bias=False)
        self.pool = nn.MaxPool2d(2)
        self.norm1 = frozen_scale_batch_norm(channels_out, keep)
        self.conv2 = DiracConv(channels_out, channels_out, 3, padding="same", bias=False)
        self.norm2 = frozen_scale_batch_norm(channels_out, keep)
        self.activ = nn.GELU()

    def forward(self, x):
        x = self.activ(self.norm1(self.pool(self.conv1(x))))
        return self.activ(self.norm2(self.conv2(x)))


def whitening_weights(images: torch.Tensor, kernel: int, eps: float = WHITEN_EPS, chunk: int = 500) -> torch.Tensor:
    """Filters [2*C*k*k, C, k, k] that whiten the k x k patches of `images` [N, C, H, W]: the eigenvectors of the
    patches' second-moment matrix scaled by 1/sqrt(eigenvalue + eps), largest eigenvalue first, then the same
    filters negated. The matrix is summed in float64 and decomposed in float32 from its upper triangle, as airbench
    decomposes it, so each eigenvector's sign, and with it the order of the filters (which the next conv's identity
    initialisation pairs with its inputs), is airbench's."""
    channels = images.shape[1]
    dims = channels * kernel * kernel
    second_moment = torch.zeros(dims, dims, dtype=torch.float64, device=images.device)
    count = 0
    for part in images.split(chunk):
        patches = F.unfold(part.double(), kernel)                 # [n, C*k*k, L], channel-major like a conv weight
        flat = patches.transpose(1, 2).reshape(-1, dims)
        second_moment += flat.T @ flat
        count += len(flat)
    eigenvalues, eigenvectors = torch.linalg.eigh((second_moment / count).float(), UPLO="U")  # ascending
    filters = (eigenvectors / torch.sqrt(eigenvalues + eps)).T.flip(0)
    filters = filters.reshape(dims, channels, kernel, kernel)
    return torch.cat([filters, -filters])


class Airbench94(nn.Module):
    data_init_examples = 5000  # airbench whitens with the first 5,000 training images

    def __init__(self, num_classes: int, in_channels: int = 3, widths=(64, 256, 256), keep: float = 0.6,
                 scale: float = 1 / 9, tta: int = 2, whiten_kernel: int = 2):
        super().__init__()
        width = 2 * in_channels * whiten_kernel ** 2
        self.whiten = DiracConv(in_channels, width, whiten_kernel, padding=0, bias=True)
        self.whiten.weight.requires_grad_(False)
        self.activ = nn.GELU()
        groups, channels = [], width
        for out in widths:
            groups.append(ConvGroup(channels, out, keep))
            channels = out
        self.groups = nn.Sequential(*groups)
        self.pool = nn.MaxPool2d(3)
        self.head = nn.Linear(channels, num_classes, bias=False)
        self.scale, self.tta = scale, tta

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.groups(self.activ(self.whiten(x))))
        return self.head(x.flatten(1)) * self.scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits(x)

    def evaluation_forward(self, x: torch.Tensor) -> torch.Tensor:
        """The logits validation reports: test-time augmented at level `tta`."""
        return self.logits(x) if self.tta == 0 else self._test_time_augmented(x)

    def _mirrored(self, x: torch.Tensor) -> torch.Tensor:
        return 0.5 * self.logits(x) + 0.5 * self.logits(x.flip(-1))

    def _test_time_augmented(self, x: torch.Tensor) -> torch.Tensor:
        plain = self._mirrored(x)
        if self.tta == 1:
            return plain
        height, width = x.shape[-2:]
        padded = F.pad(x, (1, 1, 1, 1), mode="reflect")
        up_left = self._mirrored(padded[..., :height, :width])
        down_right = self._mirrored(padded[..., 2:height + 2, 2:width + 2])
        return 0.5 * plain + 0.25 * (up_left + down_right)

    def parameter_groups(self) -> list[dict]:
        """The optimizer's groups: BatchNorm biases at 64x the lr and 1/64 of the weight decay (airbench's
        bias_scaler), the other trainable parameters as the regime says; frozen parameters are left out."""
        # _BatchNorm, not BatchNorm2d: --sync-bn turns the layers into SyncBatchNorm
        norm_biases = [m.bias for m in self.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        chosen = {id(p) for p in norm_biases}
        others = [p for p in self.parameters() if p.requires_grad and id(p) not in chosen]
        return [{"params": others},
                {"params": norm_biases, "lr_scale": BIAS_SCALER, "weight_decay_scale": 1 / BIAS_SCALER}]

    @torch.no_grad()
    def init_from_data(self, images: torch.Tensor) -> str:
        """Set the whitening filters from normalised training images [N, C, H, W]; returns a log line. Computed on
        the CPU (float64 sums; MPS has no float64) and copied to the layer's device."""
        self.whiten.weight.copy_(whitening_weights(images.cpu(), self.whiten.kernel_size[0]))
        return f"airbench94: whitening layer set from the 2x2 patches of the first {len(images)} training images"


@register_model("airbench94")
def airbench94(num_classes, dataset, norm="batch", tta=2, widths=(64, 256, 256), in_channels=None):
    """airbench94's network (its own BatchNorm; other norm modes are not offered); `widths` of its conv groups."""
    spec = input_spec(dataset, in_channels)
    widths = check_widths(widths, "airbench94 widths", "the conv groups' widths", "[64, 256, 256]")
    spec_norm = resolve_norm(norm, dataset)
    mode = spec_norm.mode
    if mode != "batch":
        raise ConfigError(f"model airbench94 has airbench's own BatchNorm (no scale, eps 1e-12, momentum 0.4); "
                          f"--norm-mode {mode} is not offered for it: compare norms with resnet20")
    check_choice("airbench94 tta", tta, (0, 1, 2))
    model = Airbench94(num_classes, spec.channels, widths=tuple(widths), tta=tta)
    text = f"airbench94 (whitening 2x2 + conv groups {'-'.join(map(str, widths))}, GELU, tta {tta})"
    return finish_model(model, description=text, norm=spec_norm, regime=AIRBENCH94_REGIME, default_epochs=EPOCHS,
                        data_regime=AIRBENCH94_DATA_REGIME)
