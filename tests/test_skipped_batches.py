"""--nan-policy skip: a skipped batch leaves no trace in the model; a run that cannot continue exits 3."""
import textwrap

import torch

from basinlab.cli import main
from basinlab.engine.checkpoint import load_checkpoint

MODEL = textwrap.dedent("""
    import os
    import torch, torch.nn as nn

    class Spiky(nn.Module):
        # BatchNorm, then NaN outputs at the training forwards listed in SPIKY_BAD ("all": every one;
        # "eval": in evaluation after the first epoch)
        def __init__(self, num_classes):
            super().__init__()
            self.norm = nn.BatchNorm1d(784)
            self.fc = nn.Linear(784, num_classes)
            self.calls = 0

        def forward(self, x):
            out = self.fc(self.norm(x.flatten(1)))
            bad = os.environ.get("SPIKY_BAD", "")
            if not torch.is_grad_enabled():
                return out * float("nan") if bad == "eval" and self.calls > 4 else out
            self.calls += 1
            if bad == "all" or str(self.calls) in bad.split(","):
                out = out * float("nan")
            return out

    def spiky(num_classes, dataset):
        return Spiky(num_classes)
""")
RUN = ["--train-limit", "256", "--val-limit", "128", "-b", "64", "--optimizer", "SGD", "--lr", "0.05", "--quiet",
       "--nan-policy", "skip", "--channels-last", "off"]


def train(tmp_path, monkeypatch, bad, *extra):
    (tmp_path / "spiky.py").write_text(MODEL)
    monkeypatch.setenv("SPIKY_BAD", bad)
    return main(["train", "--model", f"{tmp_path / 'spiky.py'}:spiky", *RUN, "--results-dir", str(tmp_path / "r"),
                 *extra])


def test_a_skipped_batch_leaves_the_norm_statistics_untouched(tmp_path, monkeypatch, no_run_plots):
    # the 2nd batch is skipped: the run equals one that never saw it, except for its weights' updates
    assert train(tmp_path, monkeypatch, "2", "--epochs", "1", "--save", "skipped") == 0
    state = load_checkpoint(tmp_path / "r" / "skipped" / "last.pt")
    assert state["nonfinite_skipped"] == 1
    running = {k: v for k, v in state["model"].items() if k.startswith("norm.running")}
    assert all(bool(torch.isfinite(v).all()) for v in running.values())
    assert int(state["model"]["norm.num_batches_tracked"]) == 3  # 4 batches, one skipped


def test_an_epoch_of_skipped_batches_ends_with_exit_3(tmp_path, monkeypatch, capsys, no_run_plots):
    assert train(tmp_path, monkeypatch, "5,6,7,8", "--epochs", "3", "--save", "lost") == 3
    assert "every batch of epoch 2" in capsys.readouterr().err
    state = load_checkpoint(tmp_path / "r" / "lost" / "last.pt")
    assert state["epoch"] == 1  # the last good checkpoint: after epoch 1
    assert load_checkpoint(tmp_path / "r" / "lost" / "best.pt")["epoch"] == 1


def test_a_non_finite_validation_ends_with_exit_3_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch, capsys,
                                                                                    no_run_plots):
    assert train(tmp_path, monkeypatch, "eval", "--epochs", "3", "--save", "broken") == 3
    assert "validation loss after epoch 2 is nan" in capsys.readouterr().err
    assert load_checkpoint(tmp_path / "r" / "broken" / "last.pt")["epoch"] == 1
