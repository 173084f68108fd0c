"""`basinlab autohyper train` (the seed's interface) and `basinlab lr-range`, end to end on mnist5k."""

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

import basinlab
from basinlab.cli import main
from basinlab.errors import ConfigError
from basinlab.optim import Regime
from basinlab.tuning.callbacks import TrainLossEarlyStop
from basinlab.tuning.seed_config import plan_from_config, read_seed_config
from basinlab.workflows import autohyper as ah

# Seed 0 on these 256 digits: Z(0.1) = 0.5, Z(0.141) = 0, so the search takes 2-3 trials.
TINY = {"dataset": "mnist5k", "network": "mnist", "optimizer": "SGD", "scheduler": "None", "init_lr": "auto",
        "optimizer_kwargs": {"momentum": 0.9}, "n_trials": 1, "max_epochs": 3, "mini_batch_size": 32,
        "num_workers": 0, "trial_epochs": 1, "train_limit": 256, "val_limit": 64,
        "early_stop_threshold": 10.0, "early_stop_patience": 1,
        "search_kwargs": {"min_lr": 0.1, "max_lr": 0.2, "num_points": 3, "exit_window_rel": 0.3}}


pytestmark = pytest.mark.usefixtures("no_run_plots")


def write_config(tmp_path, name="config.yaml", **changes):
    path = tmp_path / name
    path.write_text(yaml.safe_dump({**TINY, **changes}))
    return path


def autohyper(config, output, *extra):
    return main(["autohyper", "train", "--config", str(config), "--output", str(output), "--cpu", *extra])


class CountingTrain:
    """autoHyper's train_trial wrapped to record the options of every training it starts."""

    def __init__(self, monkeypatch):
        self.calls, real = [], ah.train_trial

        def counted(options, callbacks=()):
            self.calls.append(options)
            return real(options, callbacks)
        monkeypatch.setattr(ah, "train_trial", counted)


@pytest.fixture(scope="module")
def searched(tmp_path_factory, no_run_plots_in_module):
    tmp = tmp_path_factory.mktemp("ah")
    config = write_config(tmp)
    assert autohyper(config, tmp / "out", "--save-freq", "1") == 0
    return tmp, config, tmp / "out"


def test_search_writes_its_log_run_folders_and_summary(searched):
    _, _, out = searched
    search = pd.read_csv(out / "search.csv")
    assert {"lr", "Z", "zeta", "decision", "window_lo", "window_hi", "trial", "run", "status"} <= set(search.columns)
    trials = search[search["Z"].notna()]
    assert len(trials) >= 2 and search["decision"].iloc[-1] in ("exit-window", "exit-counter")
    assert (out / "search.png").stat().st_size > 0
    for _, row in trials.iterrows():  # each trial is a basinlab run folder whose Z is its lowrank column
        history = basinlab.load_run(out / row["run"]).history
        assert len(history) == 1 and row["Z"] == pytest.approx(history["lowrank_zero_fraction"].mean())
        assert (out / row["run"] / "lowrank.csv").is_file()
        cfg = yaml.safe_load((out / row["run"] / "config.yaml").read_text())
        assert cfg["device"] == "cpu" and cfg["seed"] == 0
        assert cfg["model-config"]["regime"][0] == {"epoch": 0, "optimizer": "SGD", "lr": row["lr"], "momentum": 0.9}
    chosen = search["lr"].iloc[-1]
    summary = pd.read_csv(out / "summary.csv")
    assert len(summary) == 1 and summary["lr"].iloc[0] == pytest.approx(chosen) and summary["source"].iloc[0] == "auto"
    full = out / summary["run"].iloc[0]
    assert full == out / f"lr={ah.fmt_lr(chosen)}" / "trial_0"
    # early_stop_threshold 10 with patience 1: the second epoch cannot improve by 10, so it stops there.
    assert summary["status"].iloc[0] == "early-stopped" and summary["epochs"].iloc[0] == 2
    assert (full / "epoch_1.pt").is_file() and (full / "epoch_2.pt").is_file()  # --save-freq 1
    assert "device cpu" in (full / "log.txt").read_text()
    assert len(pd.read_csv(full / "lowrank.csv")) == 2 * 2  # 2 epochs x 2 conv layers, as the seed's CSV


def test_same_seed_same_choice_and_rerun_trains_nothing(searched, tmp_path, monkeypatch):
    tmp, config, out = searched
    first = pd.read_csv(out / "search.csv")
    assert autohyper(config, tmp_path / "again") == 0
    again = pd.read_csv(tmp_path / "again" / "search.csv")
    assert again["lr"].iloc[-1] == first["lr"].iloc[-1]
    np.testing.assert_array_equal(again["Z"].fillna(-1), first["Z"].fillna(-1))
    counter = CountingTrain(monkeypatch)
    assert autohyper(config, out) == 0
    assert counter.calls == []
    assert pd.read_csv(out / "search.csv")["lr"].iloc[-1] == first["lr"].iloc[-1]


def test_interrupted_runs_are_resumed_and_other_configs_refused(searched, tmp_path, monkeypatch):
    _, _, out = searched
    copy = tmp_path / "copy"
    import shutil
    shutil.copytree(out, copy)
    full = copy / pd.read_csv(copy / "summary.csv")["run"].iloc[0]
    (full / ah.DONE_FILE).unlink()  # as if killed after its last checkpoint
    counter = CountingTrain(monkeypatch)
    assert main(["autohyper", "train", "--config", str(tmp_path.parent / "x.yaml"), "--resume", str(full / "last.pt"),
                 "--cpu"]) == 2  # the config file must exist
    config = write_config(tmp_path)
    assert main(["autohyper", "train", "--config", str(config), "--resume", str(full / "last.pt"), "--cpu"]) == 0
    assert len(counter.calls) == 1 and counter.calls[0]["resume"] == str(full)
    assert json.loads((full / ah.DONE_FILE).read_text())["status"] == "early-stopped"
    changed = write_config(tmp_path, "changed.yaml", optimizer_kwargs={"momentum": 0.5})
    assert autohyper(changed, copy) == 2


def test_init_lr_list_and_lr_wd_search(tmp_path, monkeypatch):
    def fake_trial(self, lr, wd, log):  # a response falling with lr and with weight decay
        log.trial_done(lr, wd, self.output / "trials" / ah._lr_folder(lr, wd), "complete")
        return float(np.clip(1 - math.log(lr / 1e-3) / 4 - 20 * wd, 0, 1))
    monkeypatch.setattr(ah.AutoHyper, "trial", fake_trial)
    config = write_config(tmp_path, init_lr=[0.05, "auto"], max_epochs=1, early_stop_threshold=-1,
                          search_kwargs={"max_trials": 200})
    assert autohyper(config, tmp_path / "out", "--search", "lr+wd") == 0
    summary = pd.read_csv(tmp_path / "out" / "summary.csv")
    assert list(summary["source"]) == ["given", "auto"] and summary["lr"].iloc[0] == 0.05
    search = pd.read_csv(tmp_path / "out" / "search.csv")
    lr, wd = search["lr"].iloc[-1], search["wd"].iloc[-1]
    assert summary["lr"].iloc[1] == pytest.approx(lr) and summary["weight_decay"].iloc[1] == pytest.approx(wd)
    run = tmp_path / "out" / summary["run"].iloc[1]
    assert run.parent.name == f"lr={ah.fmt_lr(lr)}_wd={ah.fmt_lr(wd)}"
    regime = yaml.safe_load((run / "config.yaml").read_text())["model-config"]["regime"]
    assert regime[0]["weight_decay"] == pytest.approx(wd)


def test_diverged_trial_counts_as_zero(tmp_path):
    plan = plan_from_config(read_seed_config_from(TINY))
    runner = ah.AutoHyper(plan, tmp_path, device="cpu", echo=lambda line: None)
    log = ah.SearchLog(tmp_path, lambda line: None)
    assert runner.trial(1e4, None, log) == 0.0  # SGD at lr 1e4: the loss overflows in the first steps
    assert log.trials[(1e4, None)] == ("trials/lr=10000", "diverged")
    assert json.loads((tmp_path / "trials" / "lr=10000" / ah.DONE_FILE).read_text())["status"] == "diverged"
    assert runner.trial(1e4, None, log) == 0.0 and (1e4, None) in log.read_back  # read back, not retrained


@pytest.mark.parametrize("changes,message", [
    ({"optimiser": "SGD"}, "unknown key 'optimiser'"),
    ({"init_lr": "fast"}, "init_lr"),
    ({"init_lr": "sota_auto"}, "sota_auto"),
    ({"scheduler": "ReduceLROnPlateau"}, "scheduler 'ReduceLROnPlateau' is not supported"),
    ({"scheduler": "StepLR", "scheduler_kwargs": {"step_size": 2}}, "needs scheduler_kwargs gamma"),
    ({"scheduler": "OneCycleLR", "scheduler_kwargs": {"cycle_momentum": True}}, "cycle_momentum"),
    ({"scheduler": "AdaS", "optimizer": "AdaM"}, "needs optimizer SGD"),
    ({"optimizer": "AdaBound"}, "adabound"),
    ({"optimizer": "Lion"}, "unknown optimizer"),
    ({"optimizer_kwargs": {"betas": [0.9, 0.99]}}, "'betas' is not a setting of SGD"),
    ({"network": "DenseNet121"}, "network 'DenseNet121' is not available"),
    ({"dataset": "SVHN"}, "dataset 'SVHN' is not supported"),
    ({"loss": "mse"}, "loss 'mse'"),
    ({"n_trials": 0}, "n_trials must be an integer in [1, 10000]"),
    ({"n_trials": 10**400}, "n_trials must be an integer in [1, 10000]"),
    ({"early_stop_threshold": 10**400}, "early_stop_threshold must be a number"),
    ({"init_lr": 10**400}, "init_lr entries must be numbers > 0"),
])
def test_bad_config_is_one_line(tmp_path, capsys, changes, message):
    config = write_config(tmp_path, **changes)
    assert autohyper(config, tmp_path / "out") == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err


def test_malformed_yaml_and_unsupported_flags(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("dataset: [CIFAR10\n")
    assert autohyper(bad, tmp_path / "out") == 2
    assert "malformed YAML" in capsys.readouterr().err
    assert autohyper(write_config(tmp_path), tmp_path / "out", "--world-size", "2") == 2
    assert "--world-size is not supported" in capsys.readouterr().err


def test_seed_names_and_values_translate():
    values = read_seed_config_from({"dataset": "CIFAR10", "network": "ResNet18CIFAR", "optimizer": "AdaM",
                                    "optimizer_kwargs": {"weight_decay": "5e-4"}, "init_lr": ["1e-3", 0.1]})
    plan = plan_from_config(values)
    expected = ("cifar10", "resnet18", {"stem": "cifar"}, "Adam")
    assert (plan.dataset, plan.model, plan.model_config, plan.optimizer) == expected
    assert plan.init_lrs == [1e-3, 0.1] and plan.optimizer_settings == {"weight_decay": 5e-4}
    adas = plan_from_config(read_seed_config_from({"optimizer": "SGD", "scheduler": "AdaS", "p": 2,
                                                   "scheduler_kwargs": {"beta": 0.9}}))
    assert adas.optimizer == "AdaS" and adas.optimizer_settings == {"beta": 0.9, "p": 2}
    nag = plan_from_config(read_seed_config_from({"optimizer": "NAG", "optimizer_kwargs": {"momentum": 0.9}}))
    Regime(nag.regime(0.1))  # a valid basinlab regime


def read_seed_config_from(mapping, tmp=None):
    import tempfile
    from pathlib import Path
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "c.yaml"
        path.write_text(yaml.safe_dump(mapping))
        return read_seed_config(path)


def regime_lrs(entry_schedule, times, lr=0.1):
    regime = Regime([{"epoch": 0, "optimizer": "SGD", "lr": lr, "schedule": entry_schedule}])
    return np.array([regime.lr_at(t) for t in times])


def test_schedules_match_torch_schedulers():
    param = [torch.zeros(1, requires_grad=True)]
    # StepLR, stepped once per epoch (as the seed did)
    step_lr = {"scheduler": "StepLR", "scheduler_kwargs": {"step_size": 3, "gamma": 0.5}}
    plan = plan_from_config(read_seed_config_from(step_lr))
    opt = torch.optim.SGD(param, lr=0.1)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=3, gamma=0.5)
    torch_lrs = []
    for _ in range(10):
        torch_lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    np.testing.assert_allclose(regime_lrs(plan.schedule, np.arange(10) + 0.5), torch_lrs, rtol=1e-12)
    # CosineAnnealingWarmRestarts at fractional epochs (the seed's scheduler.step(epoch + batch/len))
    for t_mult in (1, 2):
        restarts = {"T_0": 3, "T_mult": t_mult, "eta_min": 1e-3}
        plan = plan_from_config(read_seed_config_from({"scheduler": "CosineAnnealingWarmRestarts",
                                                       "scheduler_kwargs": restarts}))
        opt = torch.optim.SGD(param, lr=0.1)
        sched = torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(opt, T_0=3, T_mult=t_mult, eta_min=1e-3)
        times = np.arange(0, 20, 0.37)
        expected = []
        for t in times:
            sched.step(t)
            expected.append(opt.param_groups[0]["lr"])
        np.testing.assert_allclose(regime_lrs(plan.schedule, times), expected, rtol=1e-9, atol=1e-12)
    # OneCycleLR over max_epochs; torch counts steps (its first phase ends one step earlier)
    steps_per_epoch, epochs = 1000, 10
    for three_phase in (False, True):
        plan = plan_from_config(read_seed_config_from({"scheduler": "OneCycleLR", "max_epochs": epochs,
                                                       "scheduler_kwargs": {"three_phase": three_phase,
                                                                            "cycle_momentum": False}}))
        opt = torch.optim.SGD(param, lr=0.1)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, epochs=epochs, steps_per_epoch=steps_per_epoch,
                                                    three_phase=three_phase, cycle_momentum=False)
        expected = []
        for _ in range(epochs * steps_per_epoch):
            expected.append(opt.param_groups[0]["lr"])
            opt.step()
            sched.step()
        times = np.arange(0, epochs * steps_per_epoch, 97)
        ours = regime_lrs(plan.schedule, times / steps_per_epoch)
        np.testing.assert_allclose(ours, np.array(expected)[times], rtol=2e-3, atol=1.5e-4)  # ~3 steps of lr change


def independent_early_stop(losses, threshold, patience):
    best, wait = float("inf"), 0
    for epoch, loss in enumerate(losses, start=1):
        if loss < best - threshold:
            best, wait = loss, 0
        else:
            wait += 1
        if wait >= patience:
            return epoch
    return None


class FakeRun:
    """What TrainLossEarlyStop sees of a run: a log and a way to ask it to stop."""

    def __init__(self):
        self.should_stop = False

    def log(self, message):
        pass

    def request_stop(self):
        self.should_stop = True


@pytest.mark.parametrize("threshold,patience", [(0.01, 2), (0.0, 1), (0.1, 3), (-1.0, 1)])
def test_early_stop_rule(threshold, patience):
    rng = np.random.default_rng(0)
    losses = list(np.maximum(1.0 / np.arange(1, 40) + rng.normal(0, 0.01, 39), 0))
    stop = TrainLossEarlyStop(threshold, patience)
    trainer, stopped = FakeRun(), None
    for epoch, loss in enumerate(losses, start=1):
        stop.on_epoch_end(trainer, {"epoch": epoch, "train_loss": loss})
        if trainer.should_stop:
            stopped = epoch
            break
    expected = independent_early_stop(losses, threshold, patience) if threshold >= 0 else None
    assert stopped == expected
    with pytest.raises(ConfigError):
        TrainLossEarlyStop(0.1, 0)


def test_lr_range_cli_end_to_end(tmp_path, capsys):
    out = tmp_path / "lrr"
    code = main(["lr-range", "--train-limit", "256", "-b", "32", "--optimizer", "SGD", "--momentum", "0.9",
                 "--num-steps", "25", "--start-lr", "1e-5", "--end-lr", "10", "-o", str(out), "--quiet"])
    assert code == 0
    printed = capsys.readouterr().out
    assert all(name in printed for name in ("steepest", "valley", "min_div_10"))
    curve = pd.read_csv(out / "lr_range.csv")
    assert 2 <= len(curve) <= 25 and curve["lr"].iloc[0] == pytest.approx(1e-5)
    ratio = curve["lr"].iloc[1] / curve["lr"].iloc[0]
    assert ratio == pytest.approx((10 / 1e-5) ** (1 / 24))  # exponential sweep
    facts = json.loads((out / "lr_range.json").read_text())
    for lr in facts["suggestions"].values():
        assert 1e-5 <= lr <= 10
    assert (out / "lr_range.png").stat().st_size > 0
    assert [p.name for p in out.iterdir() if p.is_dir()] == []  # the scratch run folder is gone
    assert main(["lr-range", "--resume", str(out), "-o", str(out)]) == 2
