"""Loss-landscape views: interpolation between two models and filter-normalised random directions.

* :func:`parse_range` reads ``start:step:stop`` (numpy.arange semantics, stop exclusive) with decimal
  arithmetic, so ``-0.3:0.02:0.31`` contains 0.0 exactly and a grid point is the same float on every run.
* :func:`interpolate_state`: ``theta(alpha) = (1 - alpha) theta_A + alpha theta_B`` over parameters and
  floating buffers (BatchNorm running statistics), exact at alpha = 0 and 1.
* :func:`recalibrate_bn`: BatchNorm running statistics re-estimated on training batches.
* :func:`filter_normalized_direction`: Li et al. (2018) directions.
* :class:`GridEvaluator` evaluates a list of grid points with one data pass per point, or with one pass
  per *group* of points (``torch.func.vmap`` over stacked parameter sets).
* :class:`GridTable`: the resumable CSV of a grid (row by row, fsynced; rewritten in grid order at the end).
"""
from __future__ import annotations

import json
import math
import os
from decimal import MAX_EMAX, MIN_EMIN, Context, Decimal, InvalidOperation
from pathlib import Path

import torch
from torch import nn

from basinlab.engine.evaluate import evaluate, topk_correct
from basinlab.errors import ConfigError
from basinlab.utils.io import atomic_write_text
from basinlab.utils.model_state import uses_batch_statistics
from basinlab.utils.schema import shown

MAX_POINTS = 1_000_000   # a range longer than this is a typo, not a plot


# ----------------------------------------------------------------------------------------- ranges
MAX_COORDINATE = 1000  # alpha/beta: multiples of a direction's (filter-normalised) size; Li et al. use [-1, 1]
RANGE_EXAMPLE = "use start:step:stop such as -1:0.1:2.01"
# The number of points, (stop - start) / step, is computed with exponents as wide as decimal allows: a step
# of 1e-999999999 is refused as too many points, not with decimal.Overflow.
_WIDE = Context(Emax=MAX_EMAX, Emin=MIN_EMIN)


def _decimal(text: str, what: str) -> Decimal:
    try:
        value = Decimal(text.strip())
    except InvalidOperation:
        if _is_float_text(text):  # a number whose exponent is beyond even decimal's, e.g. 1e99999999999999999999
            value = Decimal("Infinity")
        else:
            raise ConfigError(f"{what}: {shown(text)} is not a number; {RANGE_EXAMPLE}") from None
    if not value.is_finite() or value.copy_abs() > MAX_COORDINATE:  # copy_abs and > are exact: no overflow
        raise ConfigError(f"{what}: {shown(text)} must be a finite number between {-MAX_COORDINATE} and "
                          f"{MAX_COORDINATE}; {RANGE_EXAMPLE}")
    return value


def _is_float_text(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def parse_range(text: str, what: str = "--alpha") -> list[float]:
    """``start:step:stop`` (stop exclusive, like numpy.arange), a single number, or a comma list.

    Values are computed as exact decimals ``start + i * step`` and only then rounded to floats; at most
    MAX_POINTS of them, distinct as floats in a start:step:stop range.
    """
    if not isinstance(text, str) or not text.strip():
        raise ConfigError(f"{what} must be start:step:stop (e.g. -1:0.1:2.01), one number or a comma list")
    text = text.strip()
    if ":" not in text:
        parts = text.split(",")
        if len(parts) > MAX_POINTS:
            raise ConfigError(f"{what}: the list has {len(parts)} points; at most {MAX_POINTS} are allowed")
        return [float(_decimal(part, what)) + 0.0 for part in parts]  # + 0.0: -0 is the point 0.0
    parts = text.split(":")
    if len(parts) != 3:
        raise ConfigError(f"{what}: {shown(text)} must have three fields start:step:stop, e.g. -1:0.1:2.01")
    start, step, stop = (_decimal(part, what) for part in parts)
    if step == 0:
        raise ConfigError(f"{what}: the step of {shown(text)} must not be zero")
    span = _WIDE.divide(_WIDE.subtract(stop, start), step)
    if span <= 0:
        raise ConfigError(f"{what}: {shown(text)} is empty (stop must lie beyond start in the direction of step)")
    if span > MAX_POINTS:
        raise ConfigError(f"{what}: {shown(text)} has {math.ceil(span) if span < 10**15 else f'{span:.3g}'} "
                          f"points; at most {MAX_POINTS} are allowed")
    values = [float(start + i * step) + 0.0 for i in range(math.ceil(span))]
    if len(set(values)) < len(values):
        raise ConfigError(f"{what}: the step of {shown(text)} is below float precision there (points repeat as "
                          f"floats); use a larger step")
    return values


def check_grid_size(alphas: list, betas: list | None, what: str = "--alpha and --beta") -> None:
    """A 2-D grid of at most MAX_POINTS points (each range alone may have that many)."""
    if betas is not None and len(alphas) * len(betas) > MAX_POINTS:
        raise ConfigError(f"{what} make a grid of {len(alphas)} x {len(betas)} = {len(alphas) * len(betas)} points; "
                          f"at most {MAX_POINTS} are allowed")


# ----------------------------------------------------------------------------------------- states
def check_compatible(state_a: dict, state_b: dict) -> None:
    """Two state dicts of the same architecture (same names and shapes), or a ConfigError."""
    if state_a.keys() != state_b.keys():
        only = sorted(set(state_a) ^ set(state_b))[:3]
        raise ConfigError(f"the two checkpoints hold different architectures (entries differ: {', '.join(only)}); "
                          f"interpolation needs two models of the same architecture")
    for key, value in state_a.items():
        if tuple(value.shape) != tuple(state_b[key].shape):
            raise ConfigError(f"the two checkpoints differ in {key}: {tuple(value.shape)} vs "
                              f"{tuple(state_b[key].shape)}; interpolation needs the same architecture")


def interpolate_state(state_a: dict, state_b: dict, alpha: float) -> dict:
    """``(1 - alpha) a + alpha b`` for every floating tensor (written out, not lerp: exact at 0 and 1);
    integer buffers (BatchNorm's num_batches_tracked) are A's."""
    out = {}
    for key, a in state_a.items():
        b = state_b[key]
        out[key] = (1.0 - alpha) * a + alpha * b if a.is_floating_point() else a.clone()
    return out


def negative_variance_alphas(state_a: dict, state_b: dict, alphas) -> list[float]:
    """The alphas at which an interpolated BatchNorm running variance is negative (the layer is undefined
    there: the evaluation gives NaN). Linear interpolation keeps variances positive only for 0 <= alpha <= 1."""
    keys = [k for k in state_a if k.endswith("running_var")]
    return [a for a in alphas if any(bool(((1.0 - a) * state_a[k] + a * state_b[k] < 0).any()) for k in keys)]


def batch_norm_layers(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]


@torch.no_grad()
def recalibrate_bn(model: nn.Module, batches) -> int:
    """Re-estimate every BatchNorm layer's running statistics on ``batches``; return the layer count.

    Running statistics are reset and accumulated with ``momentum=None`` (PyTorch's cumulative average
    over batches). Only the BatchNorm layers are in train mode (dropout stays off, so the statistics
    are those of the network that is evaluated); momenta and every module's mode are restored.
    """
    others = sorted({type(m).__name__ for m in model.modules()
                     if uses_batch_statistics(m) and not isinstance(m, nn.modules.batchnorm._BatchNorm)})
    if others:
        raise ConfigError(f"--bn-recalibrate re-estimates BatchNorm's running statistics; this model's "
                          f"{', '.join(others)} layers keep theirs differently: drop --bn-recalibrate")
    layers = batch_norm_layers(model)
    if not layers:
        return 0
    modes = [(m, m.training) for m in model.modules()]
    momenta = [m.momentum for m in layers]
    try:
        model.eval()
        for layer in layers:
            layer.reset_running_stats()
            layer.momentum = None
            layer.train()
        for x, _ in batches:
            model(x)
    finally:
        for layer, momentum in zip(layers, momenta):
            layer.momentum = momentum
        for module, mode in modes:
            module.training = mode
    return len(layers)


def filter_normalized_direction(model: nn.Module, generator: torch.Generator, *,
                                include_bias_bn: bool = False) -> dict[str, torch.Tensor]:
    """A Gaussian direction with each filter rescaled to the norm of the model's filter (Li et al. 2018).

    A filter is one output slice (dim 0) of a weight with two or more dimensions (conv filter, row of a
    linear layer). One-dimensional parameters (biases, normalisation scales and shifts) are zero by
    default; with ``include_bias_bn`` each is rescaled as a whole to the norm of the parameter.
    Drawn on the CPU in ``named_parameters`` order (the same direction on every device).
    """
    direction = {}
    for name, param in model.named_parameters():
        weight = param.detach()
        draw = torch.randn(weight.shape, generator=generator, dtype=torch.float32).to(weight)
        if weight.dim() <= 1:
            if not include_bias_bn:
                draw = torch.zeros_like(weight)
            else:
                draw = draw * (weight.norm() / draw.norm().clamp_min(1e-30))
        else:
            ratio = weight.flatten(1).norm(dim=1) / draw.flatten(1).norm(dim=1).clamp_min(1e-30)
            draw = draw * ratio.view(-1, *([1] * (weight.dim() - 1)))
        direction[name] = draw
    return direction


def displaced_parameters(origin: dict, directions: list[dict], coefficients) -> dict:
    """``origin + sum_k c_k d_k`` for each parameter (exactly origin where every c_k is 0)."""
    out = {}
    for name, base in origin.items():
        value = base
        for coefficient, direction in zip(coefficients, directions):
            value = value + coefficient * direction[name]
        out[name] = value
    return out


# ----------------------------------------------------------------------------------------- evaluation
class GridEvaluator:
    """Loss and top-1 accuracy of a model at many weight settings, on one or more data splits.

    ``points_per_pass=1``: each point's tensors are copied into the model and the engine's ``evaluate``
    runs (exactly ``basinlab evaluate``'s numbers). ``points_per_pass=G > 1``: G parameter sets are
    stacked and evaluated together by ``vmap(functional_call)``, one pass over the data for G points;
    buffers stay the model's (eval-mode BatchNorm). ``recalibrate``: training batches on which the
    BatchNorm statistics are re-estimated at every point (per-point evaluation only).
    The model's tensors and mode are restored by :meth:`close` (or leaving the ``with`` block).
    """

    def __init__(self, model: nn.Module, criterion, splits: dict, *, points_per_pass: int = 1,
                 recalibrate=None):
        if points_per_pass < 1:
            raise ConfigError(f"--points-per-pass must be a positive integer, got {points_per_pass}")
        if recalibrate is not None and points_per_pass > 1:
            raise ConfigError("--bn-recalibrate evaluates one point per pass; drop --points-per-pass")
        self.model, self.criterion, self.splits = model, criterion, splits
        self.points_per_pass = points_per_pass
        self.recalibrate = recalibrate
        self._saved = {k: v.detach().clone() for k, v in model.state_dict().items()}
        self._modes = [(m, m.training) for m in model.modules()]
        self._tensors = dict(model.named_parameters())
        self._tensors.update(model.named_buffers())
        model.eval()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self) -> None:
        self.model.load_state_dict(self._saved)
        for module, mode in self._modes:
            module.training = mode

    def evaluate(self, points: list[dict]) -> list[dict]:
        """One metrics dict (``<split>_loss``, ``<split>_acc1``) per point (dicts of name -> tensor)."""
        if self.points_per_pass == 1:
            return [self._one(point) for point in points]
        out = []
        for i in range(0, len(points), self.points_per_pass):
            out.extend(self._group(points[i:i + self.points_per_pass]))
        return out

    @torch.no_grad()
    def _one(self, point: dict) -> dict:
        for name, value in point.items():
            self._tensors[name].copy_(value)
        if self.recalibrate is not None:
            recalibrate_bn(self.model, self.recalibrate)
        row = {}
        for split, data in self.splits.items():
            result = evaluate(self.model, data, self.criterion)
            row[f"{split}_loss"], row[f"{split}_acc1"] = result["loss"], _accuracy(result["loss"], result["acc1"])
        return row

    @torch.no_grad()
    def _group(self, points: list[dict]) -> list[dict]:
        from torch.func import functional_call, vmap
        stacked = {name: torch.stack([p[name] for p in points]) for name in points[0]}
        fixed = {k: v for k, v in self._tensors.items() if k not in stacked}

        def logits_of(params, x):
            return functional_call(self.model, {**params, **fixed}, (x,))

        rows = [{} for _ in points]
        for split, data in self.splits.items():
            sums = torch.zeros(len(points), 2, dtype=torch.float64)
            count = 0
            for x, y in data.epoch(0):
                logits = vmap(logits_of, in_dims=(0, None))(stacked, x)
                for g in range(len(points)):
                    loss = self.criterion(logits[g], y).float()
                    sums[g, 0] += loss.double().item() * y.shape[0]
                    sums[g, 1] += float(topk_correct(logits[g].float(), y, ks=(1,))[0])
                count += y.shape[0]
            for g, row in enumerate(rows):
                row[f"{split}_loss"] = float(sums[g, 0]) / count
                row[f"{split}_acc1"] = _accuracy(row[f"{split}_loss"], 100.0 * float(sums[g, 1]) / count)
        return rows


def _accuracy(loss: float, acc1: float) -> float:
    """NaN where the loss is NaN: the logits held NaNs, so an argmax 'accuracy' would be meaningless."""
    return math.nan if math.isnan(loss) else acc1


# ----------------------------------------------------------------------------------------- resumable CSV
class GridTable:
    """The CSV of a grid, resumable: rows are appended and fsynced one evaluation group at a time.

    Rerunning with the same settings (checked against ``<csv>.json``) skips the points already in the
    CSV; a torn last line (a kill during a write) is dropped. :meth:`finish` rewrites the CSV atomically
    in grid order, so an interrupted-and-resumed grid ends byte-identical to an uninterrupted one.
    Values are written with ``repr`` (exact round trip).
    """

    def __init__(self, path, columns: list[str], keys: list[str], settings: dict, overwrite: bool = False):
        self.path = Path(path)
        self.meta = self.path.with_suffix(".json")
        self.columns, self.keys = list(columns), list(keys)
        self.rows: dict[tuple, dict] = {}
        if overwrite:
            for stale in (self.path, self.meta):
                stale.unlink(missing_ok=True)
        self._open(settings)

    def _open(self, settings: dict) -> None:
        settings = json.loads(json.dumps(settings))  # the form it takes in the file
        if self.path.exists():
            stored = json.loads(self.meta.read_text()) if self.meta.is_file() else None
            if stored != settings:
                changed = sorted(k for k in settings if stored is None or stored.get(k) != settings[k])
                what = ", ".join(changed) if stored is not None else f"{self.meta.name} is missing"
                raise ConfigError(f"{self.path} holds points computed with other settings ({what}); "
                                  f"pass --overwrite to start again or choose another -o")
            self._read_existing()
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(self.meta, json.dumps(settings, indent=1, sort_keys=True) + "\n")
            atomic_write_text(self.path, ",".join(self.columns) + "\n")

    def _read_existing(self) -> None:
        raw = self.path.read_bytes()
        lines = raw.split(b"\n")
        header = lines[0].decode()
        if header != ",".join(self.columns):
            raise ConfigError(f"{self.path} has columns {header!r}, expected {','.join(self.columns)!r}; "
                              f"pass --overwrite or choose another -o")
        good = len(lines[0]) + 1
        for line in lines[1:-1]:  # the part after the last newline is torn (or empty)
            row = self._parse(line.decode(errors="replace"))
            if row is None:
                break
            self.rows[tuple(row[k] for k in self.keys)] = row
            good += len(line) + 1
        if good < len(raw):
            with open(self.path, "r+b") as fh:
                fh.truncate(good)

    def _parse(self, line: str) -> dict | None:
        fields = line.split(",")
        if len(fields) != len(self.columns):
            return None
        try:
            return {c: float(v) for c, v in zip(self.columns, fields)}
        except ValueError:
            return None

    def done(self, key: tuple) -> bool:
        return key in self.rows

    def append(self, rows: list[dict]) -> None:
        text = "".join(",".join(repr(float(row[c])) for c in self.columns) + "\n" for row in rows)
        with open(self.path, "a") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        for row in rows:
            clean = {c: float(row[c]) for c in self.columns}
            self.rows[tuple(clean[k] for k in self.keys)] = clean

    def finish(self, order: list[tuple]):
        """Rewrite the CSV in grid order; return the grid's rows as a DataFrame.

        Points of an earlier, wider range stay in the file, after the grid's own rows.
        """
        import pandas as pd
        wanted = dict.fromkeys(order)
        rows = [self.rows[key] for key in wanted]
        extra = [row for key, row in self.rows.items() if key not in wanted]
        text = ",".join(self.columns) + "\n" + "".join(
            ",".join(repr(row[c]) for c in self.columns) + "\n" for row in rows + extra)
        atomic_write_text(self.path, text)
        return pd.DataFrame([self.rows[key] for key in order], columns=self.columns)


def run_grid(table: GridTable, keys: list[tuple], point_of, evaluator: GridEvaluator, progress=None) -> None:
    """Evaluate the grid points missing from ``table`` in fixed groups of ``points_per_pass``.

    Groups are fixed by grid position, so a point is always evaluated together with the same points
    (identical numbers whether or not the grid was interrupted).
    """
    group = evaluator.points_per_pass
    for start in range(0, len(keys), group):
        chunk = keys[start:start + group]
        if all(table.done(key) for key in chunk):
            continue
        results = evaluator.evaluate([point_of(key) for key in chunk])
        table.append([{**dict(zip(table.keys, key)), **result}
                      for key, result in zip(chunk, results) if not table.done(key)])
        if progress is not None:
            progress(min(start + group, len(keys)), len(keys))


