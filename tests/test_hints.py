"""Hints that are right and complete (#27 item 2): every unknown flag of a command in one line with its
equivalent in that command (the seeds' flags: one table, checked here against every command's parser), a seed
line pasted as it is, `--model file.py` without its factory, errors of the user's model code, and missing
optional packages. Nothing here trains: every command stops at its arguments or at building the model."""
import argparse
import re
import sys
from pathlib import Path

import pytest

from basinlab.cli import build_parser, main
from basinlab.cli.seed_flags import COMMANDS, ROWS, SAME, SEED_FLAGS, SEED_SCRIPTS, markdown_table
from basinlab.models import registry
from basinlab.utils import dependencies

ROOT = Path(__file__).resolve().parents[1]
SEEDS = ROOT.parent / "shared" / "seeds"
FLAG = re.compile(r"(?<![\w-])(--?[A-Za-z][\w-]*)")

# Every flag of the four seed READMEs' example command lines and argument lists (the READMEs are in
# ../shared/seeds; test_the_readmes_hold_no_other_flag re-reads them where they are present)
README_FLAGS = {
    "at-stabilitys-edge": "--model --dataset --save -b --workers_num --model-config --epochs --server --datasets-dir",
    "autohyper": "-h --help --config --data --output --checkpoint --resume --root --save-freq --cpu --gpu "
                 "--multiprocessing-distributed --dist-url --dist-backend --world-size --rank",
    "online-normalization": "--model-dir --norm-mode --afwd --abkw -h --help -a --arch -j --workers --epochs "
                            "--start-epoch -b --batch-size --lr --learning-rate --lr-milestones --lr-multiplier "
                            "--momentum --wd --weight-decay -p --print-freq --resume -e --evaluate --pretrained "
                            "--seed --decay-factor-forward --decay-factor-backward --ecm --gn-num-groups -d --depth",
    "smoothout": "--model --dataset -b --gpus --evaluate --ss --mode --no-augment --slave-evaluate "
                 "--no-visualize_train --alpha --b",
}
# The seed flags the issue names that live in the seeds' code rather than their READMEs
CODE_FLAGS = "--adapt-type --smoothing-type --no-exclude-bn --cutout --duplicates --input-size -mb --mini-batch-size " \
             "--lr_bb_fix --noise-type"


def parsers() -> dict[str, argparse.ArgumentParser]:
    """Every parser of the command tree by its command ("" is `basinlab` itself)."""
    found = {}

    def walk(parser, words):
        found[" ".join(words)] = parser
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, child in action.choices.items():
                    walk(child, [*words, name])
    walk(build_parser(), [])
    return found


PARSERS = parsers()
LEAVES = {name: p for name, p in PARSERS.items() if not p._has_commands()}


def options(parser) -> set[str]:
    return set(parser._option_string_actions)


def command_of(words: list[str]):
    """The leaf command a `basinlab ...` text names, or None."""
    for size in (2, 1):
        if " ".join(words[:size]) in LEAVES:
            return LEAVES[" ".join(words[:size])]
    return None


def wrong_names(text: str, command: str, own: tuple[str, ...]) -> list[str]:
    """The flags and commands in a hint that are not real: flags outside backticks must be the command's (or
    the seed flag's own spellings), a `basinlab X ...` in backticks must be a command with those flags."""
    wrong = []
    for quoted in re.findall(r"`([^`]*)`", text):
        words = quoted.split()
        parser = PARSERS[command]
        if words[:1] == ["basinlab"]:
            parser = command_of(words[1:])
            if parser is None:
                wrong.append(quoted)
                continue
        wrong += [f for f in FLAG.findall(quoted) if f not in options(parser)]
    outside = re.sub(r"`[^`]*`", "", text)
    wrong += [f for f in FLAG.findall(outside) if f not in options(PARSERS[command]) and f not in own]
    return wrong


# ---------------------------------------------------------------------------------------------- the table
def test_the_table_covers_every_command_and_every_seed_flag():
    assert set(COMMANDS) == set(LEAVES)
    for seed, flags in README_FLAGS.items():
        assert [f for f in flags.split() if f not in SEED_FLAGS] == [], seed
    assert [f for f in CODE_FLAGS.split() if f not in SEED_FLAGS] == []


def test_the_readmes_hold_no_other_flag():
    if not SEEDS.is_dir():
        pytest.skip("../shared/seeds is absent here: README_FLAGS holds their flags")
    for path in SEEDS.glob("*-README.md"):
        flags = set()
        for block in re.findall(r"^```[^\n]*\n(.*?)^ ?```", path.read_text(), flags=re.S | re.M):
            for line in block.splitlines():
                line = line.strip()
                if line.startswith(("python ", "usage:", "[")):
                    flags |= set(FLAG.findall(re.sub(r"^python (-m \S+ )?", "", line)))
                elif line.startswith("-"):  # an argument list: the flags before the description
                    flags |= set(FLAG.findall(line.split("  ")[0]))
        assert flags and flags <= set(README_FLAGS[path.name.removesuffix("-README.md")].split()), path.name


@pytest.mark.parametrize("command", sorted(PARSERS))
def test_every_text_names_real_options_of_its_command(command):
    """For every command: a flag the table calls the same is an option there; every option or command a text
    names is real; a seed spelling that is an option there but means something else is named by its text."""
    parser = PARSERS[command]
    for row in ROWS:
        text = row.text(command)
        if text == SAME:
            assert set(row.spellings) <= options(parser), (command, row.spellings)
            continue
        assert text and "; " not in text, (command, row.spellings)  # "; " separates a line's hints
        assert wrong_names(text, command, row.spellings) == [], (command, row.spellings, text)
        for spelling in set(row.spellings) & options(parser):
            assert spelling in text, (command, spelling, text)


def test_seed_scripts_name_real_commands():
    for script, (command, _, extra) in SEED_SCRIPTS.items():
        parser = LEAVES[command]
        assert set(FLAG.findall(extra)) <= options(parser), script


def test_docs_page_shows_the_table():
    page = (ROOT / "docs" / "seeds.md").read_text()
    shown = re.search(r"<!-- seed-flags:start -->\n(.*?)\n<!-- seed-flags:end -->", page, flags=re.S)
    assert shown and shown.group(1).strip() == markdown_table()


# ---------------------------------------------------------------------------------------------- the line
def error_line(capsys, argv) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert "internal error" not in err[0] and "Traceback" not in err[0]
    return err[0]


def hints_of(line: str) -> dict[str, str]:
    """{flag: hint} of an "unrecognized arguments (N): FLAG: HINT; ..." line."""
    listed = re.search(r"unrecognized arguments \((\d+)\): (.*)$", line)
    assert listed, line
    items = listed.group(2).split("; ")
    hints = dict(item.split(": ", 1) for item in items)
    assert len(hints) == int(listed.group(1)), line
    return hints


def dummy_positionals(command: str) -> list[str]:
    return ["POS" for a in LEAVES[command]._actions if not a.option_strings and a.nargs != "?"]


@pytest.mark.parametrize("command", COMMANDS)
def test_each_command_answers_every_unknown_flag_at_once(capsys, command):
    argv = [*command.split(), *dummy_positionals(command), "--gpus", "1", "--mode", "train", "--learnig-rate", "0.1"]
    hints = hints_of(error_line(capsys, argv))
    assert list(hints) == ["--gpus", "--mode", "--learnig-rate"]
    assert hints["--gpus"] == SEED_FLAGS["--gpus"].text(command)
    assert hints["--mode"] == SEED_FLAGS["--mode"].text(command)
    assert hints["--learnig-rate"].startswith(("did you mean", "not an option here"))


def test_the_issue_cases_get_their_equivalents(capsys):
    line = error_line(capsys, ["evaluate", "RUN", "--ss", "0.006", "--mode", "train"])
    assert hints_of(line) == {"--ss": SEED_FLAGS["--ss"].text("evaluate"), "--mode": "use --split train|val"}
    assert "--noise A" in line and "--smoothout" not in line and "--norm-mode" not in line
    line = error_line(capsys, ["train", "--adapt-type", "filter", "--smoothing-type", "anneal", "--no-exclude-bn"])
    assert hints_of(line) == {"--adapt-type": "use --smoothout-adapt none|weight|filter",
                              "--smoothing-type": "use --smoothout-schedule constant|anneal|tanh",
                              "--no-exclude-bn": "use --smoothout-include-bn"}
    hints = hints_of(error_line(capsys, ["train", "--cutout", "16", "--duplicates", "2", "--input-size", "24"]))
    assert list(hints) == ["--cutout", "--duplicates", "--input-size"]
    assert "--model-config \"{'data_regime': [{'epoch': 0, 'cutout': N}]}\"" in hints["--cutout"]
    assert all("data_regime" in hint for hint in hints.values())
    assert "use --noise-adapt" in error_line(capsys, ["evaluate", "RUN", "--adapt-type", "filter"])


def test_no_abbreviation_stands_for_another_option(capsys):
    """`sharpness --dataset X` was taken as --datasets-dir X, and `--mode` as ambiguous."""
    line = error_line(capsys, ["sharpness", "RUN", "--dataset", "cifar10"])
    assert "--dataset is the seeds' flag: no equivalent: the run's own dataset is measured" in line
    assert "ambiguous" not in error_line(capsys, ["train", "--mode", "train"])


def test_values_are_not_taken_for_flags(capsys):
    argv = ["evaluate", "RUN", "--alpha", "-0.3:0.02:0.31", "--lr-milestones", "100", "150", "--ss", "-1",
            "--evaluate", "-model.pth", "--mode", "train", "--beta=-1:0.5:1.01"]
    assert list(hints_of(error_line(capsys, argv))) == ["--alpha", "--lr-milestones", "--ss", "--evaluate",
                                                        "--mode", "--beta"]


def test_many_unknown_flags_are_counted_past_the_line_budget(capsys):
    flags = [f"--seed-flag-{i}" for i in range(40)]
    line = error_line(capsys, ["stability", *flags])
    listed = re.search(r"unrecognized arguments \(40\): (.*); and (\d+) more: ", line)
    assert listed and len(line) < 800
    assert len(listed.group(1).split("; ")) + int(listed.group(2)) == 40


def test_an_error_of_a_known_option_comes_after_the_unknown_flags(capsys):
    line = error_line(capsys, ["evaluate", "RUN", "--split", "test", "--ss", "0.1"])
    assert "--ss is the seeds' flag: use --noise A" in line and "also: argument --split: invalid choice" in line


# ---------------------------------------------------------------------------------------------- seed lines
# Real lines of the seed READMEs, as they are there
SMOOTHOUT_EVALUATE = ("python evaluate.py --model alexnet --dataset imagenet -b 100 --gpus 1 --evaluate "
                      "TrainingResults/2018-03-17_11-28-33/model_best.pth.tar --ss 0.006 --mode train --no-augment")
SMOOTHOUT_INTERPOLATE = ("python visualize_sharpness.py --model resnet --dataset cifar10 -b 100 --gpus 1 --evaluate "
                         "TrainingResults/2018-02-20_19-47-52/model_best.pth.tar  --slave-evaluate "
                         "TrainingResults/2018-02-20_19-47-18/model_best.pth.tar  --no-visualize_train")
SMOOTHOUT_DIRECTIONS = ("python visualize2_sharpness.py --model resnet --dataset cifar10 -b 100 --gpus 1 --evaluate "
                        "TrainingResults/2018-02-20_19-47-18/model_best.pth.tar  --no-visualize_train "
                        "--alpha=\"-0.3:0.02:0.31\"")
SMOOTHOUT_SHARPNESS = ("python measure_sharpness.py --model cifar100_shallow --dataset cifar100 --b 100 --gpus 1 "
                       "--evaluate TrainingResults/2018-02-20_14-05-28/model_best.pth.tar")
ONLINE_NORM = ("python cifar10_main.py /path/to/data --model-dir /path/to/cache/model --norm-mode online "
               "--afwd 0.9990234375 --abkw 0.9921875")
ASGD = ("python main.py --model resnet --dataset cifar10 --save resnet20_cifar10_asgd -b 128 --workers_num 32 "
        "--model-config \"{'regime': 'fixed', 'regime_lr':0.1, 'regime_momentum':0, 'regime_wd':0}\" --epochs 200 "
        "--server asgd")


def shell_words(line: str) -> list[str]:
    import shlex
    return shlex.split(line)


@pytest.mark.parametrize("line, command, flags", [
    (SMOOTHOUT_EVALUATE, "evaluate", ["--model", "--gpus", "--evaluate", "--ss", "--mode", "--no-augment"]),
    (SMOOTHOUT_INTERPOLATE, "landscape interpolate",
     ["--model", "--dataset", "--gpus", "--evaluate", "--slave-evaluate", "--no-visualize_train"]),
    (SMOOTHOUT_DIRECTIONS, "landscape directions", ["--model", "--dataset", "--gpus", "--evaluate",
                                                    "--no-visualize_train"]),
    (SMOOTHOUT_SHARPNESS, "sharpness", ["--model", "--dataset", "--b", "--gpus", "--evaluate"]),
    (ASGD, "evaluate", ["--model", "--save", "--workers_num", "--model-config", "--epochs", "--server"]),
])
def test_a_seed_line_gets_one_line_naming_all_its_flags(capsys, line, command, flags):
    """The seed's arguments after the basinlab command, and the whole line pasted after `basinlab`."""
    words = shell_words(line)
    arguments = words[2:]
    hints = hints_of(error_line(capsys, [*command.split(), *arguments]))
    assert hints == {flag: SEED_FLAGS[flag].text(command) for flag in flags}
    if SEED_SCRIPTS[words[1]][0] == command:
        pasted = error_line(capsys, words)
        assert f"in basinlab it is `basinlab {command}" in pasted
        assert hints_of(pasted) == hints


def test_a_pasted_seed_line_whose_flags_basinlab_has(capsys):
    assert error_line(capsys, shell_words(ONLINE_NORM)) == (
        "basinlab: error: `python cifar10_main.py` is the Online Normalization seed's command; in basinlab it is "
        "`basinlab train [DIR]`, with the same flags")
    assert "`basinlab sharpness CHECKPOINT --measure keskar`" in error_line(capsys, shell_words(SMOOTHOUT_SHARPNESS))
    assert "`basinlab train [DIR]`, with the same flags" in error_line(capsys, shell_words(ASGD))
    autohyper = "python -m autohyper train --config config.yaml --data .data --output out --checkpoint ckpt"
    assert "`basinlab autohyper train`, with the same flags" in error_line(capsys, shell_words(autohyper))


def test_autohyper_flags_in_train(capsys):
    argv = ["train", "--config", "config.yaml", "--data", ".data", "--output", "out", "--checkpoint", "ckpt",
            "--save-freq", "25", "--gpu", "0"]
    hints = hints_of(error_line(capsys, argv))
    assert hints == {flag: SEED_FLAGS[flag].text("train") for flag in ("--data", "--output", "--checkpoint",
                                                                         "--save-freq", "--gpu")}
    assert hints["--data"].startswith("use --datasets-dir DIR")


# ---------------------------------------------------------------------------------------------- user model code
MODEL_FILE = """\
open(MARKER, "w").close()
import torch.nn as nn


class Model(nn.Module):
    def __init__(self, num_classes=10):
        super().__init__()
        self.fc = nn.Linear(28 * 28, num_classes)

    def forward(self, x):
        return self.fc(x.flatten(1))


def model(**kwargs):  # the seeds' pattern: every keyword handed on to a class that takes only num_classes
    return Model(**kwargs)


def _helper():
    pass
"""


@pytest.fixture
def model_file(tmp_path):
    marker = tmp_path / "executed"
    path = tmp_path / "my_net.py"
    path.write_text(MODEL_FILE.replace("MARKER", repr(str(marker))))
    return path, marker


def train_argv(tmp_path, model):
    return ["train", "--model", model, "--results-dir", str(tmp_path / "results"), "--epochs", "1",
            "--train-limit", "100", "--val-limit", "50", "-b", "50"]


def test_a_model_file_without_its_factory_lists_the_callables_unexecuted(capsys, tmp_path, model_file, monkeypatch):
    path, marker = model_file
    monkeypatch.chdir(tmp_path)
    line = error_line(capsys, train_argv(tmp_path, "my_net.py"))
    assert "use my_net.py:NAME, with NAME one of Model, model (its top-level functions and classes)" in line
    assert not marker.exists()  # read with ast: the file's code never ran
    assert "does not exist" in error_line(capsys, train_argv(tmp_path, "absent.py"))
    (tmp_path / "broken.py").write_text("def model(:\n")
    assert "does not parse (line 1" in error_line(capsys, train_argv(tmp_path, "broken.py"))
    assert not (tmp_path / "results").exists()


def test_a_factory_that_rejects_a_keyword_is_the_users_error(capsys, tmp_path, model_file):
    path, _ = model_file
    line = error_line(capsys, train_argv(tmp_path, f"{path}:model"))
    assert f"model {path}:model: building it raised TypeError" in line and "'dataset'" in line
    assert "model(num_classes=10, dataset='mnist5k')" in line and "**kwargs" in line
    assert "line 15 of my_net.py" in line
    assert not (tmp_path / "results").exists()


def test_any_exception_while_building_names_the_file_and_the_keywords(capsys, tmp_path):
    path = tmp_path / "odd.py"
    path.write_text("def net(num_classes, dataset, width=4):\n    raise ValueError('width must be even')\n")
    argv = train_argv(tmp_path, f"{path}:net") + ["--model-config", "{'width': 3}"]
    line = error_line(capsys, argv)
    assert f"model {path}:net: building it raised ValueError: width must be even (line 2 of odd.py)" in line
    assert "net(10, 'mnist5k', width=...)" in line and "model config's keys (width)" in line
    assert "has no callable 'nett' (it defines: net)" in error_line(capsys, train_argv(tmp_path, f"{path}:nett"))


def test_a_missing_optional_package_names_the_pip_command(capsys, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torchvision", None)  # as where torchvision is not installed
    path = tmp_path / "smoothout_net.py"
    path.write_text("import torchvision.transforms as transforms\n\ndef model(**kwargs):\n    pass\n")
    line = error_line(capsys, train_argv(tmp_path, f"{path}:model"))
    assert "it needs the package 'torchvision', which is not installed: pip install torchvision" in line
    lazy = tmp_path / "lazy_net.py"
    lazy.write_text("def model(**kwargs):\n    import bokeh_absent_xyz\n")
    assert "pip install bokeh_absent_xyz" in error_line(capsys, train_argv(tmp_path, f"{lazy}:model"))


def test_a_missing_package_of_a_model_module(capsys, tmp_path, monkeypatch):
    package = tmp_path / "hints_pkg_for_test"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "nets.py").write_text("import PIL_absent_xyz.Image\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    line = error_line(capsys, train_argv(tmp_path, "hints_pkg_for_test.nets:model"))
    assert "pip install PIL_absent_xyz" in line
    assert "no module 'hints_pkg_absent'" in error_line(capsys, train_argv(tmp_path, "hints_pkg_absent.nets:model"))


def test_the_extras_named_are_basinlabs():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    for package, extra in dependencies.EXTRAS.items():
        assert any(spec.startswith(package) for spec in extras[extra]), (package, extra)
        hint = registry.missing_dependency(ModuleNotFoundError(f"No module named '{package}'", name=package))
        assert hint.endswith(f"pip install 'basinlab[{extra}]'")
    assert registry.missing_dependency(ModuleNotFoundError("x", name="PIL.Image")).endswith("pip install Pillow")


def test_a_missing_optional_package_anywhere_is_one_line_naming_what_to_install(capsys, monkeypatch):
    import basinlab.cli.runs as runs

    def needs_bokeh(args):
        raise ModuleNotFoundError("No module named 'bokeh'", name="bokeh")
    monkeypatch.setattr(runs, "cmd_plot", needs_bokeh)
    parser = build_parser()
    monkeypatch.setattr("basinlab.cli.build_parser", lambda: parser)
    parser._subparsers._group_actions[0].choices["plot"].set_defaults(func=needs_bokeh)
    assert main(["plot", "x", "-o", "x.png"]) == 2
    assert "pip install 'basinlab[report]'" in capsys.readouterr().err
