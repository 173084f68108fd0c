"""--amp on a CPU: bf16 autocast where the CPU computes bfloat16 natively, refused (or 'auto' -> none) where it
does not; float32 parameters, optimizer state and norm statistics; every method runs under it."""
import pytest
import torch

import basinlab
from basinlab.engine import precision
from basinlab.engine.precision import cpu_bf16_native, resolve_amp
from basinlab.errors import ConfigError
from tests.test_online_norm import OnlineNormReference, batch_shape, rel_err

CPU = torch.device("cpu")
native = pytest.mark.skipif(not cpu_bf16_native()[0], reason="this CPU has no native bfloat16")
TINY = dict(train_limit=256, val_limit=128, batch_size=64, epochs=1, quiet=True)


def pretend_cpu(monkeypatch, bf16: bool, avx512: bool = True):
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: bf16)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_avx512_supported", lambda: avx512)


def test_bf16_on_a_cpu_with_native_bfloat16(monkeypatch):
    pretend_cpu(monkeypatch, bf16=True)
    mode, dtype, note = resolve_amp("bf16", CPU)
    assert (mode, dtype) == ("bf16", torch.bfloat16) and "AVX-512 BF16" in note
    assert resolve_amp("auto", CPU)[:2] == ("bf16", torch.bfloat16)


def test_without_native_bfloat16_bf16_is_refused_and_auto_falls_back(monkeypatch):
    pretend_cpu(monkeypatch, bf16=False)
    with pytest.raises(ConfigError, match="needs native bfloat16.*this CPU has AVX-512 without BF16"):
        resolve_amp("bf16", CPU)
    mode, dtype, note = resolve_amp("auto", CPU)
    assert (mode, dtype) == ("none", None) and "no native bfloat16" in note
    with pytest.raises(ConfigError, match="fp16 needs a CUDA device"):
        resolve_amp("fp16", CPU)
    assert resolve_amp("none", CPU)[:2] == ("none", None)
    assert precision.AMP_MODES == ("none", "bf16", "fp16", "auto")


@native
@pytest.mark.parametrize("method", [{}, {"sam": 0.05}, {"smoothout": 0.01, "ghost_batch": 32},
                                    {"server": "asgd", "workers": 2, "delay": 1},
                                    {"log_sharpness_every": 1, "sharpness_batches": 1},
                                    {"norm_mode": "online", "model": "resnet20"}])
def test_methods_train_under_bf16_with_float32_state(tmp_path, no_run_plots, method):
    run = basinlab.train(**{**TINY, **method}, amp="bf16", results_dir=str(tmp_path), save="r")
    assert run.history["train_loss"].notna().all() and run.history["val_loss"].notna().all()
    assert all(p.dtype == torch.float32 for p in run.model.parameters())
    assert all(b.dtype in (torch.float32, torch.int64) for b in run.model.buffers())
    state = torch.load(run.path / "last.pt", weights_only=True)["optimizer"]["state"]
    assert all(t.dtype == torch.float32 for s in state.values() for t in s.values() if torch.is_tensor(t)
               and t.is_floating_point())
    if "log_sharpness_every" in method:
        assert run.history["lambda_max"].gt(0).all()  # the Hessian itself is measured in float32


@native
def test_bf16_changes_the_numbers_and_eval_amp_none_validates_in_float32(tmp_path, no_run_plots):
    fp32 = basinlab.train(**TINY, results_dir=str(tmp_path), save="fp32")
    bf16 = basinlab.train(**TINY, amp="bf16", results_dir=str(tmp_path), save="bf16")
    mixed = basinlab.train(**TINY, amp="bf16", eval_amp="none", results_dir=str(tmp_path), save="mixed")
    assert bf16.history["train_loss"][0] != fp32.history["train_loss"][0]
    assert mixed.history["train_loss"][0] == bf16.history["train_loss"][0]  # the same training
    # float32 validation of the same weights: equal to evaluating them without autocast
    from basinlab.engine.evaluate import evaluate
    result = evaluate(mixed.model, _val_loader(mixed), torch.nn.CrossEntropyLoss())
    assert mixed.history["val_loss"][0] == pytest.approx(result["loss"], rel=1e-6)
    assert "validation in float32 (--eval-amp none)" in (mixed.path / "log.txt").read_text()


def _val_loader(run):
    from basinlab.engine.inspect import loader_for
    return loader_for(run.config, split="val", batch_size=run.config.batch_size, limit=run.config.val_limit)


@pytest.mark.parametrize("shape_kind", ["4d", "2d"])
def test_online_norm_under_autocast_keeps_float32_statistics(shape_kind):
    """Under bf16 autocast the layer gets bf16 inputs, computes in float32 (its scans run with autocast off)
    and returns bf16: output and state equal the float32 reference fed the same (bf16-rounded) inputs."""
    from basinlab.nn.online_norm import OnlineNorm1d, OnlineNorm2d
    c = 3 if shape_kind == "4d" else 5
    layer = (OnlineNorm2d if shape_kind == "4d" else OnlineNorm1d)(c, alpha_fwd=0.9, alpha_bkw=0.8, affine=False)
    reference = OnlineNormReference(c, 0.9, 0.8, affine=False, ecm="ls", dtype=torch.float64)
    gen = torch.Generator().manual_seed(4)
    for b in (6, 1, 5):
        x = (torch.randn(batch_shape(shape_kind, b, c), generator=gen) * 2 + 1).to(torch.bfloat16)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = layer(x.requires_grad_())
        want = reference.forward(x.detach().double())
        assert out.dtype == torch.bfloat16
        assert rel_err(out.double(), want) < 1e-2   # bf16 output rounding (8 bits of mantissa)
        out.float().backward(torch.ones_like(out, dtype=torch.float32))
        reference.backward(torch.ones(x.shape, dtype=torch.float64))
        for name in ("mu", "var", "u", "v"):
            assert getattr(layer, name).dtype == torch.float32
            assert rel_err(getattr(layer, name).double(), getattr(reference, name)) < 1e-5, name


@native
def test_the_lr_range_test_and_autohyper_trials_run_under_bf16(tmp_path, no_run_plots):
    import pandas as pd
    import yaml

    from basinlab.cli import main
    from tests.test_autohyper_cli import TINY as AUTOHYPER_TINY
    out = tmp_path / "lrr"
    assert main(["lr-range", "--train-limit", "256", "-b", "32", "--optimizer", "SGD", "--num-steps", "10",
                 "--amp", "bf16", "-o", str(out), "--quiet"]) == 0
    assert pd.read_csv(out / "lr_range.csv")["loss"].notna().all()
    config = tmp_path / "autohyper.yaml"
    config.write_text(yaml.safe_dump({**AUTOHYPER_TINY, "max_epochs": 1}))
    assert main(["autohyper", "train", "--config", str(config), "--output", str(tmp_path / "ah"), "--cpu",
                 "--amp", "bf16", "--quiet"]) == 0
    logs = list((tmp_path / "ah").rglob("log.txt"))
    assert logs and all("amp bf16: bfloat16 autocast" in log.read_text() for log in logs)
