"""Each option is one statement (basinlab/config/options.py): its checks, help, resume rule and owner follow from it.
Methods read only their own options, the engine's and the shared details that name them; the engine reads no
method's; old spellings and stored runs keep working."""
import ast
from pathlib import Path

import pytest
import torch
import yaml

import basinlab.choices as choices
from basinlab.api import make_config
from basinlab.cli import main
from basinlab.config import FIELDS, LEGACY_DEFAULTS, RENAMED, flag, validated_config
from basinlab.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1] / "basinlab"
OWNERS = {f.metadata["owner"] for f in FIELDS.values()}
# A value that counts as "given" for each option a relation names (defaults are not given).
GIVEN = {"server": "asgd", "smoothout": 0.01, "sam": 0.05, "asam": 0.5, "ghost_batch": 16, "log_sharpness_every": 1,
         "train_limit": 64, "val_limit": 32, "lr_milestones": [2], "amp": "bf16", "gsam": 0.05, "msam": 0.3,
         "looksam": 0.05, "saf": True, "mesa": True, "log_sharpness_every_steps": 5, "loss": "mse",
         "label_smoothing": 0.1, "real": True, "lookahead_every": 5}


def options_read_in(folder: Path) -> dict[str, set[str]]:
    """{option: files} for every `<something>.cfg.<option>` or `cfg.<option>` read in the folder's code."""
    read = {}
    for path in folder.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and node.attr in FIELDS:
                base = node.value
                name = base.id if isinstance(base, ast.Name) else getattr(base, "attr", None)
                if name == "cfg":
                    read.setdefault(node.attr, set()).add(str(path.relative_to(ROOT)))
    return read


@pytest.mark.parametrize("owner", sorted(OWNERS - {"engine"}))
def test_a_method_reads_only_its_own_options_and_the_engines(owner):
    """...and a shared detail that says it serves this method (its `needs` names one of the method's options, as
    --sam-perturbation, flat's, names --gsam and --looksam)."""
    assert (ROOT / "methods" / owner).is_dir(), f"options owned by {owner!r} but no methods/{owner}/"
    mine = {name for name, f in FIELDS.items() if f.metadata["owner"] == owner}
    foreign = {name: files for name, files in options_read_in(ROOT / "methods" / owner).items()
               if FIELDS[name].metadata["owner"] not in (owner, "engine")
               and not mine & set(FIELDS[name].metadata["needs"])}
    assert not foreign


def test_the_engine_reads_no_methods_option():
    foreign = {name: files for name, files in options_read_in(ROOT / "engine").items()
               if FIELDS[name].metadata["owner"] != "engine"}
    assert not foreign


def test_every_choice_list_is_the_one_in_basinlab_choices():
    words = {value for name, value in vars(choices).items() if name.isupper()}
    for name, field in FIELDS.items():
        if field.metadata["limits"]["choices"]:
            assert field.metadata["limits"]["choices"] in words, name
    from basinlab.methods.flat.chunks import LR_SCALINGS
    from basinlab.nn.norms import NormSpec
    assert tuple(LR_SCALINGS) == choices.LR_SCALINGS
    assert all(hasattr(NormSpec, f"_make_{mode}") for mode in choices.NORM_MODES)


RELATIONS = [(name, main) for name, f in FIELDS.items() for main in f.metadata["needs"]]
CONFLICTS = [(name, other) for name, f in FIELDS.items() for other in f.metadata["conflicts"]]
DETAIL_VALUES = {"workers": 2, "delay": 1, "worker_order": "random", "adjust_lr": True, "smoothout_noise": "normal",
                 "smoothout_adapt": "filter", "smoothout_schedule": "anneal", "smoothout_include_bn": True,
                 "denoise": False, "asam_eta": 0.02, "asam_scope": "all", "sam_perturbation": "global",
                 "lr_scale_batch": "sqrt", "log_trace": True, "hessian_mode": "eval", "sharpness_batches": 2,
                 "limit_mode": "first", "lr_multiplier": 0.5, "eval_amp": "none", "sam_m": 16, "sam_interval": 2,
                 "gsam_alpha": 0.2, "gsam_rho_min": 0.01, "looksam_k": 3, "looksam_alpha": 0.5, "saf_lambda": 0.5,
                 "saf_tau": 2.0, "saf_horizon": 2, "mesa_decay": 0.99,
                 "saf_start_epoch": 0, "real": True, "fixed_delay": 1, "max_delay": 2, "on_worker_loss": "stop",
                 "worker_trace": "delays.csv"}


@pytest.mark.parametrize("name, main", RELATIONS, ids=[f"{n}-needs-{m}" for n, m in RELATIONS])
def test_a_detail_needs_its_main_option(name, main):
    with pytest.raises(ConfigError, match=f"^{flag(name)} needs .*{flag(main)}"):
        validated_config({name: DETAIL_VALUES[name]})
    extra = {"workers": 2} if main == "server" else {"server": "asgd", "workers": 2} if main == "real" else {}
    validated_config({name: DETAIL_VALUES[name], main: GIVEN[main], **extra})


@pytest.mark.parametrize("name, other", CONFLICTS, ids=[f"{n}-x-{o}" for n, o in CONFLICTS])
def test_options_that_cannot_run_together_are_refused_in_one_line(name, other):
    with pytest.raises(ConfigError) as caught:
        validated_config({name: GIVEN[name], other: GIVEN[other]})
    assert f"{flag(name)} cannot be combined with {flag(other)}: " in str(caught.value)


def test_legacy_values_belong_to_options_that_exist_and_their_mains():
    for name, (_, needs) in LEGACY_DEFAULTS.items():
        assert set(needs) == set(FIELDS[name].metadata["needs"])


def test_the_old_spelling_of_worker_order_keeps_working_with_a_note(tmp_path, capsys):
    from basinlab.cli import build_parser
    from basinlab.cli.options import build_train_config
    assert RENAMED == {"schedule": "worker_order"}
    args = build_parser().parse_args(["train", "--server", "asgd", "--workers", "2", "--schedule", "random"])
    assert build_train_config(args).worker_order == "random"
    assert "--schedule (on the command line) is now --worker-order" in capsys.readouterr().err
    config = tmp_path / "run.yaml"
    config.write_text("server: asgd\nworkers: 2\nschedule: normal\n")
    args = build_parser().parse_args(["train", "--config", str(config)])
    assert build_train_config(args).worker_order == "normal"
    assert "is now --worker-order" in capsys.readouterr().err


def test_a_run_stored_before_the_option_statements_resumes_and_evaluates(tmp_path, capsys, no_run_plots):
    """A run as the code before this change wrote it: config keys `schedule` and `trust_model_code`, a checksum of
    the weights only; it resumes (same options) and evaluates."""
    run = tmp_path / "results" / "old"
    assert main(["train", "--train-limit", "128", "--val-limit", "64", "-b", "64", "--epochs", "1", "--quiet",
                 "--results-dir", str(run.parent), "--save", "old"]) == 0
    from basinlab.engine.checkpoint import tensors_checksum
    for name in ("last.pt", "best.pt"):
        state = torch.load(run / name, weights_only=True)
        config = dict(state["config"])
        config["schedule"] = config.pop("worker_order")
        config["trust_model_code"] = False
        state["config"] = config
        state["checksum"] = {"model": tensors_checksum(state["model"])}
        torch.save(state, run / name)
    stored = yaml.safe_load((run / "config.yaml").read_text())
    stored["schedule"] = stored.pop("worker-order")
    stored["trust-model-code"] = False
    (run / "config.yaml").write_text(yaml.safe_dump(stored, sort_keys=False))
    assert main(["train", "--resume", str(run), "--epochs", "2", "--quiet"]) == 0
    assert main(["evaluate", str(run)]) == 0
    assert "val: loss" in capsys.readouterr().out
    import basinlab
    assert basinlab.load_run(run).config.worker_order == "round_robin"


def test_make_config_applies_the_relations_to_python_calls_too():
    with pytest.raises(ConfigError, match="--asam-eta needs --asam RHO"):
        make_config(asam_eta=0.1)
