"""empirical_ntk against an explicit Jacobian (torch.autograd.functional.jacobian) on tiny nets."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import ntkal.kernels.structured as structured
from ntkal.kernels import available_implementations, available_kinds, empirical_ntk

IMPLS = ("jacobian", "structured", "auto")
RTOL = 1e-6


class TinyMLP(nn.Module):
    def __init__(self, d=5, h=7, k=3):
        super().__init__()
        self.body = nn.Sequential(
            nn.Linear(d, h), nn.Tanh(), nn.Linear(h, h), nn.ReLU(inplace=True)
        )
        self.drop = nn.Dropout(0.5)
        self.classifier = nn.Linear(h, k)

    def forward(self, x):
        return self.classifier(self.drop(self.body(x)))


class TinyCNN(nn.Module):
    """Conv (padded) -> BatchNorm -> ReLU -> strided conv (no bias) -> pool -> dense head."""

    def __init__(self, k=3):
        super().__init__()
        self.c1 = nn.Conv2d(2, 3, 3, padding=1)
        self.bn = nn.BatchNorm2d(3)
        self.c2 = nn.Conv2d(3, 4, 3, stride=2, bias=False)
        self.bn1d = nn.BatchNorm1d(4)
        self.classifier = nn.Linear(4, k)

    def forward(self, x):
        x = torch.relu(self.bn(self.c1(x)))
        x = torch.tanh(self.c2(x)).mean((2, 3))
        return self.classifier(self.bn1d(x))


def _randomise_bn(model):
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.running_mean.copy_(torch.rand(m.running_mean.shape, generator=g) - 0.5)
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
            m.bias.data.copy_(torch.rand(m.bias.shape, generator=g) - 0.5)
    return model


def _nets():
    torch.manual_seed(0)
    mlp = TinyMLP().double()
    cnn = _randomise_bn(TinyCNN().double())
    return {
        "mlp": (
            mlp,
            torch.randn(6, 5, dtype=torch.float64),
            torch.randn(4, 5, dtype=torch.float64),
        ),
        "cnn": (
            cnn,
            torch.randn(5, 2, 6, 6, dtype=torch.float64),
            torch.randn(3, 2, 6, 6, dtype=torch.float64),
        ),
    }


NETS = _nets()


def explicit_jacobian(model, x):
    """``(n, k, P)`` Jacobian of the logits w.r.t. the trainable parameters, flattened."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    was = model.training
    model.eval()
    rows = []
    try:
        for xi in x:

            def f(*ps, xi=xi):
                return torch.func.functional_call(
                    model, {n: q for (n, _), q in zip(named, ps)}, (xi[None],)
                )[0]

            jac = torch.autograd.functional.jacobian(f, tuple(p.detach() for _, p in named))
            rows.append(torch.cat([j.reshape(j.shape[0], -1) for j in jac], 1))
    finally:
        model.train(was)
    return torch.stack(rows)


_JAC_CACHE: dict = {}


def _cached_jacobian(model, x):
    """Explicit Jacobians are the slow part of these tests: reuse them while nothing changed."""
    key = (
        id(model),
        x.data_ptr(),
        tuple(x.shape),
        tuple((n, p.requires_grad, p._version) for n, p in model.named_parameters()),
        tuple(b._version for b in model.buffers()),
    )
    if key not in _JAC_CACHE:
        _JAC_CACHE[key] = explicit_jacobian(model, x)
    return _JAC_CACHE[key]


def reference(model, x1, x2, kind):
    j1 = _cached_jacobian(model, x1)
    j2 = j1 if x2 is None else _cached_jacobian(model, x2)
    full = torch.einsum("akp,bcp->abkc", j1, j2)
    k = j1.shape[1]
    return {"full": full, "trace": torch.einsum("abkk->ab", full), "pseudo": full.sum((2, 3)) / k}[
        kind
    ]


def assert_close(a, b, rtol=RTOL):
    scale = b.abs().max().clamp_min(1e-30)
    err = float((a - b).abs().max() / scale)
    assert err <= rtol, f"relative error {err:.3g}"


def test_registry():
    assert set(available_kinds()) == {"pseudo", "trace", "full", "last_layer"}
    assert set(available_implementations()) == {"auto", "jacobian", "structured"}


@pytest.mark.parametrize("kind", ["pseudo", "trace"])
def test_shared_sensitivities_replace_their_gram(monkeypatch, kind):
    """The last layer's δ is the same row for every input (pseudo: ``1/√k``; trace: unit rows),
    so its δ-Gram is one number; hidden layers' δ differ per input and keep their Gram. Either
    way the kernel equals the explicit-Jacobian one."""
    found = []
    real = structured._shared_sensitivity_product

    def spy(d1, d2):
        found.append(real(d1, d2))
        return found[-1]

    monkeypatch.setattr(structured, "_shared_sensitivity_product", spy)
    model, x1, x2 = NETS["mlp"]
    got = empirical_ntk(model, x1, x2, kind=kind, implementation="structured")
    assert_close(got, reference(model, x1, x2, kind))
    want = 1.0 if kind == "pseudo" else 3.0  # Σ_c (1/√k)² over k = 3 outputs; Σ_c e_c·e_c
    assert [v for v in found if v is not None] == [pytest.approx(want)]
    assert found.count(None) == 2  # the two hidden layers


@pytest.mark.parametrize("net", ["mlp", "cnn"])
@pytest.mark.parametrize("kind", ["full", "trace", "pseudo"])
@pytest.mark.parametrize("impl", IMPLS)
def test_matches_explicit_jacobian(net, kind, impl):
    model, x1, x2 = NETS[net]
    got = empirical_ntk(model, x1, kind=kind, implementation=impl)
    assert got.dtype == torch.float64
    assert_close(got, reference(model, x1, None, kind))
    got12 = empirical_ntk(model, x1, x2, kind=kind, implementation=impl)
    assert_close(got12, reference(model, x1, x2, kind))


@pytest.mark.parametrize("mode", ["factor", "grad"])
@pytest.mark.parametrize("kind", ["full", "trace", "pseudo"])
def test_structured_conv_modes(monkeypatch, mode, kind):
    """Both per-layer routes for convolutions (position factorisation, per-example gradients)."""
    monkeypatch.setattr(structured, "FORCE_MODE", mode)
    model, x1, x2 = NETS["cnn"]
    assert_close(
        empirical_ntk(model, x1, x2, kind=kind, implementation="structured"),
        reference(model, x1, x2, kind),
    )


@pytest.mark.parametrize("net", ["mlp", "cnn"])
@pytest.mark.parametrize("impl", IMPLS)
def test_symmetric_psd_and_kind_identities(net, impl):
    model, x1, _ = NETS[net]
    full = empirical_ntk(model, x1, kind="full", implementation=impl)
    n, _, k, _ = full.shape
    mat = full.permute(0, 2, 1, 3).reshape(n * k, n * k)
    assert torch.equal(mat, mat.T)
    eig = torch.linalg.eigvalsh(mat)
    assert eig.min() >= -1e-8 * eig.max()
    pseudo = empirical_ntk(model, x1, kind="pseudo", implementation=impl)
    trace = empirical_ntk(model, x1, kind="trace", implementation=impl)
    assert_close(pseudo, full.sum((2, 3)) / k)
    assert_close(trace, torch.einsum("abkk->ab", full))
    for kern in (pseudo, trace):
        assert torch.equal(kern, kern.T)
        ev = torch.linalg.eigvalsh(kern)
        assert ev.min() >= -1e-8 * ev.max()


@pytest.mark.parametrize("net", ["mlp", "cnn"])
@pytest.mark.parametrize("impl", ["jacobian", "structured"])
@pytest.mark.parametrize("kind", ["full", "pseudo"])
def test_blocked_equals_unblocked(net, impl, kind):
    """A tiny budget forces blocks of 1-3 examples (odd sizes, ragged last block)."""
    model, x1, x2 = NETS[net]
    whole = empirical_ntk(model, x1, kind=kind, implementation=impl)
    for budget in (1, 3000):
        assert_close(
            empirical_ntk(model, x1, kind=kind, implementation=impl, max_memory=budget),
            whole,
            1e-12,
        )
    whole12 = empirical_ntk(model, x1, x2, kind=kind, implementation=impl)
    assert_close(
        empirical_ntk(model, x1, x2, kind=kind, implementation=impl, max_memory=3000),
        whole12,
        1e-12,
    )


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("kind", ["pseudo", "full", "last_layer"])
def test_model_state_untouched(impl, kind):
    model, x1, _ = NETS["cnn"]
    model.train()
    model.bn1d.eval()  # mixed modes must come back as they were
    before = {n: b.clone() for n, b in model.named_buffers()}
    params = {n: p.detach().clone() for n, p in model.named_parameters()}
    empirical_ntk(model, x1, kind=kind, implementation=impl)
    for n, b in model.named_buffers():
        assert torch.equal(b, before[n]), n
    for n, p in model.named_parameters():
        assert torch.equal(p, params[n]) and p.grad is None, n
    assert model.training and model.bn.training and not model.bn1d.training
    model.eval()


@pytest.mark.parametrize("impl", IMPLS)
def test_dropout_off_in_train_mode(impl):
    model, x1, _ = NETS["mlp"]
    model.train()
    a = empirical_ntk(model, x1, kind="pseudo", implementation=impl)
    model.eval()
    assert_close(a, reference(model, x1, None, "pseudo"))


@pytest.mark.parametrize("impl", IMPLS)
def test_x2_given_equals_symmetric(impl):
    model, x1, _ = NETS["cnn"]
    for kind in ("full", "trace", "pseudo", "last_layer"):
        assert_close(
            empirical_ntk(model, x1, x1.clone(), kind=kind, implementation=impl),
            empirical_ntk(model, x1, kind=kind, implementation=impl),
            1e-12,
        )


@pytest.mark.parametrize("impl", IMPLS)
def test_frozen_parameters_excluded(impl):
    torch.manual_seed(3)
    model = _randomise_bn(TinyCNN().double())
    x = torch.randn(4, 2, 6, 6, dtype=torch.float64)
    model.c1.weight.requires_grad_(False)
    model.bn.bias.requires_grad_(False)
    model.classifier.bias.requires_grad_(False)
    got = empirical_ntk(model, x, kind="full", implementation=impl)
    assert_close(got, reference(model, x, None, "full"))
    for p in model.parameters():
        p.requires_grad_(False)
    zero = empirical_ntk(model, x, kind="trace", implementation=impl)
    assert torch.count_nonzero(zero) == 0


@pytest.mark.parametrize("impl", IMPLS)
def test_return_outputs(impl):
    model, x1, x2 = NETS["cnn"]
    with torch.no_grad():
        f1_ref, f2_ref = model(x1), model(x2)
    kern, f1, f2 = empirical_ntk(model, x1, kind="trace", implementation=impl, return_outputs=True)
    assert f2 is f1 and kern.shape == (5, 5)
    assert torch.allclose(f1, f1_ref, rtol=1e-12, atol=1e-12)
    kern, f1, f2 = empirical_ntk(
        model, x1, x2, kind="full", implementation=impl, return_outputs=True, max_memory=2000
    )
    assert kern.shape == (5, 3, 3, 3)
    assert torch.allclose(f1, f1_ref, rtol=1e-12, atol=1e-12)
    assert torch.allclose(f2, f2_ref, rtol=1e-12, atol=1e-12)


def test_last_layer():
    model, x1, x2 = NETS["mlp"]
    with torch.no_grad():
        a1, a2 = model.body(x1), model.body(x2)
    assert_close(empirical_ntk(model, x1, x2, kind="last_layer"), a1 @ a2.T + 1)
    # It equals the pseudo-NTK restricted to the classifier's parameters.
    for n, p in model.named_parameters():
        p.requires_grad_(n.startswith("classifier"))
    try:
        assert_close(
            empirical_ntk(model, x1, x2, kind="last_layer"),
            empirical_ntk(model, x1, x2, kind="pseudo", implementation="jacobian"),
        )
    finally:
        for p in model.parameters():
            p.requires_grad_(True)


def test_last_layer_falls_back_to_last_linear():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2)).double()
    x = torch.randn(5, 3, dtype=torch.float64)
    with torch.no_grad():
        a = model[1](model[0](x))
    assert_close(empirical_ntk(model, x, kind="last_layer"), a @ a.T + 1)


@pytest.mark.parametrize("net", ["mlp", "cnn"])
@pytest.mark.parametrize("impl", IMPLS)
def test_float32_model_gives_float64_grams(net, impl):
    """dtype=float64 means the Grams themselves are float64: the kernel of a float32 model equals
    the float64 computation on the same weights to ~1e-12, far below float32 rounding (~1e-7), so
    a float32 featurisation summed in float64 fails this test."""
    model64, x64, _ = NETS[net]
    model32 = copy.deepcopy(model64).float()
    x32 = x64.float()
    want = empirical_ntk(model64.double(), x32.double(), kind="full", implementation=impl)
    got = empirical_ntk(model32, x32, kind="full", implementation=impl)
    assert got.dtype == torch.float64
    assert_close(got, want, 1e-12)
    # the caller's model is left in its own dtype
    assert all(p.dtype == torch.float32 for p in model32.parameters())
    # dtype=float32 is a float32 computation: close to, but measurably not, the float64 kernel
    k32 = empirical_ntk(model32, x32, kind="full", implementation=impl, dtype=torch.float32)
    assert k32.dtype == torch.float32
    err = float((k32.double() - want).abs().max() / want.abs().max())
    assert 1e-12 < err < 1e-4


def test_float32_model_sigma_matches_float64_model():
    """Σ = Θ_SS − Θ_SL K⁻¹ Θ_LS is a cancellation: with float32 Grams it loses digits. From a
    float32 model with dtype=float64 it must equal Σ from the same weights in float64."""
    from ntkal.lookahead import Lookahead

    torch.manual_seed(3)
    model32 = nn.Sequential(
        nn.Linear(20, 64), nn.Tanh(), nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 4)
    )
    x = torch.randn(70, 20)
    xl, xs, yl = x[:40], x[40:], torch.randint(0, 4, (40,))
    la32 = Lookahead.fit(model32, xl, yl, xs, kernel="pseudo")
    la64 = Lookahead.fit(
        copy.deepcopy(model32).double(), xl.double(), yl, xs.double(), kernel="pseudo"
    )
    s32, s64 = la32.sigma, la64.sigma
    assert float((s32 - s64).abs().max() / s64.abs().max()) < 1e-10


def test_weight_sharing_and_unknown_layers_fall_back_exactly():
    """Tied weights, a module called twice and a LayerNorm go through the torch.func fallback."""

    class Odd(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(4, 4)
            self.norm = nn.LayerNorm(4)
            self.classifier = nn.Linear(4, 2)
            self.tied = nn.Linear(4, 4)
            self.tied.weight = self.a.weight

        def forward(self, x):
            h = torch.tanh(self.a(x))
            h = torch.tanh(self.a(h))  # called twice
            h = self.norm(self.tied(h))
            return self.classifier(h)

    torch.manual_seed(0)
    model = Odd().double()
    x = torch.randn(4, 4, dtype=torch.float64)
    for kind in ("full", "pseudo"):
        assert_close(
            empirical_ntk(model, x, kind=kind, implementation="structured"),
            reference(model, x, None, kind),
        )


def test_dense_layer_over_positions():
    """nn.Linear applied to (n, T, d) inputs: factorisation summed over positions."""

    class Seq(nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = nn.Linear(3, 4)
            self.classifier = nn.Linear(4, 2)

        def forward(self, x):
            return self.classifier(torch.tanh(self.proj(x)).mean(1))

    torch.manual_seed(0)
    model = Seq().double()
    x = torch.randn(4, 5, 3, dtype=torch.float64)
    for kind in ("full", "trace"):
        assert_close(
            empirical_ntk(model, x, kind=kind, implementation="structured"),
            reference(model, x, None, kind),
        )


class TestErrors:
    def test_unknown_kind_and_implementation(self):
        model, x1, _ = NETS["mlp"]
        with pytest.raises(ValueError, match="kind"):
            empirical_ntk(model, x1, kind="diag")
        with pytest.raises(ValueError, match="implementation"):
            empirical_ntk(model, x1, implementation="fast")

    def test_nan_inputs(self):
        model, x1, _ = NETS["mlp"]
        bad = x1.clone()
        bad[2, 1] = float("nan")
        with pytest.raises(ValueError, match="NaN"):
            empirical_ntk(model, bad)
        with pytest.raises(ValueError, match="NaN"):
            empirical_ntk(model, x1, bad)

    def test_shape_mismatch(self):
        model, x1, _ = NETS["mlp"]
        with pytest.raises(ValueError, match="same per-example shape"):
            empirical_ntk(model, x1, torch.randn(3, 6, dtype=torch.float64))
        with pytest.raises(ValueError, match="cannot be applied"):
            empirical_ntk(model, torch.randn(3, 6, dtype=torch.float64))

    def test_output_not_logits(self):
        model = nn.Sequential(nn.Linear(3, 2), nn.Flatten(0)).double()
        with pytest.raises(ValueError, match="2-D logits"):
            empirical_ntk(model, torch.randn(4, 3, dtype=torch.float64))

    def test_bad_memory(self):
        model, x1, _ = NETS["mlp"]
        with pytest.raises(ValueError, match="max_memory"):
            empirical_ntk(model, x1, max_memory=0)


def test_progress_bar_is_quiet_under_env(monkeypatch, capsys):
    monkeypatch.setenv("NTKAL_QUIET", "1")
    model, x1, _ = NETS["mlp"]
    empirical_ntk(model, x1, progress=True)
    out = capsys.readouterr()
    assert out.out == "" and out.err == ""


def test_empty_inputs():
    model, x1, _ = NETS["mlp"]
    kern, f1, f2 = empirical_ntk(model, x1[:0], x1, kind="full", return_outputs=True)
    assert kern.shape == (0, 6, 3, 3) and f1.shape == (0, 3)
    with torch.no_grad():
        want = model.eval()(x1)
    assert_close(f2, want)  # the non-empty side still gets its logits
    kern, f1, f2 = empirical_ntk(model, x1, x1[:0], kind="pseudo", return_outputs=True)
    assert kern.shape == (6, 0) and f2.shape == (0, 3)
    assert_close(f1, want)
    kern = empirical_ntk(model, x1[:0], kind="pseudo")
    assert kern.shape == (0, 0)


@pytest.mark.parametrize("impl", IMPLS)
def test_works_inside_no_grad(impl):
    """Callers often hold torch.no_grad() (scoring loops); the kernel must not silently vanish."""
    model, x1, x2 = NETS["mlp"]
    with torch.no_grad():
        got = empirical_ntk(model, x1, x2, kind="full", implementation=impl)
    assert_close(got, reference(model, x1, x2, "full"))
