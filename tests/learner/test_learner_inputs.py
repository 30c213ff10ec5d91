"""The learner refuses bad input with a message naming it, and leaves the model's modes alone."""

from __future__ import annotations

import warnings

import pytest
import torch
from learner_doubles import Net, blobs, make_learner
from torch import nn

from ntkal.learner import ProbabilityOutputWarning


class _PartlyFrozen(Net):
    """A net whose body is in training mode and whose classifier the user froze in eval mode."""

    def __init__(self):
        super().__init__()
        self.body.append(nn.Dropout(0.5))
        self.train()
        self.classifier.eval()


def _modes(model):
    return {name: m.training for name, m in model.named_modules()}


def test_submodule_modes_survive_construction_prediction_and_scoring():
    model = _PartlyFrozen()
    before = _modes(model)
    assert before["classifier"] is False and before["body"] is True
    learner = make_learner(model=model)
    assert _modes(model) == before
    x, y = blobs()
    a = learner.predict_logits(x)
    assert _modes(model) == before
    b = learner.predict_logits(x)
    torch.testing.assert_close(a, b)  # dropout was off while predicting
    learner.predict(x)
    learner.score(x, y)
    learner.query(3)
    assert _modes(model) == before


def test_score_and_predict_refuse_non_finite_inputs_naming_them():
    learner = make_learner()
    x, y = blobs()
    with pytest.raises(ValueError, match="x_test contains NaN"):
        learner.score(torch.full_like(x, float("nan")), y)
    bad = x.clone()
    bad[5, 0] = float("inf")
    with pytest.raises(
        ValueError, match=r"x contains NaN or infinite values \(1 of 120 rows, first at row 5\)"
    ):
        learner.predict(bad)
    with pytest.raises(ValueError, match="y_test and the x_test rows have different lengths"):
        learner.score(x, y[:-1])


def test_score_refuses_nan_outputs_of_a_diverged_model():
    learner = make_learner()
    with torch.no_grad():
        learner.model.classifier.weight.fill_(float("nan"))
    x, y = blobs()
    with pytest.raises(FloatingPointError, match="NaN or infinite outputs on 120 rows of x_test"):
        learner.score(x, y)


class _Softmaxed(Net):
    def forward(self, x):
        return torch.softmax(super().forward(x), dim=1)


def test_a_model_returning_probabilities_is_warned_about():
    with pytest.warns(ProbabilityOutputWarning, match="expects raw logits"):
        make_learner(model=_Softmaxed())
    with warnings.catch_warnings():
        warnings.simplefilter("error", ProbabilityOutputWarning)
        make_learner()  # plain logits: no warning
        with pytest.raises(ProbabilityOutputWarning):
            make_learner(model=_Softmaxed())


def test_sigmoid_outputs_are_not_mistaken_for_probabilities():
    class _Sigmoid(Net):
        def forward(self, x):
            return torch.sigmoid(super().forward(x))

    with warnings.catch_warnings():
        warnings.simplefilter("error", ProbabilityOutputWarning)
        make_learner(model=_Sigmoid())


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only error")
def test_cuda_without_cuda_is_a_clear_error_through_the_api():
    with pytest.raises(ValueError, match="device='cuda' was asked for but CUDA is not available"):
        make_learner(device="cuda")


def test_unknown_device_is_a_clear_error():
    with pytest.raises(ValueError, match="device='gpu' is not a device"):
        make_learner(device="gpu")
    assert make_learner(device="auto").device.type in ("cpu", "cuda")
