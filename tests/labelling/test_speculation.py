"""Speculation: the next pick computed under the predicted label is the pick, bit for bit."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ntkal.atomic_files import atomic_torch_save
from ntkal.data import load_dataset
from ntkal.labelling import LabellingSession
from ntkal.labelstore import LabelStore
from ntkal.models import build_model


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", train_size=200, test_size=20)


def _trained_session(digits, tmp_path, name, speculate, strategy, subset=1000):
    """A session that starts trained (weights from a file) on 15 stored labels."""
    torch.manual_seed(0)
    model = build_model("mlp", digits.in_shape, digits.num_classes, width=16)
    weights = tmp_path / "w.pt"
    if not weights.exists():
        atomic_torch_save({"model_state": model.state_dict(), "num_labels": 0}, weights)
    truth = digits.y_train.numpy()
    store = LabelStore(tmp_path / f"{name}.sqlite", pool_size=digits.num_train, num_classes=10)
    first = np.random.default_rng(0).choice(digits.num_train, 15, replace=False)
    store.import_labels(first, truth[first])
    return LabellingSession(
        digits,
        store,
        model,
        subset=subset,
        weights_path=weights,
        strategy=strategy,
        speculate=speculate,
        auto_retrain=False,
    )


def _run(session, labels_for, steps=10):
    """``steps`` labels from an annotator who looks long enough for the speculation to end (its
    result is then deterministic; a label that comes earlier is tested on its own)."""
    picks, flags = [], []
    item = session.next_item("a")
    spec = session.picks.speculator
    for step in range(steps):
        if spec is not None:
            assert spec.wait(120)
        picks.append(item["index"])
        res = session.add_label(item["index"], labels_for(step, item), "a")
        flags.append(res["latency"]["speculated"])
        item = res["next"]
    return picks, flags


@pytest.mark.parametrize(
    "strategy, subset", [("vr", 1000), ("mlmoc", 1000), ("vr", 60), ("auto", 300)]
)
def test_picks_with_speculation_equal_picks_without(digits, tmp_path, strategy, subset):
    """Whole pick sequences agree, also with a sampled candidate subset (the twin must draw
    the learner's very candidates: same seed, same query count)."""
    truth = digits.y_train.numpy()

    def labels(step, item):  # the prediction mostly, the truth (often different) every third
        return int(truth[item["index"]]) if step % 3 == 2 else item["prediction"]["label"]

    plain = _trained_session(digits, tmp_path, "plain", False, strategy, subset)
    fast = _trained_session(digits, tmp_path, "fast", True, strategy, subset)
    assert plain.phase == fast.phase == "look-ahead"
    expected, off = _run(plain, labels)
    got, on = _run(fast, labels)
    assert got == expected and not any(off)
    spec = fast.picks.speculator
    assert spec.hits >= 3 and sum(on) == spec.hits  # predicted labels came from the twin
    assert spec.hits + spec.misses <= len(got)
    assert fast.stats()["speculation"] == {
        "hits": spec.hits,
        "relabelled": spec.relabelled,
        "misses": spec.misses,
        "disabled": None,
    }
    assert plain.stats()["speculation"] is None
    lab_plain = dict(zip(plain.learner.labelled_indices.tolist(), plain.learner.labels.tolist()))
    lab_fast = dict(zip(fast.learner.labelled_indices.tolist(), fast.learner.labels.tolist()))
    assert lab_plain == lab_fast  # the learner taking over holds every label


@pytest.mark.parametrize("strategy", ["vr", "auto"])
def test_a_wrong_guess_is_relabelled_when_picks_ignore_labels(digits, tmp_path, strategy):
    """Every label differs from the prediction the twin was taught: for variance-type strategies
    the twin is relabelled in closed form and takes over anyway (each next pick ready), and the
    picks and stored labels equal those of a session without speculation."""

    def wrong(step, item):
        return (item["prediction"]["label"] + 1 + step % 3) % 10

    plain = _trained_session(digits, tmp_path, "plain", False, strategy, 300)
    fast = _trained_session(digits, tmp_path, "fast", True, strategy, 300)
    expected, _ = _run(plain, wrong, steps=8)
    got, on = _run(fast, wrong, steps=8)
    assert got == expected
    spec = fast.picks.speculator
    assert spec.misses == 0 and spec.hits == spec.relabelled == sum(on) >= 6
    lab_plain = dict(zip(plain.learner.labelled_indices.tolist(), plain.learner.labels.tolist()))
    lab_fast = dict(zip(fast.learner.labelled_indices.tolist(), fast.learner.labels.tolist()))
    assert lab_plain == lab_fast
    torch.testing.assert_close(
        fast.learner.session.lookahead.base_predictions(),
        plain.learner.session.lookahead.base_predictions(),
        rtol=0,
        atol=1e-9,
    )


def test_a_wrong_guess_drops_the_twin_when_picks_read_labels(digits, tmp_path):
    s = _trained_session(digits, tmp_path, "m", True, "mlmoc", 300)
    _run(s, lambda step, item: (item["prediction"]["label"] + 1) % 10, steps=4)
    spec = s.picks.speculator
    assert spec.relabelled == 0 and spec.hits == 0 and spec.misses >= 3


def test_a_reset_voids_the_twin(digits, tmp_path):
    s = _trained_session(digits, tmp_path, "r", True, "vr")
    item = s.next_item("a")
    s.add_label(item["index"], item["prediction"]["label"], "a")
    s.undo("a")  # a new learner: the twin is void
    again = s.next_item("a")
    res = s.add_label(again["index"], again["prediction"]["label"], "a")
    reference = _trained_session(digits, tmp_path, "ref", False, "vr")
    ref = reference.next_item("a")
    reference.add_label(ref["index"], ref["prediction"]["label"], "a")
    reference.undo("a")
    ref_again = reference.next_item("a")
    assert again["index"] == ref_again["index"]
    assert (
        res["next"]["index"]
        == reference.add_label(ref_again["index"], ref_again["prediction"]["label"], "a")["next"][
            "index"
        ]
    )


def test_close_waits_for_the_speculation_then_closes_the_store(digits, tmp_path):
    s = _trained_session(digits, tmp_path, "c", True, "vr")
    item = s.next_item("a")
    s.add_label(item["index"], item["prediction"]["label"], "a")  # starts a speculation
    spec = s.picks.speculator
    assert spec is not None
    assert s.close(timeout=120) is True
    assert not spec.busy  # no torch work left in a thread when the process exits
    with pytest.raises(Exception, match="closed"):
        len(s.store)


def test_a_label_does_not_wait_for_a_twin_still_being_built(digits, tmp_path):
    """The first twin after a retrain is built from scratch (seconds on a large pool): a label
    arriving meanwhile is conditioned the ordinary way at once, the build goes on, and the
    twin it gives catches up and speculates from then on, with the picks of a plain session."""
    import threading

    truth = digits.y_train.numpy()
    fast = _trained_session(digits, tmp_path, "slow", True, "vr", 300)
    plain = _trained_session(digits, tmp_path, "plain", False, "vr", 300)
    release = threading.Event()
    build = fast.picks.speculator._build

    def slow_build(*args):
        release.wait(60)
        return build(*args)

    fast.picks.speculator._build = slow_build
    item, ref = fast.next_item("a"), plain.next_item("a")
    assert item["index"] == ref["index"]
    res = fast.add_label(item["index"], int(truth[item["index"]]), "a")
    ref = plain.add_label(ref["index"], int(truth[ref["index"]]), "a")
    assert not release.is_set(), "the label waited for the build"
    assert res["latency"]["speculated"] is False and res["next"]["index"] == ref["next"]["index"]
    release.set()
    spec = fast.picks.speculator
    assert spec.wait(120)
    assert spec._twin is not None  # kept, one label behind

    def labels(step, item):
        return int(truth[item["index"]])

    picks_fast, on = _run(fast, labels, steps=5)
    picks_plain, _ = _run(plain, labels, steps=5)
    assert picks_fast == picks_plain and sum(on) >= 3


def test_after_a_retrain_the_twin_is_a_copy_ready_at_once(digits, tmp_path):
    """The retrain thread copies the new learner for speculation, so the first labels after a
    retrain are speculated without building a twin, with the picks of a plain session."""
    truth = digits.y_train.numpy()
    fast = _trained_session(digits, tmp_path, "fast", True, "vr", 300)
    plain = _trained_session(digits, tmp_path, "plain", False, "vr", 300)
    for s in (fast, plain):
        assert s.start_retrain() and s.wait_for_retrain(300)
    spec = fast.picks.speculator

    def no_build(*args):
        raise AssertionError("the twin was built, not copied")

    spec._build = no_build
    assert spec._twin is not None

    def labels(step, item):
        return int(truth[item["index"]])

    picks_fast, on = _run(fast, labels, steps=5)
    picks_plain, _ = _run(plain, labels, steps=5)
    assert picks_fast == picks_plain and all(on)
