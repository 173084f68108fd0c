"""`basinlab sharpness`: Hessian (whole, per block, its most negative eigenvalue), Gauss-Newton and Fisher
curvature, Keskar and adaptive sharpness of a checkpoint, as printed lines, a CSV and a PNG.

The measured function is the mean loss of the checkpoint's model (eval mode: BatchNorm running
statistics, no dropout) over the chosen data: by default the whole *training* split without
augmentation (Keskar et al. measured training loss; the SmoothOut reference used the test set).
"""
from __future__ import annotations

import itertools
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from basinlab.analysis.data import measurement_data
from basinlab.engine.evaluate import evaluate
from basinlab.engine.inspect import model_from_checkpoint
from basinlab.engine.setup import make_criterion, pick_device
from basinlab.errors import ConfigError
from basinlab.metrics import sharpness
from basinlab.utils.checks import check_int
from basinlab.utils.figures import new_figure, save_png
from basinlab.utils.model_state import uses_batch_statistics

MEASURES = ("hessian", "trace", "spectrum", "keskar", "adaptive", "min-eigenvalue", "gauss-newton", "fisher")
COLUMNS = ["measure", "quantity", "value", "std_error", "hvp_count", "converged", "block", "n_params", "epsilon",
           "subspace_dim", "kind", "scaling", "norm", "rho", "iterations", "restarts", "random_start",
           "normalize_logits", "batch_size", "seconds", "split", "examples", "hessian_mode", "dtype", "checkpoint"]
SCALINGS = ("adaptive", "plain")
# --fisher's names -> the curvature kinds of basinlab.metrics.curvature
FISHER_KINDS = {"exact": "fisher", "mc": "fisher-mc", "empirical": "empirical-fisher"}
# the measures of the Hessian or a curvature operator, which --hessian-mode applies to
MODE_MEASURES = ("hessian", "trace", "spectrum", "per-layer", "min-eigenvalue", "gauss-newton", "fisher")


@dataclass
class MeasureOptions:
    """Settings of the measurements (the command's flags)."""

    top_k: int = 1
    method: str = "lanczos"          # hessian: lanczos | power
    max_iter: int = 100              # hessian: HVPs (Lanczos) or HVPs per eigenvalue (power); trace: samples
    tol: float | None = None         # hessian default 1e-4, trace default 1e-3 (relative)
    iterations: int = 100            # spectrum: Lanczos steps per start vector
    n_vectors: int = 1               # spectrum: start vectors
    epsilons: tuple = (1e-3, 5e-4)   # keskar box sizes
    subspace_dim: int | None = None  # keskar: random subspace dimension (None: full space)
    keskar_iter: int = 10            # keskar: L-BFGS-B iterations
    kinds: tuple = ("worst",)        # adaptive: worst | average (Andriushchenko et al. 2023)
    scalings: tuple = ("adaptive",)  # adaptive: perturbation scaled by |w| (adaptive) or not (plain)
    norms: tuple = ("linf",)         # adaptive: linf | l2 ball
    rhos: tuple | None = None        # adaptive: radii (None: DEFAULT_RHO of each definition)
    ascent_iter: int = 20            # adaptive, worst case: ascent steps per batch
    samples: int = 20                # adaptive, average case: noise draws per batch
    adaptive_examples: int = 1024    # adaptive: the first N examples of the data, in batches of -b (m)
    normalize_logits: bool = False   # adaptive: the loss of centred, unit-norm logits (the authors' option)
    restarts: int = 1                # adaptive, worst case: ascents per batch (more than one needs random_start)
    random_start: bool = False       # adaptive, worst case: each ascent from a random point of the set
    seed: int = 0
    per_layer: bool = False          # also lambda_max and trace of each diagonal Hessian block
    blocks: str | int = "module"     # per-layer: one block per layer ("module") or by module-path depth (int)
    fisher_kinds: tuple = ("mc",)    # fisher: exact | mc (Monte-Carlo labels) | empirical (true labels)
    mc_samples: int = 1              # fisher mc: sampled labels per example
    hessian_mode: str = "eval"       # Hessian and curvature measures: eval (running statistics) | train (batch stats)
    float64: bool = False            # measure in float64 (tolerances below float32's ~5e-5 need it)


def model_and_criterion(path, device, which: str = "best"):
    """(model in eval mode, its TrainConfig, evaluation criterion) of a checkpoint or run folder."""
    if which not in ("best", "last"):
        raise ConfigError(f"--which must be best or last, got {which!r}")
    model, cfg, _ = model_from_checkpoint(path, device, which=f"{which}.pt")
    return model, cfg, make_criterion(model, cfg, evaluation=True)


def check_measurable(model, criterion, data, path) -> None:
    """Refuse a diverged model: with non-finite weights or loss no curvature can be measured."""
    if not all(bool(torch.isfinite(p).all()) for p in model.parameters()):
        raise ConfigError(f"{path}: the model's weights are not all finite (the run diverged); its sharpness "
                          f"cannot be measured")
    x, y = next(iter(data))
    with torch.no_grad():
        loss = criterion(model(x), y)
    if not bool(torch.isfinite(loss)):
        raise ConfigError(f"{path}: the loss on the first batch is {float(loss)}; the sharpness of a diverged "
                          f"model cannot be measured")


def _row(measure, quantity, value, **extra) -> dict:
    return {"measure": measure, "quantity": quantity, "value": float(value), **extra}


def _hessian(model, criterion, data, opt: MeasureOptions) -> list[dict]:
    tol = 1e-4 if opt.tol is None else opt.tol
    res = sharpness.hessian_eigenvalues(model, criterion, data, top_k=opt.top_k, max_iter=opt.max_iter, tol=tol,
                                        seed=opt.seed, method=opt.method, return_vectors=False,
                                        mode=opt.hessian_mode)
    return [_row("hessian", f"lambda_{i + 1}", v, hvp_count=res.hvp_count, converged=res.converged)
            for i, v in enumerate(res.values)]


def _trace(model, criterion, data, opt: MeasureOptions) -> list[dict]:
    tol = 1e-3 if opt.tol is None else opt.tol
    res = sharpness.hessian_trace(model, criterion, data, max_iter=opt.max_iter, tol=tol, seed=opt.seed,
                                  min_samples=min(10, max(opt.max_iter, 2)), mode=opt.hessian_mode)
    return [_row("trace", "trace", res.trace, std_error=res.std_error, hvp_count=res.n_samples,
                 converged=res.converged)]


def _spectrum(model, criterion, data, opt: MeasureOptions) -> tuple[list[dict], sharpness.SpectralDensity]:
    density = sharpness.hessian_spectrum(model, criterion, data, iterations=opt.iterations,
                                         n_vectors=opt.n_vectors, seed=opt.seed, mode=opt.hessian_mode)
    nodes = np.concatenate(density.nodes)
    rows = [_row("spectrum", "trace_slq", density.trace, hvp_count=density.hvp_count),
            _row("spectrum", "largest_ritz_value", nodes.max(), hvp_count=density.hvp_count),
            _row("spectrum", "smallest_ritz_value", nodes.min(), hvp_count=density.hvp_count)]
    return rows, density


def _keskar(model, criterion, data, opt: MeasureOptions) -> list[dict]:
    rows = []
    for eps in opt.epsilons:
        start = time.perf_counter()
        value = sharpness.keskar_sharpness(model, criterion, data, epsilon=eps, subspace_dim=opt.subspace_dim,
                                           max_iter=opt.keskar_iter, seed=opt.seed)
        rows.append(_row("keskar", "epsilon_sharpness_pct", value, epsilon=eps, subspace_dim=opt.subspace_dim,
                         seconds=time.perf_counter() - start))
    return rows


def _eig_tol(opt: MeasureOptions) -> float:
    return 1e-4 if opt.tol is None else opt.tol


def _trace_tol(opt: MeasureOptions) -> float:
    return 1e-3 if opt.tol is None else opt.tol


def _min_eigenvalue(model, criterion, data, opt: MeasureOptions) -> list[dict]:
    res = sharpness.min_eigenvalue(model, criterion, data, max_iter=opt.max_iter, tol=_eig_tol(opt), seed=opt.seed,
                                   method=opt.method, mode=opt.hessian_mode)
    return [_row("min-eigenvalue", "lambda_min", res.values[0], hvp_count=res.hvp_count, converged=res.converged)]


def _curvature_rows(model, criterion, data, opt: MeasureOptions, measure: str, kind: str) -> list[dict]:
    """Top eigenvalues and trace of one curvature kind (the exact empirical-Fisher trace counts no products)."""
    start = time.perf_counter()
    eig = sharpness.curvature_eigenvalues(model, criterion, data, kind, top_k=opt.top_k, max_iter=opt.max_iter,
                                          tol=_eig_tol(opt), seed=opt.seed, mc_samples=opt.mc_samples,
                                          mode=opt.hessian_mode)
    rows = [_row(measure, f"lambda_{i + 1}", v, hvp_count=eig.hvp_count, converged=eig.converged, kind=kind)
            for i, v in enumerate(eig.values)]
    tr = sharpness.curvature_trace(model, criterion, data, kind, max_iter=opt.max_iter, tol=_trace_tol(opt),
                                   seed=opt.seed, min_samples=min(10, max(opt.max_iter, 2)),
                                   mc_samples=opt.mc_samples, mode=opt.hessian_mode)
    exact = kind == "empirical-fisher"
    rows.append(_row(measure, "trace", tr.trace, std_error=tr.std_error, hvp_count=None if exact else tr.n_samples,
                     converged=tr.converged, kind=kind))
    for row in rows:
        row["seconds"] = time.perf_counter() - start
    return rows


def _gauss_newton(model, criterion, data, opt: MeasureOptions) -> list[dict]:
    return _curvature_rows(model, criterion, data, opt, "gauss-newton", "ggn")


def _check_fisher_options(model, opt: MeasureOptions) -> None:
    """Before any measure runs (each may take minutes): the Fisher settings the metric would refuse late."""
    bad = [k for k in opt.fisher_kinds if k not in FISHER_KINDS]
    if bad or not opt.fisher_kinds:
        got = ", ".join(map(str, bad)) or "nothing"
        raise ConfigError(f"--fisher must be among {', '.join(FISHER_KINDS)}; got {got}")
    batch_norm = any(uses_batch_statistics(m) for m in model.modules())
    if "empirical" in opt.fisher_kinds and opt.hessian_mode == "train" and batch_norm:
        raise ConfigError("--fisher empirical needs per-example gradients, which BatchNorm with batch statistics "
                          "(--hessian-mode train) does not have; measure it with --hessian-mode eval")


def _fisher(model, criterion, data, opt: MeasureOptions) -> list[dict]:
    return [row for name in opt.fisher_kinds
            for row in _curvature_rows(model, criterion, data, opt, "fisher", FISHER_KINDS[name])]


def _per_layer(model, criterion, data, opt: MeasureOptions) -> list[dict]:
    rows = []
    for b in sharpness.block_spectra(model, criterion, data, opt.blocks, max_iter=opt.max_iter, tol=_eig_tol(opt),
                                     trace_iter=opt.max_iter, trace_tol=_trace_tol(opt), seed=opt.seed,
                                     mode=opt.hessian_mode):
        where = {"block": b.name, "n_params": b.n_params}
        rows.append(_row("per-layer", "lambda_max", b.lambda_max, hvp_count=b.hvp_count - b.trace_samples,
                         converged=b.converged, **where))
        rows.append(_row("per-layer", "trace", b.trace, std_error=b.trace_std_error, hvp_count=b.trace_samples,
                         converged=b.trace_converged, **where))
    return rows


def _first_examples(data, count: int) -> list:
    """The first `count` examples of the data, in its own batches (the last one cut)."""
    out, left = [], count
    for x, y in data:
        if left <= 0:
            break
        out.append((x[:left], y[:left]))
        left -= int(y.shape[0])
    return out


def _check_adaptive_options(opt: MeasureOptions) -> None:
    """The settings of the adaptive measure that the metric itself does not see (one line each)."""
    bad = [s for s in opt.scalings if s not in SCALINGS]
    if bad or not opt.scalings:
        raise ConfigError(f"--scaling must be among {', '.join(SCALINGS)}; got {', '.join(map(str, bad)) or 'nothing'}")
    if not opt.kinds or not opt.norms:
        raise ConfigError("--kind and --norm need at least one value each")
    check_int(opt.adaptive_examples, "--adaptive-examples")
    check_int(opt.restarts, "--restarts")


def _adaptive(model, criterion, data, opt: MeasureOptions) -> list[dict]:
    _check_adaptive_options(opt)
    batches = _first_examples(data, opt.adaptive_examples)
    examples, batch_size = sum(int(y.shape[0]) for _, y in batches), int(batches[0][1].shape[0])
    rows = []
    for kind, scaling, norm in itertools.product(opt.kinds, opt.scalings, opt.norms):
        adaptive = scaling == "adaptive"
        for rho in opt.rhos or (sharpness.DEFAULT_RHO[(kind, adaptive, norm)],):
            start = time.perf_counter()
            worst = kind == "worst"   # restarts and random starts are the ascent's; the average case draws noise
            restarts, random_start = (opt.restarts, opt.random_start) if worst else (1, False)
            res = sharpness.adaptive_sharpness(model, criterion, batches, kind=kind, adaptive=adaptive, norm=norm,
                                               rho=rho, iterations=opt.ascent_iter, samples=opt.samples,
                                               seed=opt.seed, normalize_logits=opt.normalize_logits,
                                               random_start=random_start, restarts=restarts)
            rows.append(_row("adaptive", f"{kind}_{scaling}_{norm}", res.value, std_error=res.std_error, kind=kind,
                             scaling=scaling, norm=norm, rho=res.rho, iterations=res.iterations,
                             normalize_logits=opt.normalize_logits, restarts=restarts, random_start=random_start,
                             batch_size=batch_size, examples=examples, seconds=time.perf_counter() - start))
    return rows


def run_measures(model, criterion, data, measures, opt: MeasureOptions, report=print):
    """Rows (dicts) of every measure, the base loss first; plus the SLQ density when measured."""
    unknown = [m for m in measures if m not in MEASURES]
    if unknown or not measures:
        raise ConfigError(f"--measure must be among {', '.join(MEASURES)}; got {', '.join(unknown) or 'nothing'}")
    if "fisher" in measures:
        _check_fisher_options(model, opt)
    base = evaluate(model, data, criterion)
    rows = [_row("loss", "loss", base["loss"]), _row("loss", "acc1", base["acc1"])]
    report(f"loss {base['loss']:.6g}, top-1 {base['acc1']:.2f}% on {base['count']} examples")
    density = None
    for measure in [*dict.fromkeys(measures), *(["per-layer"] if opt.per_layer else [])]:
        start = time.perf_counter()
        if measure == "spectrum":
            found, density = _spectrum(model, criterion, data, opt)
        else:
            found = {"hessian": _hessian, "trace": _trace, "keskar": _keskar, "adaptive": _adaptive,
                     "min-eigenvalue": _min_eigenvalue, "gauss-newton": _gauss_newton, "fisher": _fisher,
                     "per-layer": _per_layer}[measure](model, criterion, data, opt)
        seconds = time.perf_counter() - start
        for row in found:
            row.setdefault("seconds", seconds)  # rows computed together share the measure's time
            report(describe(row))
        rows.extend(found)
    return rows, density


def describe(row: dict) -> str:
    """One printed line per result."""
    text = f"{row['quantity']} = {row['value']:.6g}"
    if row["measure"] == "keskar":
        space = f"subspace {row['subspace_dim']}" if row.get("subspace_dim") else "full space"
        text = f"keskar sharpness (epsilon {row['epsilon']:g}, {space}) = {row['value']:.4g} %"
    if row["measure"] == "adaptive":
        steps = "ascent steps" if row["kind"] == "worst" else "samples"
        text = (f"{row['kind']}-case {row['scaling']} {row['norm']} sharpness (rho {row['rho']:g}, m = "
                f"{row['batch_size']}, {row['examples']} examples, {row['iterations']} {steps} per batch) = "
                f"{row['value']:.4g}")
    if row["measure"] in ("gauss-newton", "fisher"):
        text = f"{row['kind']} {text}"
    if row.get("block"):
        text = f"{row['block']} ({row['n_params']} params): {text}"
    if not math.isnan(row.get("std_error", math.nan)):
        text += f" +- {row['std_error']:.3g}"
    if row.get("hvp_count") is not None:
        text += f" ({row['hvp_count']} HVPs" + ("" if row.get("converged", True) else ", NOT converged") + ")"
    return text + f" [{row['seconds']:.1f} s]"


def measure_checkpoint(path, measures, *, split: str = "train", batches: int | None = None,
                       limit: int | None = None, batch_size: int = 128, device="auto", which: str = "best",
                       datasets_dir=None, options: MeasureOptions | None = None, output=None, report=print):
    """Measure a checkpoint; write ``output`` (CSV) and, for the spectrum, ``<stem>_spectrum.{csv,png}``.

    Returns the results as a DataFrame (columns ``COLUMNS``).
    """
    opt = options or MeasureOptions()
    dev = pick_device(device)
    model, cfg, criterion = model_and_criterion(path, dev, which)
    data = measurement_data(cfg, split, batch_size=batch_size, batches=batches, limit=limit,
                            datasets_dir=datasets_dir, device=dev).in_memory()
    if opt.float64:
        model, data = model.double(), data.cast(torch.float64)
    report(f"{path}: {cfg.model} on {cfg.dataset} {split} split, {data.num_examples} examples in "
           f"{len(data)} batches (no augmentation); Hessian in {opt.hessian_mode} mode ("
           f"{'batch statistics, as training sees it' if opt.hessian_mode == 'train' else 'running statistics'}"
           f"), {'float64' if opt.float64 else 'float32'}")
    check_measurable(model, criterion, data, path)
    rows, density = run_measures(model, criterion, data, measures, opt, report)
    frame = pd.DataFrame(rows).reindex(columns=COLUMNS)
    frame["split"], frame["checkpoint"] = split, str(path)
    frame["examples"] = frame["examples"].fillna(data.num_examples)  # adaptive rows measure their own subset
    frame["hessian_mode"] = [opt.hessian_mode if m in MODE_MEASURES else "eval" for m in frame["measure"]]
    frame["dtype"] = "float64" if opt.float64 else "float32"
    # integers with gaps, not floats
    for column in ("hvp_count", "n_params", "subspace_dim", "iterations", "batch_size", "examples"):
        frame[column] = frame[column].astype("Int64")
    if output is not None:
        output = Path(output)
        output.parent.mkdir(parents=True, exist_ok=True)
        frame.to_csv(output, index=False)
        report(f"wrote {output}")
        if density is not None:
            for written in write_spectrum(density, output.with_name(f"{output.stem}_spectrum")):
                report(f"wrote {written}")
    return frame


def write_spectrum(density: sharpness.SpectralDensity, stem: Path) -> list[Path]:
    """The SLQ nodes and weights (CSV) and the smoothed density on a log scale (PNG)."""
    nodes = pd.DataFrame([{"vector": i, "node": t, "weight": w}
                          for i, (ts, ws) in enumerate(zip(density.nodes, density.weights))
                          for t, w in zip(ts, ws)])
    csv_path, png_path = stem.with_suffix(".csv"), stem.with_suffix(".png")
    nodes.to_csv(csv_path, index=False)
    grid, values = density.density()
    fig, ax = new_figure(figsize=(6, 4))
    ax.semilogy(grid, np.maximum(values, 1e-12))
    ax.set_ylim(bottom=max(values.max() * 1e-8, 1e-12))
    ax.set_xlabel("eigenvalue")
    ax.set_ylabel("density (Gaussian-smoothed SLQ)")
    ax.set_title(f"Hessian spectrum: {density.n_params:,} parameters, {density.hvp_count} HVPs")
    ax.grid(alpha=0.3)
    save_png(fig, png_path, dpi=80)
    return [csv_path, png_path]


def parse_measures(values) -> list[str]:
    """``--measure hessian trace`` or ``--measure hessian,trace``."""
    out = []
    for value in values:
        out.extend(part for part in str(value).split(",") if part)
    bad = [m for m in out if m not in MEASURES]
    if bad or not out:
        got = ", ".join(bad) or "nothing"
        raise ConfigError(f"--measure must be among {', '.join(MEASURES)} (several allowed); got {got}")
    return out
