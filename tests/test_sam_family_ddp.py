"""SAM and the SAM family under torchrun (gloo, 2 processes x 1 thread), each run against its rule written out in
one process, or, where the rule is that every process takes the step of one process (Momentum-SAM: one momentum for
all; SAF and MESA: the outputs gathered into every store, the EMA of the same weights), against the same run
trained in one process.

One torchrun job trains the runs one after another: its script starts the process group, and basinlab.train
uses a group that already exists instead of starting its own, so the family's multi-process checks pay one job's
start-up; the script then checks that destroying the group really frees it. The references (SAM's and GSAM's
rules written out here, the methods' own test files' `looksam_by_hand` and `reference_m_sam`) are computed while
the job runs.
"""
import json
import os
import subprocess
import sys

import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call

from basinlab.api import build_run
from basinlab.cli import build_parser, main
from basinlab.cli.options import build_train_config
from tests import test_gsam, test_looksam, test_msharpness

SCRIPT = """
import json
import pathlib
import sys

import torch.distributed as dist

import basinlab.api  # before the group starts (docs/distributed.md, Python API)
from basinlab.cli import main

dist.init_process_group("gloo")
for argv in json.loads(sys.argv[1]):
    if main(["train", *argv]) != 0:
        sys.exit(1)
dist.destroy_process_group()
# the group is freed: no gloo thread outlives it into the interpreter's exit (where one sometimes aborted)
threads = [path.read_text().strip() for path in pathlib.Path("/proc/self/task").glob("*/comm")]
if any("gloo" in name for name in threads):
    sys.exit(f"gloo threads still running after destroy_process_group: {threads}")
"""


# 2 epochs of 2 steps of 64 rows (32 a process), no norm layers: the mean of the two shards' gradients is the
# batch's, so one process computes what two do where the rule keeps one direction for all
ONE_PROCESS = ["--model-config", "{'dropout': 0.0}", "--train-limit", "128", "--val-limit", "32", "-b", "64",
               "--norm-mode", "none", "--channels-last", "off", "--optimizer", "SGD", "--lr", "0.05",
               "--momentum", "0.9", "--seed", "3", "--epochs", "2", "--quiet"]
SAME_AS_ONE = {"msam": ["--msam", "0.5"],
               "saf": ["--saf", "--saf-start-epoch", "0", "--saf-horizon", "1"],
               "mesa": ["--mesa", "--saf-start-epoch", "0", "--mesa-decay", "0.9"]}
# One step of 2 x 32 rows without BatchNorm or dropout, so that the two shards are exactly the rows of the
# single-process batch of 64: eps per process (`local`, the paper's m-sharpness) or one eps for all (`global`)
ONE_STEP = ["--model-config", "{'dropout': 0.0}", "--train-limit", "64", "--val-limit", "32", "-b", "64",
            "--norm-mode", "none", "--channels-last", "off", "--optimizer", "SGD", "--lr", "0.05", "--momentum", "0",
            "--seed", "3", "--epochs", "1", "--quiet"]
RUNS = {**{f"sam-{rule}": [*ONE_STEP, "--sam", "0.05", "--sam-perturbation", rule] for rule in ("local", "global")},
        **{f"gsam-{rule}": [*ONE_STEP, "--gsam", "0.05", "--gsam-alpha", "0.4", "--sam-perturbation", rule]
           for rule in ("local", "global")},
        "looksam": test_looksam.DDP_RUN,
        "m-sam": test_msharpness.DDP_RUN,
        **{name: [*ONE_PROCESS, *flags] for name, flags in SAME_AS_ONE.items()}}


def step_by_hand(argv, folder, perturbation, direction):
    """One SGD step (lr 0.05) of a SAM-like rule written out: per rank, g_r on its 32 rows (`local`) or once on all
    64 (`global`), eps_r = 0.05 g_r / ||g_r||, g_p,r at w + eps_r on the same rows; the step takes the mean over
    the ranks of direction(g_r, g_p,r)."""
    cfg = build_train_config(build_parser().parse_args(["train", *argv, "--results-dir", str(folder), "--save",
                                                        "hand"]))
    trainer = build_run(cfg)
    trainer.setup()
    model = trainer.model
    w0 = {k: v.detach().clone() for k, v in model.named_parameters()}
    x, y = next(iter(trainer.train_loader.epoch(0)))

    def grad(params, rows):
        leaves = {k: v.clone().requires_grad_(True) for k, v in params.items()}
        loss = F.cross_entropy(functional_call(model, leaves, (x[rows],)), y[rows])
        return dict(zip(leaves, torch.autograd.grad(loss, list(leaves.values()))))

    shards = [slice(0, 32), slice(32, 64)] if perturbation == "local" else [slice(0, 64)]
    total = {k: torch.zeros_like(v) for k, v in w0.items()}
    for rows in shards:
        g = grad(w0, rows)
        norm = torch.sqrt(sum((t ** 2).sum() for t in g.values()))
        direction_r = direction(g, grad({k: w0[k] + 0.05 * g[k] / norm for k in w0}, rows))
        for k in total:
            total[k] += direction_r[k] / len(shards)
    return {k: w0[k] - 0.05 * total[k] for k in w0}


def sam_direction(g, gp):
    return gp


def gsam_direction(g, gp):
    """The authors' GSAM (alpha 0.4): g_p - alpha (g - c g_p), c = <g, g_p> / ||g_p||^2, on each rank's rows."""
    c = sum((g[k] * gp[k]).sum() for k in g) / sum((gp[k] ** 2).sum() for k in g)
    return {k: gp[k] - 0.4 * (g[k] - c * gp[k]) for k in g}


def m_sam_by_hand(folder):
    """--sam-m 16 on 2 processes x 32 rows: their micro-batches are rows 0-15, 16-31 / 32-47, 48-63 of the batch,
    so the step is the single-process m-SAM step over four micro-batches of 16."""
    cfg = build_train_config(build_parser().parse_args(["train", *test_msharpness.DDP_RUN, "--results-dir",
                                                        str(folder), "--save", "one"]))
    trainer = build_run(cfg)
    trainer.setup()
    w, buffers = test_msharpness.state_of(trainer.model)
    x, y = test_msharpness.batches(trainer, 1)[0]
    grad, _ = test_msharpness.reference_m_sam(trainer.model, w, buffers, x, y, 16, 0.05)
    return {k: w[k] - 0.05 * grad[k] for k in w}


def first_failure(err: str) -> str:
    """What the ranks printed before torchrun's own report, which says only which rank died and by what signal."""
    end = err.find("torch/distributed/elastic/")
    return err[:end][-4000:] if end > 0 else err[-4000:]


def close_to(got, want, limit=1e-5):
    errors = {k: test_gsam.relative_error(got[k], want[k]) for k in want}
    return max(errors.values()) < limit, errors


@pytest.mark.slow
def test_the_sam_family_under_two_processes_follows_each_rule(tmp_path):
    script = tmp_path / "family.py"
    script.write_text(SCRIPT)
    argvs = [[*argv, "--results-dir", str(tmp_path / "ddp"), "--save", name] for name, argv in RUNS.items()]
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    job = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                            str(script), json.dumps(argvs)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           text=True, env={**env, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"})
    try:  # meanwhile, in this process
        wanted = {f"{method}-{rule}": step_by_hand(RUNS[f"{method}-{rule}"], tmp_path / method / rule, rule,
                                                   direction)
                  for method, direction in (("sam", sam_direction), ("gsam", gsam_direction))
                  for rule in ("local", "global")}
        wanted["looksam"] = test_looksam.looksam_by_hand(tmp_path / "looksam-local", local=True)
        looksam_global = test_looksam.looksam_by_hand(tmp_path / "looksam-global", local=False)
        wanted["m-sam"] = m_sam_by_hand(tmp_path / "m-sam-hand")
        for name in SAME_AS_ONE:
            assert main(["train", *RUNS[name], "--results-dir", str(tmp_path / "one"), "--save", name]) == 0
            wanted[name] = torch.load(tmp_path / "one" / name / "last.pt", weights_only=True)["model"]
        _, err = job.communicate(timeout=300)
    finally:
        if job.poll() is None:
            job.kill()
            job.communicate()
    assert job.returncode == 0, first_failure(err)
    state = {name: torch.load(tmp_path / "ddp" / name / "last.pt", weights_only=True) for name in wanted}
    for name, want in wanted.items():
        ok, errors = close_to(state[name]["model"], want)
        assert ok, (name, errors)
    # the rules really differ on these batches
    assert not close_to(state["sam-local"]["model"], wanted["sam-global"], 1e-6)[0]
    assert not close_to(state["gsam-local"]["model"], wanted["gsam-global"], 1e-6)[0]
    assert not close_to(state["looksam"]["model"], looksam_global, 1e-6)[0]
    log = (tmp_path / "ddp" / "gsam-local" / "log.txt").read_text()
    assert "g, eps, g_p and the GSAM direction per process, averaged before the step" in log
    assert state["looksam"]["strategy"]["t"] == 2
    assert pd.read_csv(tmp_path / "ddp" / "looksam" / "results.csv")["passes_per_step"].tolist() == [1.5]
    for name in ("saf", "mesa"):  # the term applied in epoch 2: its mean over both processes' rows is one's
        column = pd.read_csv(tmp_path / "ddp" / name / "results.csv")["trajectory_loss"]
        alone = pd.read_csv(tmp_path / "one" / name / "results.csv")["trajectory_loss"]
        assert column.isna().tolist() == [True, False] and column.iloc[1] > 0
        assert column.iloc[1] == pytest.approx(alone.iloc[1], rel=1e-3)  # rank 0 alone: 6% apart
