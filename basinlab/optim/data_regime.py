"""Data settings by epoch (convNet's data_regime): batch size, input size and augmentation switches."""
from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from basinlab.errors import ConfigError
from basinlab.optim.regime_phases import fmt, plain
from basinlab.utils.checks import check_int
from basinlab.utils.schema import shown

DATA_REGIME_KEYS = ("batch_size", "eval_batch_size", "input_size", "scale_size", "autoaugment", "cutout",
                    "duplicates", "translate", "flip")
FLIP_MODES = ("random", "alternating", "none")
MAX_TRANSLATE = 64
_POSITIVE_INT_KEYS = ("batch_size", "eval_batch_size", "scale_size", "duplicates")
MAX_SIDE = 65_536  # pixels: sizes that could exhaust memory are refused before anything is allocated
_MAXIMA = {"batch_size": 2**20, "eval_batch_size": 2**20, "scale_size": MAX_SIDE, "duplicates": 1024}


def _size(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 < value <= MAX_SIDE


def _check_augmentation_key(key: str, value, where: str) -> None:
    if key == "translate":
        check_int(value, f"{where}: 'translate'", 0, maximum=MAX_TRANSLATE)
    if key == "flip" and value not in FLIP_MODES:
        raise ConfigError(f"{where}: 'flip' must be one of {', '.join(FLIP_MODES)}, got {shown(value)}")


class DataRegime:
    """Data settings by epoch (convNet's ``data_regime``), accumulating like :class:`Regime`.

    ``[{'epoch': 0, 'batch_size': 256, 'input_size': 128}, {'epoch': 15, 'input_size': 224,
    'batch_size': 64}]`` or ``{0: {...}, 15: {...}}``. Keys: ``DATA_REGIME_KEYS`` plus
    ``extra_keys``. Before the first entry's epoch, and for an empty list or None, the settings
    are empty (the caller's own defaults apply).
    """

    def __init__(self, entries, *, extra_keys=()):
        allowed = set(DATA_REGIME_KEYS) | set(extra_keys)
        if isinstance(entries, DataRegime):
            entries = entries.to_config()
        if entries is None:
            entries = []
        if isinstance(entries, Mapping):
            items = []
            for k, v in entries.items():
                if not isinstance(v, Mapping):
                    raise ConfigError(f"data regime: epoch {k!r} maps to {v!r}; expected a dict")
                if "epoch" in v:
                    raise ConfigError(f"data regime (dict format): the entry for epoch {k!r} names 'epoch'")
                try:
                    ep = int(k)
                except (TypeError, ValueError):
                    raise ConfigError(f"data regime (dict format): keys are epochs, got {k!r}") from None
                items.append({"epoch": ep, **v})
            items.sort(key=lambda e: e["epoch"])
        elif isinstance(entries, (list, tuple)):
            items = [dict(e) if isinstance(e, Mapping) else e for e in entries]
        else:
            raise ConfigError(f"data regime: expected a list of entries or a dict keyed by epoch, got {entries!r}")
        self._entries: list[dict] = []
        self._acc: list[tuple[int, dict]] = []
        acc: dict[str, Any] = {}
        prev = None
        for i, e in enumerate(items):
            if not isinstance(e, Mapping):
                raise ConfigError(f"data regime entry {i}: expected a dict, got {e!r}")
            ep = e.get("epoch", 0 if i == 0 else None)
            if isinstance(ep, float) and ep.is_integer():
                ep = int(ep)
            if not isinstance(ep, int) or isinstance(ep, bool) or ep < 0:
                raise ConfigError(f"data regime entry {i}: 'epoch' must be an integer >= 0, got {ep!r}")
            if prev is not None and ep < prev:
                raise ConfigError(f"data regime entry {i}: epoch {ep} comes before epoch {prev}; list entries in order")
            prev = ep
            for k, v in e.items():
                if k == "epoch":
                    continue
                if k not in allowed:
                    raise ConfigError(f"data regime entry {i}: unknown key {k!r}; "
                                      f"allowed: epoch, {', '.join(sorted(allowed))}")
                if k in _POSITIVE_INT_KEYS:
                    check_int(v, f"data regime entry {i}: {k!r}", 1, maximum=_MAXIMA[k])
                if k == "input_size":
                    ok = _size(v) or (isinstance(v, (list, tuple)) and len(v) == 2 and all(map(_size, v)))
                    if not ok:
                        raise ConfigError(f"data regime entry {i}: 'input_size' must be an integer in [1, "
                                          f"{MAX_SIDE}] or [h, w], got {shown(v)}")
                _check_augmentation_key(k, v, f"data regime entry {i}")
                acc[k] = v
            self._entries.append({"epoch": ep, **{k: v for k, v in e.items() if k != "epoch"}})
            self._acc.append((ep, dict(acc)))

    def settings_at(self, epoch: int) -> dict:
        """Accumulated settings of every entry whose epoch is <= ``epoch`` (a fresh dict)."""
        out: dict = {}
        for ep, acc in self._acc:
            if epoch >= ep:
                out = acc
            else:
                break
        return dict(out)

    def changes_at(self, epoch: int) -> bool:
        """True when an entry starts at ``epoch`` (rebuild loaders then)."""
        return any(ep == epoch for ep, _ in self._acc)

    @property
    def epochs(self) -> list[int]:
        return [ep for ep, _ in self._acc]

    def describe(self) -> list[str]:
        return [f"epoch {e['epoch']}: " + " ".join(f"{k}={fmt(v)}" for k, v in e.items() if k != "epoch")
                for e in self._entries]

    def to_config(self) -> list[dict]:
        return plain(copy.deepcopy(self._entries))

    def __repr__(self) -> str:
        return f"DataRegime({self.to_config()!r})"
