"""More labelled points than the kernel's rank: look-ahead equals minimum-norm least-squares
retraining of the linearised network (gradient flow's limit), in every engine and kernel."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from ntkal.kernels import empirical_ntk
from ntkal.lookahead import Lookahead
from ntkal.lookahead.span import step_maps

F64 = torch.float64
ENGINES = ["dense", "streaming"]


def _net(width, d=6, k=3, seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(d, width), nn.Tanh(), nn.Linear(width, k))


def _data(n, m, d=6, k=3, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n + m, d, generator=g)
    return x[:n], torch.randint(0, k, (n,), generator=g), x[n:]


def _features(model, x):
    """[h(x), 1]: the inputs of the last linear layer and its bias (float64)."""
    body = model.double()[:-1]
    with torch.no_grad():
        h = body(x.double())
    return torch.cat([h, torch.ones(len(x), 1, dtype=F64)], 1)


def _least_squares(model, x_train, y_train, x_test):
    """Predictions on x_test after least-squares retraining of the last layer from its weights:
    W = W0 + pinv(A)(Y − A W0), i.e. f0 + A_test pinv(A)(Y − f0(train))."""
    with torch.no_grad():
        f_train, f_test = model.double()(x_train.double()), model.double()(x_test.double())
    a, a_test = _features(model, x_train), _features(model, x_test)
    return f_test + a_test @ torch.linalg.pinv(a) @ (y_train - f_train)


def _onehot(y, k=3):
    return torch.nn.functional.one_hot(torch.as_tensor(y).reshape(-1), k).to(F64)


@pytest.mark.parametrize("engine", ENGINES)
def test_last_layer_look_ahead_is_least_squares_on_the_features(engine):
    """Width 4: rank 5 < n = 12. Base predictions, look-ahead on E, and the residual at x_j
    all equal least squares on [h(x), 1]; the candidate is not interpolated."""
    model = _net(4)
    xl, yl, xc = _data(12, 15)
    la = Lookahead.fit(
        model, xl, yl, xc, kernel="last_layer", engine=engine, eval_size="all", max_memory=10**8
    )
    f_bar = _least_squares(model, xl, _onehot(yl), xc)
    torch.testing.assert_close(la.base_predictions(), f_bar, rtol=1e-7, atol=1e-9)
    for j, label in [(0, 1), (7, 2), (14, 0)]:
        want = _least_squares(
            model, torch.cat([xl, xc[j : j + 1]]), torch.cat([_onehot(yl), _onehot(label)]), xc
        )
        got = la.retrained_predictions(j, label)
        torch.testing.assert_close(got, want, rtol=1e-7, atol=1e-9)
        residual = (_onehot(label)[0] - got[j]).abs().max()
        assert residual > 1e-3, "a candidate in L's span must not be interpolated"


@pytest.mark.parametrize("engine", ENGINES)
def test_last_layer_sequential_conditioning_is_least_squares(engine):
    model = _net(4)
    xl, yl, xc = _data(12, 15)
    la = Lookahead.fit(
        model, xl, yl, xc, kernel="last_layer", engine=engine, eval_size="all", max_memory=10**8
    )
    la.cache_covariance()
    x_train, y_train = xl, _onehot(yl)
    for j, label in [(3, 1), (9, 0)]:
        la.condition(j, label)
        x_train = torch.cat([x_train, xc[j : j + 1]])
        y_train = torch.cat([y_train, _onehot(label)])
        torch.testing.assert_close(
            la.base_predictions(), _least_squares(model, x_train, y_train, xc), rtol=1e-7, atol=1e-9
        )
    want = _least_squares(
        model, torch.cat([x_train, xc[5:6]]), torch.cat([y_train, _onehot(2)]), xc
    )
    torch.testing.assert_close(la.retrained_predictions(5, 2), want, rtol=1e-7, atol=1e-9)


def _pinv_resolve(theta, f, y_train, train, test, k, full):
    """f0 + Θ(test, train) Θ(train, train)⁺ (Y − f0(train)), the min-norm kernel regression."""
    if not full:
        sol = torch.linalg.pinv(theta[train][:, train], rtol=1e-9, hermitian=True) @ (
            y_train - f[train]
        )
        return f[test] + theta[test][:, train] @ sol
    flat = theta.permute(0, 2, 1, 3)
    ktt = flat[train][:, :, train].reshape(len(train) * k, len(train) * k)
    kst = flat[test][:, :, train].reshape(len(test) * k, len(train) * k)
    sol = torch.linalg.pinv(ktt, rtol=1e-9, hermitian=True) @ (y_train - f[train]).reshape(-1)
    return f[test] + (kst @ sol).reshape(len(test), k)


@pytest.mark.parametrize("kernel", ["pseudo", "full"])
@pytest.mark.parametrize("engine", ENGINES)
def test_narrow_network_look_ahead_equals_pinv_resolve(kernel, engine):
    """A 6-2-3 network has 23 parameters: n = 30 labelled points exceed the kernel's rank."""
    model = _net(2)
    xl, yl, xc = _data(30, 12)
    k, n, m = 3, 30, 12
    x = torch.cat([xl, xc])
    theta, f, _ = empirical_ntk(model, x, kind=kernel, dtype=F64, return_outputs=True)
    f = f.to(F64)
    la = Lookahead.fit(
        model, xl, yl, xc, kernel=kernel, engine=engine, eval_size="all", max_memory=10**8
    )
    lab, cand = list(range(n)), list(range(n, n + m))
    full = kernel == "full"
    torch.testing.assert_close(
        la.base_predictions(),
        _pinv_resolve(theta, f, _onehot(yl), lab, cand, k, full),
        rtol=1e-6,
        atol=1e-8,
    )
    for j, label in [(0, 2), (5, 1)]:
        want = _pinv_resolve(
            theta, f, torch.cat([_onehot(yl), _onehot(label)]), lab + [n + j], cand, k, full
        )
        torch.testing.assert_close(la.retrained_predictions(j, label), want, rtol=1e-6, atol=1e-8)


def test_full_kernel_candidate_partly_in_the_span():
    """Full k × k kernel from explicit features: L's six rows span 4 dimensions; candidate 0 has
    one output row in that span and one outside it (the mixed case of the step maps). Look-ahead
    and conditioning equal pinv re-solves."""
    g = torch.Generator().manual_seed(4)
    d, k, n, m = 9, 2, 3, 5
    basis = torch.randn(4, d, generator=g, dtype=F64)
    lab = torch.randn(n * k, 4, generator=g, dtype=F64) @ basis  # rows (point, class)
    cand = torch.randn(m * k, d, generator=g, dtype=F64)
    cand[0] = torch.randn(4, generator=g, dtype=F64) @ basis  # candidate 0, class 0
    phi = torch.cat([lab, cand]).reshape(n + m, k, d)
    theta = torch.einsum("icx,jdx->ijcd", phi, phi)
    f = 0.3 * torch.randn(n + m, k, generator=g, dtype=F64)
    y = _onehot(torch.tensor([0, 1, 1]), k)
    la = Lookahead.from_kernels(theta[:n, :n], theta[n:, :n], theta[n:, n:], f[:n], f[n:], y)
    lab_idx, cand_idx = list(range(n)), list(range(n, n + m))
    torch.testing.assert_close(
        la.base_predictions(),
        _pinv_resolve(theta, f, y, lab_idx, cand_idx, k, True),
        rtol=1e-7,
        atol=1e-9,
    )
    block = next(la.iter_blocks([0]))
    assert block.lev is not None and la.rank == 4
    maps = step_maps(la.posterior_variance([0]), theta[n, n].unsqueeze(0), la.eps, None)
    assert maps.independent.tolist() == [[False, True]]  # in the span, partly
    for label in (0, 1):
        want = _pinv_resolve(
            theta, f, torch.cat([y, _onehot(label, k)]), lab_idx + [n], cand_idx, k, True
        )
        torch.testing.assert_close(la.retrained_predictions(0, label), want, rtol=1e-7, atol=1e-9)
    la.condition(0, 1)
    y1 = torch.cat([y, _onehot(1, k)])
    torch.testing.assert_close(
        la.base_predictions(),
        _pinv_resolve(theta, f, y1, lab_idx + [n], cand_idx, k, True),
        rtol=1e-7,
        atol=1e-9,
    )
    want = _pinv_resolve(
        theta, f, torch.cat([y1, _onehot(0, k)]), lab_idx + [n, n + 3], cand_idx, k, True
    )
    torch.testing.assert_close(la.retrained_predictions(3, 0), want, rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize("name", ["mlmoc", "vr", "emoc", "eer"])
def test_candidate_with_zero_prior_variance_scores_finite(name):
    """A candidate whose features are all zero (Θ_jj = 0) lies in any span: its look-ahead
    moves nothing and every criterion scores it finitely (no division by a zero floor)."""
    from ntkal.strategies import get_strategy

    g = torch.Generator().manual_seed(0)
    feats = torch.randn(10, 4, generator=g, dtype=F64)
    feats[7] = 0.0
    theta = feats @ feats.T
    f = 0.3 * torch.randn(10, 3, generator=g, dtype=F64)
    la = Lookahead.from_kernels(
        theta[:5, :5],
        theta[5:, :5],
        theta[5:, 5:],
        f[:5],
        f[5:],
        _onehot(torch.tensor([0, 1, 2, 0, 1])),
    )
    torch.testing.assert_close(la.retrained_predictions(2, 1), la.base_predictions())
    primary, secondary = get_strategy(name).score_candidates(la)
    assert np.isfinite(primary).all() and np.isfinite(secondary).all()


@pytest.mark.parametrize("engine", ENGINES)
def test_relabel_last_in_the_span_is_least_squares(engine):
    """A candidate in L's span (the leverage step G β): relabelling it after conditioning gives
    the least-squares fit with the new label."""
    model = _net(4)
    xl, yl, xc = _data(12, 15)
    la = Lookahead.fit(
        model, xl, yl, xc, kernel="last_layer", engine=engine, eval_size="all", max_memory=10**8
    )
    la.cache_covariance()
    la.condition(3, 1)
    la.relabel_last(3, 2)
    want = _least_squares(model, torch.cat([xl, xc[3:4]]), torch.cat([_onehot(yl), _onehot(2)]), xc)
    torch.testing.assert_close(la.base_predictions(), want, rtol=1e-7, atol=1e-9)
