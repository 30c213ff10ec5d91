"""The closed-form look-ahead against really retraining the (nonlinear) network.

A wide MLP is trained on L with full-batch gradient descent on the MSE loss, then fine-tuned on
L ∪ {(x_j, y)} from those weights. The change of its outputs on S caused by the added point
(fine-tuned-with-point minus fine-tuned-on-L-alone) must match the Lookahead prediction
f^{(j,y)}(S) − f̄(S), and must not match the prediction for a different candidate.
"""

import torch
from torch import nn

from ntkal.kernels import empirical_ntk
from ntkal.lookahead import Lookahead

STEPS = 1000


def _mlp(d, width, k, seed):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(d, width), nn.Tanh(), nn.Linear(width, k)).double()


def _gd(model, x, y_onehot, steps, lr):
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    for _ in range(steps):
        opt.zero_grad()
        loss = 0.5 * ((model(x) - y_onehot) ** 2).sum()
        loss.backward()
        opt.step()
    return model


def _cos(a, b):
    a, b = a.flatten(), b.flatten()
    return float(a @ b / (a.norm() * b.norm()))


def test_lookahead_change_tracks_gradient_descent_on_a_wide_network():
    d, k, width, n, m = 6, 3, 512, 10, 30
    g = torch.Generator().manual_seed(0)
    x_l = torch.randn(n, d, generator=g, dtype=torch.float64)
    y_l = torch.randint(0, k, (n,), generator=g)
    x_s = torch.randn(m, d, generator=g, dtype=torch.float64)
    onehot = torch.nn.functional.one_hot(y_l, k).double()

    net = _mlp(d, width, k, 0)
    # Step size from the largest eigenvalue of the per-class kernel (stable gradient descent).
    lr = 1.0 / float(torch.linalg.eigvalsh(empirical_ntk(net, x_l, kind="pseudo")).max() * k)
    net = _gd(net, x_l, onehot, steps=STEPS, lr=lr)
    la = Lookahead.fit(net, x_l, y_l, x_s, kernel="full")

    def sgd_change(j, label):
        x_aug = torch.cat([x_l, x_s[j : j + 1]])
        y_aug = torch.cat([onehot, torch.nn.functional.one_hot(torch.tensor([label]), k).double()])
        with_point = _gd(_copy(net), x_aug, y_aug, steps=STEPS, lr=lr)
        control = _gd(_copy(net), x_l, onehot, steps=STEPS, lr=lr)
        with torch.no_grad():
            return with_point(x_s) - control(x_s), with_point(x_s[j])

    j, label = 4, int((la.f0_candidates[4].argmax() + 1) % k)  # a label the net disagrees with
    change_sgd, fitted = sgd_change(j, label)
    change_ntk = la.retrained_predictions(j, label) - la.base_predictions()
    other = 17
    change_other = la.retrained_predictions(other, label) - la.base_predictions()

    assert torch.allclose(fitted[label], torch.tensor(1.0, dtype=torch.float64), atol=0.1)
    assert _cos(change_ntk, change_sgd) > 0.98
    assert abs(change_ntk.norm() / change_sgd.norm() - 1) < 0.15
    assert _cos(change_other, change_sgd) < _cos(change_ntk, change_sgd) - 0.2


def _copy(net):
    import copy

    return copy.deepcopy(net)
