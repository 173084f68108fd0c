"""`configure(cfg, world_size, workflow)` for airbench's tricks: --lookahead-every K (lookahead.py) and
--whiten-bias-epochs E (whitening.py), both callbacks; the step is whatever the run's step strategy is."""
from __future__ import annotations

from basinlab.methods.airbench.lookahead import Lookahead, LookaheadNotInRangeTest
from basinlab.methods.airbench.whitening import WhitenBiasEpochs

METHOD_NAME = "--lookahead-every, --whiten-bias-epochs (airbench)"


def configure(cfg, world_size: int = 1, workflow: str = "train"):
    callbacks = []
    if cfg.lookahead_every is not None:
        # (--server is refused with it by the option statement: the server's snapshots would undo its pulls)
        # the LR range test's steps sweep the lr, not a run: its average would span nothing (said in the log)
        callbacks.append(LookaheadNotInRangeTest() if workflow == "lr-range" else Lookahead(cfg.lookahead_every))
    if cfg.whiten_bias_epochs is not None:
        callbacks.append(WhitenBiasEpochs(cfg.whiten_bias_epochs))
    return None, callbacks
