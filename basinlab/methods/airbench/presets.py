"""airbench94 as a preset: `basinlab train --preset airbench94` trains airbench's network with its optimiser,
data, label smoothing, lookahead and whitening-bias schedule through basinlab's loop (docs/methods/airbench.md)."""
from __future__ import annotations

PRESETS = {
    "airbench94": {
        "model": "airbench94", "dataset": "cifar10", "epochs": 10, "label_smoothing": 0.2, "lookahead_every": 5,
        "whiten_bias_epochs": 3,
        "_about": "airbench94: whitened 64-256-256 convnet, batch 1024, Nesterov 0.85, label smoothing 0.2, "
                  "alternating flip, lookahead, TTA; 10 epochs (airbench: 9.9)",
    },
}
