"""ResNet-20 with each norm mode trains through `basinlab train` on CIFAR-format data; online-norm state
is checkpointed and a resumed run is exact; the seed's presets carry the seed's defaults."""
import pickle
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import basinlab
from basinlab.api import make_config
from basinlab.nn.online_norm import OnlineNorm2d
from basinlab.records.results import TIME_COLUMNS

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
REAL = Path.home() / ".cache" / "shared-data"
# the PNGs are not what these runs check; ResNet-20 is large enough for intra-op threads to pay
pytestmark = pytest.mark.usefixtures("no_run_plots", "torch_threads")


@pytest.fixture(scope="module")
def learnable_cifar(tmp_path_factory):
    """CIFAR-10 pickle batches whose class is the position of a bright square on noise: a spatial signal
    that survives every norm mode (a colour tint would not: instance/group norm remove it per sample)."""
    root = tmp_path_factory.mktemp("cifar")
    folder = root / "cifar10" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name, n in [(f"data_batch_{i}", 200) for i in range(1, 6)] + [("test_batch", 200)]:
        labels = rng.integers(0, 10, n)
        images = rng.normal(100, 30, (n, 3, 32, 32))
        for i, label in enumerate(labels):
            row, col = divmod(int(label), 4)
            images[i, :, 2 + 10 * row:10 + 10 * row, 1 + 8 * col:7 + 8 * col] += 120
        images = images.clip(0, 255).astype(np.uint8)
        with open(folder / name, "wb") as fh:
            pickle.dump({b"data": images.reshape(n, 3072), b"labels": labels.tolist()}, fh, protocol=2)
    return root


def train(root, tmp_path, name, train_limit=160, val_limit=100, **options):
    # 10 steps of 16 per epoch: 3 epochs lower every mode's training loss clearly (the slowest, instance and
    # none, by 6-7%), and the online mode reaches 68% on the 100 validation images (chance: 10%)
    return basinlab.train(model="resnet20", dataset="cifar10", datasets_dir=str(root), batch_size=16,
                          train_limit=train_limit, val_limit=val_limit, quiet=True, results_dir=str(tmp_path),
                          save=name, optimizer="SGD", lr=0.02, momentum=0.9, augment=False, **options)


@pytest.mark.parametrize("mode", ["online", "batch", "group", "layer", "instance", "none"])
def test_resnet20_learns_with_every_norm_mode(learnable_cifar, tmp_path, mode):
    run = train(learnable_cifar, tmp_path, mode, norm_mode=mode, epochs=3)
    history = run.history
    assert history["train_loss"].iloc[-1] < 0.97 * history["train_loss"].iloc[0]
    if mode == "online":
        assert history["val_acc1"].max() > 50.0  # chance is 10%
        norms = [m for m in run.model.modules() if isinstance(m, OnlineNorm2d)]
        assert len(norms) == 21  # 19 convs + 2 projection shortcuts of CIFAR ResNet-20
        state = torch.load(run.path / "last.pt", weights_only=True)["model"]
        for key in ("mu", "var", "u", "v"):
            assert any(k.endswith(key) for k in state), key
        assert any(state[k].abs().sum() > 0 for k in state if k.endswith(".u"))


def test_online_norm_run_resumes_exactly(learnable_cifar, tmp_path):
    small = {"train_limit": 64, "val_limit": 32}  # 4 steps an epoch: exactness needs no more
    straight = train(learnable_cifar, tmp_path, "straight", norm_mode="online", epochs=2, **small)
    first = train(learnable_cifar, tmp_path, "resumed", norm_mode="online", epochs=1, **small)
    resumed = basinlab.train(resume=str(first.path), epochs=2, quiet=True)
    a = torch.load(straight.path / "last.pt", weights_only=True)["model"]
    b = torch.load(resumed.path / "last.pt", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)  # weights and mu/var/u/v buffers
    pd.testing.assert_frame_equal(straight.history.drop(columns=TIME_COLUMNS),
                                  resumed.history.drop(columns=TIME_COLUMNS))


def test_presets_match_the_seed_usage_text():
    c10 = make_config(preset="onlinenorm-cifar10")
    assert (c10.model, c10.depth, c10.epochs, c10.batch_size, c10.lr, c10.lr_milestones, c10.lr_multiplier,
            c10.momentum, c10.weight_decay, c10.norm_mode, c10.afwd, c10.abkw, c10.ecm, c10.gn_num_groups) == (
        "resnet", 20, 250, 128, 0.1, [100, 150, 200], 0.1, 0.9, 2e-4, "batch", 1023 / 1024, 127 / 128, "ls", 8)
    c100 = make_config(preset="onlinenorm-cifar100")
    assert (c100.dataset, c100.afwd, c100.abkw, c100.gn_num_groups) == ("cifar100", 511 / 512, 15 / 16, 8)
    inet = make_config(preset="onlinenorm-imagenet", model="resnet50")
    assert (inet.model, inet.epochs, inet.batch_size, inet.lr_milestones, inet.weight_decay, inet.afwd, inet.abkw,
            inet.gn_num_groups) == ("resnet50", 90, 256, [30, 60, 80, 90], 1e-4, 0.999, 0.99, 32)
    assert make_config(preset="onlinenorm-cifar10", depth=56, norm_mode="online").depth == 56


@pytest.mark.skipif(not SHARED.is_dir(), reason="../shared (real data) is absent")
def test_online_norm_resnet20_on_real_cifar10(tmp_path):
    if not (REAL / "cifar10" / "cifar-10-batches-py" / "test_batch").is_file():
        pytest.skip("real CIFAR-10 not prepared (python3 ../shared/tools/prepare_data.py)")
    # validating would be most of the cost: 500 stratified test images (chance 10% +- 1.3%) rather than 10,000
    run = basinlab.train(preset="onlinenorm-cifar10", norm_mode="online", datasets_dir=str(REAL), epochs=2,
                         train_limit=512, val_limit=500, batch_size=64, quiet=True, results_dir=str(tmp_path),
                         save="real")
    assert run.history["train_loss"].iloc[-1] < run.history["train_loss"].iloc[0]
    assert run.history["val_acc1"].iloc[-1] > 15.0  # 19.4% here
