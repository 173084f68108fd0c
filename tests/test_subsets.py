"""--train-limit/--val-limit: seeded, class-stratified, nested subsets (or the first N with --limit-mode first)."""
import numpy as np
import pytest
from PIL import Image

from basinlab.cli import main
from basinlab.data import build_loaders
from basinlab.data.subsets import subset_indices

SORTED = np.repeat(np.arange(10), [700] * 4 + [300] * 6)  # stored by class, as image folders are


@pytest.mark.parametrize("limit", [1, 9, 10, 100, 1001, 4599])
def test_every_prefix_holds_each_class_in_proportion(limit):
    keep = subset_indices(SORTED, limit, seed=0)
    counts = np.bincount(SORTED[keep], minlength=10)
    share = limit * np.bincount(SORTED) / len(SORTED)
    assert counts.sum() == limit and np.all(np.abs(counts - share) < 1.0 + 1e-9)
    assert np.all(np.diff(keep) > 0)  # in stored order


def test_subsets_are_seeded_and_nested():
    small, large = subset_indices(SORTED, 300, seed=5), subset_indices(SORTED, 900, seed=5)
    assert set(small) <= set(large)
    assert np.array_equal(small, subset_indices(SORTED, 300, seed=5))
    assert not np.array_equal(small, subset_indices(SORTED, 300, seed=6))
    assert np.array_equal(subset_indices(SORTED, 300, seed=5, mode="first"), np.arange(300))
    assert subset_indices(SORTED, len(SORTED), seed=5) is None  # everything: no subset


def test_an_image_folder_subset_trains_on_every_class(tmp_path):
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for cls in ("airplane", "bird", "cat"):
            folder = tmp_path / "imagefolder" / split / cls
            folder.mkdir(parents=True)
            for i in range(20):
                Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    train, val = build_loaders("imagefolder", tmp_path, batch_size=6, train_limit=12, val_limit=6, input_size=8,
                               workers=0)
    assert sorted(np.bincount(train.dataset.labels)) == [4, 4, 4]
    assert "3 classes, 2 per class" in val.subset_notes[0]
    first, _ = build_loaders("imagefolder", tmp_path, batch_size=6, train_limit=12, limit_mode="first",
                             input_size=8, workers=0)
    assert set(first.dataset.labels) == {0}  # the old behaviour: airplanes only
    assert "holds 1 of the 3 classes" in first.subset_notes[1]


def test_the_class_sorted_cifar_test_batch_is_validated_on_every_class(data_shared_real, tmp_path, capsys):  # noqa: F811
    _, val = build_loaders("cifar10", data_shared_real, batch_size=128, val_limit=1000)
    labels = np.concatenate([y.cpu().numpy() for _, y in val.epoch(0)])
    assert np.array_equal(np.bincount(labels, minlength=10), [100] * 10)


def test_the_log_names_the_subset(tmp_path, capsys, no_run_plots):
    assert main(["train", "--train-limit", "200", "--val-limit", "100", "-b", "50", "--epochs", "1",
                 "--results-dir", str(tmp_path), "--save", "r"]) == 0
    log = (tmp_path / "r" / "log.txt").read_text()
    assert "train subset: 200 of 4,000 examples, stratified by class; 10 classes" in log
    assert "val subset: 100 of 1,000 examples" in log
