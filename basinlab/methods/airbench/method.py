"""`configure(cfg, world_size, workflow)` for airbench's tricks: --lookahead-every K (lookahead.py) and
--whiten-bias-epochs E (whitening.py), both callbacks; the step is whatever the run's step strategy is."""
from __future__ import annotations

from basinlab.errors import ConfigError
from basinlab.methods.airbench.lookahead import Lookahead, LookaheadNotInRangeTest
from basinlab.methods.airbench.whitening import WhitenBiasEpochs

METHOD_NAME = "--lookahead-every, --whiten-bias-epochs (airbench)"


def configure(cfg, world_size: int = 1, workflow: str = "train"):
    callbacks = []
    if cfg.lookahead_every is not None:
        if cfg.server is not None:
            raise ConfigError("--lookahead-every moves the weights between updates, which a parameter server's "
                              "snapshots (--server) would undo or count differently; drop one of them")
        # the LR range test's steps sweep the lr, not a run: its average would span nothing (said in the log)
        callbacks.append(LookaheadNotInRangeTest() if workflow == "lr-range" else Lookahead(cfg.lookahead_every))
    if cfg.whiten_bias_epochs is not None:
        callbacks.append(WhitenBiasEpochs(cfg.whiten_bias_epochs))
    return None, callbacks
