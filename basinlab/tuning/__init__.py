"""Hyper-parameter tuning: autoHyper's knowledge-gain search and the LR range test.

- :func:`autohyper_search`: autoHyper's initial-lr search (grid refinement on the response Z);
- :func:`autohyper_search_lr_wd`: its joint (lr, weight decay) trust-region form;
- :func:`response_Z`: a trial's response from its per-epoch zero-knowledge-gain fractions
  (:func:`basinlab.metrics.lowrank.knowledge_gain_zero_fraction`);
- :func:`lr_range_test` / :func:`plot_lr_range`: Smith's LR range test with the steepest, valley
  and min/10 suggestions; model, optimizer and RNG states are restored afterwards.

The programs that run trainings for them are basinlab.workflows: ``run_autohyper`` (``basinlab autohyper
train``, with the seed's YAML read by :mod:`basinlab.tuning.seed_config`) and ``run_lr_range`` (``basinlab
lr-range``). ``--log-lowrank`` and AdaS's per-epoch update are the method basinlab.methods.lowrank; the
``cosine_restarts`` and ``one_cycle`` regime schedules the seed names live in :mod:`basinlab.optim.schedules`.
"""

from basinlab.tuning.lr_range import (
    SUGGESTION_NAMES,
    LRRangeResult,
    lr_range_test,
    plot_lr_range,
    smooth_losses,
    suggest_lrs,
    suggest_min_div_10,
    suggest_steepest,
    suggest_valley,
)
from basinlab.tuning.search import (
    SearchBudgetExceeded,
    SearchStep,
    autohyper_search,
    autohyper_search_lr_wd,
    response_Z,
    shrink_scale,
)

__all__ = [
    "SearchStep",
    "SearchBudgetExceeded",
    "autohyper_search",
    "autohyper_search_lr_wd",
    "response_Z",
    "shrink_scale",
    "LRRangeResult",
    "lr_range_test",
    "plot_lr_range",
    "smooth_losses",
    "suggest_lrs",
    "suggest_steepest",
    "suggest_valley",
    "suggest_min_div_10",
    "SUGGESTION_NAMES",
]
