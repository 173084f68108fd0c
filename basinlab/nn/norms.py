"""Normalisation layers chosen by name: the norm modes of the Online Normalization paper.

Every conv model takes a ``norm`` setting (a mode name, a dict, or a :class:`NormSpec`) and
builds each of its normalisation layers with ``spec.make(channels)``, so one option swaps the
normaliser of a whole network:

=========  ===============================================================================
batch      BatchNorm2d / BatchNorm1d (eps 1e-5, momentum 0.1)
group      GroupNorm(g, C), g = the largest divisor of C not above ``gn_groups``
layer      per-sample statistics over (C, H, W), per-channel affine: GroupNorm(1, C);
           on 1-D features LayerNorm(C)
instance   InstanceNorm2d(affine, no running stats): per-sample statistics in eval too;
           undefined on 1-D features (one element per channel)
online     basinlab.nn.online_norm.OnlineNorm2d / OnlineNorm1d (afwd, abkw, ecm)
none       nn.Identity (convs have no bias, so only the FC layers keep one)
frn        FilterResponseNorm with its TLU (learned eps), basinlab.nn.batch_free
evonorm_s0 EvoNormS0 (groups as group norm's), basinlab.nn.batch_free
evonorm_b0 EvoNormB0 (batch variance, running variance), basinlab.nn.batch_free
gn_ws      GroupNorm as ``group``, and every conv built by ``spec.conv`` weight-standardised (StdConv2d)
batchrenorm BatchRenorm with the paper's r_max / d_max warm-up, basinlab.nn.batch_renorm
=========  ===============================================================================

FRN and EvoNorm bring their own activation: ``norm_act`` gives the layer with it and no ReLU; ``make`` gives the
layer without it (a norm before a residual sum). docs/methods/norms.md states the formulas and defaults.
"""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass

import torch
from torch import nn

from basinlab.choices import ECM_MODES, NORM_MODES
from basinlab.errors import ConfigError

# The reference command lines spell some fields differently; accept their spelling too.
_KEY_ALIASES = {"norm_mode": "mode", "norm": "mode", "gn_num_groups": "gn_groups",
                "alpha_fwd": "afwd", "alpha_bkw": "abkw"}

# Per-dataset defaults of the Online Normalization reference (its cifar10/cifar100/imagenet
# mains): decays matched to the batch size 128 / 256 and 8 or 32 groups for GroupNorm.
_DATASET_DEFAULTS = {
    "cifar10": {"afwd": 1023 / 1024, "abkw": 127 / 128, "gn_groups": 8},
    "cifar100": {"afwd": 511 / 512, "abkw": 15 / 16, "gn_groups": 8},
    "imagenet": {"afwd": 0.999, "abkw": 0.99, "gn_groups": 32},
}


# Modes whose layer applies its own activation (FRN+TLU, EvoNorm): models put no ReLU after them.
NORMS_WITH_ACTIVATION: frozenset[str] = frozenset({"frn", "evonorm_s0", "evonorm_b0"})
# Modes whose training forward uses batch statistics, so one value per channel cannot be normalised.
BATCH_DEPENDENT_MODES: frozenset[str] = frozenset({"batch", "evonorm_b0", "batchrenorm"})
# The modes that train at batch size 1, in NORM_MODES order (named by the batch-1 refusal).
BATCH_ONE_MODES: tuple[str, ...] = tuple(m for m in NORM_MODES if m not in BATCH_DEPENDENT_MODES)
# Modes whose convs are weight-standardised.
WEIGHT_STANDARDISED_MODES: frozenset[str] = frozenset({"gn_ws"})
# eps of each mode where none is given: 1e-5 (torch's) unless the mode's source uses another.
_DEFAULT_EPS = 1e-5
_MODE_EPS = {"frn": 1e-6, "evonorm_b0": 1e-3}


@dataclass(frozen=True)
class NormSpec:
    """Which normaliser to build and its settings; immutable and validated on creation."""

    mode: str = "batch"          # one of NORM_MODES
    afwd: float = 0.999          # online: forward (statistics) decay
    abkw: float = 0.99           # online: backward (control process) decay
    ecm: str = "ls"              # online: error compensation ls|ac|none
    gn_groups: int = 8           # group, gn_ws, evonorm_s0: number of groups (capped to a divisor of C)
    eps: float | None = None     # None: the mode's default (1e-5; frn 1e-6 fixed part; evonorm_b0 1e-3)

    def __post_init__(self):
        if self.mode not in NORM_MODES:
            raise ConfigError(f"unknown norm mode {self.mode!r}; allowed: {', '.join(NORM_MODES)}")
        if self.ecm not in ECM_MODES:
            raise ConfigError(f"unknown norm ecm {self.ecm!r}; allowed: {', '.join(ECM_MODES)}")
        for key in ("afwd", "abkw"):
            value = getattr(self, key)
            if not isinstance(value, (int, float)) or not 0.0 < value < 1.0:
                raise ConfigError(f"norm {key} must be a number in (0, 1), got {value!r}")
        if isinstance(self.gn_groups, bool) or not isinstance(self.gn_groups, int) or self.gn_groups < 1:
            raise ConfigError(f"norm gn_groups must be an integer >= 1, got {self.gn_groups!r}")
        if self.eps is not None and (not isinstance(self.eps, (int, float)) or not self.eps > 0):
            raise ConfigError(f"norm eps must be a positive number, got {self.eps!r}")

    @classmethod
    def defaults_for(cls, dataset: str | None) -> dict:
        """Field defaults the reference used for ``dataset`` (ImageNet-like when unknown)."""
        key = (dataset or "").lower().replace("-", "").replace("_", "")
        if key.startswith("cifar100"):
            return dict(_DATASET_DEFAULTS["cifar100"])
        if key.startswith(("cifar", "mnist", "fashionmnist", "svhn")):
            return dict(_DATASET_DEFAULTS["cifar10"])
        if dataset is None:
            return {}
        return dict(_DATASET_DEFAULTS["imagenet"])

    @classmethod
    def parse(cls, value: str | dict | NormSpec | None, dataset: str | None = None) -> NormSpec:
        """Build a spec from a mode name, a dict of fields, a spec, or None (the default).

        Fields the user does not give take the reference's defaults for ``dataset`` when one is
        given (e.g. online decays 1023/1024 and 127/128 on CIFAR-10), else the class defaults.
        """
        if isinstance(value, NormSpec):
            return value
        fields = cls.defaults_for(dataset)
        if value is None:
            return cls(**fields)
        if isinstance(value, str):
            return cls(**fields, mode=value.strip().lower())
        if isinstance(value, dict):
            fields.update(_normalise_keys(value))
            if isinstance(fields.get("mode"), str):
                fields["mode"] = fields["mode"].strip().lower()
            return cls(**fields)
        raise ConfigError(f"norm must be a mode name, a dict or a NormSpec, got {type(value).__name__}; "
                          f"modes: {', '.join(NORM_MODES)}")

    @property
    def layer_eps(self) -> float:
        """The eps the layers get: the one given, else the mode's default."""
        return self.eps if self.eps is not None else _MODE_EPS.get(self.mode, _DEFAULT_EPS)

    def make(self, num_features: int, dim: int = 2) -> nn.Module:
        """A fresh normalisation layer for ``num_features`` channels, without an activation of its own (a norm
        that brings one, FRN or EvoNorm, is built without it: a model puts this layer where no activation
        follows, e.g. before a residual sum).

        dim=2: after a conv, input (N, C, H, W); dim=1: after a linear layer, input (N, C).
        """
        return self._build(num_features, dim, with_activation=False)

    def _build(self, num_features: int, dim: int, with_activation: bool) -> nn.Module:
        if dim not in (1, 2):
            raise ValueError(f"dim must be 1 or 2, got {dim}")
        builder = getattr(self, f"_make_{self.mode}")
        # a mode whose layer brings its activation builds it without where none follows (apply_act=False)
        own_activation_left_out = not with_activation and self.mode in NORMS_WITH_ACTIVATION
        layer = builder(num_features, dim, apply_act=False) if own_activation_left_out else builder(num_features, dim)
        init_norm_(layer)
        return layer

    def activation(self) -> nn.Module:
        """The activation after this mode's norm layer: ReLU, or Identity where the norm brings its own
        (timm's norm_act: FRN+TLU, EvoNorm), so a model never stacks a ReLU on top of it."""
        return nn.Identity() if self.mode in NORMS_WITH_ACTIVATION else nn.ReLU()

    def norm_act(self, num_features: int, dim: int = 2) -> tuple[nn.Module, nn.Module]:
        """(norm layer, the activation after it): the one builder every model family calls for a norm followed
        by an activation. ReLU has no state, so checkpoints of either kind keep their keys."""
        return self._build(num_features, dim, with_activation=True), self.activation()

    def conv(self, in_channels: int, out_channels: int, kernel_size, **kwargs) -> nn.Conv2d:
        """A conv for this mode's network: weight-standardised (StdConv2d, an nn.Conv2d with the same
        parameters) under gn_ws, else nn.Conv2d. kwargs as nn.Conv2d's (stride, padding, bias, ...)."""
        if self.mode in WEIGHT_STANDARDISED_MODES:
            from basinlab.nn.batch_free import StdConv2d

            return StdConv2d(in_channels, out_channels, kernel_size, **kwargs)
        return nn.Conv2d(in_channels, out_channels, kernel_size, **kwargs)

    # One builder per mode keeps each rule next to its reason.
    def _make_batch(self, c: int, dim: int) -> nn.Module:
        cls = nn.BatchNorm2d if dim == 2 else nn.BatchNorm1d
        return cls(c, eps=self.layer_eps, momentum=0.1)

    def _make_group(self, c: int, dim: int) -> nn.Module:
        return ContiguousGroupNorm(group_count(c, self.gn_groups), c, eps=self.layer_eps)

    def _make_layer(self, c: int, dim: int) -> nn.Module:
        # GroupNorm(1, C) normalises each sample over (C, H, W) with a per-channel affine; the
        # reference's LayerNorm([C, H, W]) had a per-element affine and crashed at init.
        if dim == 2:
            return nn.GroupNorm(1, c, eps=self.layer_eps)
        return nn.LayerNorm(c, eps=self.layer_eps)

    def _make_instance(self, c: int, dim: int) -> nn.Module:
        if dim == 1:
            raise ConfigError("norm 'instance' is not defined for 1-D features (one value per channel); "
                              "use batch, group, layer, online or none for this model")
        # No running statistics: per-sample statistics at eval as in training (the reference's mode).
        return ContiguousInstanceNorm2d(c, eps=self.layer_eps, affine=True, track_running_stats=False)

    def _make_online(self, c: int, dim: int) -> nn.Module:
        # Imported here so that the other modes never depend on the online module.
        from basinlab.nn import online_norm

        cls = online_norm.OnlineNorm2d if dim == 2 else online_norm.OnlineNorm1d
        return cls(c, alpha_fwd=self.afwd, alpha_bkw=self.abkw, eps=self.layer_eps, ecm=self.ecm)

    def _make_none(self, c: int, dim: int) -> nn.Module:
        return nn.Identity()

    # apply_act=False: FRN without its TLU (timm's FilterResponseNormTlu2d(apply_act=False)), EvoNorm without its
    # nonlinearity, where no activation follows (before a residual sum)
    def _make_frn(self, c: int, dim: int, apply_act: bool = True) -> nn.Module:
        return self._batch_free("FilterResponseNorm", c, apply_act=apply_act)

    def _make_evonorm_s0(self, c: int, dim: int, apply_act: bool = True) -> nn.Module:
        return self._batch_free("EvoNormS0", c, group_count(c, self.gn_groups), apply_act=apply_act)

    def _make_evonorm_b0(self, c: int, dim: int, apply_act: bool = True) -> nn.Module:
        return self._batch_free("EvoNormB0", c, apply_act=apply_act)

    def _batch_free(self, name: str, *args, **kwargs) -> nn.Module:
        # Imported here so that the other modes never depend on the module.
        from basinlab.nn import batch_free

        return getattr(batch_free, name)(*args, eps=self.layer_eps, **kwargs)

    def _make_gn_ws(self, c: int, dim: int) -> nn.Module:
        # The weight standardisation is in the convs (NormSpec.conv); the norm is group norm's.
        return self._make_group(c, dim)

    def _make_batchrenorm(self, c: int, dim: int) -> nn.Module:
        from basinlab.nn.batch_renorm import BatchRenorm

        return BatchRenorm(c, eps=self.layer_eps)

    def to_dict(self) -> dict:
        """Plain dict of the fields (for logging the resolved config)."""
        return dataclasses.asdict(self)


def _reduced_channels_last_on_cpu(x: torch.Tensor) -> bool:
    """A bfloat16/float16 channels_last CPU input: where torch's kernels are slow (in float32 they are not, and the
    format copies would cost more than they save: benchmarks/norms.py)."""
    return x.device.type == "cpu" and x.dtype in (torch.bfloat16, torch.float16) and x.dim() == 4 \
        and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)


class ContiguousGroupNorm(nn.GroupNorm):
    """nn.GroupNorm that normalises a bfloat16 channels_last CPU input in the contiguous format, handed back
    channels_last.

    Why: torch 2.13's CPU native_group_norm_backward on a channels_last bfloat16 [128, 16, 32, 32] input with 8
    groups takes 26.5 ms against 1.5 ms contiguous, and the engine runs conv models channels_last on the CPU (also
    under --amp bf16); the two format copies cost far less (benchmarks/norms.py, docs/speed.md). Same parameters.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # One group takes torch's fast path in either format.
        if self.num_groups > 1 and _reduced_channels_last_on_cpu(x):
            return super().forward(x.contiguous()).contiguous(memory_format=torch.channels_last)
        return super().forward(x)


class ContiguousInstanceNorm2d(nn.InstanceNorm2d):
    """nn.InstanceNorm2d that hands a bfloat16 channels_last CPU input back channels_last: torch's instance_norm copies
    the input to the contiguous format (a batch norm over a (1, N*C, H, W) view) and returns it contiguous, so the next
    conv would copy it back; converting once here is cheaper (benchmarks/norms.py). Same parameters and state."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if _reduced_channels_last_on_cpu(x):
            return super().forward(x.contiguous()).contiguous(memory_format=torch.channels_last)
        return super().forward(x)


def _normalise_keys(value: dict) -> dict:
    allowed = [f.name for f in dataclasses.fields(NormSpec)]
    out = {}
    for key, item in value.items():
        name = _KEY_ALIASES.get(str(key).replace("-", "_"), str(key).replace("-", "_"))
        if name not in allowed:
            raise ConfigError(f"unknown norm key {key!r}; allowed: {', '.join(allowed)}")
        out[name] = item
    return out


def group_count(num_channels: int, groups: int) -> int:
    """The largest divisor of ``num_channels`` not above ``groups`` (GroupNorm needs C % g == 0).

    e.g. 8 groups on 16/32/64 channels stay 8; 32 groups on 48 channels become 24.
    """
    for g in range(min(groups, num_channels), 0, -1):
        if num_channels % g == 0:
            return g
    return 1


def _lazy_norm_types() -> tuple:
    # Only look at the modules something imported: no layer of theirs can exist otherwise.
    free, renorm = sys.modules.get("basinlab.nn.batch_free"), sys.modules.get("basinlab.nn.batch_renorm")
    return (free.batch_free_types() if free else ()) + ((renorm.BatchRenorm,) if renorm else ())


def _online_types() -> tuple:
    # Only look at the online module if something imported it: no online layer can exist otherwise.
    module = sys.modules.get("basinlab.nn.online_norm")
    if module is None:
        return ()
    return tuple(t for t in vars(module).values()
                 if isinstance(t, type) and issubclass(t, nn.Module) and t.__name__.startswith("OnlineNorm"))


def is_norm_module(module: nn.Module) -> bool:
    """True for any normalisation layer a NormSpec can build (and PyTorch's other norms)."""
    base = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm, nn.LocalResponseNorm)
    return isinstance(module, base + _online_types() + _lazy_norm_types())


def init_norm_(module: nn.Module) -> nn.Module:
    """Set γ = 1 and β = 0 in every normalisation layer of ``module`` (itself included)."""
    for m in module.modules():
        if not is_norm_module(m):
            continue
        weight, bias = getattr(m, "weight", None), getattr(m, "bias", None)
        if isinstance(weight, nn.Parameter):
            nn.init.ones_(weight)
        if isinstance(bias, nn.Parameter):
            nn.init.zeros_(bias)
    return module
