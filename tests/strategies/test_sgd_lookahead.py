"""SGDLookahead against its definition, recomputed here with plain ``ntkal.training.train`` calls:
each candidate is fine-tuned with the network's own predicted label (``score="flip"``/``"norm"``)
or every label weighted by its softmax probability (``score="expected"``)."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from ntkal.strategies import QueryContext, SGDLookahead
from ntkal.training import TrainConfig, predict_logits, train

K = 3
FINETUNE = TrainConfig(
    epochs=3,
    batch_size=8,
    lr=0.2,
    momentum=0.9,
    weight_decay=0.0,
    schedule="constant",
    loss="mse",
    seed=4,
)


def _problem():
    g = torch.Generator().manual_seed(0)
    model = nn.Sequential(nn.Linear(2, 16), nn.Tanh(), nn.Linear(16, K))
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g))
    x_lab = torch.randn(12, 2, generator=g)
    y_lab = torch.arange(12) % K
    x_cand = 2 * torch.randn(7, 2, generator=g)
    return QueryContext(
        model=model,
        x_candidates=x_cand,
        x_labelled=x_lab,
        y_labelled=y_lab,
        num_classes=K,
        seed=0,
        batch_size=4,
    )


def _outputs_after_finetune(ctx, x, y):
    clone = copy.deepcopy(ctx.model)
    train(clone, x, y, FINETUNE, num_classes=K)
    return predict_logits(clone, ctx.x_candidates).double()


def _expected_scores(ctx, score):
    f0 = predict_logits(ctx.model, ctx.x_candidates).double()
    control = _outputs_after_finetune(ctx, ctx.x_labelled, ctx.y_labelled)
    ref = f0.argmax(1)
    flips, norms = [], []
    for j in range(ctx.num_candidates):
        if score == "expected":
            labels, weights = range(K), torch.softmax(f0[j], 0).tolist()
        else:
            labels, weights = [int(ref[j])], [1.0]
        flip = norm = 0.0
        for c, w in zip(labels, weights):
            x = torch.cat([ctx.x_labelled, ctx.x_candidates[j : j + 1]])
            y = torch.cat([ctx.y_labelled, torch.tensor([c])])
            out = _outputs_after_finetune(ctx, x, y)
            flip += w * float((out.argmax(1) != ref).double().mean())
            norm += w * float((out - control).norm(dim=1).sum())
        flips.append(flip)
        norms.append(norm)
    return np.array(flips), np.array(norms), ref


@pytest.mark.parametrize("score", ["flip", "norm", "expected"])
def test_scores_match_fine_tunes_with_the_predicted_or_every_label(score):
    ctx = _problem()
    flips, norms, ref = _expected_scores(ctx, score)
    assert (ref != 0).any() and (ref == 0).any()  # a fixed pseudo-label would differ somewhere
    result = SGDLookahead(finetune=FINETUNE, score=score).query(ctx, 2)
    primary, secondary = (norms, flips) if score == "norm" else (flips, norms)
    np.testing.assert_allclose(result.scores, primary, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(result.info["secondary_scores"], secondary, rtol=1e-6, atol=1e-9)
    best = max(range(len(primary)), key=lambda j: (primary[j], secondary[j]))
    assert int(result.indices[0]) == best


def test_the_pseudo_label_changes_the_score():
    # Fine-tuning with class 0 instead of the predicted class moves the outputs by far more than
    # the float32 noise the comparison above tolerates, so it tells the two apart.
    ctx = _problem()
    f0 = predict_logits(ctx.model, ctx.x_candidates)
    j = int(torch.nonzero(f0.argmax(1) != 0)[0])
    x = torch.cat([ctx.x_labelled, ctx.x_candidates[j : j + 1]])
    outs = [
        _outputs_after_finetune(ctx, x, torch.cat([ctx.y_labelled, torch.tensor([c])]))
        for c in (0, int(f0[j].argmax()))
    ]
    assert float((outs[0] - outs[1]).abs().max()) > 1e-3
