"""`basinlab sharpness` and `basinlab landscape interpolate|directions|trajectory`."""
from __future__ import annotations

import re
from pathlib import Path

from basinlab.choices import CHECKPOINTS, HESSIAN_MODES, SPLITS
from basinlab.cli.options import BATCH, COUNT, SEED, add_trust_option, integer, number, output_file
from basinlab.errors import ConfigError

FISHER_NAMES = ("exact", "mc", "empirical")  # --fisher; basinlab.analysis.measure.FISHER_KINDS maps them
DEFAULT_INTERPOLATION = "-1:0.1:2.01"   # Keskar et al.: from 1 beyond A to 1 beyond B, 31 points
DEFAULT_DIRECTIONS = "-1:0.05:1.01"     # Li et al.: [-1, 1] around the model, 41 points

# argparse takes "-1:0.1:2.01" for an unknown option; values that start like a number are values here (-inf
# and -nan too, so that --alpha -inf is refused as a value rather than as "expected one argument")
_NUMBER_LIKE = re.compile(r"^-(\d|\.\d|(inf|infinity|nan)$)", re.IGNORECASE)


def _data_options(parser, default_split) -> None:
    parser.add_argument("--split", nargs="+", choices=SPLITS, default=default_split,
                        help="data splits to evaluate (training data is never augmented)")
    parser.add_argument("--limit", type=COUNT, help="N examples of each split, chosen as the run's --limit-mode "
                                                  "(class-stratified by default; default: the run's "
                                                  "--train-limit/--val-limit)")
    parser.add_argument("-b", "--batch-size", type=BATCH, default=256, help="evaluation batch size")
    parser.add_argument("--which", choices=CHECKPOINTS, default="best", help="checkpoint of a run folder")
    parser.add_argument("--datasets-dir", help="folder holding the dataset (default: the run's)")
    parser.add_argument("--device", default="auto")
    add_trust_option(parser)


def _landscape_options(parser, default_alpha, output, alpha_default_text=None) -> None:
    parser.add_argument("--alpha", default=default_alpha,
                        help=f"start:step:stop (stop exclusive), one number or a comma list (default "
                             f"{alpha_default_text or default_alpha})")
    _data_options(parser, ["train", "val"])
    parser.add_argument("--bn-recalibrate", action="store_true",
                        help="re-estimate BatchNorm running statistics on training batches at every point")
    parser.add_argument("--bn-batches", type=integer(1, 100_000), default=10, help="training batches for "
                                                                                   "--bn-recalibrate")
    parser.add_argument("-o", "--output", type=output_file, default=output, help="output prefix: PREFIX.csv, "
                                                                                 "PREFIX.png, PREFIX.json")
    parser.add_argument("--overwrite", action="store_true", help="discard points of an earlier run of PREFIX.csv")
    parser.add_argument("--quiet", action="store_true", help="no progress line")
    parser.add_argument("--yes", action="store_true", help=f"run a grid of more than {LARGE_GRID} points (each one a "
                                                           f"pass over the data; refused without it)")
    parser._negative_number_matcher = _NUMBER_LIKE


LARGE_GRID = 441  # 21 x 21 points: more is hours on a CPU; asked for explicitly with --yes


def _announce_grid(points: int, args) -> None:
    """Say how many points the grid has before any is evaluated; refuse a large one without --yes."""
    splits = " and ".join(args.split)
    if points > LARGE_GRID and not args.yes:
        raise ConfigError(f"the grid has {points:,} points, each a pass over the {splits} data (hours on a CPU at full "
                          f"size): add --yes to run it, or take a coarser step or --limit N examples")
    # the count itself is said by the view once model and data are loaded (views.announce_grid)


def add_commands(sub) -> None:
    _add_sharpness(sub)
    _add_landscape(sub)


def _add_sharpness(sub) -> None:
    sharp = sub.add_parser("sharpness", help="Hessian eigenvalues, trace, spectrum, per-layer, Gauss-Newton and Fisher "
                                             "curvature, Keskar or adaptive sharpness of a checkpoint")
    sharp.add_argument("checkpoint", help="checkpoint file or run folder (best.pt, see --which)")
    sharp.add_argument("--measure", nargs="+", default=["hessian"],
                       metavar="hessian|trace|spectrum|keskar|adaptive|min-eigenvalue|gauss-newton|fisher",
                       help="what to measure (several allowed); default hessian")
    sharp.add_argument("--top-k", type=integer(1, 1000), default=1, help="hessian: number of top eigenvalues")
    sharp.add_argument("--method", choices=("lanczos", "power"), default="lanczos", help="hessian: eigen-solver")
    sharp.add_argument("--max-iter", type=integer(1, 100_000), default=100,
                       help="hessian: HVP budget (power: per eigenvalue); trace: most Rademacher samples")
    sharp.add_argument("--tol", type=number(above=0), help="relative tolerance (hessian 1e-4, at least 5e-5 in "
                                                           "float32; trace 1e-3, the standard error's)")
    sharp.add_argument("--hessian-mode", choices=HESSIAN_MODES, default="eval",
                       help="hessian, trace, spectrum: eval = BatchNorm running statistics (the test-time "
                            "function), train = batch statistics (what training steps see; BN statistics are "
                            "left untouched) (default: eval)")
    sharp.add_argument("--float64", action="store_true", help="measure in float64 (needed for --tol below 5e-5)")
    sharp.add_argument("--iterations", type=integer(1, 100_000), default=100, help="spectrum: Lanczos steps per "
                                                                                   "start vector")
    sharp.add_argument("--n-vectors", type=integer(1, 10_000), default=1, help="spectrum: random start vectors")
    sharp.add_argument("--epsilon", type=number(above=0), nargs="+", default=[1e-3, 5e-4], help="keskar: box sizes")
    sharp.add_argument("--subspace-dim", type=integer(1, 10_000_000), help="keskar: random subspace dimension "
                                                                           "(default: full space)")
    sharp.add_argument("--keskar-iter", type=integer(1, 100_000), default=10, help="keskar: L-BFGS-B iterations")
    _curvature_options(sharp)
    _adaptive_options(sharp)
    sharp.add_argument("--split", choices=SPLITS, default="train",
                       help="data of the measured loss (default train, as Keskar; no augmentation)")
    sharp.add_argument("--batches", type=COUNT, help="first N batches of the split only (training order of epoch 0)")
    sharp.add_argument("--limit", type=COUNT, help="N examples of the split, chosen as the run's --limit-mode "
                                                    "(class-stratified by default; default: the run's limit)")
    sharp.add_argument("-b", "--batch-size", type=BATCH, default=128)
    sharp.add_argument("--seed", type=SEED, default=0, help="seed of the random vectors and subspace")
    sharp.add_argument("--which", choices=CHECKPOINTS, default="best", help="checkpoint of a run folder")
    sharp.add_argument("--datasets-dir", help="folder holding the dataset (default: the run's)")
    sharp.add_argument("--device", default="auto")
    add_trust_option(sharp)
    sharp.add_argument("-o", "--output", type=output_file, default="sharpness.csv", help="CSV of the results")
    sharp.set_defaults(func=cmd_sharpness)


def _curvature_options(sharp) -> None:
    """Per-block Hessian spectra and the Gauss-Newton / Fisher measures (unset flags are None: given without the
    measure they serve, they are refused)."""
    sharp.add_argument("--per-layer", action="store_true",
                       help="also lambda_max and trace of each layer's diagonal Hessian block (budget --max-iter)")
    sharp.add_argument("--block-depth", type=integer(1, 100),
                       help="per-layer: group parameters by the first D components of their module path "
                            "(default: one block per layer with parameters)")
    sharp.add_argument("--fisher", nargs="+", choices=tuple(FISHER_NAMES),
                       help="fisher: exact (= Gauss-Newton for cross-entropy and MSE), mc (labels sampled from the "
                            "model) and/or empirical (true labels) (default mc)")
    sharp.add_argument("--mc-samples", type=integer(1, 10_000),
                       help="fisher mc: sampled labels per example (default 1)")


def _check_detail_flags(args, measures) -> None:
    """Refuse, in one line, a detail flag whose measure was not asked for (it would be silently ignored)."""
    fisher = args.fisher or ["mc"]
    needs = [("--block-depth", args.block_depth is not None, args.per_layer, "--per-layer"),
             ("--fisher", args.fisher is not None, "fisher" in measures, "--measure fisher"),
             ("--mc-samples", args.mc_samples is not None, "fisher" in measures and "mc" in fisher,
              "--measure fisher with --fisher mc"),
             ("--normalize-logits", args.normalize_logits, "adaptive" in measures, "--measure adaptive"),
             ("--restarts", args.restarts is not None, "adaptive" in measures and "worst" in args.kind,
              "--measure adaptive with --kind worst"),
             ("--random-start", args.random_start, "adaptive" in measures and "worst" in args.kind,
              "--measure adaptive with --kind worst")]
    for flag, given, served, what in needs:
        if given and not served:
            raise ConfigError(f"{flag} applies to {what} only, which was not asked for; add it or drop {flag}")


def _adaptive_options(sharp) -> None:
    """Andriushchenko et al. (2023); defaults are theirs (eval_sharpness.py, sh/eval_sharpness_final.sh)."""
    sharp.add_argument("--kind", nargs="+", choices=("worst", "average"), default=["worst"],
                       help="adaptive: worst-case (Auto-PGD ascent) and/or average-case (random noise) sharpness "
                            "(default worst)")
    sharp.add_argument("--scaling", nargs="+", choices=("adaptive", "plain"), default=["adaptive"],
                       help="adaptive: perturbation scaled elementwise by |w| (adaptive) and/or not (plain) "
                            "(default adaptive)")
    sharp.add_argument("--norm", nargs="+", choices=("linf", "l2"), default=["linf"],
                       help="adaptive: ball of the perturbation (default linf)")
    sharp.add_argument("--rho", type=number(above=0), nargs="+",
                       help="adaptive: radii, each measured for every kind, scaling and norm (default: one per "
                            "definition, from the paper's CIFAR-10 ResNet grids; see docs/measuring-minima.md)")
    sharp.add_argument("--ascent-iter", type=integer(1, 100_000), default=20,
                       help="adaptive, worst case: ascent steps per batch (default 20, the paper's)")
    sharp.add_argument("--samples", type=integer(1, 100_000), default=20,
                       help="adaptive, average case: noise samples per batch (default 20, the paper's)")
    sharp.add_argument("--adaptive-examples", type=integer(1, 10_000_000), default=1024,
                       help="adaptive: the first N examples of the measured data (default 1024, the paper's); "
                            "sharpness is computed per batch of -b examples (m-sharpness, m = -b) and averaged")
    sharp.add_argument("--normalize-logits", action="store_true",
                       help="adaptive: the loss of centred, unit-norm logits, which removes their scale (the "
                            "authors' --normalize_logits)")
    sharp.add_argument("--restarts", type=integer(1, 1000),
                       help="adaptive, worst case: ascents per batch, the largest loss counting; more than 1 starts "
                            "each at a random point of the perturbation set (default 1: one ascent from delta = 0)")
    sharp.add_argument("--random-start", action="store_true",
                       help="adaptive, worst case: start each ascent at a random point of the perturbation set "
                            "(the authors' --sharpness_rand_init; implied by --restarts above 1)")


def _add_landscape(sub) -> None:
    land = sub.add_parser("landscape", help="loss-landscape views: interpolation between two models, random "
                                                "directions, PCA of a run's trajectory")
    from basinlab.cli.options import (
        ArgumentParser,  # usage errors as one-line ConfigErrors, like every basinlab command
    )
    views = land.add_subparsers(dest="view", required=True, parser_class=ArgumentParser)
    interp = views.add_parser("interpolate", help="loss and accuracy along (1-alpha) A + alpha B")
    interp.add_argument("checkpoint_a", help="model A (alpha = 0): checkpoint file or run folder")
    interp.add_argument("checkpoint_b", help="model B (alpha = 1)")
    _landscape_options(interp, DEFAULT_INTERPOLATION, "interpolation")
    interp.set_defaults(func=cmd_interpolate)

    dirs = views.add_parser("directions", help="1-D/2-D plots along filter-normalised random directions")
    dirs.add_argument("checkpoint", help="checkpoint file or run folder")
    _landscape_options(dirs, DEFAULT_DIRECTIONS, "directions")
    dirs.add_argument("--beta", help="second direction's range: makes a 2-D grid (resumable)")
    dirs.add_argument("--seed", type=SEED, default=0, help="seed of the directions")
    dirs.add_argument("--include-bias-bn", action="store_true",
                      help="also move biases and normalisation parameters (default: held fixed, as Li et al.)")
    dirs.add_argument("--points-per-pass", type=integer(1, 1024), default=1,
                      help="grid points evaluated together in one data pass (torch.func.vmap); "
                           "slower than 1 on CPU (benchmarks/sharpness.py)")
    dirs.set_defaults(func=cmd_directions)

    traj = views.add_parser("trajectory", help="2-D plot along the first two principal components of a run's epoch "
                                               "checkpoints (Li et al. 2018), the trajectory drawn on it")
    traj.add_argument("checkpoint", help="run folder with epoch_<k>.pt checkpoints (basinlab train --save-all)")
    _landscape_options(traj, None, "trajectory", alpha_default_text="21 points covering the trajectory")
    traj.add_argument("--beta", help="second direction's range (default: 21 points covering the trajectory)")
    traj.add_argument("--exclude-bias-bn", action="store_true",
                      help="leave biases and normalisation parameters out of the PCA (default: every parameter, "
                           "as loss-landscape's plot_trajectory.py)")
    traj.add_argument("--points-per-pass", type=integer(1, 1024), default=1,
                      help="grid points evaluated together in one data pass (torch.func.vmap)")
    traj.set_defaults(func=cmd_trajectory, which="last")  # the trajectory ends at the run's final weights


def cmd_sharpness(args) -> int:
    # counts and seeds were checked by their argument types (integer, SEED)
    from basinlab.analysis.measure import MeasureOptions, measure_checkpoint, parse_measures
    measures = parse_measures(args.measure)
    _check_detail_flags(args, measures)
    options = MeasureOptions(top_k=args.top_k, method=args.method, max_iter=args.max_iter, tol=args.tol,
                             iterations=args.iterations, n_vectors=args.n_vectors, epsilons=tuple(args.epsilon),
                             subspace_dim=args.subspace_dim, keskar_iter=args.keskar_iter, seed=args.seed,
                             hessian_mode=args.hessian_mode, float64=args.float64,
                             kinds=tuple(dict.fromkeys(args.kind)), scalings=tuple(dict.fromkeys(args.scaling)),
                             norms=tuple(dict.fromkeys(args.norm)),
                             rhos=tuple(dict.fromkeys(args.rho)) if args.rho else None,
                             ascent_iter=args.ascent_iter, samples=args.samples,
                             adaptive_examples=args.adaptive_examples, per_layer=args.per_layer,
                             normalize_logits=args.normalize_logits, restarts=args.restarts or 1,
                             random_start=args.random_start or (args.restarts or 1) > 1,
                             blocks="module" if args.block_depth is None else args.block_depth,
                             fisher_kinds=tuple(dict.fromkeys(args.fisher or ["mc"])),
                             mc_samples=args.mc_samples or 1)
    try:
        measure_checkpoint(args.checkpoint, measures, split=args.split, batches=args.batches,
                           limit=args.limit, batch_size=args.batch_size, device=args.device, which=args.which,
                           datasets_dir=args.datasets_dir, options=options, output=args.output)
    except FloatingPointError as exc:  # metrics/keskar.py: the loss overflowed inside the box (--epsilon 1e8)
        raise ConfigError(f"keskar sharpness with --epsilon {' '.join(f'{e:g}' for e in args.epsilon)}: {exc}; "
                          f"use smaller boxes (Keskar et al. use 1e-3 and 5e-4)") from None
    return 0


def _common(args) -> dict:
    return dict(splits=args.split, limit=args.limit, batch_size=args.batch_size, bn_recalibrate=args.bn_recalibrate,
                bn_batches=args.bn_batches, which=args.which, device=args.device, datasets_dir=args.datasets_dir,
                output=args.output, overwrite=args.overwrite, quiet=args.quiet)


def cmd_interpolate(args) -> int:
    from basinlab.analysis.landscape import parse_range
    from basinlab.analysis.views import interpolate_checkpoints
    alphas = parse_range(args.alpha, "--alpha")
    _announce_grid(len(alphas), args)
    frame, csv, png = interpolate_checkpoints(args.checkpoint_a, args.checkpoint_b, alphas, **_common(args))
    print(frame.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    print(f"wrote {csv} and {png}")
    return 0


def cmd_directions(args) -> int:
    from basinlab.analysis.landscape import check_grid_size, parse_range
    from basinlab.analysis.views import random_directions
    alphas = parse_range(args.alpha, "--alpha")
    betas = parse_range(args.beta, "--beta") if args.beta is not None else None
    check_grid_size(alphas, betas)
    _announce_grid(len(alphas) * (len(betas) if betas is not None else 1), args)
    frame, csv, png = random_directions(args.checkpoint, alphas, betas, seed=args.seed,
                                        include_bias_bn=args.include_bias_bn, points_per_pass=args.points_per_pass,
                                        **_common(args))
    if betas is None:
        print(frame.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    else:
        for split in args.split:
            column = frame[f"{split}_loss"]
            centre = frame[(frame["alpha"] == 0) & (frame["beta"] == 0)][f"{split}_loss"]
            at = f", {centre.iloc[0]:.4f} at the model" if len(centre) else ""
            print(f"{split} loss over {len(frame)} points: {column.min():.4f} to {column.max():.4f}{at}")
    print(f"wrote {csv} and {png}")
    return 0


def cmd_trajectory(args) -> int:
    from basinlab.analysis.landscape import check_grid_size, parse_range
    from basinlab.analysis.trajectory import GRID_POINTS
    from basinlab.analysis.views import trajectory_landscape
    alphas = parse_range(args.alpha, "--alpha") if args.alpha is not None else None
    betas = parse_range(args.beta, "--beta") if args.beta is not None else None
    if alphas is not None and betas is not None:
        check_grid_size(alphas, betas)
    if (alphas is not None and len(set(alphas)) < 2) or (betas is not None and len(set(betas)) < 2):
        raise ConfigError("a 2-D grid needs at least two values of --alpha and of --beta (for the contours)")
    _announce_grid(len(alphas or range(GRID_POINTS)) * len(betas or range(GRID_POINTS)), args)
    frame, points, csv, png = trajectory_landscape(args.checkpoint, alphas, betas,
                                                   exclude_bias_bn=args.exclude_bias_bn,
                                                   points_per_pass=args.points_per_pass, **_common(args))
    print(points.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    for split in args.split:
        column = frame[f"{split}_loss"]
        print(f"{split} loss over {len(frame)} points: {column.min():.4f} to {column.max():.4f}")
    output = Path(args.output)
    print(f"wrote {csv}, {png} and {output.with_name(f'{output.name}_trajectory.csv')}")
    return 0
