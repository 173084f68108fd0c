"""`configure(cfg, world_size, workflow)` for airbench's tricks: --lookahead-every K (lookahead.py) and
--whiten-bias-epochs E (whitening.py), both callbacks; the step is whatever the run's step strategy is."""
from __future__ import annotations

from basinlab.errors import ConfigError
from basinlab.methods.airbench.lookahead import Lookahead
from basinlab.methods.airbench.whitening import WhitenBiasEpochs

METHOD_NAME = "--lookahead-every, --whiten-bias-epochs (airbench)"


def configure(cfg, world_size: int = 1, workflow: str = "train"):
    callbacks = []
    if cfg.lookahead_every is not None:
        if workflow != "train":
            raise ConfigError(f"--lookahead-every pulls the weights towards an average over the whole run's steps; "
                              f"the {workflow} workflow's trainings have no such run: drop it")
        callbacks.append(Lookahead(cfg.lookahead_every))
    if cfg.whiten_bias_epochs is not None:
        callbacks.append(WhitenBiasEpochs(cfg.whiten_bias_epochs))
    return None, callbacks
