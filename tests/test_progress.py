"""Progress inside epochs and validation (-p lines, the 30 s heartbeat, val_time_s, steps.csv) and the
plots made for talks (title, integer epochs, lr as steps, one colour per run)."""
import pandas as pd
import pytest

from basinlab.cli import main
from basinlab.records import progress as progress_module
from basinlab.records.plots import PANELS, panel_figure, runs_figure
from basinlab.records.progress import StepTable, clock

# 512 train / 256 val examples in batches of 64: 8 training and 4 validation steps per epoch.
RUN = ["--train-limit", "512", "--val-limit", "256", "--batch-size", "64", "--eval-batch-size", "64", "--epochs", "2"]


def log_lines(run, prefix):
    return [line.split(" ", 1)[1] for line in (run / "log.txt").read_text().splitlines()
            if line.split(" ", 1)[1].startswith(prefix)]


def test_print_freq_logs_every_n_steps_and_records_the_step_losses(tmp_path, capsys):
    assert main(["train", *RUN, "-p", "3", "--results-dir", str(tmp_path), "--save", "p"]) == 0
    run = tmp_path / "p"
    train_lines = log_lines(run, "epoch 1/2 step") + log_lines(run, "epoch 2/2 step")
    assert [line.split(" |")[0] for line in train_lines] == ["epoch 1/2 step 3/8", "epoch 1/2 step 6/8",
                                                             "epoch 2/2 step 3/8", "epoch 2/2 step 6/8"]
    for field in ("loss", "(avg", "top1", "lr 0.002", "img/s", "ETA"):
        assert all(field in line for line in train_lines), field
    assert "run " in train_lines[0] and "run " not in train_lines[-1]  # the run's ETA while epochs remain
    assert [line.split(" |")[0] for line in log_lines(run, "validate")] == ["validate 1/2 step 3/4",
                                                                          "validate 2/2 step 3/4"]
    assert "epoch 1/2 step 3/8" in capsys.readouterr().out  # the console gets the same lines
    steps = pd.read_csv(run / "steps.csv")
    assert steps["step"].tolist() == [3, 6, 11, 14]
    assert steps["epoch"].tolist() == pytest.approx([3 / 8, 6 / 8, 1 + 3 / 8, 1 + 6 / 8])
    assert (steps["lr"] == 0.002).all() and (steps["loss"] > 0).all()
    results = pd.read_csv(run / "results.csv")
    assert (results["val_time_s"] > 0).all()
    assert (run / "plots" / "loss_steps.png").stat().st_size > 5000


def test_outside_a_terminal_a_heartbeat_line_without_p(tmp_path, monkeypatch, no_run_plots):
    monkeypatch.setattr(progress_module, "HEARTBEAT_S", 0.0)  # every step is "30 s later"
    assert main(["train", *RUN, "--epochs", "1", "--results-dir", str(tmp_path), "--save", "h", "--quiet"]) == 0
    run = tmp_path / "h"
    assert len(log_lines(run, "epoch 1/1 step")) == 8 and len(log_lines(run, "validate 1/1 step")) == 4
    assert not (run / "steps.csv").exists()  # the step-loss curve is a -p feature


def test_no_progress_lines_between_heartbeats(tmp_path, no_run_plots):
    assert main(["train", *RUN, "--epochs", "1", "--results-dir", str(tmp_path), "--save", "q", "--quiet"]) == 0
    assert log_lines(tmp_path / "q", "epoch 1/1 step") == []  # a short epoch ends before the first heartbeat


def test_a_branch_keeps_the_step_losses_up_to_its_checkpoint(tmp_path, no_run_plots):
    assert main(["train", *RUN, "-p", "3", "--save-all", "--quiet", "--results-dir", str(tmp_path),
                 "--save", "origin"]) == 0
    assert main(["train", "--resume", str(tmp_path / "origin" / "epoch_1.pt"), "--save", "branch",
                 "--results-dir", str(tmp_path), "--quiet"]) == 0
    origin = pd.read_csv(tmp_path / "origin" / "steps.csv")
    branch = pd.read_csv(tmp_path / "branch" / "steps.csv")
    assert branch["step"].tolist() == [3, 6, 11, 14]
    assert branch.loc[:1].equals(origin.loc[:1])


def test_a_resumed_run_drops_the_step_losses_after_its_checkpoint(tmp_path):
    table = StepTable(tmp_path / "steps.csv")
    for step in (3, 6, 11, 14):
        table.append(step, step / 8, 1.0 / step, 0.1)
    table.resume(global_step=8)
    table.write_kept()
    table.append(11, 11 / 8, 0.5, 0.1)
    assert pd.read_csv(tmp_path / "steps.csv")["step"].tolist() == [3, 6, 11]
    (tmp_path / "steps.csv").write_bytes(b"\x00\xff torn")
    table.resume(global_step=8)  # an unreadable file restarts the curve instead of stopping the run
    table.write_kept()
    assert pd.read_csv(tmp_path / "steps.csv").empty


@pytest.mark.parametrize("seconds, shown", [(0, "0:00"), (59.6, "1:00"), (61, "1:01"), (3725, "1:02:05")])
def test_eta_clock(seconds, shown):
    assert clock(seconds) == shown


def history(lrs, shift=0.0):
    epochs = range(1, len(lrs) + 1)
    return pd.DataFrame({"epoch": list(epochs), "lr": lrs,
                         "train_loss": [2.0 / e + shift for e in epochs], "val_loss": [2.2 / e + shift for e in epochs],
                         "train_acc1": [50.0 + e for e in epochs], "val_acc1": [45.0 + e for e in epochs]})


def test_a_run_plot_has_a_title_integer_epochs_and_the_lr_as_steps():
    frame = history([0.1, 0.1, 0.01])
    fig = panel_figure(frame, PANELS[2], title="r1: resnet20")
    ax = fig.axes[0]
    assert ax.get_title() == "r1: resnet20"
    assert ax.xaxis.get_major_locator()._integer
    line, = ax.get_lines()
    assert line.get_drawstyle() == "steps-pre"
    assert list(line.get_xdata()) == [0, 1, 2, 3] and list(line.get_ydata()) == [0.1, 0.1, 0.1, 0.01]
    loss_ax = panel_figure(frame, PANELS[0]).axes[0]
    assert [line.get_linestyle() for line in loss_ax.get_lines()] == ["--", "-"]  # train dashed, val solid


def test_an_overlay_gives_each_run_one_colour_train_dashed_val_solid():
    fig = runs_figure({"a (resnet20)": history([0.1] * 3), "b (resnet20)": history([0.05] * 3, shift=0.5)},
                      title="two runs")
    loss_ax = fig.axes[0]
    lines = loss_ax.get_lines()
    assert [line.get_linestyle() for line in lines] == ["--", "-", "--", "-"]
    assert lines[0].get_color() == lines[1].get_color() != lines[2].get_color() == lines[3].get_color()
    assert [t.get_text() for t in loss_ax.get_legend().get_texts()] == ["a (resnet20)", "b (resnet20)"]
    assert [t.get_text() for t in fig.axes[1].get_legend().get_texts()] == ["train", "val"]
    assert fig._suptitle.get_text() == "two runs"
