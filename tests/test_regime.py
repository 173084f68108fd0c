"""Regimes, schedules and the optimizer factory (basinlab.optim)."""

import json
import math

import pytest
import torch
from torch import nn

from basinlab.errors import ConfigError
from basinlab.optim import (
    DataRegime,
    Regime,
    batch_size_rule,
    create_optimizer,
    fixed_regime,
    one_phase_regime,
    optimizer_class,
    optimizer_name_of,
    optimizer_names,
    pop_regime_config,
    regime_from_model_config,
    register_optimizer,
)

LIST = [
    {"epoch": 0, "optimizer": "SGD", "lr": 0.1, "momentum": 0.9, "weight_decay": 1e-4},
    {"epoch": 81, "lr": 0.01},
    {"epoch": 122, "lr": 0.001, "weight_decay": 0},
]
DICT = {
    0: {"optimizer": "SGD", "lr": 0.1, "momentum": 0.9, "weight_decay": 1e-4},
    122: {"lr": 0.001, "weight_decay": 0},  # out of order on purpose: sorted by epoch
    81: {"lr": 0.01},
}


def _train(model, opt, steps=3):
    for _ in range(steps):
        opt.zero_grad()
        loss = model(torch.ones(4, 3)).pow(2).sum()
        loss.backward()
        opt.step()


# ---------------------------------------------------------------- formats and accumulation
def test_list_and_dict_formats_give_identical_settings():
    a, b = Regime(LIST), Regime(DICT)
    for epoch in range(0, 200):
        assert a.settings_at(epoch) == b.settings_at(epoch)
    assert a.to_config() == b.to_config()


def test_settings_accumulate():
    r = Regime(LIST)
    assert r.settings_at(0) == {"optimizer": "SGD", "lr": 0.1, "momentum": 0.9, "weight_decay": 1e-4}
    assert r.settings_at(80) == r.settings_at(0)
    assert r.settings_at(81) == {"optimizer": "SGD", "lr": 0.01, "momentum": 0.9, "weight_decay": 1e-4}
    assert r.settings_at(150) == {"optimizer": "SGD", "lr": 0.001, "momentum": 0.9, "weight_decay": 0}
    assert [r.phase_at(e) for e in (0, 80, 81, 121, 122, 500)] == [0, 0, 1, 1, 2, 2]


def test_step_keyed_entries():
    r = Regime([{"epoch": 0, "lr": 0.1, "momentum": 0.9}, {"step": 500, "lr": 0.01}, {"epoch": 10, "lr": 1e-3}])
    assert r.settings_at(0, global_step=499)["lr"] == 0.1
    assert r.settings_at(0, global_step=500)["lr"] == 0.01
    assert r.settings_at(3, global_step=500)["momentum"] == 0.9
    assert r.settings_at(10, global_step=1000)["lr"] == 1e-3
    # global step derived from steps_per_epoch
    assert r.settings_at(4, 99, steps_per_epoch=100)["lr"] == 0.1
    assert r.settings_at(5, 0, steps_per_epoch=100)["lr"] == 0.01
    with pytest.raises(ValueError, match="global_step"):
        r.settings_at(6)


def test_lr_defaults_to_optimizer_default_and_is_recorded():
    r = Regime([{"epoch": 0, "optimizer": "Adadelta"}])
    assert r.settings_at(0)["lr"] == 1.0
    assert r.first_lr == 1.0
    assert r.to_config()[0]["lr"] == 1.0


# ---------------------------------------------------------------- optimizer identity
def test_optimizer_kept_across_phases_and_momentum_buffers_survive():
    torch.manual_seed(0)
    model = nn.Linear(3, 2)
    r = Regime(LIST)
    opt = r.apply(None, model.parameters(), 0)
    assert isinstance(opt, torch.optim.SGD)
    _train(model, opt)
    buffers = {id(p): opt.state[p]["momentum_buffer"].clone() for p in model.parameters()}
    opt2 = r.apply(opt, model.parameters(), 81)
    assert opt2 is opt
    assert opt.param_groups[0]["lr"] == 0.01 and opt.param_groups[0]["momentum"] == 0.9
    for p in model.parameters():
        assert torch.equal(opt.state[p]["momentum_buffer"], buffers[id(p)])
    _train(model, opt, 1)
    assert all("momentum_buffer" in opt.state[p] for p in model.parameters())


def test_new_optimizer_only_when_name_changes():
    model = nn.Linear(3, 2)
    groups = [{"params": [model.weight], "lr_scale": 0.5}, {"params": [model.bias]}]
    r = Regime([
        {"epoch": 0, "optimizer": "SGD", "lr": 0.1, "momentum": 0.9, "weight_decay": 5e-4},
        {"epoch": 2, "optimizer": "sgd", "lr": 0.05},  # same optimizer, other spelling
        {"epoch": 4, "optimizer": "Adam", "lr": 1e-3, "betas": [0.8, 0.99]},
        {"epoch": 6, "lr": 1e-4},
    ])
    opt = r.apply(None, groups, 0)
    assert [g["lr"] for g in opt.param_groups] == [0.05, 0.1]
    _train(model, opt)
    same = r.apply(opt, None, 2)
    assert same is opt and [g["lr"] for g in opt.param_groups] == [0.025, 0.05]
    adam = r.apply(opt, None, 4)
    assert adam is not opt and isinstance(adam, torch.optim.Adam)
    assert optimizer_name_of(adam) == "Adam"
    assert [g["lr"] for g in adam.param_groups] == [5e-4, 1e-3]
    assert adam.param_groups[0]["lr_scale"] == 0.5
    assert adam.param_groups[0]["betas"] == (0.8, 0.99)
    assert adam.param_groups[0]["weight_decay"] == 5e-4  # accumulated, Adam accepts it
    assert "momentum" not in adam.param_groups[0]  # SGD's momentum is not carried to Adam
    _train(model, adam)
    assert r.apply(adam, None, 6) is adam and "exp_avg" in adam.state[model.weight]
    assert adam.param_groups[1]["lr"] == 1e-4


def test_resume_lands_in_phase_without_replay():
    spe = 7
    r = Regime([
        {"epoch": 0, "lr": 0.1, "momentum": 0.9, "schedule": {"name": "linear_warmup", "from_lr": 0.0, "epochs": 2}},
        {"epoch": 2, "schedule": {"name": "cosine", "epochs": 150, "end_lr": 1e-3}},
        {"step": 700, "momentum": 0.95},
        {"epoch": 120, "weight_decay": 1e-4},
    ], steps_per_epoch=spe)
    model = nn.Linear(3, 2)
    opt, gs = None, 0
    for epoch in range(101):
        for step in range(spe):
            opt = r.apply(opt, model.parameters(), epoch, step, gs)
            gs += 1
    stepped = r.settings_at(100, spe - 1, gs - 1)
    direct = r.settings_at(100, spe - 1)  # global step derived, nothing replayed
    assert stepped == direct
    fresh = r.apply(None, model.parameters(), 100, spe - 1)
    keys = ("lr", "momentum", "weight_decay", "dampening", "nesterov")
    assert {k: fresh.param_groups[0][k] for k in keys} == {k: opt.param_groups[0][k] for k in keys}
    assert direct["momentum"] == 0.95 and "weight_decay" not in direct  # never named yet: torch default
    assert r.settings_at(120)["weight_decay"] == 1e-4


# ---------------------------------------------------------------- schedules
def test_cosine_schedule_closed_form():
    r = Regime([{"epoch": 0, "lr": 0.1, "schedule": {"name": "cosine", "end_lr": 0.001, "epochs": 200}}])
    for t in (0, 1, 50, 100, 199, 200, 250):
        want = 0.001 + (0.1 - 0.001) * (1 + math.cos(math.pi * min(t, 200) / 200)) / 2
        assert r.settings_at(t)["lr"] == pytest.approx(want, rel=1e-12)


def test_linear_warmup_per_step():
    r = Regime([{"epoch": 0, "schedule": {"name": "linear_warmup", "from_lr": 0.01, "to_lr": 0.1, "epochs": 5}}],
               steps_per_epoch=100)
    assert r.first_lr == 0.1
    assert r.settings_at(0, 0)["lr"] == pytest.approx(0.01)
    assert r.settings_at(0, 50)["lr"] == pytest.approx(0.01 + 0.09 * 0.5 / 5)
    assert r.settings_at(2, 37)["lr"] == pytest.approx(0.01 + 0.09 * 2.37 / 5)
    assert r.settings_at(5, 0)["lr"] == pytest.approx(0.1)
    assert r.settings_at(40, 3)["lr"] == pytest.approx(0.1)
    lrs = [r.settings_at(0, s)["lr"] for s in range(100)]
    assert all(b > a for a, b in zip(lrs, lrs[1:]))  # moves every step


def test_exponential_multistep_step_and_linear_closed_form():
    exp = Regime([{"epoch": 0, "lr": 0.1, "schedule": {"name": "exponential", "gamma": 0.97}}], steps_per_epoch=10)
    assert exp.settings_at(10, 5)["lr"] == pytest.approx(0.1 * 0.97 ** 10)
    cont = Regime([{"epoch": 0, "lr": 0.1, "schedule": {"name": "exponential", "gamma": 0.97, "continuous": True}}],
                  steps_per_epoch=10)
    assert cont.settings_at(10, 5)["lr"] == pytest.approx(0.1 * 0.97 ** 10.5)
    multistep = {"name": "multistep", "milestones": [100, 150, 200], "gamma": 0.1}
    ms = Regime([{"epoch": 0, "lr": 0.1, "schedule": multistep}])
    for e, n in ((0, 0), (99, 0), (100, 1), (149, 1), (150, 2), (200, 3), (249, 3)):
        assert ms.settings_at(e)["lr"] == pytest.approx(0.1 * 0.1 ** n)
    st = Regime([{"epoch": 0, "lr": 0.2, "schedule": {"name": "step", "step_size": 30, "gamma": 0.5}}])
    assert [st.settings_at(e)["lr"] for e in (0, 29, 30, 60, 95)] == pytest.approx([0.2, 0.2, 0.1, 0.05, 0.025])
    lin = Regime([{"epoch": 0, "lr": 0.1, "schedule": {"name": "linear", "epochs": 10, "end_lr": 0.0}}])
    assert lin.lr_at(2.5) == pytest.approx(0.075) and lin.lr_at(20) == 0.0


def test_schedule_runs_from_its_entry_and_until_replaced():
    r = Regime([
        {"epoch": 0, "lr": 0.1},
        {"epoch": 10, "schedule": {"name": "exponential", "gamma": 0.5}},
        {"epoch": 12, "momentum": 0.9},  # names neither lr nor schedule: schedule continues
        {"epoch": 14, "lr": 0.3},  # names lr: schedule ends
    ])
    assert r.settings_at(9)["lr"] == 0.1
    assert r.settings_at(10)["lr"] == pytest.approx(0.1)
    assert r.settings_at(11)["lr"] == pytest.approx(0.05)
    assert r.settings_at(13)["lr"] == pytest.approx(0.1 * 0.5 ** 3)
    assert r.settings_at(13)["momentum"] == 0.9
    assert r.settings_at(20)["lr"] == 0.3
    ended = Regime([{"epoch": 0, "lr": 0.1, "schedule": {"name": "exponential", "gamma": 0.5}},
                    {"epoch": 3, "schedule": None}])
    assert ended.settings_at(2)["lr"] == pytest.approx(0.025) and ended.settings_at(5)["lr"] == 0.1


def test_warmup_then_cosine_composes():
    r = Regime([
        {"epoch": 0, "optimizer": "SGD", "momentum": 0.9,
         "schedule": {"name": "linear_warmup", "from_lr": 0.0, "to_lr": 0.4, "epochs": 5}},
        {"epoch": 5, "schedule": {"name": "cosine", "epochs": 95}},
    ], steps_per_epoch=4)
    assert r.lr_at(2.5) == pytest.approx(0.2)
    assert r.lr_at(5) == pytest.approx(0.4)
    assert r.lr_at(5 + 47.5) == pytest.approx(0.2)
    assert r.lr_at(100) == pytest.approx(0.0, abs=1e-12)


def test_callable_regime():
    r = Regime(lambda t: {"optimizer": "SGD", "lr": 0.1 * 0.5 ** t, "momentum": 0.9}, steps_per_epoch=2)
    assert r.settings_at(2, 1)["lr"] == pytest.approx(0.1 * 0.5 ** 2.5)
    assert r.first_lr == pytest.approx(0.1)
    assert r.to_config() is None
    r2, lines = r.overridden(lr=0.2, momentum=0.5)
    assert r2.settings_at(1)["lr"] == pytest.approx(0.1) and r2.settings_at(1)["momentum"] == 0.5
    assert len(lines) == 2
    with pytest.raises(ConfigError, match="momentum"):
        Regime(lambda t: {"optimizer": "Adam", "momentum": 0.9})


# ---------------------------------------------------------------- overrides
def test_lr_override_rescales_whole_schedule():
    r = Regime(LIST + [{"epoch": 150, "schedule": {"name": "cosine", "epochs": 50, "end_lr": 1e-4}}])
    r2, lines = r.overridden(lr=0.05)
    assert r2.first_lr == 0.05
    for e in (0, 81, 122, 160, 200):
        assert r2.settings_at(e)["lr"] == pytest.approx(r.settings_at(e)["lr"] * 0.5)
    assert r2.settings_at(0)["momentum"] == 0.9
    assert len(lines) == 1 and "0.05" in lines[0] and "0.1" in lines[0]
    assert r.first_lr == 0.1  # the original is unchanged


def test_momentum_and_weight_decay_replaced_everywhere():
    r = Regime(LIST)
    r2, lines = r.overridden(momentum=0.0, weight_decay=5e-4)
    for e in (0, 81, 122, 190):
        s = r2.settings_at(e)
        assert s["momentum"] == 0.0 and s["weight_decay"] == 5e-4
    assert r2.settings_at(122)["lr"] == 0.001
    assert len(lines) == 2
    assert lines[0].startswith("momentum 0") and "0.9 -> 0" in lines[0]
    assert "weight_decay" in lines[1] and "epoch 122" in lines[1]
    _, none = r.overridden()
    assert none == []


def test_override_errors():
    adam = Regime([{"epoch": 0, "optimizer": "Adam", "lr": 1e-3}])
    with pytest.raises(ConfigError, match="momentum"):
        adam.overridden(momentum=0.9)
    with pytest.raises(ConfigError, match="lr override"):
        adam.overridden(lr=-1)


def test_scaled_lr():
    r = Regime(LIST).scaled_lr(4)
    assert [r.settings_at(e)["lr"] for e in (0, 81, 122)] == pytest.approx([0.4, 0.04, 0.004])


# ---------------------------------------------------------------- builders
def test_fixed_regime():
    r = fixed_regime(lr=0.05, momentum=0.5, dampening=0.5, weight_decay=1e-4)
    s = r.settings_at(0)
    assert s == {"optimizer": "SGD", "lr": 0.05, "momentum": 0.5, "dampening": 0.5, "weight_decay": 1e-4}
    assert r.settings_at(500) == s and len(r.describe()) == 1


def test_regime_from_model_config():
    cfg = {"depth": 20, "regime": "fixed", "regime_lr": 0.2, "regime_momentum": 0, "regime_wd": 0}
    r = regime_from_model_config(cfg)
    assert cfg == {"depth": 20}  # regime keys popped, the rest goes to the model
    assert r.settings_at(3) == {"optimizer": "SGD", "lr": 0.2, "momentum": 0, "dampening": 0.0, "weight_decay": 0}
    assert regime_from_model_config({"depth": 20}) is None
    lst = regime_from_model_config({"regime": LIST, "regime_lr": 0.2})
    assert lst.settings_at(81)["lr"] == pytest.approx(0.02)
    default = regime_from_model_config({"regime": "normal", "regime_momentum": 0.5}, default=LIST)
    assert default.settings_at(100)["momentum"] == 0.5 and default.settings_at(100)["lr"] == 0.01
    assert regime_from_model_config({}, default=DICT).settings_at(81)["lr"] == 0.01
    with pytest.raises(ConfigError, match="unknown regime 'weird'.*fixed"):
        regime_from_model_config({"regime": "weird"})
    with pytest.raises(ConfigError, match="regime_lr"):
        regime_from_model_config({"regime_lr": 0.1})
    cfg = {"regime": "fixed", "width": 2}
    assert pop_regime_config(cfg) == {"regime": "fixed"} and cfg == {"width": 2}


def test_one_phase_regime():
    r = one_phase_regime("SGD", lr=0.1, momentum=0.9, weight_decay=2e-4, milestones=[100, 150, 200], multiplier=0.1)
    assert [r.settings_at(e)["lr"] for e in (0, 99, 100, 150, 249)] == pytest.approx([0.1, 0.1, 0.01, 1e-3, 1e-4])
    assert r.settings_at(249)["weight_decay"] == 2e-4 and r.settings_at(249)["momentum"] == 0.9
    adam = one_phase_regime("Adam", lr=1e-3)
    assert "momentum" not in adam.settings_at(0)
    with pytest.raises(ConfigError, match="milestones"):
        one_phase_regime(milestones=[150, 100])


def test_batch_size_rule():
    lr, m = batch_size_rule(0.1, 0.9, 512, 128)
    assert m == pytest.approx(0.9 ** 4)
    assert lr == pytest.approx(0.1 * 4 * (1 - 0.9 ** 4) / (1 - 0.9))
    assert batch_size_rule(0.1, 0.9, 128, 128) == pytest.approx((0.1, 0.9))
    assert batch_size_rule(0.1, 0.0, 32, 128) == pytest.approx((0.025, 0.0))
    with pytest.raises(ConfigError, match="momentum"):
        batch_size_rule(0.1, 1.5, 32, 128)


# ---------------------------------------------------------------- reporting
def test_describe_and_to_config():
    r = Regime(LIST + [{"epoch": 150, "schedule": {"name": "cosine", "epochs": 50}}])
    lines = r.describe()
    assert lines[0] == "epoch 0: SGD lr=0.1 momentum=0.9 weight_decay=0.0001"
    assert lines[1] == "epoch 81: lr=0.01"
    assert "cosine" in lines[3] and "50 epochs" in lines[3]
    cfg = r.to_config()
    json.dumps(cfg)  # plain data
    assert Regime(cfg).to_config() == cfg and Regime(cfg) == r
    adam = Regime([{"epoch": 0, "optimizer": "Adam", "betas": (0.8, 0.9)}])
    assert adam.to_config()[0]["betas"] == [0.8, 0.9]


# ---------------------------------------------------------------- errors
@pytest.mark.parametrize("phases, pattern", [
    ([{"epoch": 0, "optimizer": "Adamm"}], r"phase 0 \(epoch 0\): unknown optimizer 'Adamm'; allowed.*SGD"),
    ([{"epoch": 0, "lr": 0.1, "learning_rate": 0.1}], r"unknown key 'learning_rate'; allowed: epoch, step, "
                                                      r"optimizer, schedule"),
    ([{"epoch": 0, "optimizer": "Adam", "momentum": 0.9}], r"'momentum' is not a setting of optimizer Adam; "
                                                           r"allowed: .*betas"),
    ([{"epoch": 0, "lr": 0.1}, {"epoch": 5, "optimizer": "Adam", "dampening": 0.1}], r"phase 1 \(epoch "
                                                                                     r"5\).*'dampening'.*Adam"),
    ([{"epoch": 0, "lr": 0.1, "schedule": {"name": "cosinus", "epochs": 3}}], r"unknown schedule 'cosinus'; "
                                                                              r"allowed: .*cosine"),
    ([{"epoch": 0, "lr": 0.1, "schedule": {"name": "cosine", "epoch": 3}}],
     r"unknown parameter 'epoch' for schedule 'cosine'; allowed: end_lr, epochs"),
    ([{"epoch": 0, "lr": 0.1, "schedule": {"name": "cosine"}}], r"schedule 'cosine' needs 'epochs'"),
    ([{"epoch": 0, "lr": 0.1, "schedule": {"name": "exponential", "gamma": -1}}], r"'gamma' must be > 0"),
    ([{"epoch": 0, "lr": 0.1, "schedule": {"name": "multistep", "milestones": [5, 3]}}], r"'milestones' must increase"),
    ([{"epoch": 0, "lr": 0.1, "schedule": "cosine 200"}], r"unknown schedule"),
    ([{"epoch": 0, "step_lambda": "lambda t: {'lr': t}"}], r"'step_lambda' is not supported.*schedule"),
    ([{"epoch": 3, "lr": 0.1}], r"first phase must start at epoch 0"),
    ([{"epoch": 0, "lr": 0.1}, {"epoch": 50, "lr": 0.01}, {"epoch": 20, "lr": 1}], r"before an earlier phase"),
    ([{"epoch": 0, "lr": 0.1}, {"lr": 0.01}], r"names neither 'epoch' nor 'step'"),
    ([{"epoch": 0, "lr": -0.1}], r"'lr' must be a number >= 0"),
    ([{"epoch": 0, "optimizer": "NAG", "lr": 0.1}], r"NAG rejects these settings: .*[Nn]esterov"),
    ([{"epoch": 0, "optimizer": "NAG", "lr": 0.1, "momentum": 0.9, "nesterov": False}], r"NAG implies nesterov=True"),
    ([], r"no phases"),
    ("fixed", r"expected a list of phases"),
])
def test_regime_errors(phases, pattern):
    with pytest.raises(ConfigError, match=pattern) as info:
        Regime(phases)
    assert "\n" not in str(info.value)


# ---------------------------------------------------------------- factory
def test_optimizer_names_and_aliases():
    assert optimizer_class("sgd") is torch.optim.SGD
    assert optimizer_class("AdaM") is torch.optim.Adam
    assert optimizer_class("RMSProp") is torch.optim.RMSprop
    assert optimizer_class("adagrad") is torch.optim.Adagrad
    assert optimizer_class("NAG") is torch.optim.SGD
    p = [nn.Parameter(torch.zeros(2))]
    nag = create_optimizer("nag", p, {"lr": 0.1, "momentum": 0.9})
    assert nag.param_groups[0]["nesterov"] is True and optimizer_name_of(nag) == "NAG"
    assert optimizer_name_of(torch.optim.SGD(p, lr=0.1, momentum=0.9, nesterov=True)) == "NAG"
    assert optimizer_name_of(torch.optim.SGD(p, lr=0.1)) == "SGD"
    r = Regime([{"epoch": 0, "optimizer": "NAG", "lr": 0.1, "momentum": 0.9}])
    assert r.settings_at(0)["nesterov"] is True
    with pytest.raises(ConfigError, match=r"unknown optimizer 'Lion'.*Adam"):
        optimizer_class("Lion")


def test_create_optimizer_validates_keys():
    p = [nn.Parameter(torch.zeros(2))]
    with pytest.raises(ConfigError, match=r"'momentum' is not a setting of optimizer Adam; allowed: .*eps"):
        create_optimizer("Adam", p, {"lr": 1e-3, "momentum": 0.9})
    with pytest.raises(ConfigError, match=r"rejects"):
        create_optimizer("SGD", p, {"lr": -1.0})
    with pytest.raises(ConfigError, match="weight_decay_scale"):
        create_optimizer("SGD", [{"params": p, "weight_decay": 0}], {"lr": 0.1})
    opt = create_optimizer("SGD", [{"params": p, "weight_decay_scale": 0.0, "lr_scale": 2}],
                           {"lr": 0.1, "weight_decay": 1e-4})
    assert opt.param_groups[0]["lr"] == 0.2 and opt.param_groups[0]["weight_decay"] == 0.0


def test_register_optimizer():
    class Toy(torch.optim.SGD):
        def __init__(self, params, lr=0.5, momentum=0.0, toy_knob=1.0):
            super().__init__(params, lr=lr, momentum=momentum)
            for g in self.param_groups:
                g["toy_knob"] = toy_knob

    register_optimizer("ToyOpt", Toy, overwrite=True)
    assert "ToyOpt" in optimizer_names()
    r = Regime([{"epoch": 0, "optimizer": "toyopt", "toy_knob": 3.0}])
    assert r.settings_at(0) == {"optimizer": "ToyOpt", "toy_knob": 3.0, "lr": 0.5}
    opt = r.apply(None, [nn.Parameter(torch.zeros(2))], 0)
    assert isinstance(opt, Toy) and opt.param_groups[0]["toy_knob"] == 3.0


# ---------------------------------------------------------------- data regimes
def test_data_regime():
    d = DataRegime([{"epoch": 0, "batch_size": 256, "input_size": 128}, {"epoch": 15, "input_size": 224},
                    {"epoch": 40, "batch_size": 64}])
    assert d.settings_at(0) == {"batch_size": 256, "input_size": 128}
    assert d.settings_at(20) == {"batch_size": 256, "input_size": 224}
    assert d.settings_at(99) == {"batch_size": 64, "input_size": 224}
    assert d.changes_at(15) and not d.changes_at(16)
    assert DataRegime({15: {"input_size": 224}, 0: {"batch_size": 256, "input_size": 128}}).settings_at(15) == \
        {"batch_size": 256, "input_size": 224}
    assert DataRegime([]).settings_at(3) == {} and DataRegime(None).settings_at(0) == {}
    with pytest.raises(ConfigError, match="unknown key 'batchsize'"):
        DataRegime([{"epoch": 0, "batchsize": 3}])
    with pytest.raises(ConfigError, match=r"'batch_size' must be an integer in \[1, 1048576\]"):
        DataRegime([{"epoch": 0, "batch_size": 0}])


# ---------------------------------------------------------------- numbers no float holds (issue #34, item J)
def test_a_regime_refuses_numbers_without_a_finite_float_value_and_keeps_finite_ones():
    huge = 10**400  # float(huge) raises OverflowError: it used to stop a run in its first optimizer step
    for phase in ({"lr": huge}, {"lr": 0.1, "momentum": huge}, {"lr": 0.1, "momentum": float("nan")},
                  {"lr": 0.1, "weight_decay": float("inf")},
                  {"lr": 0.1, "schedule": {"name": "cosine", "epochs": huge}}):
        with pytest.raises(ConfigError, match=r"regime phase 0: '\w+'.* must be a finite number, got"):
            Regime([{"epoch": 0, **phase}])
    # an integer a float holds is a number like any other
    assert Regime([{"epoch": 0, "lr": 10**300, "momentum": 0.9}]).settings_at(0)["lr"] == 10**300
