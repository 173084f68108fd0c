"""Every number in the experiments' result tables (and the prose numbers the READMEs build on) is recomputed here
from the committed CSVs: a README cannot drift from what was measured. Numbers quoted from the papers are in
tables the READMEs mark as quoted, and are not checked."""
import re
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENTS = ROOT / "experiments"


def table(readme: Path, first_header: str, occurrence: int = 0) -> list[list[str]]:
    """The body rows (cells, stripped) of the Markdown table whose header row starts with `first_header` (the
    `occurrence`-th such table, from 0)."""
    lines = readme.read_text().splitlines()
    start = [i for i, line in enumerate(lines) if line.startswith(f"| {first_header} |")][occurrence]
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip().strip("*") for cell in line.strip().strip("|").split("|")])
    return rows


def close(written: str, value: float) -> bool:
    """`written` is `value` rounded to the digits shown (a trailing 'x' or '%' aside)."""
    text = written.strip().rstrip("x%").replace(",", "")
    decimals = len(text.split(".")[1]) if "." in text else 0
    return abs(float(text) - value) <= 0.5 * 10 ** -decimals + 1e-12


def median_range(cell: str) -> tuple[str, str, str]:
    """'48.48 (46.14-50.81)' -> ('48.48', '46.14', '50.81')."""
    found = re.fullmatch(r"([\d.]+) \(([\d.]+)-([\d.]+)\)", cell)
    assert found, cell
    return found.groups()


def check_median_range(cell: str, row: pd.Series) -> None:
    median, low, high = median_range(cell)
    assert close(median, row["final_val_acc1_median"]) and close(low, row["final_val_acc1_min"]) \
        and close(high, row["final_val_acc1_max"]), (cell, row["setting"])

def experiment_script(folder: Path, name: str):
    """An experiment's script (analyze.py, run.py) as a module, imported from its file."""
    import importlib.util
    spec = importlib.util.spec_from_file_location(f"{folder.name}_{name}", folder / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def recomputed_tables(folder: Path, count: int):
    """(analyze.py, the sweep folder, its runs, table, paired differences, README text): the tables recomputed from
    the committed runs equal table.csv and paired.csv, and the README holds both as analyze.py writes them."""
    from basinlab.sweep import stored_spec
    from basinlab.sweep.summary import run_rows
    analyze = experiment_script(folder, "analyze")
    sweep = folder / "runs"
    runs = run_rows(stored_spec(sweep), sweep)
    assert len(runs) == count
    rows, differences = analyze.table(runs), analyze.paired(runs)
    pd.testing.assert_frame_equal(rows.reset_index(drop=True), pd.read_csv(folder / "table.csv"),
                                  check_exact=False, rtol=1e-9, check_dtype=False)
    pd.testing.assert_frame_equal(differences, pd.read_csv(folder / "paired.csv"), check_exact=False, rtol=1e-9,
                                  check_dtype=False)
    text = (folder / "README.md").read_text()
    assert analyze.markdown(rows) in text and analyze.paired_markdown(differences) in text
    return analyze, sweep, runs, rows, differences, text



# ---------------------------------------------------------------------------------------------- flat minima
def test_flat_minima_table_is_its_summary_and_sharpness_csvs():
    folder = EXPERIMENTS / "flat-minima"
    summary = pd.read_csv(folder / "summary.csv").set_index("variant")
    sharp = pd.read_csv(folder / "sharpness.csv").groupby("variant").median(numeric_only=True)
    rows = table(folder / "README.md", "variant")
    assert [r[0] for r in rows] == list(summary.index)
    for variant, accuracy, lam, loss, rise in rows:
        check_median_range(accuracy, summary.loc[variant])
        assert close(lam, sharp.loc[variant, "lambda_max"]), (variant, lam)
        assert close(loss, sharp.loc[variant, "clean_loss"]), (variant, loss)
        assert close(rise, sharp.loc[variant, "noise_rise"]), (variant, rise)
    text = (folder / "README.md").read_text()
    lam_sb, lam_lb = sharp.loc["sb", "lambda_max"], sharp.loc["lb", "lambda_max"]
    assert f"lambda_max {lam_lb / lam_sb:.1f}x the small" in text
    gap = summary.loc["sb", "final_val_acc1_median"] - summary.loc["lb", "final_val_acc1_median"]
    assert f"{gap:.2f} points lower top-1" in text
    for variant, words in (("sb-sam", "+0.45 and"), ("sb-asam", "+0.30 points")):
        gain = summary.loc[variant, "final_val_acc1_median"] - summary.loc["sb", "final_val_acc1_median"]
        assert words in text and close(words.split()[0].lstrip("+"), gain)
    runs = pd.read_csv(folder / "sharpness.csv").set_index("run")["final_val_acc1"]
    paired = table(folder / "README.md", "variant", occurrence=1)
    assert len(paired) == 11
    for variant, *differences in paired:
        for seed, written in enumerate(differences):
            assert close(written.lstrip("+"), runs[f"{variant}-s{seed}"] - runs[f"sb-s{seed}"]), (variant, seed)
    for variant, written in (("sb-sam-m16", "94.15"), ("sb-sam-gbn16", "94.05"), ("sb-gbn16", "93.70")):
        assert f"({written})" in text or f"reaches {written}" in text
        assert close(written, summary.loc[variant, "final_val_acc1_median"])


def test_m_sharpness_table_is_its_csv_and_the_per_run_results():
    folder = EXPERIMENTS / "flat-minima"
    summary = pd.read_csv(folder / "msharpness.csv").set_index("setting")
    runs = folder / "runs-msharpness"

    def final(name):  # a finished run's final val top-1, else None
        state = runs / ".sweep" / f"{name}.json"
        done = state.is_file() and '"done"' in state.read_text()
        return pd.read_csv(runs / name / "results.csv")["val_acc1"].iloc[-1] if done else None

    def train_loss(name):
        return pd.read_csv(runs / name / "results.csv")["train_loss"].iloc[-1] if final(name) is not None else None

    rows = table(folder / "README.md", "setting")
    assert [r[0] for r in rows] == list(summary.index)
    for setting, n, accuracy, loss, *differences in rows:
        assert n == f"{int(summary.loc[setting, 'n'])}/3"
        if accuracy != "–":
            check_median_range(accuracy, summary.loc[setting])
            losses = [v for v in (train_loss(f"{setting}-s{seed}") for seed in range(3)) if v is not None]
            assert close(loss, pd.Series(losses).median()), (setting, loss)
        for seed, written in enumerate(differences if setting != "sgd" else []):
            ours, plain = final(f"{setting}-s{seed}"), final(f"sgd-s{seed}")
            if written == "–":
                assert ours is None or plain is None, (setting, seed)
            else:
                assert close(written.lstrip("+"), ours - plain), (setting, seed, written)

    median = summary["final_val_acc1_median"]
    text = (folder / "README.md").read_text()
    assert (f"medians {median['sam-m128']:.2f}, {median['sam-m32']:.2f} and {median['sam-m16']:.2f} for m = 128, 32 "
            f"and 16 against {median['sgd']:.2f}") in " ".join(text.split())
    assert f"({median['sam-m16']:.2f} against {median['sam-m128-gbn16']:.2f}" in " ".join(text.split())


# ---------------------------------------------------------------------------------------------- async SGD
def test_async_sgd_table_is_its_summary_and_stability_csvs():
    folder = EXPERIMENTS / "async-sgd"
    summary = pd.read_csv(folder / "summary.csv").set_index("variant")
    final = pd.read_csv(folder / "stability.csv").groupby("variant").median(numeric_only=True)
    for cells in table(folder / "README.md", "variant"):
        variant = cells[0].split(" (")[0]
        lr, accuracy, loss, lam, product, threshold, ratio = cells[1:]
        check_median_range(accuracy, summary.loc[variant])
        got = final.loc[variant]
        for written, column in ((lr, "lr"), (loss, "final_train_loss"), (lam, "lambda_max"),
                                (product, "lr_times_lambda_max"), (threshold, "threshold"),
                                (ratio, "ratio_to_threshold")):
            assert close(written, got[column]), (variant, column, written, got[column])
    sync, pure = summary.loc["sync", "final_val_acc1_median"], summary.loc["asgd-8", "final_val_acc1_median"]
    assert f"loses {round(sync - pure)} points" in (folder / "README.md").read_text()


# ---------------------------------------------------------------------------------------------- autoHyper
def test_autohyper_tables_are_its_comparison_and_grid_csvs():
    folder = EXPERIMENTS / "autohyper"
    comparison = pd.read_csv(folder / "comparison.csv").set_index("seed")
    for seed, lr, trials, accuracy, best_lr, best, median, cost in table(folder / "README.md", "seed"):
        row = comparison.loc[int(seed)]
        assert close(lr, row["chosen_lr"]) and close(accuracy, row["autohyper_final_val_acc1"])
        assert trials == f"{int(row['trials'])} ({int(row['trial_epochs'])})"
        assert close(best_lr, row["grid_best_lr"]) and close(best, row["grid_best_final_val_acc1"])
        assert close(median, row["grid_median_final_val_acc1"]) and close(cost, row["search_cost_vs_grid"])
    grid = pd.read_csv(folder / "summary.csv").set_index("lr")
    text = (folder / "README.md").read_text()
    line = text[text.index("The grid over seeds"):text.index("![the grid")]
    for lr, row in grid.iterrows():
        assert f"{row['final_val_acc1_median']:.2f}" in line, lr
    medians = comparison["autohyper_final_val_acc1"].median()
    assert f"(median {medians:.2f})" in text
    best_lr = grid["final_val_acc1_median"].idxmax()
    assert f"best\ngrid lr over seeds, {best_lr:g} ({grid.loc[best_lr, 'final_val_acc1_median']:.2f})" in text
    assert (comparison["chosen_lr"] > best_lr).all()  # "just above its best grid lr"
    prose = " ".join(text.split())
    assert f"same on every seed ({comparison['chosen_lr'].min():.3f}-{comparison['chosen_lr'].max():.3f}:" in prose
    own_best = comparison["autohyper_final_val_acc1"] - comparison["grid_best_final_val_acc1"]
    over_median = comparison["autohyper_final_val_acc1"] - comparison["grid_median_final_val_acc1"]
    assert f"within 1 point on one seed (seed 1, {own_best[1]:+.2f}), {-own_best[2]:.2f} below on seed 2, and " \
           f"{-own_best[0]:.2f} below on seed 0" in prose and abs(own_best[1]) < 1 < min(-own_best[0], -own_best[2])
    assert over_median[0] < 0
    assert f"{over_median[1]:.2f} and {over_median[2]:.2f} points above the grid's median" in prose
    runs = folder / "runs"
    finals = [pd.read_csv(f)["val_acc1"] for f in [*runs.glob("autohyper-s*/lr=*/trial_0/results.csv"),
                                                    *runs.glob("grid/lr_0.1-s*/results.csv")]]
    assert f"swings by up to {max(h.diff().abs().max() for h in finals):.0f} points" in prose
    searches = [pd.read_csv(runs / f"autohyper-s{seed}" / "search.csv") for seed in (0, 1, 2)]
    start = [float(d.loc[d["lr"].round(6) == 0.0625, "Z"].iloc[0]) for d in searches]
    lowest = [float(d["Z"].min()) for d in searches]
    assert f"from {min(start):.2f}-{max(start):.2f} at lr 0.0625 to {min(lowest):.2f}-{max(lowest):.2f} at its " \
           f"lowest" in prose
    seed0 = pd.read_csv(next(runs.glob("autohyper-s0/lr=*/trial_0/results.csv")))["val_acc1"]
    assert f"peaked at {seed0.max():.2f} in epoch {seed0.idxmax() + 1} and ended at {seed0.iloc[-1]:.2f}" in prose


def test_autohyper_comparison_is_recomputed_from_its_per_run_files(tmp_path):
    """comparison.csv is run.py's comparison of the committed run folders (each search's record and trials, its
    training, the grid's runs), recomputed here; each search's copied search.csv is its run folder's."""
    folder = EXPERIMENTS / "autohyper"
    _, table = experiment_script(folder, "run").comparison_table("reduced", folder / "runs")
    table.to_csv(tmp_path / "comparison.csv", index=False)   # as run.py writes it
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "comparison.csv"), pd.read_csv(folder / "comparison.csv"),
                                  check_exact=False, rtol=1e-9)
    for seed in (0, 1, 2):
        search = folder / "runs" / f"autohyper-s{seed}" / "search.csv"
        assert search.read_text() == (folder / f"search-s{seed}.csv").read_text()
        trials = pd.read_csv(search)["run"].dropna()
        assert all((folder / "runs" / f"autohyper-s{seed}" / t / "lowrank.csv").is_file() for t in trials)


# ---------------------------------------------------------------------------------------------- online norm
def test_online_norm_tables_and_prose_are_its_per_run_files():
    """table, paired, rerun-checks and threads (.csv) are analyze.py's, recomputed from the committed runs; the
    README holds each table as analyze.py writes it, and each number its prose quotes is recomputed here: the run
    time and commits, the paired gaps, the ranking on every seed, the first and last epochs' training top-1, and
    the checks' comparisons."""
    from basinlab.sweep import stored_spec
    from basinlab.sweep.summary import run_cost, run_rows
    folder = EXPERIMENTS / "online-norm"
    analyze = experiment_script(folder, "analyze")
    sweep = folder / "runs"
    runs = run_rows(stored_spec(sweep), sweep)
    assert len(runs) == 15   # 18 asked; the 3 without normalization diverged
    computed = {"table": (analyze.table(sweep, runs), analyze.markdown),
                "paired": (analyze.paired(runs), analyze.paired_markdown),
                "rerun-checks": (analyze.checks(sweep, runs), analyze.checks_markdown),
                "threads": (analyze.threads(sweep), analyze.threads_markdown)}
    text = (folder / "README.md").read_text()
    for name, (frame, to_markdown) in computed.items():
        committed = pd.read_csv(folder / f"{name}.csv")
        text_columns = [c for c in frame.columns if pd.api.types.is_string_dtype(frame[c])]  # "" reads back as NaN
        committed[text_columns] = committed[text_columns].fillna("")
        pd.testing.assert_frame_equal(frame.reset_index(drop=True), committed, check_exact=False, rtol=1e-9,
                                      check_dtype=False)
        assert to_markdown(frame) in text, name
    prose = " ".join(text.split())
    index = " ".join((EXPERIMENTS / "README.md").read_text().split())
    spent = run_cost(sweep, runs)
    assert f"The {spent['runs']} runs that finished took {spent['minutes']:.0f} minutes of run time" in prose
    assert ", ".join(spent["commits"][:-1]) + f" and {spent['commits'][-1]} (each run's `env.yaml`" in prose
    pairs = computed["paired"][0].set_index("norm")
    assert pairs["one_sign"].all() and (pairs["high"] < 0).all()   # "on every seed"
    online = pairs.loc["online"]
    assert (f"here it is {-online['median']:.2f} points below it at the final epoch (median; {-online['high']:.2f} "
            f"to {-online['low']:.2f}, every seed below)") in prose
    rows = computed["table"][0].set_index("norm")
    assert f"and {-rows.loc['online', 'gap_best_here']:.2f} at the best epoch of the median curves" in prose
    paper_gaps = -rows.loc[["instance", "group", "layer"], "gap_best_paper"]
    assert f"the per-sample norms' {paper_gaps.min():.1f}-{paper_gaps.max():.1f} point gaps" in prose
    assert f"the paper's {paper_gaps.min():.1f}-{paper_gaps.max():.1f} point gaps of the per-sample norms" in index
    from basinlab.api import make_config
    memory = 1 / (1 - make_config(preset="onlinenorm-cifar10").afwd)   # afwd decays per sample
    assert f"a memory of about {memory:,.0f} samples, {memory / 128:.0f} steps of 128" in prose
    per_sample = pairs.loc[["instance", "group", "layer"]]
    assert (f"{-per_sample['high'].max():.2f}-{-per_sample['low'].min():.2f} points behind batch norm on every seed "
            f"(medians: instance {-per_sample.loc['instance', 'median']:.2f}, group "
            f"{-per_sample.loc['group', 'median']:.2f}, layer {-per_sample.loc['layer', 'median']:.2f})") in prose
    finals = runs.pivot_table(index="seed", columns="norm-mode", values="final_val_acc1")
    for seed, row in finals.iterrows():   # "the ranking, on every seed"
        assert list(row.sort_values(ascending=False).index) == ["batch", "online", "instance", "group", "layer"], seed

    def train_values(norms, epoch):
        return [pd.read_csv(sweep / f"norm-mode_{n}-s{s}" / "results.csv")["train_acc1"].iloc[epoch]
                for n in norms for s in range(3)]

    def train_top1(norms, epoch):
        values = train_values(norms, epoch)
        return f"{min(values):.2f}-{max(values):.2f}%"
    assert max(train_values(["online"], -1)) < min(train_values(["batch"], -1))   # "every seed lower"
    assert (f"after epoch 1: {train_top1(['instance', 'group', 'layer'], 0)} for them, {train_top1(['batch'], 0)} "
            f"for batch norm)") in prose
    assert f"is {train_top1(['online'], -1)[:-1]} against batch norm's {train_top1(['batch'], -1)[:-1]}, every " \
           "seed lower" in prose
    diverged = rows.loc["none", "diverged_at"].split("; ")
    assert "becomes NaN in the first epoch (at step " + ", ".join(d.split(", step ")[1].split(" of")[0]
                                                                for d in diverged[:-1]) in prose
    assert f"online {-online['median']:.2f} points below after 1,560 steps, median, every seed below" in index
    twice = computed["threads"][0].set_index("run").loc["batch-s0-threads2"]
    moved = twice["final_val_acc1"] - twice["twin_final_val_acc1"]
    batch = runs[runs["norm-mode"] == "batch"]["final_val_acc1"]
    assert moved > batch.max() - batch.min()
    assert (f"Seed 0 ends {moved:.2f} point higher with 2 threads than with 1: the order of sums alone moves a final "
            f"top-1 by more than batch norm's three seeds spread ({batch.max() - batch.min():.2f} points)") in prose
    assert f"a thread count alone moved batch norm's seed 0 by {moved:.2f}" in prose
    _check_online_norm_checks(folder, computed["rerun-checks"][0], runs, pairs, prose, index)


def _check_online_norm_checks(folder, checks, runs, pairs, prose, index):
    """The checks' prose: float32 and shorter memories against seed 0 in bf16, the 60-epoch pair against the
    20-epoch gap; and both the checks and the main runs equal the 2026-12-03 run's (group norm aside)."""
    from basinlab.sweep.summary import run_cost
    spent = run_cost(folder / "runs-checks", checks)
    assert f"{spent['runs']} runs, {spent['minutes']:.0f} minutes of run time; their `env.yaml` files name " \
           f"{', '.join(spent['commits'])}, where they started" in prose
    checks = checks.set_index("run")
    main = runs.set_index(["norm-mode", "seed"])["final_val_acc1"]
    fp32, decays = checks.loc["online-fp32-s0"], checks.loc["online-decays-4x-s0"]
    online0, batch0 = main[("online", 0)], main[("batch", 0)]
    assert (f"Float32 ({fp32['final_val_acc1']:.2f}) ends {fp32['final_val_acc1'] - online0:.2f} points above the "
            f"same seed in bf16 ({online0:.2f}), its gap {fp32['gap_to_batch']:+.2f} instead of "
            f"{online0 - batch0:+.2f}") in prose
    spread = runs[runs["norm-mode"] == "online"]["final_val_acc1"]
    assert f"the seeds' bf16 finals spread {spread.max() - spread.min():.2f} points" in prose
    assert f"do not help ({decays['final_val_acc1']:.2f}, {decays['gap_to_batch']:+.2f})" in prose
    batch60, online60 = checks.loc["batch-60ep-s0"], checks.loc["online-60ep-s0"]
    assert (f"(batch {batch0:.2f} to {batch60['final_val_acc1']:.2f}, online {online0:.2f} to "
            f"{online60['final_val_acc1']:.2f}) and seed 0's gap is {online60['gap_to_batch']:+.2f} instead of "
            f"{online0 - batch0:+.2f} (train top-1 {online60['final_train_acc1']:.2f} against "
            f"{batch60['final_train_acc1']:.2f})") in prose
    gains = [batch60["final_val_acc1"] - batch0, online60["final_val_acc1"] - online0]
    assert f"both norms gain {min(gains):.0f}-{max(gains):.0f} points" in prose
    span = pairs.loc["online", "high"] - pairs.loc["online", "low"]
    assert (f"a change of {online60['gap_to_batch'] - (online0 - batch0):.1f} points on one seed, where the "
            f"three seeds' gaps at 20 epochs span {span:.2f} points") in prose
    assert f"with 3x the steps one seed's gap is {-online60['gap_to_batch']:.2f}" in index
    old = pd.read_csv(folder / "summary-2026-12-03.csv").set_index("norm-mode")
    for norm in ("batch", "online", "instance", "layer", "group"):   # 3 seeds: min, median, max are all three
        for column in ("final_val_acc1", "best_val_acc1", "final_val_loss"):
            seeds = sorted(runs[runs["norm-mode"] == norm][column])
            same = seeds == [old.loc[norm, f"{column}_{s}"] for s in ("min", "median", "max")]
            assert same == (norm != "group"), (norm, column)
    old_checks = pd.read_csv(folder / "checks-2026-12-03.csv").set_index("variant")
    assert sorted(f"{variant}-s0" for variant in old_checks.index) == sorted(checks.index)
    for variant, row in old_checks.iterrows():   # "these four runs equal the 2026-12-03 checks'", every column said
        history = pd.read_csv(folder / "runs-checks" / f"{variant}-s0" / "results.csv")
        now = {"final_val_acc1": history["val_acc1"].iloc[-1], "best_val_acc1": history["val_acc1"].max(),
               "final_val_loss": history["val_loss"].iloc[-1], "best_val_loss": history["val_loss"].min()}
        assert now == {column: row[f"{column}_median"] for column in now}, variant


def test_online_norm_analysis_of_the_rerun_is_each_committed_run_s_results():
    """analyze.py's table from the runs' files, each read here directly: per norm mode, n and the final top-1's
    median and range are each finished run's last results.csv row; the runs-threads/ rows pair each run that
    started with 2 threads with the sweep's 1-thread run of its seed."""
    from basinlab.sweep import stored_spec
    from basinlab.sweep.state import run_state
    from basinlab.sweep.summary import run_rows
    analyze = experiment_script(EXPERIMENTS / "online-norm", "analyze")
    sweep = EXPERIMENTS / "online-norm" / "runs"
    rows = analyze.table(sweep, run_rows(stored_spec(sweep), sweep)).set_index("norm")
    assert list(rows.index) == list(analyze.NORMS) and (rows["asked"] == 3).all()
    for norm, row in rows.iterrows():
        done = [sweep / f"norm-mode_{norm}-s{seed}" for seed in range(3)
                if run_state(sweep, f"norm-mode_{norm}-s{seed}")["status"] == "done"]
        finals = [pd.read_csv(folder / "results.csv")["val_acc1"].iloc[-1] for folder in done]
        assert row["n"] == len(finals), norm
        if finals:
            assert row["final_val_acc1_median"] == pytest.approx(pd.Series(finals).median())
            assert (row["final_val_acc1_low"], row["final_val_acc1_high"]) == (min(finals), max(finals))
    assert rows.loc["online", "paper_best"] == 92.3 and "| 92.3 (0.26) |" in (sweep.parent / "README.md").read_text()
    none = rows.loc["none"]  # no normalization: every seed's loss becomes NaN in epoch 1 (exit 3, the sweep's error)
    assert (none["n"], none["diverged"], none["failed"]) == (0, 3, 0)
    assert none["diverged_at"].count("epoch 1, step ") == 3 and "non-finite loss at epoch 1" in analyze.markdown(
        rows.reset_index())
    pairs = analyze.threads(sweep)
    assert sorted(pairs["run"]) == sorted(p.name for p in (sweep.parent / "runs-threads").iterdir() if p.is_dir())
    for _, pair in pairs.iterrows():
        seed = pair["run"].split("-")[1]   # batch-s0-threads2
        assert (pair["threads"], pair["twin_threads"], pair["twin"]) == (2, 1, f"norm-mode_batch-{seed}")
        assert pair["twin_final_val_acc1"] == pd.read_csv(sweep / pair["twin"] / "results.csv")["val_acc1"].iloc[-1]


def test_online_norm_provenance_runs_show_what_changed_since_the_12_03_run():
    """runs-provenance/: batch norm's first epochs are the same at the 12-03 code (98f3096) and today's (with 2
    threads, as the 2-thread run of runs-threads/); group norm's first epoch changed at 56b7f88 (group and instance
    norm normalise channels_last bf16 inputs in contiguous layout), which the rerun's group-norm seed 0 follows."""
    folder = EXPERIMENTS / "online-norm"

    def epochs(path, n):
        columns = ["train_loss", "train_acc1", "val_loss", "val_acc1"]
        return pd.read_csv(folder / path / "results.csv")[columns].iloc[:n].reset_index(drop=True)
    old_batch = epochs("runs-provenance/batch-s0-2ep-at-98f3096-2threads", 2)
    pd.testing.assert_frame_equal(old_batch, epochs("runs-provenance/batch-s0-2ep-at-078c25d-2threads", 2))
    pd.testing.assert_frame_equal(old_batch, epochs("runs-threads/batch-s0-threads2", 2))
    before = epochs("runs-provenance/group-s0-1ep-at-14502b7", 1)
    after = epochs("runs-provenance/group-s0-1ep-at-56b7f88", 1)
    pd.testing.assert_frame_equal(before, epochs("runs-provenance/group-s0-2ep-at-98f3096", 1))
    pd.testing.assert_frame_equal(after, epochs("runs/norm-mode_group-s0", 1))
    assert before.loc[0, "train_loss"] != after.loc[0, "train_loss"]

# ---------------------------------------------------------------------------------------------- bf16 parity
def test_bf16_parity_numbers_are_its_per_run_csv():
    runs = pd.read_csv(EXPERIMENTS / "bf16-parity" / "summary.csv")
    text = (ROOT / "docs" / "speed.md").read_text()
    by = {amp: runs[runs["amp"] == amp].set_index("seed") for amp in ("none", "bf16")}
    for amp, label in (("none", "float32 (`--amp none`)"), ("bf16", "bf16 (`--amp bf16`)")):
        acc, speed = by[amp]["final_val_acc1"], by[amp]["train_images_per_s"].median()
        row = (f"| {label} | {acc.mean():.2f} ± {acc.std():.2f} ({acc.min():.2f}-{acc.max():.2f}) | "
               f"{acc.median():.2f} | {speed:.0f} |")
        assert row in text, row
    loss = {amp: by[amp]["final_train_loss"] for amp in by}
    assert (f"the same train loss ({loss['bf16'].min():.2f}-{loss['bf16'].max():.2f} against "
            f"{loss['none'].min():.2f}-{loss['none'].max():.2f})") in text
    mean_gap = by["bf16"]["final_val_acc1"].mean() - by["none"]["final_val_acc1"].mean()
    assert f"differ by {mean_gap:+.2f} points" in text
    paired = (by["bf16"]["final_val_acc1"] - by["none"]["final_val_acc1"]).tolist()
    assert "are " + ", ".join(f"{d:+.2f}" for d in paired[:-1]) + f" and {paired[-1]:+.2f} points" in text


def test_bf16_parity_summary_is_its_committed_runs():
    """summary.csv's rows are the committed runs' results.csv (final and best top-1, final train loss, median
    speeds), each run trained 10 epochs with one thread at the precision and seed its row names."""
    import yaml
    folder = EXPERIMENTS / "bf16-parity"
    summary = pd.read_csv(folder / "summary.csv")
    assert len(summary) == 6
    for _, row in summary.iterrows():
        run = folder / "runs" / f"amp-{row['amp']}-seed{row['seed']}"
        history = pd.read_csv(run / "results.csv")
        assert len(history) == 10
        assert (history["val_acc1"].iloc[-1], history["val_acc1"].max(), history["train_loss"].iloc[-1]) == (
            row["final_val_acc1"], row["best_val_acc1"], row["final_train_loss"])
        for column in ("train_images_per_s", "epoch_time_s", "val_time_s"):
            assert history[column].median() == pytest.approx(row[column], rel=1e-12)
        config = yaml.safe_load((run / "config.yaml").read_text())
        env = yaml.safe_load((run / "env.yaml").read_text())
        assert (config["amp"], config["seed"], env["threads"]) == (row["amp"], row["seed"], 1) and env["git_commit"]


# ---------------------------------------------------------------------------------------------- per-run files
# Each committed sweep folder (its runs' config.yaml, env.yaml, results.csv and the sweep's record) and the summary
# the README's table is checked against above.
COMMITTED_SWEEPS = {"flat-minima/runs": "flat-minima/summary.csv",
                    "flat-minima/runs-msharpness": "flat-minima/msharpness.csv",
                    "async-sgd/runs": "async-sgd/summary.csv",
                    "autohyper/runs/grid": "autohyper/summary.csv"}


@pytest.mark.parametrize("folder", sorted(COMMITTED_SWEEPS))
def test_a_committed_summary_is_recomputed_from_its_per_run_files(folder):
    from basinlab.sweep import stored_spec
    from basinlab.sweep.summary import run_rows, summary_table
    results_dir = EXPERIMENTS / folder
    spec = stored_spec(results_dir)
    runs = run_rows(spec, results_dir)  # the runs recorded as done (a sweep still running has fewer)
    assert len(runs), folder
    for run in spec.runs:
        if run.name not in set(runs["run"]):
            continue
        env = (results_dir / run.name / "env.yaml").read_text()
        assert "git_commit:" in env and (results_dir / run.name / "config.yaml").is_file(), run.name
    recomputed = summary_table(spec, runs).set_index("setting")
    committed = pd.read_csv(EXPERIMENTS / COMMITTED_SWEEPS[folder]).set_index("setting")
    assert list(recomputed.index) == list(committed.index)
    numbers = ["n", *(c for c in committed.columns if c.endswith(("_median", "_mean", "_min", "_max")))]
    pd.testing.assert_frame_equal(recomputed[numbers], committed[numbers], check_exact=False, rtol=1e-9)


def test_basinlab_report_on_an_experiments_runs_folder_finds_every_committed_sweep_and_run():
    """`basinlab report experiments/<paper>/runs` (the READMEs' command): the folder, or the folders of runs in it,
    bring every sweep recorded under it and every run folder outside those sweeps."""
    from basinlab.sweep.report import _runs_and_sweeps, gather, is_sweep_folder
    for folder in sorted(EXPERIMENTS.glob("*/runs*")):
        found = _runs_and_sweeps(folder)
        sweeps = {spec.parent.parent for spec in folder.glob("**/.sweep/spec.yaml")}
        assert {f for f in found if is_sweep_folder(f)} == sweeps, folder
        loose = {c.parent for c in folder.glob("**/config.yaml") if not any(s in c.parents for s in sweeps)}
        assert {f for f in found if not is_sweep_folder(f)} == loose, folder
    runs, tables = gather([EXPERIMENTS / "edge-of-stability" / "runs"], warn=None)
    assert [t.name for t in tables] == ["edge-of-stability/runs"] and len(runs) == len(tables[0].runs) > 0


@pytest.mark.parametrize("readme", sorted(EXPERIMENTS.glob("*/README.md")), ids=lambda p: p.parent.name)
def test_each_readme_separates_what_reproduces_from_what_does_not(readme):
    text = readme.read_text()
    assert "**What reproduces here.**" in text and "**What does not reproduce at this scale" in text
    assert "../shared" not in text


# ---------------------------------------------------------------------------------------------- edge of stability
def test_edge_of_stability_table_and_prose_are_its_per_run_files():
    import importlib.util
    folder = EXPERIMENTS / "edge-of-stability"
    spec = importlib.util.spec_from_file_location("eos_analyze", folder / "analyze.py")
    analyze = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(analyze)
    runs = sorted(p for p in (folder / "runs").iterdir() if (p / "sharpness-steps.csv").is_file())
    recomputed = pd.DataFrame([analyze.run_row(run) for run in runs])
    committed = pd.read_csv(folder / "summary.csv")
    pd.testing.assert_frame_equal(recomputed, committed, check_exact=False, rtol=1e-9, check_dtype=False)
    text = (folder / "README.md").read_text()
    assert analyze.markdown(recomputed) in text  # the table, cell for cell
    frame = recomputed.set_index("run")
    prose = " ".join(text.split())
    gd = frame[frame.index.str.startswith("gd-")]
    edge = gd.dropna(subset=["reach_step"])
    assert (gd["before_batch"].abs() < 0.01).all()  # "a median below 1% of 2/η before the edge"
    assert f"medians {edge['hover_batch'].min():.2f}-{edge['hover_batch'].max():.2f} of 2/η" in prose
    rises = frame.dropna(subset=["reach_step"])["loss_rises"]
    assert f"{rises.min():.2f}-{rises.max():.2f} for those that did" in prose
    assert (frame.loc[frame["reach_step"].isna(), "loss_rises"] == 0).all()
    mse = frame.loc[["gd-mse-lr0.02-s0", "gd-mse-lr0.0133-s0"]]
    assert f"a median of {mse['hover_median'].iloc[0]:.2f} in both" in prose
    assert mse["hover_median"].round(2).nunique() == 1
    assert f"between {mse['hover_min'].min():.2f} and {mse['hover_max'].max():.2f}" in prose
    steps = (mse["steps"] - mse["reach_step"]).astype(int).tolist()
    assert f"for {steps[0]} and {steps[1]} steps" in prose
    ce = frame.loc[["gd-ce-lr0.04-s0", "gd-ce-lr0.08-s0"]]
    assert f"(medians {ce['hover_median'].iloc[0]:.2f} and {ce['hover_median'].iloc[1]:.2f}" in prose
    assert f"within {ce['reach_step'].max():.0f} steps" in prose
    sgd = frame.loc["sgd-mse-b100-lr0.02-s0"]
    assert f"(median {sgd['hover_median']:.2f} from step {sgd['reach_step']:,.0f} on)" in prose
    assert f"(median {sgd['hover_batch']:.2f}, rising)" in prose
    assert f"(late median {frame.loc['gd-ce-lr0.08-s0', 'late_lambda']:.2f})" in prose
    total = sum(pd.read_csv(run / "results.csv")[["epoch_time_s", "val_time_s"]].to_numpy().sum() for run in runs)
    assert f"{len(runs)} runs, {total / 60:.0f} minutes" in prose.replace("Six runs", f"{len(runs)} runs")
    index = " ".join((EXPERIMENTS / "README.md").read_text().split())
    assert f"(square loss: median {mse['hover_median'].iloc[0]:.2f} of it)" in index
    assert f"the batch sharpness stays at {sgd['hover_batch']:.2f})" in index


# ---------------------------------------------------------------------------------------------- real asynchrony
def test_async_sgd_real_table_is_recomputed_from_its_per_run_files():
    """real.csv is analyze_real.py's rows recomputed from the committed run folders (results.csv, delays.csv), and
    the README's real-asynchrony table is real.md."""
    import importlib.util
    folder = EXPERIMENTS / "async-sgd"
    spec = importlib.util.spec_from_file_location("analyze_real", folder / "analyze_real.py")
    analyze = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(analyze)
    committed = pd.read_csv(folder / "real.csv")
    for _, row in committed.iterrows():
        where = folder / ("runs-real" if row["variant"] in ("real-8", "replay-8", "rule-8") else "runs")
        again = analyze.run_row(where / row["run"], row["variant"])
        for column, value in again.items():
            assert value == row[column] or close(f"{value:.6g}", row[column]), (row["run"], column)
    assert analyze.medians_table(committed) == (folder / "real.md").read_text()
    assert (folder / "real.md").read_text() in (folder / "README.md").read_text()


def test_async_sgd_real_prose_is_its_delays_and_table():
    """Each number the real-asynchrony paragraphs quote, from the committed delays.csv files and real.csv."""
    folder = EXPERIMENTS / "async-sgd"
    text = " ".join((folder / "README.md").read_text().split())
    runs = sorted((folder / "runs-real").glob("real-8-s*"))
    delays = [pd.read_csv(run / "delays.csv").query("status != 'dropped'").delay for run in runs]

    def span(values, digits=0, unit=""):
        low, high = (f"{v:.{digits}f}" for v in (min(values), max(values)))
        return f"{low}{unit}" if low == high else f"{low}-{high}{unit}"
    assert f"{span([100 * (d == 7).mean() for d in delays], unit='%')} of the applied gradients had delay 7" in text
    assert f"{span([100 * (d < 7).mean() for d in delays], unit='%')} a shorter one" in text
    assert f"{span([100 * (d > 7).mean() for d in delays], unit='%')} a longer one, up to " \
           f"{' and '.join(str(int(d.max())) for d in delays)}" in text
    table = pd.read_csv(folder / "real.csv")
    real, rule = table[table.variant == "real-8"], table[table.variant == "rule-8"]
    simulated = table[table.variant == "asgd-8"]
    assert f"The mean, {span(real.delay_mean, 2)}, is the constant-delay simulator's " \
           f"{simulated.delay_mean.iloc[0]:.2f}" in text
    assert f"empirical threshold is {span(real.threshold_empirical, 3)}" in text
    above = [100 * (t / real.threshold_at_mean.iloc[0] - 1) for t in real.threshold_empirical]
    assert f"{span(above)}% above the {real.threshold_at_mean.iloc[0]:.3f} of a constant delay 7" in text
    assert f"the threshold would be {span(real.threshold_at_p95, 3)}" in text
    assert f"by its longest delay {span(real.threshold_at_max, 3)}" in text
    assert f"gives lr {span(rule.lr, 5)} instead of {table[table.variant == 'asgd-8-adjusted'].lr.iloc[0]:.5f}" in text
    med = table.groupby("variant").median(numeric_only=True)
    flatter = [med.loc["sync", "lambda_max"] / med.loc[v, "lambda_max"] for v in ("real-8", "replay-8")]
    assert f"regions {flatter[0]:.1f} and {flatter[1]:.1f} times flatter" in text
    assert f"(lambda_max {med.loc['real-8', 'lambda_max']:.3g}, and {med.loc['replay-8', 'lambda_max']:.3g} for" in text
    ratios = [med.loc[v, "ratio_to_empirical"] for v in ("real-8", "replay-8")]
    assert f"{ratios[0]:.2f} and {ratios[1]:.2f} times above its threshold" in text
    finals = [med.loc[v, "final_val_acc1"] for v in ("real-8", "replay-8", "asgd-8")]
    assert "A-SGD end at {:.2f}, {:.2f} and {:.2f}%".format(*finals) in text
    assert f"differ by at most {max(finals) - min(finals):.2f} points" in text
    spread = table.groupby("variant").final_val_acc1.agg(lambda a: a.max() - a.min())
    assert f"of one variant by up to {spread.loc[['real-8', 'replay-8', 'asgd-8']].max():.2f}" in text
    rule, constant = med.loc["rule-8"], med.loc["asgd-8-adjusted"]
    assert f"({rule.ratio_to_empirical:.2f} times, against {constant.ratio_to_empirical:.2f}; lambda_max " \
           f"{rule.lambda_max:.3g} against {constant.lambda_max:.3g})" in text


# ---------------------------------------------------------------------------------------------- small batches
def test_small_batch_tables_and_prose_are_its_per_run_files():
    """table.csv and paired.csv are analyze.py's, recomputed from the committed runs; the README holds both tables
    cell for cell, and each number its prose quotes is recomputed here."""
    from basinlab.sweep.summary import run_cost
    analyze, sweep, runs, rows, differences, text = recomputed_tables(EXPERIMENTS / "small-batch", 54)
    prose = " ".join(text.split())
    spent = run_cost(sweep, runs)
    assert f"{spent['runs']} runs, {spent['minutes'] / 60:.1f} hours of run time" in prose
    assert ", ".join(spent["commits"]) in prose
    median = rows.set_index(["norm-mode", "batch"])["median"]
    pairs = differences.set_index(["batch", "norm", "against"])

    def pair(batch, norm, against="batch"):
        r = pairs.loc[(batch, norm, against)]
        return f"{r['median']:+.2f} ({r['low']:+.2f} to {r['high']:+.2f})"
    claimed = [(2, n, "batch") for n in ("online", "group", "frn", "evonorm_s0", "batchrenorm")] + \
        [(b, n, "group") for b in (2, 8) for n in ("frn", "evonorm_s0")]   # "on every seed" in the README
    assert all(pairs.loc[key, "one_sign"] for key in claimed) and not pairs.loc[(8, "batchrenorm", "batch"), "one_sign"]
    assert f"by {pair(2, 'frn', 'group').replace(' (', ' points (median; ')}" in prose
    assert f"{pair(8, 'frn', 'group')} at batch 8" in prose
    assert f"{pair(2, 'evonorm_s0', 'group')} at batch 2 and {pair(8, 'evonorm_s0', 'group')} at batch 8" in prose
    independent = [abs(median[(n, 8)] - median[(n, 2)]) for n in ("group", "frn", "evonorm_s0", "online")]
    assert f"move by {max(independent):.1f} points or less" in prose
    assert f"gains {median[('batch', 8)] - median[('batch', 2)]:.2f} points from batch 2 to 8, and Batch Renorm " \
           f"{median[('batchrenorm', 8)] - median[('batchrenorm', 2)]:.2f}" in prose
    below = {n: -pairs.loc[(2, n, "batch"), "median"] for n in ("online", "evonorm_s0", "batchrenorm", "frn", "group")}
    assert (f"online norm by {below['online']:.2f} points (median), EvoNorm-S0 {below['evonorm_s0']:.2f}, Batch "
            f"Renorm {below['batchrenorm']:.2f}, FRN {below['frn']:.2f}, group norm {below['group']:.2f}") in prose
    assert f"here it is {below['batchrenorm']:.2f} points below" in prose
    assert f"level with batch norm ({pairs.loc[(8, 'batchrenorm', 'batch'), 'median']:.2f}".replace("-", "−") in prose
    assert f"at batch 128 FRN is {-pairs.loc[(128, 'frn', 'batch'), 'median']:.2f} points below" in prose
    assert (f"1.25 points below at batch 2, {-pairs.loc[(8, 'online', 'batch'), 'median']:.2f} at batch 8 and "
            f"{-pairs.loc[(128, 'online', 'batch'), 'median']:.2f} at 128") in prose
    index = " ".join((EXPERIMENTS / "README.md").read_text().split())
    assert f"at batch 2 all are {min(below.values()):.2f}-{max(below.values()):.2f} points below on every seed" in index
    assert f"batch norm gains {median[('batch', 8)] - median[('batch', 2)]:.0f} points" in index
    assert (f"group norm ends at {median[('group', 128)]:.2f}% and EvoNorm-S0 at {median[('evonorm_s0', 128)]:.2f}% "
            f"(batch norm {median[('batch', 128)]:.2f}%)") in prose


# ---------------------------------------------------------------------------------------------- airbench94
def test_airbench_tables_and_prose_are_its_per_run_files():
    """table.csv and paired.csv are analyze.py's, recomputed from the committed runs; the README holds both tables
    and each number its prose quotes is recomputed here."""
    from basinlab.models import create_model
    from basinlab.sweep.summary import run_cost
    analyze, sweep, runs, rows, differences, text = recomputed_tables(EXPERIMENTS / "airbench", 9)
    prose = " ".join(text.split())
    spent = run_cost(sweep, runs)
    assert f"{spent['runs']} runs, {spent['minutes']:.0f} minutes of run time" in prose
    assert ", ".join(spent["commits"][:-1]) + f" and {spent['commits'][-1]}" in prose
    pairs = differences.set_index(["flip", "minus"])
    assert pairs["one_sign"].all() and (pairs["median"] > 0).all()   # "in direction, on every seed"

    def pair(flip, minus):
        r = pairs.loc[(flip, minus)]
        return f"{r['median']:+.2f} ({r['low']:+.2f} to {r['high']:+.2f})"
    assert f"by {pair('random', 'none').replace(' (', ' points (median; ')}" in prose
    assert f"by {pair('alternating', 'random')}, and above no flip by {pair('alternating', 'none')}" in prose
    train = {flip: [pd.read_csv(sweep / f"{flip}-s{seed}" / "results.csv")["train_acc1"].iloc[-1] for seed in range(3)]
             for flip in ("alternating", "none")}
    assert f"{min(train['none']):.2f}-{max(train['none']):.2f}% against {min(train['alternating']):.2f}-" \
           f"{max(train['alternating']):.2f}% with alternating flip" in prose
    assert min(train["none"]) > max(train["alternating"])
    sizes = [sum(p.numel() for p in create_model("airbench94", 10, "cifar10", **widths).parameters())
             for widths in ({"widths": [32, 64, 64]}, {})]
    assert f"{sizes[0]:,} parameters instead of {sizes[1]:,}" in prose
    assert f"full width ({sizes[1]:,} parameters)" in prose
    alternating, random = pairs.loc[("alternating", "random"), "median"], pairs.loc[("random", "none"), "median"]
    assert f"random flip, on every seed ({alternating:+.2f} points, median)" in (EXPERIMENTS / "README.md").read_text()
    page = " ".join((ROOT / "docs" / "methods" / "airbench.md").read_text().split())
    assert f"({alternating:+.2f} points, median) and random flip above none ({random:+.2f})" in page
