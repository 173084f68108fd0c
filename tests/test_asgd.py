"""The simulated parameter server (basinlab.methods.asgd.server) and `basinlab stability` (spec 02-async-sgd.md)."""
import math
import re

import numpy as np
import pandas as pd
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch import nn

import basinlab
from basinlab.api import make_config
from basinlab.cli import main
from basinlab.errors import ConfigError
from basinlab.methods.asgd.method import configure
from basinlab.methods.asgd.server import ParameterServer
from basinlab.methods.asgd.stability import stability_threshold
from basinlab.records.results import TIME_COLUMNS

SMALL = dict(dataset="mnist5k", quiet=True, val_limit=64)
TINY_NET = "{'width': 4, 'hidden': 16}"


# ----------------------------------------------------------------------------------------------- helpers
def quadratic(diag):
    """A parameter x and the gradient H x of 0.5 x^T H x with H = diag(diag)."""
    x = nn.Parameter(torch.linspace(1.0, 0.5, len(diag), dtype=torch.float64))
    h = torch.tensor(diag, dtype=torch.float64)

    def compute(worker):
        grad = h * x.detach()
        x.grad = grad if x.grad is None else x.grad + grad
        return True

    return x, h, compute


def sgd_update(optimizer):
    def update(worker):
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return update


def run_server(server, compute, update, steps):
    for _ in range(steps):
        server.step(compute, update)


# ----------------------------------------------------------------------------------------------- stability edge
@pytest.mark.parametrize("delay,steps", [(1, 800), (4, 2500), (16, 8000)])
def test_pure_asgd_converges_below_and_diverges_above_the_threshold(delay, steps):
    lam = 2.0
    edge = stability_threshold(delay) / lam  # lr at the edge for lambda_max = lam
    final = {}
    for factor in (0.95, 1.05):
        x, _, compute = quadratic([lam, 0.3 * lam])
        opt = torch.optim.SGD([x], lr=factor * edge)
        server = ParameterServer([x], mode="asgd", workers=delay + 1)  # default delay: workers - 1
        run_server(server, compute, sgd_update(opt), steps)
        final[factor] = float(x.detach().abs().max())
    assert final[0.95] < 1e-3, final
    assert final[1.05] > 1e3, final


# ----------------------------------------------------------------------------------------------- staleness
@pytest.mark.parametrize("workers,delay", [(8, 7), (8, 3), (6, 1), (4, 0), (1, 0)])
def test_round_robin_applies_every_gradient_exactly_d_updates_stale(workers, delay):
    """x counts server updates, so the value a worker sees is the version of its weights."""
    x = nn.Parameter(torch.zeros(1))
    k = workers // (delay + 1)
    seen, applied = [], []

    def compute(worker):
        seen.append((worker, int(x.item())))
        x.grad = torch.zeros(1)
        return True

    def update(worker):
        with torch.no_grad():
            version = int(x.item())
            applied.extend(version - v for _, v in seen[-k:])
            x.add_(1.0)

    server = ParameterServer([x], mode="asgd", workers=workers, delay=delay)
    for i in range(workers * 12):
        worker, updated = server.step(compute, update)
        assert worker == i % workers
        assert int(x.item()) == (i + 1) // k  # the model holds the server weights after every push
        assert updated == ((i + 1) % k == 0)
    warm = delay  # the first d updates apply younger gradients (all workers start from version 0)
    assert applied[:warm * k] == [u // k for u in range(warm * k)]
    assert set(applied[warm * k:]) == {delay}
    counts = server.take_delay_counts()
    assert sum(counts.values()) == len(applied) and max(counts) == delay
    assert server.memory()["snapshots_peak"] == delay + 1  # a ring of d+1 snapshots, not N copies


def test_random_and_normal_schedules_are_seeded_and_centred_on_n_minus_1():
    workers = 8
    picks = {}
    for schedule in ("random", "normal"):
        runs = []
        for _ in range(2):
            x = nn.Parameter(torch.zeros(1))
            order = []

            def compute(worker, order=order, x=x):
                order.append(worker)
                x.grad = torch.zeros(1)
                return True

            server = ParameterServer([x], workers=workers, schedule=schedule, seed=3)
            run_server(server, compute, lambda w: None, 4000)
            runs.append((order, server.take_delay_counts(), server.memory()))
        assert runs[0][0] == runs[1][0]  # same seed, same workers
        order, counts, memory = runs[0]
        delays = np.repeat(list(counts), list(counts.values()))
        assert abs(delays.mean() - (workers - 1)) < 0.5 and delays.std() > 0.5
        assert memory["snapshots_peak"] <= workers + 1
        picks[schedule] = order
    # normal favours the worker that has waited longest: it is picked far more often than 1 in N
    for schedule, order in picks.items():
        last = {}
        idlest = 0
        for i, w in enumerate(order[workers:], start=workers):
            waiting = {v: i - last.get(v, -1) for v in range(workers)}
            idlest += waiting[w] == max(waiting.values())
            last[w] = i
        picks[schedule] = idlest / (len(order) - workers)
    assert picks["normal"] > 0.5 > 0.3 > picks["random"]


# ----------------------------------------------------------------------------------------------- exact updates
def test_ssgd_equals_large_batch_sgd_step_for_step():
    torch.manual_seed(0)
    make = lambda: nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 3))  # noqa: E731
    server_model, big_model = make(), make()
    big_model.load_state_dict(server_model.state_dict())
    data = torch.randn(6 * 4 * 8, 5)
    labels = torch.randint(0, 3, (len(data),))
    loss_fn = nn.CrossEntropyLoss()
    opt_s = torch.optim.SGD(server_model.parameters(), lr=0.3, momentum=0.9, weight_decay=1e-3)
    opt_b = torch.optim.SGD(big_model.parameters(), lr=0.3, momentum=0.9, weight_decay=1e-3)
    batches = iter(zip(data.split(8), labels.split(8)))

    def compute(worker):
        x, y = next(batches)
        loss_fn(server_model(x), y).backward()
        return True

    server = ParameterServer(server_model.parameters(), mode="ssgd", workers=4)
    for x, y in zip(data.split(32), labels.split(32)):
        run_server(server, compute, sgd_update(opt_s), 4)
        loss_fn(big_model(x), y).backward()
        opt_b.step()
        opt_b.zero_grad()
        for a, b in zip(server_model.parameters(), big_model.parameters()):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("mode", ["asgd", "msgd"])
def test_momentum_recursions_match_the_spec(mode):
    """asgd: x' = x - lr g(x[t-tau]) + gamma (x[t] - x[t-1]); msgd: ... + gamma (x[t-tau] - x[t-tau-1])."""
    workers, lr, gamma, wd, steps = 4, 0.05, 0.9, 0.01, 40
    tau = workers - 1
    x, h, compute = quadratic([1.0, 0.4, 0.1])
    opt = torch.optim.SGD([x], lr=lr, momentum=gamma, weight_decay=wd)
    server = ParameterServer([x], mode=mode, workers=workers)
    if mode == "msgd":
        def update(worker):
            server.shifted_momentum_step(worker, opt.param_groups)
            x.grad = None
    else:
        update = sgd_update(opt)
    history = [x.detach().clone()]
    at = lambda t: history[max(t, 0)]  # noqa: E731 - x[t] = x[0] before the start
    for t in range(steps):
        server.step(compute, update)
        grad = h * at(t - tau) + wd * at(t)
        momentum = at(t) - at(t - 1) if mode == "asgd" else at(t - tau) - at(t - tau - 1)
        history.append(at(t) - lr * grad + gamma * momentum)
        torch.testing.assert_close(x.detach(), history[-1], rtol=1e-12, atol=1e-12)


def test_bn_buffers_pushed_by_workers_replace_or_average_into_the_server():
    x = nn.Parameter(torch.zeros(1))
    stat = torch.zeros(1)     # stands for a BN running mean
    count = torch.zeros((), dtype=torch.long)  # and its num_batches_tracked
    pushes = []

    def compute(worker):
        value = float(stat) + worker + 1  # what this worker's forward would write
        stat.fill_(value)
        count.add_(1)
        pushes.append(value)
        x.grad = torch.zeros(1)
        return True

    server = ParameterServer([x], [stat, count], workers=4, delay=1)  # k = 2
    for i in range(8):
        _, updated = server.step(compute, lambda w: None)
        if updated:
            assert float(stat) == pytest.approx(sum(pushes[-2:]) / 2)
        else:  # mid-group the server keeps its own statistics
            assert float(stat) == pytest.approx(sum(pushes[-3:-1]) / 2 if i > 1 else 0.0)
    pure = ParameterServer([x], [stat], workers=3)  # k = 1: the pushed statistics overwrite
    for _ in range(5):
        pure.step(compute, lambda w: None)
        assert float(stat) == pushes[-1]


def test_a_skipped_push_is_left_out_of_the_mean():
    x, h, compute = quadratic([1.0])
    calls = []

    def sometimes(worker):
        calls.append(worker)
        return worker != 1 and compute(worker)

    grads = []
    server = ParameterServer([x], mode="ssgd", workers=2)
    server.step(sometimes, lambda w: grads.append(x.grad.clone()))
    server.step(sometimes, lambda w: grads.append(x.grad.clone()))
    torch.testing.assert_close(grads[0], h * torch.tensor([1.0], dtype=torch.float64))


# ----------------------------------------------------------------------------------------------- options
@pytest.mark.parametrize("options,message", [
    (dict(server="asgd", workers=8, delay=2), "divisible by --delay + 1 = 3"),
    (dict(server="asgd", workers=4, delay=4), "needs at least 5 workers"),
    (dict(server="msgd", workers=8, delay=3), "needs --delay = workers - 1 = 7"),
    (dict(server="ssgd", workers=8, delay=1), "synchronous"),
    (dict(server="asgd", workers=0), "--workers must be an integer in [1, 4096]"),
    (dict(server="asgd", workers=4, delay=-1), "--delay must be an integer in [0, 4096]"),
    (dict(server="hogwild", workers=4), "--server must be one of ssgd, asgd, msgd"),
    (dict(server="asgd", workers=4, worker_order="fifo"), "--worker-order must be one of"),
    (dict(workers=4), "--workers needs --server ssgd|asgd|msgd"),
    (dict(adjust_lr=True), "--adjust-lr needs --server"),
    (dict(server="asgd", workers=4, nproc=2), "one process"),
])
def test_invalid_combinations_are_refused_in_one_line(options, message):
    with pytest.raises(ConfigError, match=re.escape(message)) as info:
        configure(make_config(**options))
    assert "\n" not in str(info.value)


def test_cli_refuses_msgd_with_adam_in_one_line(tmp_path, capsys):
    code = main(["train", "--server", "msgd", "--workers", "2", "--train-limit", "64", "-b", "32", "--quiet",
                 "--results-dir", str(tmp_path), "--save", "x"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err and "use an SGD regime" in err


# ----------------------------------------------------------------------------------------------- runs
def _weights(run_path):
    return torch.load(run_path / "last.pt", weights_only=True)


def test_ssgd_run_equals_large_batch_run(tmp_path, no_run_plots):
    """Through the trainer: 4 workers of batch 16 = one worker of batch 64 (no BN, no dropout)."""
    common = dict(SMALL, train_limit=256, epochs=1, results_dir=str(tmp_path), optimizer="SGD", lr=0.2, momentum=0.9,
                  model_config="{'norm': 'none', 'dropout': 0.0, 'width': 4, 'hidden': 16}")
    ssgd = basinlab.train(**common, server="ssgd", workers=4, batch_size=16, save="ssgd")
    big = basinlab.train(**common, batch_size=64, save="big")
    a, b = _weights(ssgd.path), _weights(big.path)
    assert a["global_step"] == b["global_step"] == 4
    for name, tensor in b["model"].items():
        torch.testing.assert_close(a["model"][name], tensor, rtol=1e-4, atol=1e-6)
    row = ssgd.history.iloc[-1]
    assert row["delay_mean"] == row["delay_max"] == 0 and row["worker_spread"] == 0


@pytest.mark.parametrize("options", [
    # k = 2 with 5 batches per epoch: a group spans the epoch end (saved gradient sum and BN sum); normal schedule RNG
    dict(server="asgd", workers=4, delay=1, worker_order="normal", batch_size=32, train_limit=160),
    # per-worker momentum buffers, adjusted lr
    dict(server="msgd", workers=3, batch_size=32, train_limit=192, adjust_lr=True, optimizer="SGD", lr=0.05,
         momentum=0.9),
])
def test_resume_is_bit_exact(tmp_path, options, no_run_plots):
    common = dict(SMALL, **options, results_dir=str(tmp_path), model_config=TINY_NET)
    straight = basinlab.train(**common, epochs=2, save="straight")
    half = basinlab.train(**common, epochs=1, save="halves")
    mid_group = bool(_weights(half.path)["strategy"]["pending"])
    assert main(["train", "--resume", str(half.path), "--epochs", "2", "--quiet"]) == 0
    resumed = basinlab.load_run(half.path)
    a, b = _weights(straight.path), _weights(half.path)
    for name, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][name]), name
    assert a["strategy"]["version"] == b["strategy"]["version"]
    pd.testing.assert_frame_equal(straight.history.drop(columns=TIME_COLUMNS),
                                  resumed.history.drop(columns=TIME_COLUMNS))
    if options["server"] == "msgd":
        assert len(b["strategy"]["momentum"]) == 3
        history = straight.history
        assert history["lr"].iloc[0] == pytest.approx(0.05 * math.sin(math.pi / 10))
        assert history["delay_max"].iloc[-1] == history["delay_mean"].iloc[-1] == 2  # d = N - 1 after warm-up
        assert history["delay_mean"].iloc[0] < 2 and (history["worker_spread"] > 0).all()
        events = EventAccumulator(str(straight.path / "tensorboard"), size_guidance={"histograms": 0})
        events.Reload()
        assert [e.step for e in events.Histograms("asgd/delay")] == [1, 2]
    else:
        assert mid_group  # the first epoch really ended inside a group


# ----------------------------------------------------------------------------------------------- stability table
SPEC_TABLE = {
    1: [1.000, 1.000, 1.000, 1.000, 1.50, 1.90, 1.99],
    4: [0.347, 0.312, 0.265, 0.252, 0.432, 0.487, 0.499],
    16: [0.0952, 0.0905, 0.0749, 0.0641, 0.112, 0.123, 0.125],
    32: [0.0483, 0.0470, 0.0406, 0.0328, 0.0563, 0.0614, 0.0624],
}


def test_stability_command_prints_the_spec_table(tmp_path, capsys):
    csv = tmp_path / "t.csv"
    code = main(["stability", "--delays", "1", "4", "16", "32", "--momentum", "0", "0.5", "0.9", "0.99",
                 "--kind", "standard", "shifted", "--csv", str(csv)])
    assert code == 0
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("|")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    assert header[:8] == ["tau", "gamma=0", "standard 0.5", "standard 0.9", "standard 0.99", "shifted 0.5",
                          "shifted 0.9", "shifted 0.99"]
    for line in lines[2:]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        tau = int(cells[0])
        assert [float(c) for c in cells[1:8]] == pytest.approx(SPEC_TABLE[tau], rel=6e-3)
        assert float(cells[8]) == pytest.approx(math.sin(math.pi / (4 * tau + 2)), rel=5e-3)
    frame = pd.read_csv(csv, index_col="delay")
    assert frame.loc[16, "shifted_0.9"] == pytest.approx(0.123, rel=5e-3) and len(frame) == 4


def test_stability_command_rejects_bad_input_in_one_line(capsys):
    assert main(["stability", "--momentum", "1.2"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "--momentum: must be a finite number in [0, 1), got '1.2'" in err
