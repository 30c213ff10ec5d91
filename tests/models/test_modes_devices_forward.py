"""The one home of train/eval modes, devices and the batched forward pass."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ntkal.models.devices import model_device, model_dtype, on_device, resolve_device
from ntkal.models.forward import predict_logits
from ntkal.models.modes import evaluating, modes_restored


def _net():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(4, 8),
        nn.BatchNorm1d(8),
        nn.ReLU(),
        nn.Dropout(0.5),
        nn.Sequential(nn.Linear(8, 8), nn.Dropout(0.3)),
        nn.Linear(8, 3),
    )


def _modes(model):
    return [m.training for m in model.modules()]


def test_evaluating_restores_every_submodule_not_just_the_root():
    model = _net().train()
    model[4].eval()  # a nested block the user froze
    model[1].eval()
    before = _modes(model)
    with evaluating(model) as m:
        assert m is model and not any(_modes(model))
    assert _modes(model) == before
    model.eval()
    model[3].train()  # and the other way round: one layer training in an eval model
    before = _modes(model)
    with pytest.raises(RuntimeError):
        with evaluating(model):
            raise RuntimeError("boom")
    assert _modes(model) == before


def test_modes_restored_undoes_whatever_the_body_did():
    model = _net().eval()
    model[4][1].train()
    before = _modes(model)
    with modes_restored(model):
        model.train()
        model[0].eval()
    assert _modes(model) == before


def test_predict_logits_is_the_eval_forward_batched():
    model = _net()
    x = torch.randn(50, 4, generator=torch.Generator().manual_seed(1))
    model.train()
    for _ in range(3):  # move the BatchNorm running statistics away from their start
        model(torch.randn(16, 4))
    model[1].eval()  # mixed modes must survive
    before = _modes(model)
    stats = model[1].running_mean.clone()
    with torch.no_grad():
        model.eval()
        expected = model(x)
    for m, flag in zip(model.modules(), before):
        m.training = flag
    out = predict_logits(model, x, batch_size=7)
    assert out.dtype == torch.float32 and out.device.type == "cpu" and not out.requires_grad
    torch.testing.assert_close(out, expected)
    assert _modes(model) == before
    torch.testing.assert_close(model[1].running_mean, stats)  # eval: statistics untouched
    torch.testing.assert_close(predict_logits(model, x.numpy(), batch_size=50), out)


def test_predict_logits_dtypes_devices_and_edge_cases():
    model = _net().double()
    x = torch.randn(5, 4)
    out = predict_logits(model, x, out_dtype=None, out_device=None)
    assert out.dtype == torch.float64  # inputs cast to the model's dtype, output kept
    assert predict_logits(model, x, out_dtype=torch.float64).dtype == torch.float64
    assert predict_logits(model, x[:0]).shape == (0, 0)
    ints = predict_logits(nn.Linear(2, 2), torch.ones(3, 2, dtype=torch.int64))
    assert ints.shape == (3, 2)
    with pytest.raises(ValueError, match="batch_size"):
        predict_logits(model, x, batch_size=0)
    with pytest.raises(TypeError, match=r"torch.Tensor or numpy array"):
        predict_logits(model, [[1.0] * 4])


def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")
    auto = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device("auto") == resolve_device(None) == resolve_device(" AUTO ") == auto
    with pytest.raises(ValueError, match="train_device='gpu0' is not a device"):
        resolve_device("gpu0", name="train_device")
    with pytest.raises(TypeError, match="device must be a string"):
        resolve_device(3.5)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="'cuda:1' was asked for but CUDA is not available"):
            resolve_device("cuda:1")
    else:
        n = torch.cuda.device_count()
        with pytest.raises(ValueError, match=f"has {n} CUDA device"):
            resolve_device(f"cuda:{n}")


def test_model_device_and_dtype():
    assert model_device(nn.ReLU()) == torch.device("cpu")
    assert model_dtype(nn.ReLU()) == torch.get_default_dtype()
    assert model_dtype(nn.Linear(2, 2).double()) == torch.float64
    buffers = nn.Module()  # no parameters; the first buffer is an integer counter
    buffers.register_buffer("count", torch.zeros((), dtype=torch.long))
    buffers.register_buffer("stat", torch.zeros(3, dtype=torch.float64))
    assert model_dtype(buffers) == torch.float64
    model = nn.Linear(2, 2)
    with on_device(model, "cpu") as same:
        assert same is model
    with on_device(model, None):
        pass
    assert model_device(model) == torch.device("cpu")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_evaluating_on_another_device_moves_back():
    model = _net()
    model[4].eval()
    before = _modes(model)
    with evaluating(model, "cuda") as m:
        assert model_device(m).type == "cuda"
    assert model_device(model).type == "cpu" and _modes(model) == before
    x = torch.randn(9, 4)
    torch.testing.assert_close(
        predict_logits(model, x, device="cuda"), predict_logits(model, x), atol=1e-5, rtol=1e-5
    )
    assert model_device(model).type == "cpu"
