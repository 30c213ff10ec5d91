"""Closed-form look-ahead (Mohamadi et al., NeurIPS 2022) against from-scratch kernel regression."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from ntkal.lookahead import DenseLookahead, Lookahead

torch.set_default_dtype(torch.float32)
F64 = torch.float64


# ----------------------------------------------------------------------------- helpers
def _jacobians(n_l=6, n_s=9, k=3, p=80, seed=0):
    """Random feature maps J (N, k, P): the eNTK of a model linear in its parameters."""
    g = torch.Generator().manual_seed(seed)
    j = torch.randn(n_l + n_s, k, p, generator=g, dtype=F64)
    f0 = torch.randn(n_l + n_s, k, generator=g, dtype=F64)
    y = torch.randint(0, k, (n_l,), generator=g)
    return j, f0, torch.nn.functional.one_hot(y, k).to(F64)


def _kernels(j, n_l, block):
    if block:
        theta = torch.einsum("acp,bdp->abcd", j, j)
    else:
        s = j.sum(1) / j.shape[1] ** 0.5
        theta = s @ s.T
    return theta[:n_l, :n_l], theta[n_l:, :n_l], theta[n_l:, n_l:], theta


def _resolve(theta, f0, targets, train_idx, test_idx, block):
    """Kernel regression from scratch: f0(T) + Θ(T, A) Θ(A, A)⁻¹ (Y_A − f0(A))."""
    k = f0.shape[1]
    a, t = torch.as_tensor(train_idx), torch.as_tensor(test_idx)
    r = targets - f0[a]
    if block:
        kaa = theta[a][:, a].permute(0, 2, 1, 3).reshape(len(a) * k, len(a) * k)
        kta = theta[t][:, a].permute(0, 2, 1, 3).reshape(len(t) * k, len(a) * k)
        return f0[t] + (kta @ torch.linalg.solve(kaa, r.reshape(-1))).reshape(len(t), k)
    kaa, kta = theta[a][:, a], theta[t][:, a]
    return f0[t] + kta @ torch.linalg.solve(kaa, r)


def _build(block, n_l=6, n_s=9, k=3, p=80, seed=0, **kw):
    j, f0, y = _jacobians(n_l, n_s, k, p, seed)
    tll, tsl, tss, theta = _kernels(j, n_l, block)
    la = Lookahead.from_kernels(tll, tsl, tss, f0[:n_l], f0[n_l:], y, **kw)
    return la, theta, f0, y


# ----------------------------------------------------------------------------- maths
@pytest.mark.parametrize("block", [False, True], ids=["scalar", "full"])
def test_base_predictions_equal_kernel_regression(block):
    la, theta, f0, y = _build(block)
    want = _resolve(theta, f0, y, range(6), range(6, 15), block)
    torch.testing.assert_close(la.base_predictions(), want, rtol=0, atol=1e-8)


@pytest.mark.parametrize("block", [False, True], ids=["scalar", "full"])
def test_retrained_equals_resolve_and_interpolates(block):
    n_l, n_s, k = 6, 9, 3
    la, theta, f0, y = _build(block, n_l, n_s, k)
    for j, label in [(0, 1), (4, 2), (8, 0)]:
        y_new = torch.cat([y, torch.nn.functional.one_hot(torch.tensor([label]), k).to(F64)])
        want = _resolve(
            theta, f0, y_new, list(range(n_l)) + [n_l + j], range(n_l, n_l + n_s), block
        )
        got = la.retrained_predictions(j, label)
        torch.testing.assert_close(got, want, rtol=0, atol=1e-8)
        torch.testing.assert_close(got[j], y_new[-1], rtol=0, atol=1e-8)
    # a real-valued target vector
    vec = torch.tensor([0.3, -1.2, 2.0], dtype=F64)
    want = _resolve(
        theta,
        f0,
        torch.cat([y, vec[None]]),
        list(range(n_l)) + [n_l + 2],
        range(n_l, n_l + n_s),
        block,
    )
    torch.testing.assert_close(la.retrained_predictions(2, vec), want, rtol=0, atol=1e-8)


@pytest.mark.parametrize("block", [False, True], ids=["scalar", "full"])
def test_batch_matches_single_and_chunking(block):
    la, *_ = _build(block)
    js = np.array([3, 0, 8, 3, 5])
    ys = np.array([2, 1, 0, 0, 1])
    full = la.retrained_predictions_batch(js, ys)
    chunked = la.retrained_predictions_batch(js, ys, block_size=2)
    assert full.shape == (5, 9, 3)
    torch.testing.assert_close(full, chunked, rtol=0, atol=1e-12)
    for b, (j, c) in enumerate(zip(js, ys)):
        torch.testing.assert_close(
            full[b], la.retrained_predictions(int(j), int(c)), rtol=0, atol=1e-12
        )


@pytest.mark.parametrize("block", [False, True], ids=["scalar", "full"])
def test_sequential_condition_equals_batch_resolve(block):
    n_l, n_s, k = 6, 9, 3
    la, theta, f0, y = _build(block, n_l, n_s, k)
    steps = [(2, 1), (7, 0), (4, 2), (0, 0)]
    train, targets = list(range(n_l)), [y]
    for j, label in steps:
        la.condition(j, label)
        train.append(n_l + j)
        targets.append(torch.nn.functional.one_hot(torch.tensor([label]), k).to(F64))
        want = _resolve(theta, f0, torch.cat(targets), train, range(n_l, n_l + n_s), block)
        torch.testing.assert_close(la.base_predictions(), want, rtol=0, atol=1e-8)
    assert la.conditioned == [2, 7, 4, 0]
    # a look-ahead from the conditioned state equals the re-solve with one more point
    want = _resolve(
        theta,
        f0,
        torch.cat(targets + [torch.eye(k, dtype=F64)[[1]]]),
        train + [n_l + 5],
        range(n_l, n_l + n_s),
        block,
    )
    torch.testing.assert_close(la.retrained_predictions(5, 1), want, rtol=0, atol=1e-8)
    with pytest.raises(ValueError, match="already"):
        la.condition(2, 0)


def test_ridge_adds_relative_diagonal():
    j, f0, y = _jacobians()
    tll, tsl, tss, _theta = _kernels(j, 6, block=False)
    ridge = 0.1
    la = Lookahead.from_kernels(tll, tsl, tss, f0[:6], f0[6:], y, ridge=ridge)
    kreg = tll + ridge * tll.diagonal().mean() * torch.eye(6, dtype=F64)
    want = f0[6:] + tsl @ torch.linalg.solve(kreg, y - f0[:6])
    torch.testing.assert_close(la.base_predictions(), want, rtol=0, atol=1e-10)
    assert la.jitter == 0.0


@pytest.mark.parametrize("block", [False, True], ids=["scalar", "full"])
def test_ridge_enters_sigma(block):
    """Σ = Θ_SS − Θ_SL (K + λ·mean(diag K)·I)⁻¹ Θ_LS: the same regularised K as f̄ (the
    look-ahead retraining keeps the ridge on L and fits the new point exactly)."""
    n, m, k = 6, 9, 3
    j, f0, y = _jacobians(n, m, k)
    tll, tsl, tss, _theta = _kernels(j, n, block)
    ridge = 0.3
    la = Lookahead.from_kernels(tll, tsl, tss, f0[:n], f0[n:], y, ridge=ridge)
    flat = (
        (lambda t: t.permute(0, 2, 1, 3).reshape(t.shape[0] * k, t.shape[1] * k))
        if block
        else (lambda t: t)
    )
    kll = flat(tll)
    kreg = kll + ridge * kll.diagonal().mean() * torch.eye(kll.shape[0], dtype=F64)
    want = flat(tss) - flat(tsl) @ torch.linalg.solve(kreg, flat(tsl).T)
    got = flat(la.sigma) if block else la.sigma
    torch.testing.assert_close(got, want, rtol=0, atol=1e-10)
    no_ridge = flat(tss) - flat(tsl) @ torch.linalg.solve(kll, flat(tsl).T)
    assert float((want - no_ridge).abs().max()) > 1e-3  # the ridge is visible in Σ


def test_singular_kernel_is_least_squares_not_jitter():
    """A duplicate labelled point with another label makes Θ(L, L) singular: the fit is the
    minimum-norm least-squares one (the pseudo-inverse), which averages the two targets, with no
    jitter and rank n − 1."""
    j, f0, y = _jacobians()
    j[1], f0[1] = j[0], f0[0]  # duplicate labelled point -> singular Θ(L, L)
    y = y.clone()
    y[1] = torch.roll(y[0], 1)
    tll, tsl, tss, _ = _kernels(j, 6, block=False)
    la = Lookahead.from_kernels(tll, tsl, tss, f0[:6], f0[6:], y)
    assert la.jitter == 0.0 and la.rank == 5
    want = f0[6:] + tsl @ torch.linalg.pinv(tll, rtol=1e-10, hermitian=True) @ (y - f0[:6])
    torch.testing.assert_close(la.base_predictions(), want, rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("block", [False, True], ids=["scalar", "full"])
def test_near_duplicate_candidates_are_clamped_not_nan(block):
    n_l, n_s, k = 6, 9, 3
    j, f0, y = _jacobians(n_l, n_s, k)
    j[n_l + 3] = j[n_l + 2]  # exact duplicate candidates
    j[n_l + 5] = j[1]  # candidate equal to a labelled point
    f0[n_l + 3] = f0[n_l + 2]
    tll, tsl, tss, _ = _kernels(j, n_l, block)
    with pytest.warns(RuntimeWarning, match="clamped"):
        la = Lookahead.from_kernels(tll, tsl, tss, f0[:n_l], f0[n_l:], y)
    assert la.num_clamped >= 1
    preds = la.retrained_predictions_batch(np.arange(n_s), np.zeros(n_s, dtype=np.int64))
    assert torch.isfinite(preds).all()
    # conditioning on one of the duplicates makes its twin clamped, still finite
    la.condition(2, 1)
    assert la.num_clamped >= 1
    assert torch.isfinite(
        la.retrained_predictions_batch(np.arange(n_s), np.ones(n_s, dtype=np.int64))
    ).all()


def test_empty_labelled_set_is_prior():
    j, f0, _ = _jacobians(0, 5, 3)
    _, _, tss, _ = _kernels(j, 0, block=False)
    la = Lookahead.from_kernels(
        torch.zeros(0, 0), torch.zeros(5, 0), tss, torch.zeros(0, 3), f0, torch.zeros(0, 3)
    )
    torch.testing.assert_close(la.base_predictions(), f0)
    got = la.retrained_predictions(1, 2)
    want = f0 + tss[:, 1:2] / tss[1, 1] * (torch.eye(3, dtype=F64)[2] - f0[1])
    torch.testing.assert_close(got, want, rtol=0, atol=1e-10)


def test_input_validation():
    la, *_ = _build(False)
    with pytest.raises(IndexError):
        la.retrained_predictions(99, 0)
    with pytest.raises(ValueError):
        la.retrained_predictions(0, 7)
    with pytest.raises(ValueError):
        Lookahead.from_kernels(
            torch.eye(3),
            torch.zeros(2, 4),
            torch.eye(2),
            torch.zeros(3, 2),
            torch.zeros(2, 2),
            torch.zeros(3, 2),
        )
    bad = torch.eye(3)
    bad[0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        Lookahead.from_kernels(
            bad,
            torch.zeros(2, 3),
            torch.eye(2),
            torch.zeros(3, 2),
            torch.zeros(2, 2),
            torch.zeros(3, 2),
        )


# ----------------------------------------------------------------------------- the linearised model
class _TinyNet(nn.Module):
    def __init__(self, d=4, h=7, k=3):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(d, h), nn.Tanh())
        self.classifier = nn.Linear(h, k)

    def embed(self, x):
        return self.body(x)

    def forward(self, x):
        return self.classifier(self.embed(x))


def _explicit_jacobian(model, x):
    """J (N, k, P) by torch.autograd.functional.jacobian over the flattened parameters."""
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    params = [p.detach() for p in model.parameters() if p.requires_grad]
    shapes = [p.shape for p in params]
    flat = torch.cat([p.reshape(-1) for p in params])

    def f(theta):
        out, i = {}, 0
        for name, shp in zip(names, shapes):
            n = int(np.prod(shp))
            out[name] = theta[i : i + n].view(shp)
            i += n
        return torch.func.functional_call(model, out, (x,))

    jac = torch.autograd.functional.jacobian(f, flat)  # (N, k, P)
    return jac, flat


def _tiny_setup(seed=0, n_l=5, n_s=6):
    torch.manual_seed(seed)
    model = _TinyNet().double().eval()
    x = torch.randn(n_l + n_s, 4, dtype=F64)
    y = torch.randint(0, 3, (n_l,))
    return model, x[:n_l], y, x[n_l:]


@pytest.mark.parametrize("kind", ["pseudo", "full", "trace"])
def test_fit_kernel_matches_explicit_jacobians(kind):
    model, xl, yl, xs = _tiny_setup()
    la = Lookahead.fit(model, xl, yl, xs, kernel=kind)
    jac, _ = _explicit_jacobian(model, torch.cat([xl, xs]))
    if kind == "full":
        theta = torch.einsum("acp,bdp->abcd", jac, jac)
    elif kind == "trace":
        theta = torch.einsum("acp,bcp->ab", jac, jac)
    else:
        s = jac.sum(1) / 3**0.5
        theta = s @ s.T
    la_ref = Lookahead.from_kernels(
        theta[:5, :5],
        theta[5:, :5],
        theta[5:, 5:],
        model(xl).detach(),
        model(xs).detach(),
        torch.nn.functional.one_hot(yl, 3).double(),
    )
    torch.testing.assert_close(la.f0_candidates, model(xs).detach(), rtol=0, atol=1e-10)
    torch.testing.assert_close(la.sigma, la_ref.sigma, rtol=1e-8, atol=1e-8)
    torch.testing.assert_close(
        la.base_predictions(), la_ref.base_predictions(), rtol=1e-7, atol=1e-7
    )


@pytest.mark.parametrize("block", [False, True], ids=["pseudo", "full"])
def test_base_prediction_is_linearised_network_gradient_flow(block):
    """f̄ equals the limit of MSE gradient flow on the network's first-order Taylor expansion: the
    minimum-norm parameter update θ* − θ0 = J_Lᵀ K⁻¹ R, evaluated as f_lin(S) = f0(S) + J_S (θ* − θ0)."""
    model, xl, yl, xs = _tiny_setup(seed=1)
    k, n = 3, xl.shape[0]
    jac, _ = _explicit_jacobian(model, torch.cat([xl, xs]))
    f0 = model(torch.cat([xl, xs])).detach()
    y1 = torch.nn.functional.one_hot(yl, k).double()
    r = y1 - f0[:n]
    if block:
        jl = jac[:n].reshape(n * k, -1)
        js = jac[n:].reshape(-1, k, jac.shape[-1])
        step = jl.T @ torch.linalg.solve(jl @ jl.T, r.reshape(-1))  # θ* − θ0
        f_lin = f0[n:] + torch.einsum("scp,p->sc", js, step)
        theta = torch.einsum("acp,bdp->abcd", jac, jac)
    else:
        # pseudo-NTK linearisation: every output c moves along ∇s with its own parameter copy
        s = jac.sum(1) / k**0.5
        step = s[:n].T @ torch.linalg.solve(s[:n] @ s[:n].T, r)  # (P, k)
        f_lin = f0[n:] + s[n:] @ step
        theta = s @ s.T
    la = Lookahead.from_kernels(theta[:n, :n], theta[n:, :n], theta[n:, n:], f0[:n], f0[n:], y1)
    torch.testing.assert_close(la.base_predictions(), f_lin, rtol=0, atol=1e-8)
    # and the linear model trained this way really fits L
    if block:
        torch.testing.assert_close(f0[:n] + (jl @ step).reshape(n, k), y1, rtol=0, atol=1e-8)
    # the same through the kernel engines
    la_fit = Lookahead.fit(model, xl, yl, xs, kernel="full" if block else "pseudo")
    torch.testing.assert_close(la_fit.base_predictions(), f_lin, rtol=1e-7, atol=1e-7)


def test_fit_on_network_retraining_matches_parameter_space_solve():
    model, xl, yl, xs = _tiny_setup(seed=2)
    n, k = xl.shape[0], 3
    la = Lookahead.fit(model, xl, yl, xs, kernel="full")
    jac, _ = _explicit_jacobian(model, torch.cat([xl, xs, xs[[3]]]))
    f0 = model(torch.cat([xl, xs])).detach()
    # linearised network retrained on L ∪ {(x_3, class 2)} in parameter space
    y_aug = torch.cat([torch.nn.functional.one_hot(yl, k).double(), torch.eye(k, dtype=F64)[[2]]])
    ja = torch.cat([jac[:n], jac[-1:]]).reshape(-1, jac.shape[-1])
    r = y_aug - torch.cat([f0[:n], f0[n + 3 : n + 4]])
    step = ja.T @ torch.linalg.solve(ja @ ja.T, r.reshape(-1))
    f_lin = f0[n:] + torch.einsum("scp,p->sc", jac[n:-1], step)
    torch.testing.assert_close(la.retrained_predictions(3, 2), f_lin, rtol=1e-7, atol=1e-7)


# ----------------------------------------------------------------------------- property
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


@settings(max_examples=25, deadline=None)
@given(
    n_l=st.integers(0, 5),
    n_s=st.integers(1, 6),
    k=st.integers(1, 3),
    block=st.booleans(),
    seed=st.integers(0, 10_000),
    j=st.integers(0, 5),
    label=st.integers(0, 2),
)
def test_lookahead_equals_resolve_property(n_l, n_s, k, block, seed, j, label):
    j, label = j % n_s, label % k
    la, theta, f0, y = _build(block, n_l, n_s, k, p=(n_l + n_s) * k + 5, seed=seed)
    y_new = torch.cat([y, torch.eye(k, dtype=F64)[[label]]])
    want = _resolve(theta, f0, y_new, list(range(n_l)) + [n_l + j], range(n_l, n_l + n_s), block)
    got = la.retrained_predictions(j, label)
    scale = 1.0 + float(want.abs().max())
    assert torch.allclose(got, want, rtol=0, atol=1e-7 * scale)
    assert torch.isfinite(got).all()


@pytest.mark.parametrize("block", [False, True], ids=["scalar", "full"])
def test_iter_blocks_retrained_equals_from_scratch_resolve(block):
    """LookaheadBlock.retrained (what criteria consume) is the re-solve on L ∪ {(x_j, y)}, for
    blocks that split the candidates unevenly, after a sequential condition step too."""
    la, theta, f0, y = _build(block, ridge=0.0)
    k, n_l = 3, 6
    ys = torch.tensor([1, 0, 2, 2, 1, 0, 1, 2, 0])
    onehot = torch.nn.functional.one_hot(ys, k).to(F64)
    for conditioned in ([], [4]):
        for j in conditioned:
            la.condition(j, int(ys[j]))
        blocks = list(la.iter_blocks(block_size=4))
        assert [b.size for b in blocks] == [4, 4, 1]
        for b in blocks:
            got = b.retrained(onehot[b.positions])
            for t, j in enumerate(b.positions.tolist()):
                if j in conditioned:
                    continue
                train = list(range(n_l)) + [n_l + c for c in conditioned] + [n_l + j]
                targets = torch.cat([y, onehot[conditioned], onehot[j : j + 1]])
                want = _resolve(theta, f0, targets, train, range(n_l, n_l + 9), block)
                torch.testing.assert_close(got[t], want, rtol=0, atol=1e-7)


@pytest.mark.parametrize("block", [False, True], ids=["scalar", "full"])
def test_dense_sigma_built_and_conditioned_in_place(block):
    """Σ lives in the kernel's own memory when the kernel is handed over (Lookahead.fit), is a
    single copy otherwise (never the caller's tensor), and condition() updates it in place."""
    j, f0, y = _jacobians()
    tll, tsl, tss, theta = _kernels(j, 6, block)
    before = theta.clone()
    la = Lookahead.from_kernels(tll, tsl, tss, f0[:6], f0[6:], y)
    assert torch.equal(theta, before)  # the caller's kernel is untouched
    ptr = la._sigma.data_ptr()
    la.condition(2, 1)
    la.condition(5, 0)
    assert la._sigma.data_ptr() == ptr
    if not block:
        owned = DenseLookahead(
            tll.clone(), tsl.clone(), theta[6:, 6:], f0[:6], f0[6:], y, _owned=True
        )
        assert owned._sigma.untyped_storage().data_ptr() == theta.untyped_storage().data_ptr()
        torch.testing.assert_close(
            owned.sigma,
            Lookahead.from_kernels(tll, tsl, before[6:, 6:], f0[:6], f0[6:], y).sigma,
            rtol=0,
            atol=1e-12,
        )
