"""A small, fast convnet for 28x28 digits: the default model of ``basinlab train`` (mnist5k).

conv5x5-16 - norm - ReLU - maxpool2, conv5x5-32 - norm - ReLU - maxpool2 (28 -> 14 -> 7),
FC 1568 -> 128 - norm - ReLU - dropout 0.25, FC 128 -> classes (0.22M parameters).

Its regime (Adam lr 2e-3, /10 at epoch 4; ``default_epochs`` 5) takes the 4,000 mnist5k training
digits to 96-98% validation accuracy (1,000 held-out digits) in about 10 s of one CPU core at
batch 128 (also >= 96% at batch 64 and 256, and with norm 'none' or 'group'). Twice the width
costs 2-3x the time for no measurable gain at this data size.
"""

from __future__ import annotations

from torch import nn

from basinlab.models.common import check_fraction, finish_model, init_weights_, input_spec, resolve_norm
from basinlab.models.registry import register_model
from basinlab.nn.norms import NormSpec
from basinlab.utils.checks import check_int

__all__ = ["MnistNet", "MNIST_REGIME"]

# Adam reaches a good minimum in a few epochs without tuning; the drop at epoch 4 settles it.
MNIST_REGIME = [{"epoch": 0, "optimizer": "Adam", "lr": 2e-3, "weight_decay": 0.0},
                {"epoch": 4, "lr": 2e-4}]
MNIST_EPOCHS = 5


class MnistNet(nn.Module):
    def __init__(self, num_classes: int, in_channels: int = 1, norm: NormSpec = NormSpec(),
                 width: int = 16, hidden: int = 128, dropout: float = 0.25, size: int = 28):
        super().__init__()
        self.features = nn.Sequential(
            norm.conv(in_channels, width, 5, padding=2, bias=False), *norm.norm_act(width),
            nn.MaxPool2d(2),
            norm.conv(width, 2 * width, 5, padding=2, bias=False), *norm.norm_act(2 * width),
            nn.MaxPool2d(2))
        side = size // 4
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(2 * width * side * side, hidden, bias=norm.mode == "none"),
            *norm.norm_act(hidden, dim=1), nn.Dropout(dropout),
            nn.Linear(hidden, num_classes))
        init_weights_(self)

    def forward(self, x):
        return self.classifier(self.features(x))


@register_model("mnist")
def mnist(num_classes, dataset, norm="batch", width=16, hidden=128, dropout=0.25, in_channels=None):
    """Small MNIST convnet; ``width`` channels in the first conv (twice that in the second)."""
    spec, norm = input_spec(dataset, in_channels), resolve_norm(norm, dataset)
    width = check_int(width, "mnist width", maximum=4096)
    hidden = check_int(hidden, "mnist hidden", maximum=65_536)
    dropout = check_fraction("mnist dropout", dropout)
    model = MnistNet(num_classes, spec.channels, norm, width, hidden, dropout, spec.size)
    text = f"MNIST convnet (2x conv5x5 {width}/{2 * width}, FC {hidden})"
    return finish_model(model, description=text, norm=norm, regime=MNIST_REGIME, default_epochs=MNIST_EPOCHS)
