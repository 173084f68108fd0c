"""Nothing runs silently different from what was asked: a data folder is read or refused, never ignored, and an
option the run would never read is refused in one line."""
import pytest
import torch

from basinlab.cli import main
from tests.test_data import make_cifar10

SMALL = ["--train-limit", "20", "--val-limit", "8", "-b", "10", "--epochs", "1", "--quiet"]


def one_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


@pytest.fixture
def cifar_root(tmp_path):
    """The seeds' data folder for CIFAR-10: DIR/cifar-10-batches-py/ (tiny, real format)."""
    make_cifar10(tmp_path / "data" / "cifar-10-batches-py")
    return tmp_path / "data"


def test_the_seeds_positional_folder_trains_on_the_dataset_it_holds(cifar_root, tmp_path, no_run_plots):
    assert main(["train", str(cifar_root), *SMALL, "--results-dir", str(tmp_path / "r"), "--save", "on"]) == 0
    log = (tmp_path / "r" / "on" / "log.txt").read_text()
    assert "dataset cifar10: the one --datasets-dir holds" in log and "data cifar10:" in log
    assert "dataset: cifar10" in (tmp_path / "r" / "on" / "config.yaml").read_text()


@pytest.mark.parametrize("setup, words", [
    (lambda root: root.mkdir(parents=True), "holds no dataset basinlab reads"),
    (lambda root: (make_cifar10(root / "cifar10" / "cifar-10-batches-py"),
                   make_cifar10(root / "cifar100-unused")), None),
], ids=["empty", "one"])
def test_a_folder_holding_no_dataset_is_refused_naming_the_fallback(tmp_path, capsys, setup, words):
    root = tmp_path / "data"
    setup(root)
    code = main(["train", "--datasets-dir", str(root), *SMALL, "--results-dir", str(tmp_path / "r")])
    if words is None:  # exactly one dataset there: it is used
        assert code == 0
        return
    assert code == 2
    line = one_line(capsys)
    assert words in line and "mnist5k, the embedded digits" in line and "--dataset NAME" in line
    assert not (tmp_path / "r").exists()


def test_a_folder_holding_several_datasets_is_refused_naming_them(tmp_path, capsys):
    make_cifar10(tmp_path / "data" / "cifar10" / "cifar-10-batches-py")
    (tmp_path / "data" / "imagenet" / "train").mkdir(parents=True)
    assert main(["train", str(tmp_path / "data"), *SMALL, "--results-dir", str(tmp_path / "r")]) == 2
    line = one_line(capsys)
    assert "imagenet at" in line and "cifar10 at" in line and "--dataset NAME" in line


def test_the_embedded_digits_with_a_folder_are_refused(cifar_root, tmp_path, capsys):
    assert main(["train", "--dataset", "mnist5k", "--datasets-dir", str(cifar_root), *SMALL,
                 "--results-dir", str(tmp_path / "r")]) == 2
    line = one_line(capsys)
    assert "reads no folder" in line and "it holds: cifar10 at" in line


@pytest.mark.parametrize("argv, words", [
    (["--download"], "mnist5k cannot be downloaded"),
    (["--sync-bn"], "--sync-bn needs a data-parallel run"),
    (["--afwd", "0.99"], "--afwd is read by --norm-mode online only"),
    (["--gn-num-groups", "4", "--norm-mode", "layer"],
     "--gn-num-groups is read by --norm-mode group or gn_ws or evonorm_s0 only"),
    (["--lr-multiplier", "0.5"], "--lr-multiplier needs --lr-milestones"),
    (["--limit-mode", "first"], "--limit-mode needs --train-limit N or --val-limit N"),
    (["--eval-amp", "none"], "--eval-amp needs --amp"),
    (["--dataset", "nosuchdata"], "unknown dataset 'nosuchdata'"),
], ids=lambda v: v if isinstance(v, str) else v[0])
def test_an_option_the_run_never_reads_is_refused(tmp_path, capsys, argv, words):
    assert main(["train", *argv, "--epochs", "1", "--results-dir", str(tmp_path / "r")]) == 2
    assert words in one_line(capsys)
    assert not (tmp_path / "r").exists()


def test_presets_may_carry_the_seed_defaults_of_every_mode(cifar_root, tmp_path, no_run_plots):
    """The Online Normalization presets hold the online decays and group count for every mode; asking for
    another mode is not an unread option (only what the person typed is checked)."""
    assert main(["train", "--preset", "onlinenorm-cifar10", "--norm-mode", "batch", "--datasets-dir", str(cifar_root),
                 *SMALL, "--results-dir", str(tmp_path / "r"), "--save", "p"]) == 0


def test_a_run_stored_with_a_folder_and_the_digits_still_resumes(tmp_path, no_run_plots):
    """Runs written before this rule (the seeds' DIR ignored, mnist5k trained) resume as they were."""
    run = tmp_path / "r" / "old"
    assert main(["train", *SMALL, "--results-dir", str(run.parent), "--save", "old"]) == 0
    state = torch.load(run / "last.pt", weights_only=True)
    state["config"]["datasets_dir"] = str(tmp_path)
    from basinlab.engine.checkpoint import save_checkpoint
    save_checkpoint({k: v for k, v in state.items() if k != "checksum"}, run / "last.pt")
    assert main(["train", "--resume", str(run), "--epochs", "2", "--quiet"]) == 0
