"""The seeds' command lines: their flags work as aliases or get the basinlab equivalent in one line."""
import pytest

from basinlab.cli import build_parser, main
from basinlab.cli.options import build_train_config


def parse(*argv):
    return build_train_config(build_parser().parse_args(["train", *argv]))


def test_seed_spellings_are_aliases():
    cfg = parse("--server", "asgd", "--workers_num", "8", "--model-dir", "/tmp/m", "~/data")
    assert (cfg.workers, cfg.save, cfg.datasets_dir) == (8, "/tmp/m", "~/data")
    assert parse("DIR", "--datasets-dir", "OTHER").datasets_dir == "OTHER"  # the flag wins over the positional


@pytest.mark.parametrize("argv, answer", [
    (["--gpus", "1"], "--gpus is the seeds' flag: use --device cuda:N for one GPU, or --nproc N"),
    (["--ss", "0.01"], "use --smoothout A"),
    (["-e", "ckpt.pth"], "use `basinlab evaluate CHECKPOINT`"),
    (["--start-epoch", "3"], "use --resume RUN"),
    (["--lr_bb_fix"], "use --lr-scale-batch sqrt"),
    (["-mb", "128"], "use --ghost-batch M"),
    (["--learnig-rate", "0.1"], "did you mean --learning-rate"),
])
def test_other_seed_flags_and_typos_get_one_line(capsys, argv, answer):
    assert main(["train", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and answer in err


def test_every_train_option_states_its_default_in_the_help(capsys):
    import dataclasses

    from basinlab.config import WHEN_UNSET, TrainConfig
    unset = [f.name for f in dataclasses.fields(TrainConfig)
             if f.default is None and "default" not in f.metadata["help"] and f.name not in WHEN_UNSET]
    assert unset == []
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "replaces nothing" not in text
    assert "--optimizer OPTIMIZER optimizer name (any torch.optim class); given with a model regime, it replaces " \
           "that regime by the flags' one-phase regime (default: the model regime's, else SGD)" in text
