"""A sweep spec: the runs of settings x seeds, each an ordinary `basinlab train` run, checked before any starts.

    base: {dataset: cifar10, model: resnet20, epochs: 20}   # options shared by every run
    grid: {norm-mode: [batch, group, online]}               # the cartesian product of these lists
    seeds: [0, 1, 2]                                        # each setting is run once per seed

Settings that are not a product (plain SGD vs SAM vs SmoothOut, each with its own flags) are named
`variants`, crossed with the grid; a variant's options override base's:

    variants: {sgd: {}, sam: {sam: 0.05}, lb-sam: {batch-size: 2048, sam: 0.05}}

Keys are `basinlab train` options (long-flag names, `-` or `_`). A run is named after its variant and
grid values, `norm-mode_online-s0` or `sam__lr_0.1-s0` (joined by `__`), and lives in `DIR/<name>/`.
"""
from __future__ import annotations

import itertools
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from basinlab.api import make_config
from basinlab.config import from_mapping as from_options
from basinlab.config import normalise_key, read_yaml_mapping
from basinlab.engine.setup import split_model_config
from basinlab.errors import ConfigError
from basinlab.models import check_config_keys
from basinlab.utils.schema import shown

# Options the sweep decides for every run: where it lives, its name, its seed, how it is resumed.
OWNED = ("results_dir", "save", "seed", "resume", "overwrite", "config")
MAX_RUNS = 10_000
# A run's folder name: DIR/.sweep/<name>.json's temporary file and DIR/.sweep/replaced/<name>-<time>-<hex> add
# up to 21 bytes to it, within the 255 of every common file system.
MAX_NAME_BYTES = 200


@dataclass(frozen=True)
class PlannedRun:
    name: str                 # folder name under the sweep's results folder
    setting: str              # the name without the seed: runs of one setting share it
    values: dict              # the grid values of the setting (long-flag names)
    seed: int
    options: dict = field(repr=False)   # basinlab.train keyword options (without results_dir/save)


@dataclass
class SweepSpec:
    base: dict
    grid: dict
    seeds: list
    runs: list[PlannedRun]
    source: str = ""
    variants: dict = field(default_factory=dict)   # name -> options; empty: no variant axis

    def columns(self) -> list[str]:
        """The columns that tell settings apart in the tables: the variant, then the grid's keys."""
        return (["variant"] if self.variants else []) + [key.replace("_", "-") for key in self.grid]

    def as_mapping(self) -> dict:
        """The spec as written (stored in DIR/.sweep/spec.yaml so that --status can read it back)."""
        out = {"base": self.base, "grid": self.grid, "seeds": self.seeds}
        return {**out, "variants": self.variants} if self.variants else out

    def as_yaml(self) -> str:
        try:
            return yaml.safe_dump(self.as_mapping(), sort_keys=False)
        except yaml.YAMLError as exc:
            raise ConfigError(f"the sweep spec holds a value that YAML cannot store ({str(exc)[:80]}); give "
                              f"numbers, text, lists and mappings") from None


def _options(mapping, where: str) -> dict:
    """The mapping's options under their field names, their keys checked by the one option check of
    `basinlab train` (basinlab.config.from_mapping: unknown and refused keys are refused here as there)."""
    if mapping is None:
        return {}
    if not isinstance(mapping, Mapping):
        raise ConfigError(f"{where} must be a mapping of basinlab train options, got {type(mapping).__name__}")
    for key in mapping:
        if normalise_key(str(key)) in OWNED:
            raise ConfigError(f"{where}: '{key}' is set by the sweep for every run (results folder, run name, "
                              f"seeds: use 'seeds:'); remove it")
    return from_options(mapping, where=f"the sweep spec's {where}")


def _grid(mapping) -> dict:
    grid = _options(mapping, "grid")
    for name, values in grid.items():
        if not isinstance(values, list) or not values:
            raise ConfigError(f"grid: '{name.replace('_', '-')}' must be a non-empty list of values, got "
                              f"{shown(values)}")
        if len({_as_text(v) for v in values}) != len(values):
            raise ConfigError(f"grid: '{name.replace('_', '-')}' lists a value twice: {shown(values)}")
    return grid


VARIANT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9.+-]*")


def _variants(mapping) -> dict[str, dict]:
    if mapping is None:
        return {}
    if not isinstance(mapping, Mapping) or not mapping:
        raise ConfigError(f"variants must be a non-empty mapping of names to option mappings, got {mapping!r}")
    out = {}
    for name, options in mapping.items():
        if not isinstance(name, str) or not VARIANT_NAME.fullmatch(name):
            raise ConfigError(f"variants: the name {name!r} must be letters, digits, '.', '+' or '-' (it names "
                              f"run folders)")
        out[name] = _options(options, f"variant {name}")
    return out


def seeds_of(value) -> list[int]:
    seeds = [0] if value is None else value
    if isinstance(seeds, int) and not isinstance(seeds, bool):
        seeds = [seeds]
    if not isinstance(seeds, list) or not seeds or any(isinstance(s, bool) or not isinstance(s, int) or s < 0
                                                       for s in seeds):
        raise ConfigError(f"seeds must be a non-empty list of integers >= 0, got {shown(value)}")
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"seeds lists a seed twice: {seeds}")
    return seeds


def _as_text(value) -> str:
    """repr, also for integers too long for repr (Python refuses over 4300 digits)."""
    try:
        return repr(value)
    except ValueError:
        return f"<int {hash(value)}>"


def _text(value) -> str:
    text = value if isinstance(value, str) else _as_text(value)
    return re.sub(r"[^A-Za-z0-9.+-]+", "-", text) or "x"


def setting_name(values: dict) -> str:
    """`norm-mode_online__lr_0.1`, `sam__lr_0.1` with a variant; `base` when there is neither."""
    if not values:
        return "base"
    return "__".join(value if key == "variant" else f"{key.replace('_', '-')}_{_text(value)}"
                     for key, value in values.items())


def plan_runs(base: dict, grid: dict, seeds: list[int], variants: dict | None = None) -> list[PlannedRun]:
    keys = list(grid)
    combos = list(itertools.product(*(grid[k] for k in keys))) if keys else [()]
    named = list((variants or {None: {}}).items())
    if len(named) * len(combos) * len(seeds) > MAX_RUNS:
        raise ConfigError(f"the sweep has {len(named) * len(combos) * len(seeds)} runs; at most {MAX_RUNS} "
                          f"are allowed")
    runs, names = [], set()
    for variant, options in named:
        for combo in combos:
            values = ({} if variant is None else {"variant": variant}) | dict(zip(keys, combo))
            setting = setting_name(values)
            grid_values = dict(zip(keys, combo))
            for seed in seeds:
                name = f"{setting}-s{seed}"
                if name in names:
                    raise ConfigError(f"two settings get the run name {short_name(name)!r}; make the grid values "
                                      f"distinct as text")
                names.add(name)
                runs.append(PlannedRun(name, setting, values, seed,
                                       {**base, **options, **grid_values, "seed": seed}))
    return runs


def check_runs(runs: list[PlannedRun], results_dir: Path) -> None:
    """Every run's whole config is valid before any starts (the one option schema, presets included, and the
    model config's keys against the model's factory)."""
    for run in runs:
        try:
            # the spec's options as a file's (base): a model it names is not trusted by being checked here
            cfg = make_config(run.options, results_dir=str(results_dir), save=run.name)
            check_config_keys(cfg.model, split_model_config(cfg)[0])
        except ConfigError as exc:
            raise ConfigError(f"sweep run {short_name(run.name)}: {exc}") from None


def short_name(name: str) -> str:
    return name if len(name) <= 80 else f"{name[:60]}...<{len(name)} characters>"


def check_names(runs: list[PlannedRun]) -> None:
    """Every run's folder name fits the file system (long grid values make long names)."""
    for run in runs:
        size = len(run.name.encode())
        if size > MAX_NAME_BYTES:
            raise ConfigError(f"sweep run {short_name(run.name)}: its name (made of its grid values) has {size} "
                              f"bytes, and a run folder's name at most {MAX_NAME_BYTES}; use shorter grid values, "
                              f"or put a long value in a variant (whose name you choose)")


def read_spec(path: str | Path, results_dir: Path | None = None) -> SweepSpec:
    """The spec file, expanded into runs and checked as a whole (nothing runs before it all passes)."""
    data = read_yaml_mapping(path, what="sweep spec")
    unknown = [k for k in data if k not in ("base", "grid", "seeds", "variants")]
    if unknown:
        raise ConfigError(f"{path}: unknown key {unknown[0]!r}; a sweep spec has base, grid, variants and seeds")
    spec = from_mapping(data, results_dir or Path("results"))
    spec.source = str(path)
    return spec


def from_mapping(data: Mapping, results_dir: Path) -> SweepSpec:
    base, grid, seeds = _options(data.get("base"), "base"), _grid(data.get("grid")), seeds_of(data.get("seeds"))
    variants = _variants(data.get("variants"))
    overlap = set(base) & set(grid)
    if overlap:
        raise ConfigError(f"'{sorted(overlap)[0]}' is both in base and in grid; keep it in one")
    for name, options in variants.items():
        if set(options) & set(grid):
            raise ConfigError(f"'{sorted(set(options) & set(grid))[0]}' is both in variant {name} and in grid; "
                              f"keep it in one")
    if "variant" in grid:
        raise ConfigError("grid: 'variant' is the name of the variants column; use variants: for named settings")
    runs = plan_runs(base, grid, seeds, variants)
    check_runs(runs, results_dir)
    check_names(runs)
    return SweepSpec(base, grid, seeds, runs, variants=variants)
