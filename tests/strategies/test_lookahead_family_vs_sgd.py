"""EER, EMOC and variance reduction by the eNTK against really fine-tuning a wide network.

A wide MLP is trained on L by full-batch gradient descent on the MSE loss; for every candidate
``x_j`` and every target (each one-hot label, and for variance reduction the zero target) a copy is
fine-tuned on L ∪ {(x_j, target)} from those weights, and the change of its outputs on S against a
copy fine-tuned on L alone gives the real-refit version of each criterion:

* EMOC: Σ_y p(y|x_j) mean_i ‖Δ_SGD(j, y)(x_i)‖₁;
* EER: H(control) − Σ_y p(y|x_j) H(fine-tuned on (x_j, y)), H the mean entropy on S;
* variance reduction: label-free, so there is no "refit" score as such; the refits measure the
  influence of x_j, G_j = Σ[:, j] Σ_jj⁻¹, column c from Δ(j, e_c) − Δ(j, 0), and
  Σ_i tr(G_ij Σ_jj G_ijᵀ) with the kernel's Σ_jj is the variance reduction (checks the Σ[:, j]
  part by real training; Σ_jj itself is not observable from outputs).

The closed-form scores must rank the candidates as the refits do (Spearman) and agree on the top
choice. The fast twin runs in the default suite; the larger case is ``slow``.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr
from torch import nn

from ntkal.kernels import empirical_ntk
from ntkal.lookahead import Lookahead
from ntkal.strategies.expected_error import EER
from ntkal.strategies.output_change import EMOC
from ntkal.strategies.variance_reduction import VarianceReduction

F64 = torch.float64
T = 1.0  # label and error softmax temperature


def _gd(model, x, y, steps, lr):
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    for _ in range(steps):
        opt.zero_grad()
        (0.5 * ((model(x) - y) ** 2).sum()).backward()
        opt.step()
    return model


def _entropy(out):
    logp = torch.log_softmax(out / T, dim=-1)
    return float(-(logp.exp() * logp).sum(dim=-1).mean())


def _compare(d, k, width, n, m, steps, seed=0):
    g = torch.Generator().manual_seed(seed)
    x_l = torch.randn(n, d, generator=g, dtype=F64)
    y_l = torch.randint(0, k, (n,), generator=g)
    x_s = torch.randn(m, d, generator=g, dtype=F64)
    onehot = torch.nn.functional.one_hot(y_l, k).to(F64)
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(d, width), nn.Tanh(), nn.Linear(width, k)).double()
    lr = 1.0 / float(torch.linalg.eigvalsh(empirical_ntk(net, x_l, kind="pseudo")).max() * k)
    net = _gd(net, x_l, onehot, steps, lr)
    la = Lookahead.fit(net, x_l, y_l, x_s, kernel="full")

    with torch.no_grad():
        f0 = net(x_s)
    control = _gd(copy.deepcopy(net), x_l, onehot, steps, lr)
    with torch.no_grad():
        base = control(x_s)

    def refit(j, target):
        model = _gd(
            copy.deepcopy(net),
            torch.cat([x_l, x_s[j : j + 1]]),
            torch.cat([onehot, target.unsqueeze(0)]),
            steps,
            lr,
        )
        with torch.no_grad():
            return model(x_s) - base

    probs = torch.softmax(f0 / T, dim=1)
    pivots = la.posterior_variance()  # (m, k, k)
    emoc, eer, vr = np.zeros(m), np.zeros(m), np.zeros(m)
    for j in range(m):
        zero = refit(j, torch.zeros(k, dtype=F64))
        influence = torch.zeros(m, k, k, dtype=F64)  # G_ij, (i, out, target)
        for c in range(k):
            change = refit(j, torch.eye(k, dtype=F64)[c])
            emoc[j] += float(probs[j, c] * change.abs().sum(dim=1).mean())
            eer[j] += float(probs[j, c] * _entropy(base + change))
            influence[:, :, c] = change - zero
        eer[j] = _entropy(base) - eer[j]
        vr[j] = float(torch.einsum("iab,bc,iac->", influence, pivots[j], influence))
    ntk = {
        "emoc": EMOC(kernel="full", temperature=T).score_candidates(la)[0],
        "eer": EER(kernel="full", temperature=T).score_candidates(la)[0],
        "vr": VarianceReduction(kernel="full").score_candidates(la)[0],
    }
    return ntk, {"emoc": emoc, "eer": eer, "vr": vr}


def _check(ntk, sgd, min_rho):
    for name in ("emoc", "eer", "vr"):
        rho = spearmanr(ntk[name], sgd[name]).statistic
        assert rho >= min_rho, f"{name}: Spearman {rho:.3f} between eNTK and SGD refits"
        assert int(np.argmax(ntk[name])) == int(np.argmax(sgd[name])), name


def test_family_tracks_sgd_refits_small():
    ntk, sgd = _compare(d=5, k=3, width=256, n=8, m=6, steps=300)
    _check(ntk, sgd, min_rho=0.8)


@pytest.mark.slow
def test_family_tracks_sgd_refits_wide():
    # (at width 512, seed 1, Spearman is ~0.9 for all three but EMOC's and EER's top choices
    # differ from the refits': the closed form tracks the ranking, near-ties can swap)
    ntk, sgd = _compare(d=5, k=3, width=1024, n=8, m=10, steps=1000, seed=0)
    _check(ntk, sgd, min_rho=0.85)
