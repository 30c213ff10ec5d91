"""Every model honours the ntkal.models contract: logits, flat embed, classifier, dropout placement."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from ntkal.models import available_models, build_model

K = 10
# (name, in_shape, kwargs): small widths/depths keep the run fast; the data shapes are the real ones.
CASES = [
    ("mlp", (1, 28, 28), dict(width=32)),
    ("mlp", (1, 8, 8), dict(width=16, depth=3)),
    ("cnn", (1, 28, 28), {}),
    ("cnn", (1, 8, 8), {}),
    ("cnn", (1, 8, 8), dict(batchnorm=True, width=4)),
    ("resnet18", (3, 32, 32), dict(width=4)),
    ("wideresnet", (3, 32, 32), dict(width=1, depth=10)),
]
IDS = [
    f"{n}-{'x'.join(map(str, s))}-{'-'.join(f'{k}{v}' for k, v in kw.items())}"
    for n, s, kw in CASES
]


def _build(name, shape, kwargs, dropout=0.0, seed=0):
    torch.manual_seed(seed)
    return build_model(name, shape, K, dropout=dropout, **kwargs)


def _inputs(shape, n=4, seed=1):
    return torch.randn((n,) + tuple(shape), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("name,shape,kwargs", CASES, ids=IDS)
def test_forward_backward_shapes(name, shape, kwargs):
    model = _build(name, shape, kwargs)
    x = _inputs(shape)
    out = model(x)
    assert out.shape == (4, K) and out.dtype == torch.float32
    out.square().sum().backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), pname
    h = model.embed(x)
    assert h.shape == (4, model.embed_dim)
    assert isinstance(model.classifier, nn.Linear)
    assert (model.classifier.in_features, model.classifier.out_features) == (model.embed_dim, K)


@pytest.mark.parametrize("name,shape,kwargs", CASES, ids=IDS)
def test_classifier_of_embed_is_forward_in_eval_mode(name, shape, kwargs):
    model = _build(name, shape, kwargs, dropout=0.3).eval()
    x = _inputs(shape)
    with torch.no_grad():
        assert torch.equal(model(x), model.classifier(model.embed(x)))


@pytest.mark.parametrize("name,shape,kwargs", CASES, ids=IDS)
def test_dropout_off_by_default(name, shape, kwargs):
    model = _build(name, shape, kwargs).train()
    assert not [m for m in model.modules() if isinstance(m, nn.Dropout) and m.p > 0]
    x = _inputs(shape)
    with torch.no_grad():
        assert torch.equal(model(x), model(x))
        # With BatchNorm in train mode, both sides normalise by the same batch statistics.
        assert torch.equal(model(x), model.classifier(model.embed(x)))


@pytest.mark.parametrize("name,shape,kwargs", CASES, ids=IDS)
def test_dropout_sits_before_the_classifier(name, shape, kwargs):
    model = _build(name, shape, kwargs, dropout=0.5).train()
    drops = [m for m in model.modules() if isinstance(m, nn.Dropout)]
    assert drops == [model.dropout] and model.dropout.p == 0.5
    x = _inputs(shape, n=8)
    with torch.no_grad():
        torch.manual_seed(3)
        a = model(x)
        torch.manual_seed(3)
        b = model.classifier(model.dropout(model.embed(x)))
        torch.manual_seed(4)
        c = model(x)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)  # active in train mode
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(x), model(x))


@pytest.mark.parametrize("name,shape,kwargs", CASES, ids=IDS)
def test_seeded_construction_is_deterministic(name, shape, kwargs):
    a, b = _build(name, shape, kwargs, seed=5), _build(name, shape, kwargs, seed=5)
    c = _build(name, shape, kwargs, seed=6)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)


def test_parameter_counts_match_the_standard_architectures():
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(build_model("cnn", (1, 28, 28), 10)) == 105_866  # conv16-conv32-fc64-fc10
    assert count(build_model("mlp", (1, 28, 28), 10)) == 669_706  # 784-512-512-10
    assert count(build_model("resnet18", (3, 32, 32), 10)) == 11_173_962
    assert count(build_model("wideresnet", (3, 32, 32), 10)) == 1_467_610  # WRN-28-2


def test_width_scales_the_network():
    assert build_model("cnn", (1, 8, 8), 10, width=8).embed_dim == 32
    assert build_model("mlp", (1, 8, 8), 10, width=20).embed_dim == 20
    assert build_model("mlp", (1, 8, 8), 10, depth=0).embed_dim == 64
    assert build_model("resnet18", (3, 8, 8), 10, width=2).embed_dim == 16
    wrn = build_model("wideresnet", (3, 8, 8), 10, widen_factor=3, depth=10)
    assert wrn.embed_dim == 64 * 3 and wrn.widen_factor == 3


def test_resnet_stages_are_addressable():
    model = build_model("resnet18", (3, 16, 16), 10, width=2)
    for name in ("layer1", "layer2", "layer3", "layer4"):
        assert isinstance(model.get_submodule(name), nn.Sequential)


def test_cnn_batchnorm_flag():
    plain = build_model("cnn", (1, 8, 8), 10)
    bn = build_model("cnn", (1, 8, 8), 10, batchnorm=True)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in plain.modules())
    assert sum(isinstance(m, nn.BatchNorm2d) for m in bn.modules()) == 2


def test_shape_types_are_normalised():
    a = build_model("cnn", torch.Size([1, 8, 8]), np.int64(3))
    b = build_model("mlp", np.array([1, 8, 8]), 3)
    assert a.in_shape == b.in_shape == (1, 8, 8)
    assert a(torch.zeros(2, 1, 8, 8)).shape == (2, 3)


def test_available_models():
    assert available_models() == ["cnn", "mlp", "resnet18", "wideresnet"]


@pytest.mark.parametrize(
    "call,match",
    [
        (lambda: build_model("vgg", (1, 8, 8), 10), "unknown model 'vgg'.*cnn, mlp"),
        (lambda: build_model("cnn", (64,), 10), r"\(channels, height, width\)"),
        (lambda: build_model("cnn", (1, 2, 2), 10), "at least 4x4"),
        (lambda: build_model("resnet18", (3, 32), 10), r"\(channels, height, width\)"),
        (lambda: build_model("mlp", (1, 0, 8), 10), "positive integers"),
        (lambda: build_model("mlp", (1, 8.5, 8), 10), "positive integers"),
        (lambda: build_model("mlp", (), 10), "non-empty"),
        (lambda: build_model("mlp", (1, 8, 8), 0), "num_classes"),
        (lambda: build_model("mlp", (1, 8, 8), 10, dropout=1.0), "dropout"),
        (lambda: build_model("mlp", (1, 8, 8), 10, dropout=-0.1), "dropout"),
        (lambda: build_model("cnn", (1, 8, 8), 10, width=0), "width"),
        (lambda: build_model("mlp", (1, 8, 8), 10, depth=-1), "depth"),
        (
            lambda: build_model("mlp", (1, 8, 8), 10, batchnorm=True),
            "does not take batchnorm.*depth",
        ),
        (lambda: build_model("wideresnet", (3, 8, 8), 10, depth=12), "6n \\+ 4"),
        (lambda: build_model("wideresnet", (3, 8, 8), 10, width=2, widen_factor=4), "give one"),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_bad_arguments_raise_clear_errors(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def _no_cwd_on_path(monkeypatch, folder):
    import sys

    monkeypatch.chdir(folder)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", ".", str(folder))])


def test_a_factory_in_the_working_directory_gets_a_path_hint(tmp_path, monkeypatch):
    from ntkal.models import ModelFactoryError, build_from_factory

    (tmp_path / "mynet_here.py").write_text(
        "from torch import nn\n"
        "def make(in_shape, num_classes):\n"
        "    return nn.Linear(in_shape[0], num_classes)\n"
    )
    _no_cwd_on_path(monkeypatch, tmp_path)
    with pytest.raises(
        ModelFactoryError,
        match=r"No module named 'mynet_here'.*mynet_here.py is in "
        r"the working directory .*PYTHONPATH=\. ntkal run",
    ):
        build_from_factory("mynet_here:make", (4,), 3)


def test_a_factory_nowhere_says_where_modules_come_from(tmp_path, monkeypatch):
    from ntkal.models import ModelFactoryError, build_from_factory

    _no_cwd_on_path(monkeypatch, tmp_path)
    with pytest.raises(
        ModelFactoryError,
        match=r"No module named 'nowhere_net'.*importable from "
        r"the Python path: put its folder on PYTHONPATH",
    ):
        build_from_factory("nowhere_net:make", (4,), 3)


def test_a_missing_dependency_of_the_factory_gets_no_path_hint(tmp_path, monkeypatch):
    import sys

    from ntkal.models import ModelFactoryError, build_from_factory

    (tmp_path / "needs_dep.py").write_text("import not_installed_dependency_xyz\n")
    monkeypatch.setattr(sys, "path", [str(tmp_path), *sys.path])
    with pytest.raises(ModelFactoryError) as err:
        build_from_factory("needs_dep:make", (4,), 3)
    assert "No module named 'not_installed_dependency_xyz'" in str(err.value)
    assert "PYTHONPATH" not in str(err.value)
