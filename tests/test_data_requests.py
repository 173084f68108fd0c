"""What a model file asks of the data: every data-regime key applied or refused at setup, input_transform in
both forms, input sizes as N or (h, w), and the log lines that say what a step really gets."""
import textwrap

import numpy as np
import pytest
import torch

from basinlab.cli import main
from basinlab.data.catalog import PAD_CROP_FLIP
from basinlab.data.memory import MemoryLoader
from basinlab.data.transforms import Cutout, InputTransform
from basinlab.errors import ConfigError
from tests.test_data import make_image_folder

MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


def cifar_like(n=16, seed=0, train=True, world=1, rank=0, batch=8, augmentation=PAD_CROP_FLIP):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, 3, 12, 10), dtype=np.uint8)
    return MemoryLoader("toy", images, np.arange(n) % 4, num_classes=4, mean=MEAN, std=STD, batch_size=batch,
                        train=train, augmentation=augmentation, seed=3, rank=rank, world_size=world)


def normalised(images: np.ndarray) -> torch.Tensor:
    x = torch.from_numpy(images).double() / 255
    return ((x - torch.tensor(MEAN, dtype=torch.float64).view(-1, 1, 1)) /
            torch.tensor(STD, dtype=torch.float64).view(-1, 1, 1)).float()


# ------------------------------------------------------------------------------------------- cutout
def test_cutout_masks_match_a_loop_over_pixels():
    cutout = Cutout(holes=2, length=4)
    generator = torch.Generator().manual_seed(0)
    masks = cutout.masks(generator, 5, 9, 7)
    check = torch.Generator().manual_seed(0)
    cy, cx = torch.randint(0, 9, (5, 2, 1, 1), generator=check), torch.randint(0, 7, (5, 2, 1, 1), generator=check)
    for n in range(5):
        for y in range(9):
            for x in range(7):
                hit = any(cy[n, h, 0, 0] - 2 <= y < cy[n, h, 0, 0] + 2 and cx[n, h, 0, 0] - 2 <= x < cx[n, h, 0, 0] + 2
                          for h in range(2))
                assert bool(masks[n, 0, y, x]) == (not hit)


def test_cutout_zeroes_squares_of_the_normalised_batch_and_nothing_else():
    plain, cut = cifar_like(), cifar_like()
    cut.cutout = Cutout(1, 6)
    for (a, ya), (b, yb) in zip(plain.epoch(0), cut.epoch(0)):
        assert torch.equal(ya, yb)
        zeroed = (b == 0).all(dim=1)
        assert zeroed.any() and torch.equal(b[:, :, ~zeroed[0]][0], a[:, :, ~zeroed[0]][0])
        assert torch.equal(torch.where(zeroed[:, None], 0.0, a), b)


@pytest.mark.parametrize("bad", [0, -3, "8", {"holes": 2}, {"length": 8, "size": 2}, True])
def test_a_bad_cutout_is_refused(bad):
    with pytest.raises(ConfigError, match="cutout must be"):
        Cutout.from_setting(bad, "data regime (epoch 0)")


# --------------------------------------------------------------------------------------- duplicates
def test_duplicates_repeat_each_example_with_its_own_augmentation():
    loader = cifar_like()
    loader.duplicates = 3
    x, y = next(loader.epoch(0))
    assert x.shape == (24, 3, 12, 10) and torch.equal(y, y[:8].repeat(3))
    assert not torch.equal(x[:8], x[8:16])      # same examples, other crops and flips
    assert loader.images_per_batch == 24 and len(loader) == 2


def test_duplicated_batches_shard_exactly():
    whole = cifar_like()
    whole.duplicates = 2
    parts = [cifar_like(world=2, rank=r) for r in range(2)]
    for part in parts:
        part.duplicates = 2
    x, y = next(whole.epoch(1))
    (x0, y0), (x1, y1) = (next(p.epoch(1)) for p in parts)
    # rank r holds rows [4r, 4r+4) of each copy of the global batch
    for copy in range(2):
        assert torch.equal(x[copy * 8: copy * 8 + 4], x0[copy * 4:(copy + 1) * 4])
        assert torch.equal(x[copy * 8 + 4:(copy + 1) * 8], x1[copy * 4:(copy + 1) * 4])
    assert torch.equal(torch.cat([y0[:4], y1[:4]]), y[:8])


# ------------------------------------------------------------------------------------- input sizes
def test_input_size_height_width_in_memory_and_streamed(tmp_path):
    from basinlab.data import build_loaders
    loader = cifar_like(augmentation=None)
    loader.set_input_size([6, 14])
    assert next(loader.epoch(0))[0].shape == (8, 3, 6, 14) and loader.input_shape == (3, 6, 14)
    make_image_folder(tmp_path / "imagefolder")
    train, val = build_loaders("imagefolder", tmp_path, batch_size=4, input_size=16)
    for one in (train, val):
        one.set_input_size((20, 12))
        assert next(one.epoch(0))[0].shape[1:] == (3, 20, 12)
    with pytest.raises(ConfigError, match=r"positive integer or \[height, width\]"):
        loader.set_input_size([6, 0])


# ---------------------------------------------------------------------------------- input_transform
def mirror(image):
    from PIL import ImageOps
    return ImageOps.mirror(image)


def test_the_seeds_per_sample_transform_replaces_the_augmentation():
    loader = cifar_like(augmentation=PAD_CROP_FLIP)
    loader.input_transform = InputTransform(train=mirror, eval=None, on_batch=False)
    x, y = next(loader.epoch(0))
    index = loader.permutation(0)[:8].numpy()
    stored = loader.raw_images().numpy()[index][..., ::-1].copy()
    assert torch.allclose(x, normalised(stored), atol=1e-6)


def random_shift(image):
    """A random per-image transform drawing from torch's global generator, as torchvision's do."""
    import torch as t
    tensor = t.from_numpy(np.asarray(image, dtype=np.float32).copy()).permute(2, 0, 1) / 255
    return tensor + t.rand(1)


def test_a_random_per_sample_transform_is_seeded_by_epoch_and_example():
    loader = cifar_like(augmentation=None)
    loader.input_transform = InputTransform(train=random_shift, eval=None, on_batch=False)
    first, again, other = next(loader.epoch(0))[0], next(loader.epoch(0))[0], next(loader.epoch(1))[0]
    assert torch.equal(first, again) and not torch.equal(first, other)
    assert first.dtype == torch.float32  # a tensor result is the input as it is, not normalised again
    state = torch.get_rng_state()
    next(loader.epoch(2))
    assert torch.equal(state, torch.get_rng_state())  # the caller's generator is untouched


def test_the_batch_form_runs_after_the_augmentation():
    plain, shifted = cifar_like(), cifar_like()
    shifted.input_transform = InputTransform(train=lambda batch: batch * 2 + 1, eval=None, on_batch=True)
    assert torch.allclose(next(shifted.epoch(0))[0], next(plain.epoch(0))[0] * 2 + 1)


def shifted_16(image):
    return random_shift(image.resize((16, 16)))


def mirrored_16(image):
    return mirror(image.resize((16, 16)))


def test_streamed_per_sample_transform_runs_in_the_workers(tmp_path):
    from basinlab.data import build_loaders
    from basinlab.engine.data_settings import attach_input_transform
    make_image_folder(tmp_path / "imagefolder")
    model = torch.nn.Linear(1, 1)
    model.input_transform = {"train": shifted_16, "eval": mirrored_16}
    results = []
    for workers in (0, 2):
        train, val = build_loaders("imagefolder", tmp_path, batch_size=4, input_size=16, workers=workers)
        train.set_input_size(None)
        attach_input_transform(model, "m", (train, val))
        results.append(next(train.epoch(0))[0])
        train.close()
    assert torch.equal(results[0], results[1])  # the same draws whatever the number of workers


@pytest.mark.parametrize("value, message", [
    ([mirror], "must be a dict"),
    ({"train": mirror, "test": mirror}, "unknown key 'test'"),
    ({"train": 3}, "'train' must be callable"),
    ({"train": mirror, "on": "pixel"}, "'on' must be 'sample'"),
])
def test_a_bad_input_transform_is_one_line(value, message):
    with pytest.raises(ConfigError, match=message):
        InputTransform.from_model(value, "m.py:net")


# ------------------------------------------------------------------------------------ end to end
MODEL_FILE = textwrap.dedent("""
    import torch.nn as nn
    from PIL import ImageOps

    def net(num_classes, dataset):
        model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
                              nn.Linear(16, num_classes))
        model.regime = [{'epoch': 0, 'optimizer': 'SGD', 'lr': 0.05}]
        model.data_regime = DATA_REGIME
        model.input_transform = INPUT_TRANSFORM
        return model
""")


def model_file(tmp_path, data_regime, input_transform="None"):
    path = tmp_path / "nets.py"
    path.write_text(MODEL_FILE.replace("DATA_REGIME", data_regime).replace("INPUT_TRANSFORM", input_transform))
    return f"{path}:net"


def train(tmp_path, model, *extra):
    return main(["train", "--model", model, "--train-limit", "256", "--val-limit", "64", "--epochs", "2",
                 "--results-dir", str(tmp_path), "--save", "run", "--quiet", *extra])


def test_a_data_regime_is_applied_and_logged_phase_by_phase(tmp_path, no_run_plots):
    model = model_file(tmp_path, "[{'epoch': 0, 'batch_size': 32, 'duplicates': 2, 'cutout': 8},"
                                 " {'epoch': 1, 'batch_size': 16, 'input_size': [24, 20], 'eval_batch_size': 32}]",
                       "{'train': None, 'eval': ImageOps.mirror}")
    assert train(tmp_path, model) == 0
    log = (tmp_path / "run" / "log.txt").read_text()
    assert "data regime: epoch 0: batch_size=32 duplicates=2 cutout=8" in log
    assert "data from epoch 1: batch 32 x 2 duplicates = 64 images per step, input 28x28, cutout 1 x 8px" in log
    # settings accumulate (convNet's rule): duplicates and cutout go on, batch and input size change
    assert "data from epoch 2: batch 16 x 2 duplicates = 32 images per step, input 24x20, cutout 1 x 8px, " \
           "eval batch 32" in log
    assert "input_transform from model" in log and "eval, per image (the seed's form)" in log
    import pandas as pd
    results = pd.read_csv(tmp_path / "run" / "results.csv")
    # 256 examples: 8 steps of 32 x 2 images, then 16 steps of 16 x 2 images
    assert (results["train_images_per_s"] * results["epoch_time_s"]).round().tolist() == [512, 512]


@pytest.mark.parametrize("regime, message", [
    ("[{'epoch': 0, 'autoaugment': True}]", "autoaugment is not implemented"),
    ("[{'epoch': 0, 'scale_size': 32}]", "scale_size resizes image-folder images"),
    ("[{'epoch': 0, 'cutout': {'size': 3}}]", "cutout must be"),
    ("[{'epoch': 0, 'batch_size': 32}, {'epoch': 1, 'batch_size': 1000}]",
     r"data regime \(epoch 1\): batch size 1000 exceeds the 256 training examples"),
])
def test_a_data_regime_that_cannot_be_applied_is_refused_at_setup(tmp_path, capsys, regime, message):
    assert train(tmp_path, model_file(tmp_path, regime)) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and pytest.importorskip("re").search(message, err), err
    assert not (tmp_path / "run").exists()


def test_evaluate_measures_what_the_run_measured(tmp_path, no_run_plots):
    """evaluate applies the model's eval input_transform and its data regime's input size at the checkpoint."""
    import pandas as pd
    model = model_file(tmp_path, "[{'epoch': 0, 'batch_size': 32}, {'epoch': 1, 'input_size': [24, 20]}]",
                       "{'train': None, 'eval': ImageOps.mirror}")
    assert train(tmp_path, model, "--seed", "1") == 0
    run = tmp_path / "run"
    results = pd.read_csv(run / "results.csv").set_index("epoch")
    for which in ("best", "last"):
        out = tmp_path / f"{which}.csv"
        assert main(["evaluate", str(run / f"{which}.pt"), "--output", str(out)]) == 0
        epoch = torch.load(run / f"{which}.pt", weights_only=True)["epoch"]
        assert pd.read_csv(out)["loss"][0] == pytest.approx(results.loc[epoch, "val_loss"], rel=1e-5)
