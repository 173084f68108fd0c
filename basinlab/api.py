"""The Python API: what `basinlab train`, `evaluate` and `export` do, callable from a script or notebook.

    import basinlab
    run = basinlab.train(model="resnet20", dataset="cifar10", epochs=5)
    run.history        # one row per epoch (pandas)
    basinlab.load_run(run.path).history

Options are `basinlab train`'s long flags with underscores. This module is the only place that puts the
pieces together: config (with presets and resume), the methods a config asks for, the engine.
"""
from __future__ import annotations

from pathlib import Path

from basinlab.config import FIELDS, RULES, TrainConfig, from_mapping, load_yaml, validated_config
from basinlab.engine.checkpoint import resolve_checkpoint, resume_values
from basinlab.engine.distributed import current_world_size
from basinlab.engine.evaluate import evaluate, evaluation_forward
from basinlab.engine.inspect import (
    export_safetensors,
    model_from_checkpoint,
    model_from_safetensors,
    prepare_evaluation,
)
from basinlab.engine.setup import check_norm_options
from basinlab.engine.trainer import Trainer
from basinlab.errors import ConfigError
from basinlab.methods.registry import build_method, claim_rank
from basinlab.models import absolute_model_spec, is_user_model, trusting_model_code
from basinlab.models import trust_model_code as trust_user_model
from basinlab.presets import get_preset
from basinlab.records.run_folder import Run
from basinlab.records.run_folder import load_run as read_run
from basinlab.records.run_safety import is_run_folder
from basinlab.utils.schema import check_value, shown

__all__ = ["train", "build_run", "load_run", "load_model", "make_config", "evaluate_checkpoint",
           "export_safetensors", "model_from_checkpoint"]


def make_config(base: dict | None = None, **options) -> TrainConfig:
    """A validated TrainConfig from a YAML/preset mapping plus options (later wins).

    `preset` fills in the options it names (given options override it). With `resume`, the config
    stored in the checkpoint is the base and only run controls (epochs, device, ...) may differ.
    """
    given = from_mapping(options, where="options")
    values = {**from_mapping(base or {}, where="options"), **given}
    named = given.get("model")
    if isinstance(named, str) and is_user_model(named):  # named in this call: its code may be imported
        values["model"] = absolute_model_spec(named)
        trust_user_model(values["model"])
    if values.get("resume"):
        return validated_config(_resumed_values(values))
    # what the person typed (flags, keywords): files and presets may carry a seed's defaults for every mode
    asked = {k for k, v in given.items() if v != FIELDS[k].default}
    preset = check_value("--preset", RULES["preset"], values.get("preset"))
    if preset:
        values = {**from_mapping(get_preset(preset), where=f"preset {preset}"), **values}
    cfg = validated_config(values)
    check_norm_options(cfg, asked)
    return cfg


def _resumed_values(values: dict) -> dict:
    """The stored config with this command's run controls. The run's location is where its checkpoint is now
    (a moved run stays itself); a different one comes only from --save on this command: a branch."""
    folder = Path(values["resume"])
    if folder.is_dir() and is_run_folder(folder) and not (folder / "last.pt").is_file():
        raise ConfigError(f"{folder} has no checkpoint: its run stopped before its first one ({folder}/log.txt says "
                          f"why), so there is nothing to resume; start it again with the command that started it, "
                          f"without --resume (it replaces the folder), e.g. basinlab train --config "
                          f"{folder}/config.yaml")
    resumed = resume_values(values)
    if "save" not in values:
        here = resolve_checkpoint(values["resume"]).parent
        resumed.update(save=here.name, results_dir=str(here.parent))
    return resumed


def train(config=None, *, callbacks=(), strategy=None, trust_model_code: bool = False, **options) -> Run:
    """Train with the same options as `basinlab train` (keyword names = long flags with underscores).

    `config` is a TrainConfig, a YAML file or None. `callbacks` run after the methods' own;
    `strategy` replaces the step strategy the options would choose. `trust_model_code=True` lets this call
    import the model code (file.py:factory) that `config` or a resumed checkpoint names; a model named in
    `options` is trusted anyway, and no file can grant trust itself.
    Returns a Run with `.path`, `.config`, `.history` (pandas DataFrame, one row per epoch) and `.model`; on a
    worker rank of a --real torchrun job (methods/asgd/real/ranks.py), that worker's exit status.
    """
    if not isinstance(trust_model_code, bool):
        raise ConfigError(f"trust_model_code must be True or False, got {shown(trust_model_code)}")
    with trusting_model_code(trust_model_code):
        if isinstance(config, TrainConfig):
            cfg = config.replace(**options) if options else config
        else:
            cfg = make_config(load_yaml(config) if config is not None else {}, **options)
        role = claim_rank(cfg)  # a method that runs as several torchrun ranks (--real) gives this rank its part
        if role is not None:
            finished = role()
            if finished is not None:   # a worker rank: it trained no run of its own
                return finished
        return build_run(cfg, callbacks=callbacks, strategy=strategy).fit()


def build_run(cfg: TrainConfig, *, callbacks=(), strategy=None, workflow: str = "train") -> Trainer:
    """The one place a run is put together: the methods `cfg` asks for (each refuses, in one line, what it
    cannot do in this `workflow` or in this many processes), then the engine's Trainer, not yet set up.

    `callbacks` run after the methods' own; `strategy` replaces the step strategy the options would choose.
    `workflow` is the program the run serves: "train" (basinlab train, sweeps), "lr-range", "autohyper".
    """
    method_strategy, method_callbacks = build_method(cfg, current_world_size(), workflow)
    return Trainer(cfg, strategy=strategy or method_strategy, callbacks=[*method_callbacks, *callbacks])


def evaluate_checkpoint(path, *, dataset=None, split="val", datasets_dir=None, batch_size=256, limit=None,
                        device="auto", noise=None, noise_type="uniform", noise_adapt="none", noise_samples=1,
                        noise_include_bn=False, seed=0, trust_model_code: bool = False,
                        full_split: bool = False) -> dict:
    """Loss and top-1/top-5 of a checkpoint on a split (train data without augmentation).

    With `noise` (strength A): under fresh weight noise per batch, mean and std over `noise_samples`
    draws (basinlab.methods.flat.noise.evaluate_under_noise); without it, plain evaluation.
    """
    from basinlab.methods.flat.noise import EVALUATION_FLAGS, NoiseModel, evaluate_under_noise
    noise_model = None if noise is None else NoiseModel(noise, noise_type, noise_adapt, flags=EVALUATION_FLAGS)
    model, loader, criterion = prepare_evaluation(path, dataset=dataset, split=split, datasets_dir=datasets_dir,
                                                  batch_size=batch_size, limit=limit, device=device,
                                                  trust_model_code=trust_model_code, full_split=full_split)
    if noise_model is None:  # the accuracy validation reports (a model's test-time augmentation included)
        return evaluate(model, loader, criterion, forward=evaluation_forward(model))
    return evaluate_under_noise(model, loader, criterion, noise_model, samples=noise_samples, seed=seed,
                                include_norm=noise_include_bn)


class LoadedRun(Run):
    """A finished run read back: `.model` rebuilds the trained model (best.pt) on first use."""

    @property
    def model(self):
        if self._model is None:
            self._model = load_model(self.path / f"{self._which}.pt", device=self._device,
                                     trust_model_code=self._trust)
        return self._model

    @model.setter
    def model(self, value):
        self._model = value


def load_run(path, *, which: str = "best", device: str = "cpu", trust_model_code: bool = False) -> LoadedRun:
    """The config, results.csv history and checkpoints of a run folder; `.model` rebuilds the trained model
    (from `which`.pt, on `device`) when first asked for."""
    run = read_run(path)
    loaded = LoadedRun(run.path, run.config, run.history, None, run.best)
    loaded._which, loaded._device, loaded._trust = which, device, trust_model_code
    return loaded


def load_model(source, *, device: str = "cpu", trust_model_code: bool = False):
    """The trained model (eval mode) of a run folder (best.pt), a checkpoint or an exported .safetensors file."""
    if str(source).endswith(".safetensors"):
        return model_from_safetensors(source, device, trust_model_code=trust_model_code)[0]
    return model_from_checkpoint(source, device, trust_model_code=trust_model_code)[0]
