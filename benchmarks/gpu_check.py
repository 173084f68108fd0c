"""One GPU check of basinlab (issue #33, deliverable 3): the CUDA paths measured on one card, one table, < 8 min.

    python3 benchmarks/gpu_check.py [--dry-run] [--datasets-dir DIR] [--json OUT.json] [--only STEP ...]
                                    [--airbench-script PATH/TO/airbench94.py]

Steps (each returns rows {step, what, value, unit, note}; the table is printed at the end and written as JSON):
  environment  torch, CUDA, cuDNN, the card, its memory, bf16 support;
  cuda-tests   the suite's tests marked `cuda` (python3 -m pytest -q -m cuda);
  throughput   ResNet-20 CIFAR-10 images/s end to end (basinlab.train) against a bare PyTorch loop in this process
               on batches of the same CIFAR-10 images, fp32 / bf16 / fp16 (GradScaler), channels_last;
  norms        OnlineNorm vs BatchNorm step time (ResNet-20 end to end, --norm-mode online vs batch);
  sam          SAM vs SGD step time (ResNet-20 end to end);
  hvp          one Hessian-vector product vs one gradient (benchmarks/hvp.py's measure());
  papers       two epochs of the first setting of every experiments/*/paper.yaml, on a train-limit;
  airbench     the airbench94 preset (bf16, channels_last): training seconds to 94% test accuracy (with its
               test-time augmentation) and in all; beside it, when --airbench-script names airbench's own
               legacy/airbench94.py (fetched by you, kept out of the repository), that script's own timing and
               accuracy over 3 runs after a warm-up, on the same CIFAR-10 files, in this process's interpreter.
Each step has a time limit; the check stops starting steps once the whole budget is spent. --dry-run (any machine)
lists the steps, checks the inputs (CIFAR-10 found, every paper.yaml parses, the models build) and exits 0 when they
pass, 2 when not; without CUDA and without --dry-run the check exits 2. Exit 4: the JSON could not be written.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import platform
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import basinlab  # noqa: E402
from basinlab.api import make_config  # noqa: E402
from basinlab.data.catalog import DATASETS  # noqa: E402
from basinlab.data.formats import read_cifar_batch  # noqa: E402
from basinlab.data.locate import locate  # noqa: E402
from basinlab.engine.setup import split_model_config  # noqa: E402
from basinlab.errors import BasinlabError  # noqa: E402
from basinlab.models import create_model  # noqa: E402
from basinlab.sweep.spec import read_spec  # noqa: E402

BATCH = 128
STEPS = 200                 # training steps per epoch in the throughput runs (the second epoch is timed)
VAL = 1024
TOTAL_BUDGET_S = 470        # the whole check aims under 8 minutes on one H100
PAPER_TRAIN_LIMIT = 2560    # examples per epoch of a paper setting's two epochs (at least one batch)
PRECISIONS = {"fp32": "none", "bf16": "bf16", "fp16": "fp16"}


@dataclass
class Context:
    datasets_dir: Path
    work: Path              # a temporary folder for run folders
    device: str             # "cuda" (or "cpu" in a dry run)
    airbench_script: Path | None = None  # airbench's legacy/airbench94.py, when the person brings it


def row(step: str, what: str, value, unit: str = "", note: str = "") -> dict:
    return {"step": step, "what": what, "value": value, "unit": unit, "note": note}


def synchronize() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def wall() -> float:
    """Wall time after the queued CUDA work has finished (CUDA kernels run asynchronously)."""
    synchronize()
    return time.perf_counter()


# ---------------------------------------------------------------------------------------------- environment
def environment(ctx: Context) -> list[dict]:
    rows = [row("environment", "torch", torch.__version__), row("environment", "python", platform.python_version()),
            row("environment", "CUDA (torch built with)", torch.version.cuda or "none")]
    if not torch.cuda.is_available():
        return rows + [row("environment", "device", "no CUDA device", note="dry run on a CPU")]
    props = torch.cuda.get_device_properties(0)
    return rows + [row("environment", "device", props.name),
                   row("environment", "memory", round(props.total_memory / 2**30, 1), "GiB"),
                   row("environment", "cuDNN", torch.backends.cudnn.version()),
                   row("environment", "bf16 supported", torch.cuda.is_bf16_supported())]


# ---------------------------------------------------------------------------------------------- the CUDA tests
def count_marked_files() -> int:
    """Test files that mention the cuda marker (a dry run does not collect the suite: that is heavy)."""
    return sum("mark.cuda" in path.read_text(errors="replace") for path in (ROOT / "tests").rglob("test_*.py"))


def cuda_tests(ctx: Context, limit_s: float) -> list[dict]:
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "cuda"]
    try:
        done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=limit_s)
    except subprocess.TimeoutExpired:
        return [row("cuda-tests", "pytest -m cuda", "timed out", note=f"over its {limit_s:.0f} s limit")]
    last = (done.stdout.strip().splitlines() or ["(no output)"])[-1]
    if done.returncode == 5:  # pytest: no test collected, i.e. none carries the marker yet
        return [row("cuda-tests", "pytest -m cuda", "0 CUDA tests", note=last)]
    counts = {word: int(n) for n, word in re.findall(r"(\d+) (passed|failed|skipped|error|errors)", last)}
    return [row("cuda-tests", f"pytest -m cuda: {word}", n, "tests") for word, n in counts.items()] + \
        [row("cuda-tests", "pytest exit status", done.returncode, note=last)]


# ---------------------------------------------------------------------------------------------- throughput
TRAIN_FILES = [f"data_batch_{index}" for index in range(1, 6)]


def cifar_arrays(datasets_dir: Path, files: list[str], count: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """uint8 images [N, 3, 32, 32] and labels of the CIFAR-10 batch files, read in order until `count` images (all
    when None) with basinlab's reader (its unpickler admits numpy arrays only)."""
    folder = locate("cifar10", datasets_dir).folder
    images, labels = [], []
    for name in files:
        split = read_cifar_batch("cifar10", folder / name)
        images.append(split.images)
        labels.append(split.labels)
        if count is not None and sum(len(part) for part in images) >= count:
            break
    return np.concatenate(images)[:count], np.concatenate(labels)[:count]


def cifar_batches(datasets_dir: Path, count: int, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The first `count` CIFAR-10 training images, normalised, channels_last, on `device` (for the bare loop)."""
    images, labels = cifar_arrays(datasets_dir, TRAIN_FILES, count)
    x = torch.from_numpy(images).float().div_(255)
    info = DATASETS["cifar10"]
    x = (x - torch.tensor(info.mean).view(1, 3, 1, 1)) / torch.tensor(info.std).view(1, 3, 1, 1)
    x = x.to(device).contiguous(memory_format=torch.channels_last)
    return x, torch.from_numpy(labels).to(device)


def bare_loop_rate(x: torch.Tensor, y: torch.Tensor, precision: str) -> float:
    """Images/s of forward + backward + SGD on the given batches (one warm-up pass, then one timed pass)."""
    torch.manual_seed(0)
    model = create_model("resnet20", 10, "cifar10").to(x.device, memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    loss_fn = nn.CrossEntropyLoss()
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    cast = torch.autocast(x.device.type, dtype=dtype) if dtype else contextlib.nullcontext()
    scaler = torch.amp.GradScaler(x.device.type, enabled=precision == "fp16")
    for _pass in ("warm-up", "timed"):
        start = wall()
        for i in range(0, len(x) - BATCH + 1, BATCH):
            with cast:
                loss = loss_fn(model(x[i:i + BATCH]), y[i:i + BATCH])
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
        seconds = wall() - start
    return (len(x) // BATCH) * BATCH / seconds


def train_rate(ctx: Context, name: str, steps: int = STEPS, **options) -> float:
    """Training images/s of the second (steady) epoch of a ResNet-20 CIFAR-10 `basinlab.train` run."""
    run = basinlab.train(model="resnet20", dataset="cifar10", datasets_dir=str(ctx.datasets_dir), batch_size=BATCH,
                         train_limit=steps * BATCH, val_limit=VAL, epochs=2, quiet=True, device=ctx.device,
                         results_dir=str(ctx.work), overwrite=True, save=name, **options)
    return float(run.history.iloc[-1]["train_images_per_s"])


def throughput(ctx: Context, limit_s: float) -> list[dict]:
    x, y = cifar_batches(ctx.datasets_dir, STEPS * BATCH, ctx.device)
    rows = []
    for precision, amp in PRECISIONS.items():
        e2e = train_rate(ctx, f"throughput-{precision}", amp=amp, channels_last="on")
        bare = bare_loop_rate(x, y, precision)
        note = f"{STEPS} steps of {BATCH}, second epoch; bare loop: the first {STEPS * BATCH} training images"
        rows += [row("throughput", f"ResNet-20 end to end, {precision}, channels_last", round(e2e), "images/s", note),
                 row("throughput", f"ResNet-20 bare PyTorch loop, {precision}, channels_last", round(bare),
                     "images/s", "data already on the device: no augmentation"),
                 row("throughput", f"end to end / bare loop, {precision}", round(e2e / bare, 3), "ratio")]
    return rows


# ---------------------------------------------------------------------------------------------- step-time pairs
def step_time_pair(ctx: Context, step: str, labels: tuple[str, str], options: tuple[dict, dict]) -> list[dict]:
    """Milliseconds per step of two end-to-end ResNet-20 runs, and their ratio (second / first)."""
    steps = 100
    ms = [BATCH / train_rate(ctx, f"{step}-{i}", steps=steps, **opts) * 1e3 for i, opts in enumerate(options)]
    note = f"ResNet-20 CIFAR-10, batch {BATCH}, {steps} steps, second epoch, float32"
    return [row(step, f"{labels[0]} step", round(ms[0], 2), "ms", note),
            row(step, f"{labels[1]} step", round(ms[1], 2), "ms", note),
            row(step, f"{labels[1]} / {labels[0]}", round(ms[1] / ms[0], 3), "ratio")]


def norms(ctx: Context, limit_s: float) -> list[dict]:
    return step_time_pair(ctx, "norms", ("BatchNorm", "OnlineNorm"), ({"norm_mode": "batch"}, {"norm_mode": "online"}))


def sam(ctx: Context, limit_s: float) -> list[dict]:
    return step_time_pair(ctx, "sam", ("SGD", "SAM rho 0.05"), ({}, {"sam": 0.05}))


# ---------------------------------------------------------------------------------------------- HVP
def hvp(ctx: Context, limit_s: float) -> list[dict]:
    from hvp import batch, measure  # benchmarks/hvp.py

    torch.manual_seed(0)
    x, y = batch((3, 32, 32), BATCH)
    rows = []
    for device in dict.fromkeys([ctx.device, "cpu"]):
        model = create_model("resnet20", 10, "cifar10").to(device)
        try:
            result = measure(model, nn.CrossEntropyLoss(), x.to(device), y.to(device), "eval", 5, clock=wall)
        except RuntimeError as exc:  # hvp.measure draws its vector on the CPU (see the report of this check)
            rows.append(row("hvp", f"HVP on {device}", "failed", note=str(exc).splitlines()[0][:100]))
            continue
        unit = result["median"]["grad"]
        rows.append(row("hvp", f"gradient, ResNet-20 batch {BATCH}, {device}", round(unit * 1e3, 2), "ms"))
        for route in ("double-backward", "cached", "fwd-over-rev"):
            rows.append(row("hvp", f"HVP {route} / gradient, {device}", round(result["median"][route] / unit, 2),
                            "ratio", f"routes agree to {result['agree']:.1e}"))
        break
    return rows


# ---------------------------------------------------------------------------------------------- paper settings
def paper_specs() -> list[Path]:
    return sorted((ROOT / "experiments").glob("*/paper.yaml"))


def paper_options(path: Path, ctx: Context) -> tuple[str, dict]:
    """(the first setting's name, basinlab.train options for two short epochs of it)."""
    first = read_spec(path, ctx.work / "sweep").runs[0]
    options = {**first.options, "datasets_dir": str(ctx.datasets_dir), "device": ctx.device}
    batch_size = make_config(**options).batch_size
    limit = max(batch_size, PAPER_TRAIN_LIMIT)
    limit = min(limit, options.get("train_limit") or limit)
    options.update(epochs=2, train_limit=limit, val_limit=min(options.get("val_limit") or VAL, VAL),
                   quiet=True, results_dir=str(ctx.work / "papers"), overwrite=True,
                   save=f"{path.parent.name}-{first.setting}"[:100])
    return first.setting, options


def papers(ctx: Context, limit_s: float) -> list[dict]:
    rows, start = [], time.perf_counter()
    for path in paper_specs():
        name = path.parent.name
        if time.perf_counter() - start > limit_s:
            rows.append(row("papers", name, "skipped", note=f"the step's {limit_s:.0f} s were spent"))
            continue
        setting, options = paper_options(path, ctx)
        began = time.perf_counter()
        try:
            run = basinlab.train(**options)
        except (BasinlabError, RuntimeError) as exc:
            rows.append(row("papers", f"{name}: {setting}", "failed", note=str(exc).splitlines()[0][:120]))
            continue
        last = run.history.iloc[-1]
        accuracy = next((float(last[k]) for k in ("val_acc1", "val_acc") if k in last), float("nan"))
        rows.append(row("papers", f"{name}: {setting}", round(time.perf_counter() - began, 1), "s",
                        f"2 epochs of {options['train_limit']} examples (paper: full data, its own epochs); "
                        f"last val accuracy {accuracy:.3f}"))
    return rows


def airbench(ctx: Context, limit_s: float) -> list[dict]:
    began = time.perf_counter()
    run = basinlab.train(preset="airbench94", datasets_dir=str(ctx.datasets_dir), device=ctx.device, amp="bf16",
                         channels_last="on", quiet=True, results_dir=str(ctx.work), overwrite=True, save="airbench94")
    history = run.history
    seconds = history["epoch_time_s"].cumsum()
    reached = history.index[history["val_acc1"] >= 94.0]
    note = "training time only (validation with 6-view TTA not counted), bf16, 10 epochs"
    final = round(float(history["val_acc1"].iloc[-1]), 2)
    rows = [row("airbench", "airbench94 preset: final test accuracy (TTA)", final, "%"),
            row("airbench", "airbench94 preset: seconds to 94%",
                round(float(seconds[reached[0]]), 2) if len(reached) else "not reached", "s", note),
            row("airbench", "airbench94 preset: seconds for 10 epochs", round(float(seconds.iloc[-1]), 2), "s", note)]
    if ctx.airbench_script is None:
        return rows + [row("airbench", "airbench's own script", "not at hand", note="--airbench-script PATH")]
    return rows + airbench_reference(ctx, max(30.0, limit_s - (time.perf_counter() - began)))


AIRBENCH_RUNNER = """
import sys, types
path = sys.argv[1]
vision = types.ModuleType("torchvision"); vision.transforms = types.ModuleType("torchvision.transforms")
def normalize(mean, std):
    return lambda x: (x - mean.view(1, -1, 1, 1).to(x)) / std.view(1, -1, 1, 1).to(x)
vision.transforms.Normalize = normalize  # the only torchvision call the script makes once train.pt exists
sys.modules["torchvision"], sys.modules["torchvision.transforms"] = vision, vision.transforms
source = open(path).read().split('if __name__ == "__main__":')[0]
space = {"__name__": "airbench94"}
exec(compile(source, path, "exec"), space)
finals = []
space["print_training_details"] = lambda variables, is_final_entry: finals.append(variables) if is_final_entry else None
space["main"]("warmup")
finals.clear()
for run in range(3):
    space["main"](run)
for entry in finals:
    print("AIRBENCH", entry["tta_val_acc"], entry["total_time_seconds"], flush=True)
"""


def airbench_reference(ctx: Context, limit_s: float) -> list[dict]:
    """airbench's own script on the same CIFAR-10 files: its train.pt/test.pt written from basinlab's reader."""
    folder = ctx.work / "airbench"
    (folder / "cifar10").mkdir(parents=True, exist_ok=True)
    for split, files in (("train", TRAIN_FILES), ("test", ["test_batch"])):
        images, labels = cifar_arrays(ctx.datasets_dir, files)
        torch.save({"images": torch.from_numpy(images).permute(0, 2, 3, 1).contiguous(),
                    "labels": torch.from_numpy(labels), "classes": list(range(10))}, folder / "cifar10" / f"{split}.pt")
    command = [sys.executable, "-c", AIRBENCH_RUNNER, str(ctx.airbench_script)]
    try:
        done = subprocess.run(command, cwd=folder, capture_output=True, text=True, timeout=limit_s)
    except subprocess.TimeoutExpired:
        return [row("airbench", "airbench's own script", "timed out", note=f"over {limit_s:.0f} s")]
    found = [line.split()[1:] for line in done.stdout.splitlines() if line.startswith("AIRBENCH ")]
    if done.returncode or not found:
        last = (done.stderr.strip().splitlines() or ["(no output)"])[-1]
        return [row("airbench", "airbench's own script", "failed", note=last[:120])]
    accuracy = [100 * float(a) for a, _ in found]
    seconds = [float(t) for _, t in found]
    note = f"{len(found)} runs after a warm-up; its own timer (training and the final TTA evaluation), fp16"
    return [row("airbench", "airbench94.py: mean test accuracy (TTA)", round(float(np.mean(accuracy)), 2), "%", note),
            row("airbench", "airbench94.py: mean seconds", round(float(np.mean(seconds)), 2), "s", note)]


# ---------------------------------------------------------------------------------------------- the steps
@dataclass
class Step:
    name: str
    what: str
    limit_s: float
    run: Callable[[Context, float], list[dict]]


STEPS_RUN = [
    Step("environment", "torch / CUDA / cuDNN versions, the card, its memory, bf16 support", 10,
         lambda ctx, limit: environment(ctx)),
    Step("cuda-tests", "python3 -m pytest -q -m cuda", 70, cuda_tests),
    Step("throughput", f"ResNet-20 CIFAR-10 basinlab.train vs a bare loop, {STEPS} steps x {BATCH}, "
         "fp32 / bf16 / fp16, channels_last", 90, throughput),
    Step("norms", "ResNet-20 step time, --norm-mode online vs batch", 40, norms),
    Step("sam", "ResNet-20 step time, --sam 0.05 vs SGD", 40, sam),
    Step("hvp", "one HVP vs one gradient (benchmarks/hvp.py measure(), eval mode)", 30, hvp),
    Step("papers", "two epochs of the first setting of every experiments/*/paper.yaml", 100, papers),
    Step("airbench", "airbench94 preset: seconds to 94%, beside airbench's own script when given", 90, airbench),
]


def dry_run_checks(ctx: Context, chosen: list[Step]) -> list[dict]:
    """What a dry run can check on a CPU: the data, the specs, the models. Rows whose value is 'MISSING'/'BAD' fail."""
    rows = [row("dry-run", f"step {step.name}", f"limit {step.limit_s:.0f} s", note=step.what) for step in chosen]
    names = {step.name for step in chosen}
    if names & {"throughput", "norms", "sam", "papers", "airbench"}:
        try:
            rows.append(row("dry-run", "CIFAR-10", "found", note=str(locate("cifar10", ctx.datasets_dir).folder)))
        except BasinlabError as exc:
            rows.append(row("dry-run", "CIFAR-10", "MISSING", note=str(exc)[:160]))
    if names & {"throughput", "norms", "sam", "hvp"}:
        model = create_model("resnet20", 10, "cifar10")
        rows.append(row("dry-run", "ResNet-20 builds", sum(p.numel() for p in model.parameters()), "parameters"))
    if "airbench" in names:
        model = create_model("airbench94", 10, "cifar10")
        rows.append(row("dry-run", "airbench94 builds", sum(p.numel() for p in model.parameters()), "parameters"))
        script = ctx.airbench_script
        if script is not None:
            found = "found" if script.is_file() else "MISSING"
            rows.append(row("dry-run", "airbench's script", found, note=str(script)))
    if "cuda-tests" in names:
        rows.append(row("dry-run", "test files marked cuda", count_marked_files(), "files"))
    if "papers" in names:
        rows += [check_paper(path, ctx) for path in paper_specs()]
    return rows


def check_paper(path: Path, ctx: Context) -> dict:
    """The spec parses, its first setting's options validate and its model builds (on the CPU, not trained)."""
    name = path.parent.name
    try:
        setting, options = paper_options(path, ctx)
        cfg = make_config(**options)
        model = create_model(cfg.model, DATASETS[cfg.dataset].num_classes or 10, cfg.dataset,
                             **split_model_config(cfg)[0])
        locate(cfg.dataset, ctx.datasets_dir)
    except BasinlabError as exc:
        return row("dry-run", f"{name}/paper.yaml", "BAD", note=str(exc)[:160])
    return row("dry-run", f"{name}/paper.yaml", "ok", note=f"first setting {setting}: {cfg.model} on {cfg.dataset}, "
               f"{sum(p.numel() for p in model.parameters()):,} parameters; would run 2 epochs of "
               f"{options['train_limit']} examples")


def print_table(rows: list[dict]) -> None:
    widths = [max(len(str(r[key])) for r in rows + [row("step", "what", "value", "unit")])
              for key in ("step", "what", "value", "unit")]
    for r in [row("step", "what", "value", "unit", "note")] + rows:
        cells = [str(r[key]).ljust(width) for key, width in zip(("step", "what", "value", "unit"), widths)]
        print("  ".join(cells + [r["note"]]).rstrip())


def run_steps(ctx: Context, chosen: list[Step]) -> list[dict]:
    rows, start = [], time.perf_counter()
    for step in chosen:
        spent = time.perf_counter() - start
        if spent + step.limit_s > TOTAL_BUDGET_S and step.limit_s > 1:
            rows.append(row(step.name, "skipped", "-", note=f"{spent:.0f} s of the {TOTAL_BUDGET_S} s budget spent"))
            continue
        began = time.perf_counter()
        print(f"[{spent:6.1f} s] {step.name}: {step.what} (limit {step.limit_s:.0f} s)", flush=True)
        step_rows = step.run(ctx, step.limit_s)
        seconds = time.perf_counter() - began
        over = f"; OVER its {step.limit_s:.0f} s limit" if seconds > step.limit_s else ""
        rows += step_rows + [row(step.name, "step seconds", round(seconds, 1), "s", over.lstrip("; "))]
    return rows


def write_json(path: Path, rows: list[dict], dry_run: bool) -> None:
    try:
        path.write_text(json.dumps({"dry_run": dry_run, "rows": rows}, indent=1, default=str) + "\n")
    except OSError as exc:
        print(f"gpu_check: could not write the table to {path} ({exc.strerror}); give --json a writable path",
              file=sys.stderr)
        sys.exit(4)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="list the steps and check the inputs; run nothing heavy")
    parser.add_argument("--datasets-dir", default=str(Path.home() / ".cache" / "shared-data"))
    parser.add_argument("--json", default="gpu_check.json", help="where the table is written as JSON")
    parser.add_argument("--airbench-script", type=Path, default=None,
                        help="airbench's legacy/airbench94.py, to time beside the preset (kept out of the repository)")
    parser.add_argument("--only", nargs="+", choices=[s.name for s in STEPS_RUN], metavar="STEP",
                        help=f"run these steps only: {', '.join(s.name for s in STEPS_RUN)}")
    args = parser.parse_args(argv)
    if not args.dry_run and not torch.cuda.is_available():
        print("gpu_check: no CUDA device: run with --dry-run on a CPU", file=sys.stderr)
        return 2
    chosen = [step for step in STEPS_RUN if not args.only or step.name in args.only]
    with tempfile.TemporaryDirectory(prefix="basinlab-gpucheck-") as work:
        script = args.airbench_script.expanduser().resolve() if args.airbench_script else None
        ctx = Context(Path(args.datasets_dir).expanduser(), Path(work), "cuda" if not args.dry_run else "cpu", script)
        if args.dry_run:
            rows = environment(ctx) + dry_run_checks(ctx, chosen)
        else:
            torch.backends.cudnn.benchmark = True
            rows = run_steps(ctx, chosen)
    print_table(rows)
    write_json(Path(args.json), rows, args.dry_run)
    bad = [r for r in rows if r["value"] in ("MISSING", "BAD")]
    if bad:
        print(f"gpu_check: {len(bad)} input check(s) failed ({', '.join(r['what'] for r in bad)}); see the table above",
              file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
