"""Training losses beside PyTorch's cross-entropy (`--loss`)."""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from basinlab.choices import LOSSES


class HalfSquaredError(nn.Module):
    """Half the squared distance from the logits to the one-hot labels, summed over classes and averaged over
    examples: 0.5 ||f(x) - e_y||^2 (Cohen et al. 2021's square loss, their SquaredLoss over the dataset size).
    Computed in float32 whatever autocast gives the logits."""

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        one_hot = F.one_hot(target, logits.shape[1]).to(torch.float32)
        return 0.5 * (logits.float() - one_hot).pow(2).sum(dim=1).mean()


def loss_module(loss: str, label_smoothing: float = 0.0) -> nn.Module:
    """The criterion `--loss` names (label smoothing is cross-entropy's)."""
    if loss == "mse":
        return HalfSquaredError()
    if loss != "cross-entropy":
        raise ValueError(f"loss must be one of {', '.join(LOSSES)}, got {loss!r}")
    return nn.CrossEntropyLoss(label_smoothing=label_smoothing)
