"""airbench94 (models/airbench.py, methods/airbench/, the data regime's translate and flip): each piece against a
written-out version of airbench's rule, then the preset end to end on CIFAR-format data, exact resume, refusals.

Checked side by side outside the repository against KellerJordan/cifar10-airbench, legacy/airbench94.py at commit
f1c599c4af24aca803e3e65a6a7e52a502e09d0e (run on a CPU in float32; torchvision's Normalize replaced by the same
arithmetic): with one seed the initial weights are equal; train-mode logits and test-time augmentation at levels
0, 1 and 2 are bit-identical; six optimizer steps of its sum-loss SGD with its param_configs and of basinlab's
mean-loss groups and regime give bit-identical weights (both channels_last, as each runs; with the same lr each
step); the lookahead update is bit-identical; the whitening filters differ by 9.4e-4 (relative) with the same
signs, airbench summing the patches' second moments in float32. The schedule is airbench's in epochs of a 10-epoch
run (airbench: 9.9 epochs, int(0.23 T) steps of warm-up); on a 48-step epoch the lr factor differs by at most
0.0029, at the one step where the warm-up ends.
"""
import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

import basinlab
from basinlab.api import make_config
from basinlab.cli import main
from basinlab.data.catalog import PAD_CROP_FLIP
from basinlab.data.memory import MemoryLoader, reflected
from basinlab.engine.callbacks import Callback
from basinlab.errors import ConfigError
from basinlab.methods.airbench import method as airbench_method
from basinlab.methods.airbench.lookahead import Lookahead, lookahead_decay
from basinlab.models import create_model
from basinlab.models.airbench import LR, WEIGHT_DECAY, whitening_weights
from basinlab.optim import regime_from_model_config
from basinlab.optim.data_regime import DataRegime
from basinlab.optim.weight_decay import parameter_groups
from basinlab.records.results import TIME_COLUMNS
from tests.run_callbacks import KeepCheckpoint, resume_and_load
from tests.test_data import make_cifar10

SMALL = "{'widths': [8, 16, 16]}"


def small_model(seed=0, **config):
    torch.manual_seed(seed)
    return create_model("airbench94", 10, "cifar10", widths=[8, 16, 16], **config)


def images(n, seed=0):
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


# ------------------------------------------------------------------------------------------ the network
def written_out_logits(model, x):
    """airbench94's forward in train mode from its parameters, op by op."""
    def norm(t, layer):
        return F.batch_norm(t, None, None, torch.ones_like(layer.bias), layer.bias, training=True, eps=1e-12)
    t = F.gelu(F.conv2d(x, model.whiten.weight, model.whiten.bias))
    for group in model.groups:
        t = F.gelu(norm(F.max_pool2d(F.conv2d(t, group.conv1.weight, padding=1), 2), group.norm1))
        t = F.gelu(norm(F.conv2d(t, group.conv2.weight, padding=1), group.norm2))
    return F.linear(F.max_pool2d(t, 3).flatten(1), model.head.weight) / 9


def test_the_network_is_airbenchs_op_by_op():
    model = small_model()
    with torch.no_grad():
        for group in model.groups:
            for norm in (group.norm1, group.norm2):
                norm.bias.normal_()
    x = images(8)
    torch.testing.assert_close(model(x), written_out_logits(model, x), rtol=1e-5, atol=1e-6)


def test_convs_start_as_identity_and_the_frozen_parameters_are_the_whitening_weights_and_norm_scales():
    model = small_model()
    conv = model.groups[1].conv1                                   # 8 -> 16 channels
    expected = torch.zeros(8, 8, 3, 3)
    expected[range(8), range(8), 1, 1] = 1
    assert torch.equal(conv.weight[:8], expected) and conv.weight[8:].abs().sum() > 0
    frozen = {name for name, p in model.named_parameters() if not p.requires_grad}
    assert frozen == {"whiten.weight"} | {f"groups.{g}.norm{k}.weight" for g in range(3) for k in (1, 2)}
    assert model.groups[0].norm1.momentum == pytest.approx(0.4) and model.groups[0].norm1.eps == 1e-12


def shifted(x, dy, dx):
    """Images moved so that out[i, j] = x[i + dy, j + dx], positions mirrored at the edges (reflect padding)."""
    h, w = x.shape[-2:]
    rows = [(abs(i + dy) if i + dy < h else 2 * (h - 1) - (i + dy)) for i in range(h)]
    cols = [(abs(j + dx) if j + dx < w else 2 * (w - 1) - (j + dx)) for j in range(w)]
    return x[..., rows, :][..., cols]


def test_test_time_augmentation_weights_six_views_as_airbench():
    model = small_model().eval()
    x = images(4)
    logits = model.logits

    def mirrored(v):
        return (logits(v) + logits(v.flip(-1))) / 2
    with torch.no_grad():
        expected = mirrored(x) / 2 + (mirrored(shifted(x, -1, -1)) + mirrored(shifted(x, 1, 1))) / 4
        torch.testing.assert_close(model.evaluation_forward(x), expected, rtol=1e-5, atol=1e-6)
        model.tta = 1
        torch.testing.assert_close(model.evaluation_forward(x), mirrored(x), rtol=1e-5, atol=1e-6)
        model.tta = 0
        assert torch.equal(model.evaluation_forward(x), logits(x))
    assert torch.equal(model(x), logits(x))                      # forward never averages views


def test_the_whitening_filters_whiten_the_patches():
    x = images(40)
    x[:, 1] = 0.7 * x[:, 0] + 0.3 * x[:, 1]                       # correlated channels
    eps = 5e-4
    filters = whitening_weights(x, 2, eps)
    assert filters.shape == (24, 3, 2, 2) and torch.equal(filters[12:], -filters[:12])
    patches = F.unfold(x.double(), 2).transpose(1, 2).reshape(-1, 12)
    second_moment = patches.T @ patches / len(patches)
    values, vectors = np.linalg.eigh(second_moment.numpy())
    w = filters[:12].reshape(12, 12).double()
    whitened = w @ second_moment @ w.T                             # diag(lambda / (lambda + eps)), largest first
    expected = np.sort(values)[::-1] / (np.sort(values)[::-1] + eps)
    torch.testing.assert_close(whitened, torch.diag(torch.from_numpy(expected.copy())), atol=2e-5, rtol=0)
    reference = (vectors / np.sqrt(values + eps)).T[::-1]
    signs = np.sign((reference * w.numpy()).sum(1, keepdims=True))
    # float32 eigenvectors of nearly equal eigenvalues differ from float64's by up to a few 1e-3
    np.testing.assert_allclose(w.numpy(), reference * signs, rtol=0, atol=5e-3 * np.abs(reference).max())


# ------------------------------------------------------------------------------------------ the optimiser
def test_one_step_equals_airbenchs_sum_loss_sgd():
    """airbench: loss summed over 1024 examples, SGD(nesterov, momentum 0.85) with lr 11.5/(1024 * kilostep) and
    weight decay wd/lr per group, norm biases at 64x the lr; basinlab: mean loss, the model's groups and regime."""
    ours, theirs = small_model(), small_model()
    theirs.load_state_dict(ours.state_dict())
    x, y = images(1024, seed=1), torch.randint(0, 10, (1024,), generator=torch.Generator().manual_seed(2))
    kilostep = 1024 * (1 + 1 / 0.15)
    lr, wd = 11.5 / kilostep, 0.0153 * 1024 / kilostep
    norm_biases = [m.bias for m in theirs.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    others = [p for p in theirs.parameters() if p.requires_grad and all(p is not b for b in norm_biases)]
    sgd = torch.optim.SGD([dict(params=norm_biases, lr=0.2 * lr * 64, weight_decay=wd / (lr * 64)),
                           dict(params=others, lr=0.2 * lr, weight_decay=wd / lr)], momentum=0.85, nesterov=True)
    regime = regime_from_model_config({}, default=ours.regime)
    optimizer = regime.apply(None, lambda: parameter_groups(ours, "all"), 0, 0, 0, steps_per_epoch=48)
    for _ in range(2):
        F.cross_entropy(theirs(x), y, label_smoothing=0.2, reduction="sum").backward()
        sgd.step()
        F.cross_entropy(ours(x), y, label_smoothing=0.2).backward()
        optimizer.step()
    for a, b in zip(ours.parameters(), theirs.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_the_schedule_rises_over_23_percent_of_ten_epochs_then_falls_to_007():
    regime = regime_from_model_config({}, default=small_model().regime)
    steps = 48
    for step in range(0, 480, 7):
        t = step / steps
        factor = 0.2 + 0.8 * t / 2.3 if t < 2.3 else 1 - 0.93 * (t - 2.3) / 7.7
        got = regime.settings_at(step // steps, step % steps, step, steps_per_epoch=steps)
        assert got["lr"] == pytest.approx(LR * factor, rel=1e-9)
        assert got["weight_decay"] == WEIGHT_DECAY and got["momentum"] == 0.85 and got["nesterov"] is True


def test_the_models_groups_keep_the_wd_filter():
    model = small_model()
    groups = parameter_groups(model, "weights")
    decay_of = {id(p): g.get("weight_decay_scale", 1.0) for g in groups for p in g["params"]}
    assert decay_of[id(model.whiten.bias)] == 0.0 and decay_of[id(model.groups[0].norm1.bias)] == 0.0
    assert decay_of[id(model.head.weight)] == 1.0
    assert all(g.get("lr_scale") == 64.0 for g in groups if any(p is model.groups[0].norm1.bias for p in g["params"]))


# ------------------------------------------------------------------------------------------ the data
def memory_loader(n=64, seed=0, flip="alternating", translate=2):
    rng = np.random.default_rng(seed)
    stored = rng.integers(0, 256, (n, 3, 8, 8), dtype=np.uint8)
    loader = MemoryLoader("toy", stored, rng.integers(0, 10, n), num_classes=10, mean=(0, 0, 0), std=(1, 1, 1),
                          batch_size=16, train=True, augmentation=PAD_CROP_FLIP, seed=seed)
    loader.set_augmentation(translate, flip)
    return loader, torch.from_numpy(stored).float() / 255


def views(image, translate):
    """Every shift of `image` by up to `translate` pixels (reflect padding), mirrored or not: (dy, dx, flip) -> view."""
    out = {}
    for dy in range(-translate, translate + 1):
        for dx in range(-translate, translate + 1):
            view = shifted(image, dy, dx)
            out[(dy, dx, 0)], out[(dy, dx, 1)] = view, view.flip(-1)
    return out


def seen_views(loader, stored, epoch):
    found = {}
    for (_, index), (batch, _) in zip(loader.index_batches(epoch), loader.epoch(epoch)):
        for i, image in zip(index.tolist(), batch):
            matches = [key for key, view in views(stored[i], 2).items() if torch.allclose(view, image, atol=1e-6)]
            assert matches, f"example {i} of epoch {epoch} is no shifted or mirrored copy of itself"
            found[i] = matches
    return found


def test_translate_shifts_with_reflect_padding_and_alternating_flip_mirrors_each_image_every_other_epoch():
    loader, stored = memory_loader()
    first, second = seen_views(loader, stored, 0), seen_views(loader, stored, 1)
    shifts = {key[:2] for keys in first.values() for key in keys}
    assert len(shifts) > 10 and all(max(map(abs, s)) <= 2 for s in shifts)
    flipped = {i: {key[2] for key in keys} for i, keys in first.items()}
    later = {i: {key[2] for key in keys} for i, keys in second.items()}
    unambiguous = [i for i in flipped if len(flipped[i]) == 1 and len(later.get(i, {0, 1})) == 1]
    assert len(unambiguous) > 20
    assert all(flipped[i] != later[i] for i in unambiguous)       # each image mirrored in one epoch of the two
    assert 0.2 < np.mean([min(flipped[i]) for i in unambiguous]) < 0.8


def test_the_augmentation_is_seeded_and_a_regenerated_epoch_is_the_same():
    a, _ = memory_loader(seed=3)
    b, _ = memory_loader(seed=3)
    for (x, _), (y, _) in zip(a.epoch(2), b.epoch(2, start_batch=0)):
        assert torch.equal(x, y)
    tail = [x for x, _ in a.epoch(2, start_batch=2)]
    assert torch.equal(tail[0], list(b.epoch(2))[2][0])


def test_reflected_positions():
    assert reflected(torch.arange(-2, 7), 5).tolist() == [2, 1, 0, 1, 2, 3, 4, 3, 2]


@pytest.mark.parametrize("entry, words", [
    ({"flip": "sometimes"}, "'flip' must be one of random, alternating, none"),
    ({"translate": -1}, "'translate' must be an integer in [0, 64]"),
    ({"translate": 2.5}, "'translate' must be an integer in [0, 64]"),
])
def test_bad_augmentation_settings_are_refused_in_one_line(entry, words):
    with pytest.raises(ConfigError) as err:
        DataRegime([{"epoch": 0, **entry}])
    assert words in str(err.value) and "\n" not in str(err.value)


# ------------------------------------------------------------------------------------------ the callbacks
class FakeRun:
    """What Lookahead reads of a run; batch_in_epoch counts the batches taken, as after the trainer's step."""

    def __init__(self, model, epochs=2, steps_per_epoch=5):
        self.model, self.epochs, self.steps_per_epoch, self.global_step = model, epochs, steps_per_epoch, 0
        self.batches = 0

    @property
    def epoch(self):
        return (self.batches - 1) // self.steps_per_epoch

    @property
    def batch_in_epoch(self):
        return (self.batches - 1) % self.steps_per_epoch + 1


def test_lookahead_pulls_every_k_steps_and_takes_the_average_at_the_end():
    model = small_model()
    run = FakeRun(model, epochs=2, steps_per_epoch=5)
    lookahead = Lookahead(3)
    lookahead.setup(run)
    average = {k: v.clone() for k, v in model.state_dict().items() if v.is_floating_point()}
    for step in range(1, 11):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.01 * step)
        current = {k: v.clone() for k, v in model.state_dict().items() if v.is_floating_point()}
        run.global_step = run.batches = step
        lookahead.on_step_end(run, None)
        pulls = ([0.95 ** 3 * (step / 10) ** 3] if step % 3 == 0 else []) + ([1.0] if step == 10 else [])
        for decay in pulls:
            average = {k: decay * average[k] + (1 - decay) * current[k] for k in average}
            current = dict(average)
        for name, value in model.state_dict().items():
            if value.is_floating_point():
                torch.testing.assert_close(value, current[name], rtol=1e-6, atol=1e-7)
    run.global_step = 10
    lookahead.on_step_end(run, None)              # a skipped batch takes no step and pulls nothing
    torch.testing.assert_close(model.state_dict()["head.weight"], current["head.weight"])
    assert lookahead_decay(6, 10, 3) == pytest.approx(0.95 ** 3 * 0.6 ** 3)


def test_the_last_batch_takes_the_average_even_when_skipped_batches_left_steps_untaken():
    model = small_model()
    run = FakeRun(model, epochs=1, steps_per_epoch=4)
    lookahead = Lookahead(3)
    lookahead.setup(run)
    start = model.head.weight.detach().clone()
    for batch, step in zip(range(1, 5), (1, 2, 2, 3)):          # the third batch was skipped (no step)
        if step != run.global_step:
            with torch.no_grad():
                model.head.weight.add_(1.0)
        run.batches, run.global_step = batch, step
        lookahead.on_step_end(run, None)
    # step 3 pulled with decay 0.95^3 (3/4)^3, then the last batch took the average: w = ema
    decay = 0.95 ** 3 * 0.75 ** 3
    torch.testing.assert_close(model.head.weight, decay * start + (1 - decay) * (start + 3.0))


class BiasEachEpoch(Callback):
    def __init__(self):
        self.seen = []

    def on_epoch_end(self, run, row):
        self.seen.append(run.model.whiten.bias.detach().clone())


@pytest.fixture(scope="module")
def cifar(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    make_cifar10(root / "cifar10" / "cifar-10-batches-py", per_batch=16, n_test=16)
    return root


def preset_run(cifar, tmp_path, save, **options):
    return basinlab.train(preset="airbench94", datasets_dir=str(cifar), results_dir=str(tmp_path), save=save,
                          quiet=True, model_config=SMALL, batch_size=16, epochs=3, **options)


def test_the_preset_trains_through_the_engine_and_keeps_the_whitening_bias_after_its_epochs(cifar, tmp_path,
                                                                                           no_run_plots):
    bias = BiasEachEpoch()
    run = preset_run(cifar, tmp_path, "preset", whiten_bias_epochs=1, callbacks=[bias])
    assert len(run.history) == 3 and run.history["val_acc1"].notna().all()
    assert not torch.equal(bias.seen[0], torch.zeros_like(bias.seen[0]))
    torch.testing.assert_close(bias.seen[1], bias.seen[0], rtol=0, atol=0)    # lookahead pulls, but every
    torch.testing.assert_close(bias.seen[2], bias.seen[0], rtol=0, atol=0)    # copy of it is the same bias
    log = (tmp_path / "preset" / "log.txt").read_text()
    assert "whitening layer set from the 2x2 patches of the first 80 training images" in log
    assert "translate 2px (reflect padding), flip alternating" in log
    assert "NAG lr=1.5 momentum=0.85" in log


class FrozenAsAirbench(Callback):
    """airbench's own freeze, possible in one process: the bias stops needing a gradient."""

    def on_fit_start(self, run):
        run.model.whiten.bias.requires_grad_(False)


@pytest.mark.parametrize("update", [{"grad_clip": 0.05}, {"sam": 0.05}], ids=["grad-clip", "sam"])
def test_a_frozen_whitening_bias_is_left_out_of_clipping_and_sam_as_airbench_leaves_it(cifar, tmp_path, no_run_plots,
                                                                                       update):
    """--whiten-bias-epochs 0 against the bias without requires_grad (frozen from the start, as airbench does):
    the same weights after an epoch whose gradients are clipped, or perturbed by SAM, with the bias left out."""
    def run(save, **options):
        basinlab.train(preset="airbench94", datasets_dir=str(cifar), results_dir=str(tmp_path), save=save,
                       quiet=True, model_config=SMALL, batch_size=16, epochs=1, **update, **options)
        return torch.load(tmp_path / save / "last.pt", weights_only=True)["model"]
    ours = run("ours", whiten_bias_epochs=0)
    theirs = run("theirs", whiten_bias_epochs=1, callbacks=[FrozenAsAirbench()])   # 1: never frozen by ours
    for key, value in theirs.items():
        torch.testing.assert_close(ours[key], value, rtol=1e-6, atol=1e-7, msg=key)


def test_the_sharpness_monitor_measures_through_a_frozen_whitening_bias(cifar, tmp_path, no_run_plots):
    """The bias's zero gradient keeps its graph, so the live measurements' Hessian-vector products (which
    differentiate the gradient again) see a zero row instead of failing: lambda_max and batch sharpness before
    training and at step 3, when the bias, frozen from the start, has its hook."""
    basinlab.train(preset="airbench94", datasets_dir=str(cifar), results_dir=str(tmp_path), save="eos", quiet=True,
                   model_config=SMALL, batch_size=16, epochs=1, whiten_bias_epochs=0, log_sharpness_every_steps=3,
                   sharpness_batches=1)
    rows = pd.read_csv(tmp_path / "eos" / "sharpness-steps.csv")
    assert 3 in set(rows["step"]) and rows[["batch_sharpness", "lambda_max"]].notna().all().all()


def test_an_interrupted_run_resumes_bit_for_bit_with_the_lookahead_average(cifar, tmp_path, no_run_plots):
    keep = KeepCheckpoint(13, tmp_path / "mid.pt")   # copied at step 13: the checkpoint of step 12, mid-epoch 3
    # the bias frozen after epoch 1, with clipping: the run resumed in epoch 3 must freeze it again at once
    preset_run(cifar, tmp_path, "straight", save_every_steps=12, callbacks=[keep], whiten_bias_epochs=1,
               grad_clip=0.05)
    mid = torch.load(tmp_path / "mid.pt", weights_only=True)
    assert mid["global_step"] == 12 and mid["callbacks"]["Lookahead"]["last_step"] == 12
    a, b = resume_and_load(tmp_path / "mid.pt", tmp_path)
    assert a["callbacks"]["Lookahead"]["last_step"] == b["callbacks"]["Lookahead"]["last_step"]
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "straight" / "results.csv").drop(columns=TIME_COLUMNS),
                                  pd.read_csv(tmp_path / "resumed" / "results.csv").drop(columns=TIME_COLUMNS))


# ------------------------------------------------------------------------------------------ refusals
def test_whiten_bias_epochs_needs_a_whitening_layer(cifar, tmp_path, capsys):
    code = main(["train", "--model", "mnist", "--dataset", "cifar10", "--datasets-dir", str(cifar), "--epochs", "1",
                 "-b", "16", "--whiten-bias-epochs", "2", "--results-dir", str(tmp_path), "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "--whiten-bias-epochs needs a model with a whitening conv" in err and "\n" not in err
    assert not any(tmp_path.iterdir())


def test_other_norm_modes_are_refused_for_airbench94():
    with pytest.raises(ConfigError, match="--norm-mode group is not offered for it: compare norms with resnet20"):
        create_model("airbench94", 10, "cifar10", norm="group")


def test_lookahead_is_refused_with_a_parameter_server_and_idle_in_the_lr_range_test(cifar, tmp_path, capsys):
    with pytest.raises(ConfigError, match="a parameter server's snapshots would undo or miscount its pulls"):
        make_config(lookahead_every=5, server="asgd", workers=2)
    _, callbacks = airbench_method.configure(make_config(lookahead_every=5), 1, "lr-range")
    assert [type(c).__name__ for c in callbacks] == ["LookaheadNotInRangeTest"]
    code = main(["lr-range", "--preset", "airbench94", "--datasets-dir", str(cifar), "--model-config", SMALL,
                 "-b", "16", "--num-steps", "3", "-o", str(tmp_path / "out")])
    assert code == 0, capsys.readouterr().err


def test_the_groups_survive_sync_batch_norm_and_the_log_names_them():
    model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(small_model())
    groups = parameter_groups(model, "all")
    assert [len(g["params"]) for g in groups] == [8, 6] and groups[1]["lr_scale"] == 64.0  # 6 norm biases
    from basinlab.optim.weight_decay import describe
    assert "with lr_scale x 64, weight_decay_scale x 0.015625" in describe(model, "all")


def test_validation_uses_the_augmented_views_and_the_model_itself_is_the_plain_network():
    from basinlab.engine.evaluate import evaluation_forward
    model = small_model().eval()
    x = images(4)
    with torch.no_grad():
        assert torch.equal(model(x), model.logits(x))
        assert not torch.allclose(evaluation_forward(model)(x), model(x))
    plain = create_model("resnet20", 10, "cifar10")
    assert evaluation_forward(plain) is plain


def test_alternating_flip_mirrors_duplicate_copies_both_ways():
    loader, stored = memory_loader(translate=0)
    loader.duplicates = 2
    (_, index), = list(loader.index_batches(0))[:1]
    batch, _ = next(iter(loader.epoch(0)))
    first, second = batch[:len(index)], batch[len(index):]
    for i, a, b in zip(index.tolist(), first, second):
        if not torch.equal(stored[i], stored[i].flip(-1)):
            assert torch.equal(a, b.flip(-1)), i


def test_without_augmentation_the_log_says_translate_and_flip_do_not_apply(cifar, tmp_path, capsys):
    code = main(["train", "--preset", "airbench94", "--datasets-dir", str(cifar), "--model-config", SMALL, "-b", "16",
                 "--no-augment", "--dry-run", "--results-dir", str(tmp_path)])
    out = capsys.readouterr()
    assert code == 0 and "no augmentation (this dataset has none, or --no-augment: translate and flip do not apply)" \
        in out.out + out.err


def test_translate_with_a_per_image_input_transform_is_refused_in_one_line():
    from basinlab.data.transforms import InputTransform
    from basinlab.engine.data_settings import check_data_regime
    loader, _ = memory_loader()
    loader.input_transform = InputTransform(train=lambda image: image, eval=None, on_batch=False)
    with pytest.raises(ConfigError, match="the model's per-image input_transform replaces; drop one of them"):
        check_data_regime(DataRegime([{"epoch": 0, "translate": 2}]), loader, loader, flag_batch=False)
