"""MLMOC (eNTK look-ahead) and its SGD ground truth, on a tiny network (Mohamadi et al., 2022)."""
from __future__ import annotations


import numpy as np
import pytest
import torch
from torch import nn

from ntkal.strategies.base import QueryContext

from ntkal.strategies.lookahead import MLMOC, SGDLookahead, flip_fraction, output_change


class _Net(nn.Module):
    def __init__(self, d=2, h=16, k=3):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(d, h), nn.Tanh(), nn.Linear(h, h), nn.Tanh())
        self.classifier = nn.Linear(h, k)

    def embed(self, x):
        return self.body(x)

    def forward(self, x):
        return self.classifier(self.embed(x))


def _blobs(n, seed):
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 3
    centres = torch.tensor([[2.0, 0.0], [-1.0, 1.7], [-1.0, -1.7]])
    return centres[y] + 0.9 * torch.randn(n, 2, generator=g), y


@pytest.fixture(scope="module")
def ctx():
    torch.manual_seed(0)
    model = _Net()
    xl, yl = _blobs(12, 1)
    xs, _ = _blobs(24, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    for _ in range(60):  # a few full-batch MSE steps: a "trained" network
        opt.zero_grad()
        loss = ((model(xl) - torch.nn.functional.one_hot(yl, 3).float()) ** 2).sum(1).mean()
        loss.backward()
        opt.step()
    model.eval()
    return QueryContext(model=model, x_candidates=xs, x_labelled=xl, y_labelled=yl,
                        num_classes=3, seed=7)


def _with(ctx, **kw):
    fields = dict(model=ctx.model, x_candidates=ctx.x_candidates, x_labelled=ctx.x_labelled,
                  y_labelled=ctx.y_labelled, num_classes=ctx.num_classes, seed=ctx.seed)
    fields.update(kw)
    return QueryContext(**fields)


@pytest.mark.parametrize("score", ["flip", "norm", "expected"])
def test_query_contract_and_finite_scores(ctx, score):
    res = MLMOC(score=score).query(ctx, 5)
    assert res.indices.dtype == np.int64 and len(set(res.indices.tolist())) == 5
    assert res.scores.shape == (24,) and np.isfinite(res.scores).all()
    assert res.scores[res.indices[0]] == res.scores.max()


def test_flip_score_is_brute_force_lookahead(ctx):
    strat = MLMOC(score="flip", chunk_size=5)
    res = strat.query(ctx, 3)
    la = strat.lookahead(ctx)
    f0 = la.f0_candidates
    for j in range(ctx.num_candidates):
        pred = la.retrained_predictions(j, int(f0[j].argmax()))
        want = float((pred.argmax(1) != f0.argmax(1)).double().mean())
        assert res.scores[j] == pytest.approx(want)
        norm = float(output_change(pred[None], la.base_predictions())[0])
        assert res.info["secondary_scores"][j] == pytest.approx(norm, rel=1e-9)


def test_expected_score_weights_labels_by_softmax(ctx):
    strat = MLMOC(score="expected", reference="base")
    res = strat.query(ctx, 2)
    la = strat.lookahead(ctx)
    ref = la.base_predictions()
    j = 5
    probs = torch.softmax(ref[j], 0)
    want = sum(float(probs[c]) * float(flip_fraction(la.retrained_predictions(j, c)[None],
                                                     ref.argmax(1))[0]) for c in range(3))
    assert res.scores[j] == pytest.approx(want)


@pytest.mark.parametrize("score", ["flip", "norm"])
def test_choice_invariant_to_candidate_order(ctx, score):
    strat = MLMOC(score=score)
    base = strat.query(ctx, 6)
    perm = np.random.default_rng(3).permutation(ctx.num_candidates)
    res = strat.query(_with(ctx, x_candidates=ctx.x_candidates[perm]), 6)
    assert perm[res.indices].tolist() == base.indices.tolist()
    np.testing.assert_allclose(res.scores, base.scores[perm], rtol=1e-9, atol=1e-12)


def test_seeded_runs_identical(ctx):
    a = MLMOC(kernel="full").query(ctx, 4)
    b = MLMOC(kernel="full").query(ctx, 4)
    assert a.indices.tolist() == b.indices.tolist()
    np.testing.assert_array_equal(a.scores, b.scores)


def test_budget_errors(ctx):
    with pytest.raises(ValueError, match="larger than"):
        MLMOC().query(ctx, 25)
    with pytest.raises(ValueError, match="empty"):
        MLMOC().query(_with(ctx, x_candidates=ctx.x_candidates[:0]), 1)
    with pytest.raises(ValueError, match=">= 1"):
        MLMOC().query(ctx, 0)
    with pytest.raises(ValueError, match="score"):
        MLMOC(score="bogus")


def test_near_duplicate_candidates_score_finite(ctx):
    xs = torch.cat([ctx.x_candidates[:6], ctx.x_candidates[:3], ctx.x_labelled[:2]])
    with pytest.warns(RuntimeWarning, match="clamped"):
        res = MLMOC(score="norm").query(_with(ctx, x_candidates=xs), 4)
    assert np.isfinite(res.scores).all() and res.info["num_clamped"] >= 1


def test_sequential_session(ctx):
    strat = MLMOC()
    batch = strat.query(ctx, 1)
    session = strat.begin_sequential(ctx)
    seen = []
    rng = np.random.default_rng(0)
    for step in range(4):
        pos, score = session.propose()
        assert np.isfinite(score) and pos not in seen
        if step == 0:
            assert pos == batch.indices[0]
        session.observe(pos, int(rng.integers(3)))
        seen.append(pos)
    assert session.observed == seen
    with pytest.raises(ValueError, match="already"):
        session.observe(seen[0], 0)
    # the conditioned look-ahead equals a fresh one whose labelled set includes the observed points
    la = session.lookahead
    assert torch.isfinite(la.base_predictions()).all()


def test_sequential_session_runs_out(ctx):
    small = _with(ctx, x_candidates=ctx.x_candidates[:2])
    session = MLMOC().begin_sequential(small)
    for _ in range(2):
        pos, _ = session.propose()
        session.observe(pos, 0)
    with pytest.raises(ValueError, match="nothing left"):
        session.propose()


def test_sgd_lookahead_runs_and_caps(ctx):
    from ntkal.training import TrainConfig

    cfg = TrainConfig(epochs=2, batch_size=16, lr=0.05, momentum=0.9, weight_decay=0.0,
                      schedule="constant", loss="mse", seed=0)
    strat = SGDLookahead(finetune=cfg, max_candidates=4)
    res = strat.query(ctx, 2)
    scored = res.info["scored_positions"]
    assert len(scored) == 4 and np.isfinite(res.scores[scored]).all()
    assert np.isneginf(np.delete(res.scores, scored)).all()
    assert set(res.indices.tolist()) <= set(scored.tolist())
    again = strat.query(ctx, 2)
    assert again.indices.tolist() == res.indices.tolist()
