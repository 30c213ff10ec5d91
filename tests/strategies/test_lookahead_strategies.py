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
    return QueryContext(
        model=model, x_candidates=xs, x_labelled=xl, y_labelled=yl, num_classes=3, seed=7
    )


def _with(ctx, **kw):
    fields = dict(
        model=ctx.model,
        x_candidates=ctx.x_candidates,
        x_labelled=ctx.x_labelled,
        y_labelled=ctx.y_labelled,
        num_classes=ctx.num_classes,
        seed=ctx.seed,
    )
    fields.update(kw)
    return QueryContext(**fields)


@pytest.mark.parametrize("score", ["flip", "norm", "expected"])
def test_query_contract_and_finite_scores(ctx, score):
    res = MLMOC(score=score).query(ctx, 5)
    assert res.indices.dtype == np.int64 and len(set(res.indices.tolist())) == 5
    assert res.scores.shape == (24,) and np.isfinite(res.scores).all()
    assert res.scores[res.indices[0]] == res.scores.max()


def test_flip_score_is_brute_force_lookahead(ctx):
    strat = MLMOC(score="flip", block_size=5)
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
    want = sum(
        float(probs[c])
        * float(flip_fraction(la.retrained_predictions(j, c)[None], ref.argmax(1))[0])
        for c in range(3)
    )
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
    seen, labels = [], []
    rng = np.random.default_rng(0)
    for step in range(4):
        pos, score = session.propose()
        assert np.isfinite(score) and pos not in seen
        if step == 0:
            assert pos == batch.indices[0]
        label = int(rng.integers(3))
        session.observe(pos, label)
        seen.append(pos)
        labels.append(label)
    assert session.observed == seen
    with pytest.raises(ValueError, match="already"):
        session.observe(seen[0], 0)
    # the conditioned look-ahead equals a fresh one whose labelled set includes the observed points
    from ntkal.lookahead import Lookahead

    fresh = Lookahead.fit(
        ctx.model,
        torch.cat([ctx.x_labelled, ctx.x_candidates[seen]]),
        torch.cat([ctx.y_labelled, torch.tensor(labels)]),
        ctx.x_candidates,
        eval_size="all",
    )
    la = session.lookahead
    torch.testing.assert_close(la.base_predictions(), fresh.base_predictions(), rtol=0, atol=1e-8)
    live = [j for j in range(ctx.num_candidates) if j not in seen]
    torch.testing.assert_close(
        la.sigma[live][:, live], fresh.sigma[live][:, live], rtol=0, atol=1e-8
    )


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

    cfg = TrainConfig(
        epochs=2,
        batch_size=16,
        lr=0.05,
        momentum=0.9,
        weight_decay=0.0,
        schedule="constant",
        loss="mse",
        seed=0,
    )
    strat = SGDLookahead(finetune=cfg, max_candidates=4)
    res = strat.query(ctx, 2)
    scored = res.info["scored_positions"]
    assert len(scored) == 4 and np.isfinite(res.scores[scored]).all()
    assert np.isneginf(np.delete(res.scores, scored)).all()
    assert set(res.indices.tolist()) <= set(scored.tolist())
    again = strat.query(ctx, 2)
    assert again.indices.tolist() == res.indices.tolist()


# ----------------------------------------------------------------------------- margin screen
def _explicit_flips_and_norms(block, targets, ref_cls):
    preds = block.f_bar_eval.unsqueeze(0) + block.cov.unsqueeze(2) * block.coefficients(
        targets
    ).unsqueeze(1)
    return flip_fraction(preds, ref_cls), output_change(preds, block.f_bar_eval)


def _block(cov, f_bar_eval, f_bar_cand, pivots):
    from ntkal.lookahead import LookaheadBlock

    b = cov.shape[0]
    return LookaheadBlock(
        positions=torch.arange(b),
        cov=cov,
        pivot_evals=pivots,
        pivot_evecs=None,
        f_bar_eval=f_bar_eval,
        f_bar_cand=f_bar_cand,
        f0_eval=f_bar_eval,
        f0_cand=f_bar_cand,
    )


def test_margin_screen_equals_explicit_argmax_random():
    from ntkal.strategies.lookahead_scores import EvalMargins, flips_and_norms

    g = torch.Generator().manual_seed(0)
    for k in (1, 2, 5):
        b, e = 30, 200
        block = _block(
            torch.randn(b, e, generator=g, dtype=torch.float64) * 0.3,
            torch.randn(e, k, generator=g, dtype=torch.float64),
            torch.randn(b, k, generator=g, dtype=torch.float64),
            torch.rand(b, generator=g, dtype=torch.float64) + 0.1,
        )
        ref_cls = torch.randint(0, k, (e,), generator=g)  # a reference that is not argmax f̄
        targets = torch.nn.functional.one_hot(torch.randint(0, k, (b,), generator=g), k).double()
        want = _explicit_flips_and_norms(block, targets, ref_cls)
        assert 0 < float(want[0].mean()) < 1 or k == 1
        # rows (b, e) as gathered, or a transposed view of a held (e, m) Σ
        for cov in (block.cov, block.cov.T.contiguous().T):
            block.cov = cov
            got = flips_and_norms(block, targets, ref_cls, EvalMargins(block.f_bar_eval, ref_cls))
            assert torch.equal(got[0], want[0])
            torch.testing.assert_close(got[1], want[1], rtol=1e-12, atol=0)


def test_margin_screen_exact_on_ties_and_boundaries():
    """Points exactly on the decision boundary (f' ties the reference class: argmax takes the
    first index) and base predictions that already tie must go to the exact test."""
    from ntkal.strategies.lookahead_scores import EvalMargins, flips_and_norms

    # one candidate, coefficient (y - f̄_j) / Σ_jj = [1, 0, 0] - [0, 0, 0] -> coef = [1, 0, 0]
    f_cand = torch.zeros(1, 3, dtype=torch.float64)
    targets = torch.tensor([[1.0, 0.0, 0.0]], dtype=torch.float64)
    f_eval = torch.tensor(
        [
            [0.0, 0.5, 0.0],  # Σ = 0.5 moves class 0 exactly onto class 1: tie
            [0.0, 0.5, 0.0],  # Σ = 0.25: stays
            [0.5, 0.5, 0.0],  # already tied, reference 1 -> argmax 0: a flip
            [0.0, 0.0, 0.0],  # all tied, reference 0 -> argmax 0: no flip
            [0.0, 0.5, 0.0],
        ],  # Σ = -0.5: moves away
        dtype=torch.float64,
    )
    cov = torch.tensor([[0.5, 0.25, 0.0, 0.0, -0.5]], dtype=torch.float64)
    ref_cls = torch.tensor([1, 1, 1, 0, 1])
    block = _block(cov, f_eval, f_cand, torch.ones(1, dtype=torch.float64))
    got = flips_and_norms(block, targets, ref_cls, EvalMargins(f_eval, ref_cls))
    want = _explicit_flips_and_norms(block, targets, ref_cls)
    assert float(want[0][0]) == pytest.approx(2 / 5)
    assert torch.equal(got[0], want[0])


@pytest.mark.parametrize("reference", ["f0", "base"])
def test_sequential_reference(ctx, reference):
    """In a session, flips and pseudo-labels are taken against f0 ("f0", the default: the trained
    network, a function of the weights alone) or f̄_t ("base", the reference code's sequential
    choice); both recomputed here from the dense look-ahead. Neither is the batch-relative
    f0 + (f̄_t − f̄_0), which would depend on when the session started."""
    from ntkal.lookahead import Lookahead

    strat = MLMOC(reference=reference)
    session = strat.begin_sequential(ctx)
    f0 = Lookahead.fit(ctx.model, ctx.x_labelled, ctx.y_labelled, ctx.x_candidates)
    f_bar0, f0_out = f0.base_predictions(), f0.f0_candidates
    for pos, label in [(3, 0), (10, 2), (17, 1)]:
        session.observe(pos, label)
    la = session.lookahead
    f_bar_t = la.base_predictions()
    moved = f0_out + (f_bar_t - f_bar0)

    def explicit(ref):
        out = np.full(ctx.num_candidates, -np.inf)
        for j in range(ctx.num_candidates):
            if j in (3, 10, 17):
                continue
            preds = la.retrained_predictions(j, int(ref[j].argmax()))
            out[j] = float((preds.argmax(1) != ref.argmax(1)).double().mean())
        return out

    want = explicit(f0_out if reference == "f0" else f_bar_t)
    assert not np.allclose(want, explicit(moved))  # the test can tell the references apart
    assert not np.allclose(explicit(f0_out), explicit(f_bar_t))
    live = np.setdiff1d(np.arange(ctx.num_candidates), [3, 10, 17])
    got, _ = strat.score_candidates(la, live)
    np.testing.assert_allclose(got, want[live], rtol=0, atol=1e-12)
    pos, score = session.propose()
    assert score == pytest.approx(want.max()) and want[pos] == pytest.approx(want.max())


@pytest.mark.parametrize("name", ["mlmoc", "eer", "emoc", "vr"])
def test_lookahead_strategies_refuse_unknown_kernels_at_construction(name):
    from ntkal.strategies import get_strategy

    with pytest.raises(ValueError, match=r"kernel must be one of .*'bogus'"):
        get_strategy(name, kernel="bogus")
    with pytest.raises(ValueError, match=r"implementation must be one of .*'fast'"):
        get_strategy(name, implementation="fast")


@pytest.mark.parametrize("reference", ["f0", "base"])
def test_rebuilt_session_proposes_what_a_continuing_one_does(ctx, reference):
    """Same weights, same labels: a session rebuilt with the observed points in L proposes the
    same as the session that observed them (the learner rebuilds whenever a taught point is
    outside its session, so proposals must not depend on when that happened)."""
    strat = MLMOC(reference=reference)
    agree = 0
    for trial in range(6):
        rng = np.random.default_rng(trial)
        session = strat.begin_sequential(ctx)
        seen, labels = [], []
        for _ in range(2):
            pos, _ = session.propose()
            seen.append(pos)
            labels.append(int(rng.integers(3)))
            session.observe(pos, labels[-1])
        pos_continuing, _ = session.propose()
        rest = np.setdiff1d(np.arange(ctx.num_candidates), seen)
        rebuilt = strat.begin_sequential(
            _with(
                ctx,
                x_candidates=ctx.x_candidates[rest],
                x_labelled=torch.cat([ctx.x_labelled, ctx.x_candidates[seen]]),
                y_labelled=torch.cat([ctx.y_labelled, torch.tensor(labels)]),
            )
        )
        pos_rebuilt, _ = rebuilt.propose()
        agree += int(rest[pos_rebuilt] == pos_continuing)
    assert agree == 6
