"""ntkal.training: accuracy on real data, seeding, warm starts, validation, eval helpers."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import ntkal.training
from ntkal.models import build_model
from ntkal.training import TrainConfig, TrainResult, evaluate, predict_logits, train

K = 10


@pytest.fixture(scope="module")
def digits():
    try:
        from ntkal.data import load_dataset

        ds = load_dataset("digits")
        return ds.x_train, ds.y_train, ds.x_test, ds.y_test
    except ImportError:  # pragma: no cover - only before ntkal.data exists
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split

        bunch = load_digits()
        x = torch.tensor(bunch.data / 16.0, dtype=torch.float32).reshape(-1, 1, 8, 8)
        y = torch.tensor(bunch.target, dtype=torch.int64)
        a, b, c, d = train_test_split(x, y, test_size=450, random_state=0, stratify=y)
        return a, c, b, d


@pytest.fixture
def small(digits):
    """300 digits: enough to learn something, small enough for many training runs."""
    x, y = digits[0][:300], digits[1][:300]
    return x, y


def _cnn(seed=0, **kwargs):
    torch.manual_seed(seed)
    return build_model("cnn", (1, 8, 8), K, **kwargs)


def _quick(**changes):
    base = dict(epochs=3, batch_size=32)
    base.update(changes)
    return TrainConfig(**base)


def _same_weights(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return all(torch.equal(sa[k], sb[k]) for k in sa)


# ----------------------------------------------------------------------------- accuracy
@pytest.mark.parametrize("loss", ["mse", "ce"])
def test_default_config_learns_digits(digits, loss):
    x, y, x_test, y_test = digits
    model = _cnn()
    result = train(model, x, y, TrainConfig(loss=loss), num_classes=K)
    assert isinstance(result, TrainResult) and len(result.losses) == 30
    assert result.losses[-1] < result.losses[0]
    assert result.train_accuracy > 0.95
    assert evaluate(model, x_test, y_test) > 0.9


# ----------------------------------------------------------------------------- seeding
def test_same_seed_gives_bit_identical_weights(small):
    x, y = small
    cfg = _quick(seed=7)
    a, b = _cnn(dropout=0.3, batchnorm=True), _cnn(dropout=0.3, batchnorm=True)
    ra, rb = train(a, x, y, cfg, num_classes=K), train(b, x, y, cfg, num_classes=K)
    assert _same_weights(a, b) and ra.losses == rb.losses
    c = _cnn(dropout=0.3, batchnorm=True)
    train(c, x, y, dataclasses.replace(cfg, seed=8), num_classes=K)
    assert not _same_weights(a, c)


def test_global_rng_is_left_untouched(small):
    x, y = small
    model = _cnn(dropout=0.2)
    state = torch.random.get_rng_state()
    train(model, x, y, _quick(epochs=1), num_classes=K)
    assert torch.equal(torch.random.get_rng_state(), state)


def test_warm_start_continues_from_the_given_weights(small):
    x, y = small
    model = _cnn()
    first = train(model, x, y, _quick(), num_classes=K)
    trained = {k: v.clone() for k, v in model.state_dict().items()}
    second = train(model, x, y, _quick(), num_classes=K)
    assert second.losses[0] < first.losses[0]
    assert second.losses[0] < 1.5 * first.losses[-1]  # picks up where the first call ended
    assert not all(torch.equal(trained[k], v) for k, v in model.state_dict().items())


# ----------------------------------------------------------------------------- options
@pytest.mark.parametrize(
    "changes",
    [
        dict(schedule="onecycle"),
        dict(schedule="onecycle", lr=0.1, max_lr=0.8),
        dict(schedule="cosine", lr=0.1),
        dict(schedule="constant", lr=0.05),
        dict(loss="ce"),
        dict(grad_clip=1.0),
        dict(weight_decay=0.0, momentum=0.0, lr=0.5),
    ],
    ids=str,
)
def test_every_option_trains(small, changes):
    x, y = small
    result = train(_cnn(), x, y, _quick(epochs=4, **changes), num_classes=K)
    assert all(np.isfinite(result.losses)) and result.losses[-1] < result.losses[0]
    assert result.steps == 4 * 10 and result.seconds > 0


def test_sets_smaller_than_a_batch_and_trailing_singletons(small):
    x, y = small
    result = train(_cnn(), x[:5], y[:5], _quick(batch_size=64), num_classes=K)
    assert result.steps == 3
    # 9 = 8 + 1: the single trailing example joins the previous batch, so BatchNorm1d can train.
    torch.manual_seed(0)
    bn = nn.Sequential(
        nn.Flatten(), nn.Linear(64, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, K)
    )
    result = train(bn, x[:9], y[:9], _quick(batch_size=8), num_classes=K)
    assert result.steps == 3


def test_modes_are_restored(small):
    x, y = small
    model = _cnn(batchnorm=True).eval()
    model.conv.train()  # a caller's deliberate mixture of modes
    modes = [m.training for m in model.modules()]
    train(model, x, y, _quick(epochs=1), num_classes=K)
    assert [m.training for m in model.modules()] == modes
    predict_logits(model, x)
    evaluate(model, x, y)
    assert [m.training for m in model.modules()] == modes


def test_divergence_is_reported(small):
    x, y = small
    with pytest.raises(FloatingPointError, match="diverged"):
        train(_cnn(), x * 1e3, y, _quick(schedule="constant", lr=1e4, momentum=0.0), num_classes=K)


def test_progress_bar_is_silent_when_quiet(small, monkeypatch, capsys):
    x, y = small
    monkeypatch.setenv("NTKAL_QUIET", "1")
    train(_cnn(), x, y, _quick(epochs=1), num_classes=K, progress=True)
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == ""
    monkeypatch.delenv("NTKAL_QUIET")
    monkeypatch.delenv("CI", raising=False)
    result = train(_cnn(), x, y, _quick(epochs=1), num_classes=K, progress=True)
    assert len(result.losses) == 1


def test_min_steps_lengthens_short_runs(small):
    x, y = small
    cfg = _quick(epochs=2, batch_size=64, min_steps=20)
    result = train(_cnn(), x[:50], y[:50], cfg, num_classes=K)
    assert cfg.epochs_for(50) == 20 and len(result.losses) == 20 and result.steps == 20
    assert cfg.epochs_for(300) == 4 and cfg.epochs_for(2000) == 2  # 5 and 32 steps per epoch


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 70), batch_size=st.integers(1, 16), seed=st.integers(0, 2**31 - 1))
def test_batches_cover_every_example_once(n, batch_size, seed):
    from ntkal.training import _batches, _steps_per_epoch

    chunks = _batches(n, batch_size, torch.Generator().manual_seed(seed))
    assert sorted(torch.cat(chunks).tolist()) == list(range(n))
    assert len(chunks) == _steps_per_epoch(n, batch_size)
    assert all(c.numel() <= batch_size + 1 for c in chunks)
    assert batch_size == 1 or n == 1 or min(c.numel() for c in chunks) > 1


def test_progress_bar_inside_another_live_display(small, monkeypatch):
    from rich.console import Console
    from rich.progress import Progress

    monkeypatch.delenv("NTKAL_QUIET", raising=False)
    monkeypatch.delenv("CI", raising=False)
    with Progress(console=Console(quiet=True)) as outer:
        outer.add_task("runs", total=1)
        result = train(_cnn(), *small, _quick(epochs=1), num_classes=K, progress=True)
    assert len(result.losses) == 1


# ----------------------------------------------------------------------------- validation
class _Embedder(nn.Module):
    """Returns features, not logits of the right width."""

    def forward(self, x):
        return x.reshape(x.shape[0], -1)[:, :5]


@pytest.mark.parametrize(
    "make,match",
    [
        (lambda x, y: (x[:10], y[:9], K), "different lengths: 10 inputs, 9 labels"),
        (lambda x, y: (x[:10], torch.full((10,), K), K), r"labels must lie in \[0, 10\)"),
        (lambda x, y: (x[:10], -torch.ones(10, dtype=torch.long), K), r"labels must lie"),
        (lambda x, y: (x[:10], y[:10].float(), K), "integer class indices"),
        (lambda x, y: (x[:10], y[:10].reshape(-1, 1), K), "1-D"),
        (
            lambda x, y: (
                torch.where(torch.arange(10).reshape(-1, 1, 1, 1) == 3, np.nan, x[:10]),
                y[:10],
                K,
            ),
            "NaN",
        ),
        (lambda x, y: (x[:0], y[:0], K), "empty"),
        (lambda x, y: (x[:10], y[:10], 0), "num_classes"),
    ],
)
def test_bad_data_raises(small, make, match):
    x, y, k = make(*small)
    with pytest.raises(ValueError, match=match):
        train(_cnn(), x, y, _quick(), num_classes=k)


def test_model_output_shape_is_checked(small):
    x, y = small
    with pytest.raises(ValueError, match=r"\(2, 10\).*got \(2, 5\)"):
        train(_Embedder(), x, y, _quick(), num_classes=K)
    with pytest.raises(ValueError, match=r"\(2, 12\)"):
        train(_cnn(), x, y, _quick(), num_classes=12)


def test_config_must_be_a_train_config(small):
    with pytest.raises(TypeError, match="from_dict"):
        train(_cnn(), *small, dict(epochs=1), num_classes=K)


# ----------------------------------------------------------------------------- TrainConfig
@pytest.mark.parametrize(
    "changes,match",
    [
        (dict(epochs=0), "epochs"),
        (dict(epochs=1.5), "epochs"),
        (dict(batch_size=0), "batch_size"),
        (dict(lr=0.0), "lr"),
        (dict(lr="fast"), "lr"),
        (dict(lr=float("nan")), "lr"),
        (dict(momentum=1.0), "momentum"),
        (dict(weight_decay=-1e-4), "weight_decay"),
        (dict(schedule="step"), "onecycle, cosine, constant"),
        (dict(loss="hinge"), "mse, ce"),
        (dict(seed=-1), "seed"),
        (dict(seed=True), "seed"),
        (dict(device="gpu0"), "device"),
        (dict(schedule="cosine", max_lr=1.0), "only applies"),
        (dict(lr=0.5, max_lr=0.1), "max_lr"),
        (dict(grad_clip=0.0), "grad_clip"),
        (dict(min_steps=0), "min_steps"),
    ],
    ids=str,
)
def test_config_validation(changes, match):
    with pytest.raises(ValueError, match=match):
        TrainConfig(**changes)


def test_config_from_dict_and_defaults():
    with pytest.raises(
        ValueError, match=r"unknown training option.*epoch_count.*valid options: epochs"
    ):
        TrainConfig.from_dict({"epoch_count": 3})
    cfg = TrainConfig.from_dict({"epochs": 3, "lr": "1e-2", "weight_decay": "5e-4", "loss": "CE"})
    assert (cfg.lr, cfg.weight_decay, cfg.loss) == (0.01, 5e-4, "ce")
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg
    assert TrainConfig().lr == 0.5 and TrainConfig(loss="ce").lr == 0.05
    ref = TrainConfig.reference()
    assert (ref.epochs, ref.batch_size, ref.lr, ref.max_lr, ref.weight_decay, ref.loss) == (
        200,
        128,
        0.3,
        1.25,
        1e-4,
        "mse",
    )


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only error")
def test_cuda_without_cuda_is_a_clear_error(small):
    with pytest.raises(ValueError, match="CUDA is not available"):
        train(_cnn(), *small, _quick(device="cuda"), num_classes=K)


# ----------------------------------------------------------------------------- eval helpers
def test_predict_logits_and_evaluate(small):
    x, y = small
    model = _cnn(dropout=0.5).train()
    a = predict_logits(model, x)
    b = predict_logits(model, x.numpy(), batch_size=7)
    assert a.shape == (300, K) and a.dtype == torch.float32 and a.device.type == "cpu"
    assert not a.requires_grad
    assert torch.allclose(a, b, atol=1e-6)  # eval mode: no dropout, batching does not matter
    acc = evaluate(model, x, y, batch_size=16)
    assert acc == pytest.approx(float((a.argmax(1) == y).double().mean()))
    assert model.training
    with pytest.raises(ValueError, match="different lengths"):
        evaluate(model, x, y[:-1])
    with pytest.raises(ValueError, match="batch_size"):
        predict_logits(model, x, batch_size=0)


def _image_folder(root, classes=3, per_class=12, side=8):
    from PIL import Image

    rng = np.random.default_rng(0)
    for c in range(classes):
        folder = root / f"c{c}"
        folder.mkdir(parents=True)
        for i in range(per_class):
            pixels = (rng.random((side, side)) * 80 + c * 60).clip(0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(folder / f"{i}.png")
    return root


def _folder_run(tmp_path, lr, schedule="onecycle"):
    from ntkal.data import load_dataset

    ds = load_dataset(str(_image_folder(tmp_path / "imgs")))
    torch.manual_seed(0)
    net = build_model("mlp", ds.in_shape, ds.num_classes, width=32)
    config = TrainConfig(epochs=20, lr=lr, loss="mse", batch_size=8, schedule=schedule)
    return train(net, ds.x_train, ds.y_train, config, num_classes=ds.num_classes)


def test_an_exploding_finite_loss_stops_training(tmp_path):
    """An MLP on an image folder with MSE and a far too high rate: the loss stays finite (the
    ReLUs die) while the weights reach ~1e8 and the accuracy is at chance; the NaN check alone
    let such a run finish silently."""
    with pytest.raises(
        FloatingPointError,
        match=r"diverged: after 20 epochs the mse loss is .* "
        r"times a constant prediction's .* training "
        r"accuracy is 0.345 \(chance 0.333\); lower "
        r"lr/max_lr \(now 4.0/None\)",
    ):
        _folder_run(tmp_path, 4.0, "constant")


def test_weights_that_grow_by_orders_of_magnitude_stop_training(tmp_path, monkeypatch):
    """At lr 0.5 this run ends at chance with its weight norm 21x the start and a loss below
    the loss threshold: with the growth limit at 10x, the weight check alone catches it."""
    monkeypatch.setattr(ntkal.training, "DIVERGED_GROWTH", 10.0)
    with pytest.raises(
        FloatingPointError,
        match=r"diverged: after 20 epochs the weights grew from "
        r"norm 4.72 to .* accuracy is 0.345 .* lower "
        r"lr/max_lr \(now 0.5/",
    ):
        _folder_run(tmp_path, 0.5)


def test_huge_logits_of_the_right_sign_are_not_divergence():
    """A run whose MSE is far above a constant prediction's but which classifies its whole set
    (logits large and of the right sign) has not diverged: the accuracy clears it."""
    torch.manual_seed(0)
    x = torch.randn(40, 3)
    y = (x[:, 0] > 0).long()
    net = nn.Linear(3, 2)
    with torch.no_grad():
        net.weight.copy_(torch.tensor([[-1e3, 0.0, 0.0], [1e3, 0.0, 0.0]]))
        net.bias.zero_()
    result = train(
        net,
        x,
        y,
        TrainConfig(epochs=1, lr=1e-12, momentum=0.0, weight_decay=0.0, schedule="constant"),
        num_classes=2,
    )
    assert result.final_loss > 100 * 0.5 and result.train_accuracy == 1.0


def test_a_sound_rate_on_the_same_folder_trains(tmp_path):
    assert _folder_run(tmp_path, 0.05).train_accuracy == 1.0


def test_non_finite_weights_are_named(small):
    x, y = small
    net = _cnn()
    with torch.no_grad():
        next(net.parameters())[0].fill_(float("nan"))
    # a NaN weight makes the loss NaN too: either check may fire first, both name the rate
    with pytest.raises(
        FloatingPointError, match=r"diverged at epoch 1: the (loss|weights) .*lower lr"
    ):
        train(net, x, y, _quick(), num_classes=K)
