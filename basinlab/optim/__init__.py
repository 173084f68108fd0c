"""Optimizers by name, optimisation regimes (settings by training position) and lr schedules."""

from basinlab.optim.data_regime import DATA_REGIME_KEYS, DataRegime
from basinlab.optim.factory import (
    OptimizerSpec,
    all_param_group_keys,
    create_optimizer,
    optimizer_class,
    optimizer_name_of,
    optimizer_names,
    optimizer_spec,
    register_optimizer,
)
from basinlab.optim.regime import Regime
from basinlab.optim.regime_config import (
    REGIME_CONFIG_KEYS,
    batch_size_rule,
    fixed_regime,
    one_phase_regime,
    pop_regime_config,
    regime_from_model_config,
)
from basinlab.optim.schedules import Schedule, make_schedule, register_schedule, schedule_names
from basinlab.optim.weight_decay import WD_FILTERS, weight_decay_config

__all__ = [
    "WD_FILTERS",
    "weight_decay_config",
    "OptimizerSpec",
    "all_param_group_keys",
    "create_optimizer",
    "optimizer_class",
    "optimizer_name_of",
    "optimizer_names",
    "optimizer_spec",
    "register_optimizer",
    "DATA_REGIME_KEYS",
    "REGIME_CONFIG_KEYS",
    "DataRegime",
    "Regime",
    "batch_size_rule",
    "fixed_regime",
    "one_phase_regime",
    "pop_regime_config",
    "regime_from_model_config",
    "Schedule",
    "make_schedule",
    "register_schedule",
    "schedule_names",
]
