"""Model zoo and registry: ``create_model(name, num_classes, dataset, **config)``.

Families live in their own modules and register themselves on import:
resnet (CIFAR 6n+2 and ImageNet v1.5), wide_resnet, vgg, alexnet, mnist, keskar (F1, C1, C3), mlp (fc:
Cohen et al.'s fully-connected networks), airbench (airbench94).

Every model carries ``description`` (one line), ``regime`` (default optimisation schedule, list
format), ``default_epochs`` (the length that regime was designed for) and takes a ``norm``
config key (see basinlab.nn.norms.NormSpec).
"""

# Imported for their registrations.
from basinlab.models import airbench, alexnet, keskar, mlp, mnist, resnet, vgg, wide_resnet  # noqa: E402,F401
from basinlab.models.registry import (
    absolute_model_spec,
    check_config_keys,
    create_model,
    get_model_factory,
    is_model_name,
    is_user_model,
    list_models,
    register_model,
    trust_model_code,
    trusting_model_code,
    trusts_all_model_code,
)

__all__ = ["create_model", "get_model_factory", "is_model_name", "is_user_model", "list_models", "register_model",
           "absolute_model_spec", "trust_model_code", "trusting_model_code", "trusts_all_model_code",
           "check_config_keys"]
