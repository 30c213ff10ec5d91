"""LabellingSession: closed-form look-ahead per label, leases, duplicates, undo, retrain, restart."""

from __future__ import annotations

import copy
import threading

import numpy as np
import pytest
import torch

from ntkal.data import load_dataset
from ntkal.labelling import LabelConflict, LabellingSession
from ntkal.labelstore import LabelStore
from ntkal.models import build_model
from ntkal.strategies import get_strategy
from ntkal.strategies.base import QueryContext
from ntkal.training import TrainConfig

QUICK = TrainConfig(epochs=15, batch_size=32, schedule="constant", loss="mse", seed=0)


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", train_size=150, test_size=60)


def _session(digits, store, **kwargs):
    torch.manual_seed(0)
    model = build_model("mlp", digits.in_shape, digits.num_classes, width=16)
    kwargs.setdefault("train_config", QUICK)
    kwargs.setdefault("subset", 1000)
    return LabellingSession(digits, store, model, **kwargs)


def _label_first(session, truth, n, client="a"):
    item = session.next_item(client)
    for _ in range(n):
        item = session.add_label(item["index"], int(truth[item["index"]]), client)["next"]
    return item


@pytest.mark.parametrize("name", ["vr", "mlmoc"])
def test_picks_are_the_strategys_sequential_session_conditioned_on_each_label(
    digits, tmp_path, name
):
    truth = digits.y_train.numpy()
    s = _session(digits, tmp_path / "l.sqlite", warmup=12, strategy=name)
    held = _label_first(s, truth, 12)["index"]
    assert s.wait_for_retrain(60) and s.phase == "look-ahead"
    assert s.release(held, "a")  # the warm-up item it held goes back to the pool
    # The reference: the strategy's own sequential session on the same network, labelled set and
    # candidates (the whole unlabelled pool: subset >= pool), driven by hand.
    idx, lab = s.store.labelled()
    unl = np.setdiff1d(np.arange(digits.num_train), idx)
    ctx = QueryContext(
        model=copy.deepcopy(s.model),
        x_candidates=digits.x_train[unl],
        x_labelled=digits.x_train[idx],
        y_labelled=torch.from_numpy(lab),
        num_classes=10,
    )
    reference = get_strategy(name).begin_sequential(ctx)
    item = s.next_item("a")
    picks, expected = [], []
    for _ in range(6):
        pos, _ = reference.propose()
        expected.append(int(unl[pos]))
        picks.append(item["index"])
        assert item["source"] == f"look-ahead (sequential {name})"
        reference.observe(pos, int(truth[unl[pos]]))
        res = s.add_label(item["index"], int(truth[item["index"]]), "a")
        assert res["latency"]["condition_ms"] >= 0 and res["latency"]["total_ms"] > 0
        item = res["next"]
    assert picks == expected
    assert len(set(picks)) == 6


def test_leases_keep_items_apart_and_expire(digits, tmp_path):
    s = _session(digits, tmp_path / "l.sqlite", lease_seconds=60)
    a, b = s.next_item("a"), s.next_item("b")
    assert a["index"] != b["index"]
    assert s.next_item("a")["index"] == a["index"]  # a reload shows the same item
    assert s.release(a["index"], "b") is False  # only the holder can release
    assert s.release(a["index"], "a") is True
    c = s.next_item("c")
    assert c["index"] == a["index"]  # released: handed to the next asker
    short = _session(digits, tmp_path / "m.sqlite", lease_seconds=0.0)
    first = short.next_item("a")["index"]
    assert short.next_item("b")["index"] == first  # the lease ran out at once


def test_duplicates_are_idempotent_conflicts_refused_bad_input_named(digits, tmp_path):
    s = _session(digits, tmp_path / "l.sqlite")
    i = s.next_item("a")["index"]
    assert s.add_label(i, 3, "a")["duplicate"] is False
    again = s.add_label(i, "3", "b")  # the same label again (e.g. a retried POST): acknowledged
    assert again["duplicate"] is True and len(s.store) == 1
    with pytest.raises(LabelConflict, match=f"item {i} is already labelled '3'"):
        s.add_label(i, 4, "a")
    for index, label, match in [
        (10_000, 1, "out of range for a pool of size 150"),
        ("x", 1, "index must be a whole number"),
        (5, 10, r"label 10 is out of range \[0, 10\)"),
        (5, "cat", "unknown class 'cat'"),
    ]:
        with pytest.raises(ValueError, match=match):
            s.add_label(index, label, "a")
    assert len(s.store) == 1


def test_concurrent_annotators_lose_and_duplicate_nothing(digits, tmp_path):
    s = _session(digits, tmp_path / "l.sqlite", warmup=10_000)
    truth = digits.y_train.numpy()
    errors, seen = [], [[] for _ in range(6)]

    def annotate(k):
        try:
            item = s.next_item(f"tab{k}")
            for _ in range(8):
                seen[k].append(item["index"])
                item = s.add_label(item["index"], int(truth[item["index"]]), f"tab{k}")["next"]
        except Exception as err:  # noqa: BLE001
            errors.append(err)

    threads = [threading.Thread(target=annotate, args=(k,)) for k in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    flat = [i for part in seen for i in part]
    assert len(flat) == len(set(flat)) == 48  # no item was handed to two tabs
    idx, lab = s.store.labelled()
    assert sorted(idx.tolist()) == sorted(flat) and (lab == truth[idx]).all()
    # The same item posted by several tabs at once: stored once, acknowledged to all.
    target = s.next_item("x")["index"]
    results = []
    posts = [
        threading.Thread(target=lambda: results.append(s.add_label(target, 1, "x")))
        for _ in range(5)
    ]
    for t in posts:
        t.start()
    for t in posts:
        t.join(30)
    assert sorted(r["duplicate"] for r in results) == [False, True, True, True, True]
    assert s.store.label_of(target) == 1 and len(s.store) == 49


def test_undo_gives_the_item_back_and_the_learner_forgets_it(digits, tmp_path):
    s = _session(digits, tmp_path / "l.sqlite")
    truth = digits.y_train.numpy()
    _label_first(s, truth, 3)
    last = s.store.labelled()[0][-1]
    res = s.undo("a")
    assert res["undone"]["index"] == last and res["next"]["index"] == last
    assert s.next_item("a")["index"] == last  # held by the client that undid it
    assert len(s.store) == 2 and last not in s.learner.labelled_indices.tolist()
    assert s.learner.labelled_indices.size == 2


def test_labelling_goes_on_while_retraining_and_restart_resumes(digits, tmp_path):
    truth = digits.y_train.numpy()
    path = tmp_path / "l.sqlite"
    slow = TrainConfig(epochs=200, batch_size=8, schedule="constant", loss="mse", seed=0)
    s = _session(digits, path, warmup=10_000, train_config=slow)
    item = _label_first(s, truth, 10)
    assert s.start_retrain() and not s.start_retrain()  # one at a time
    during = 0
    while s.retraining and during < 10:
        item = s.add_label(item["index"], int(truth[item["index"]]), "a")["next"]
        during += 1
    assert s.wait_for_retrain(120)
    st = s.stats()
    assert st["retrain"]["state"] == "done" and st["retrain"]["labels"] == 10 and during > 0
    assert st["curve"][0]["labels"] == 10 and 0 <= st["curve"][0]["accuracy"] <= 1
    # The new learner holds every label, those given during training included.
    assert sorted(s.learner.labelled_indices.tolist()) == sorted(s.store.labelled()[0].tolist())
    assert s.phase == "look-ahead" and (tmp_path / "l.sqlite.weights.pt").is_file()
    weights = {k: v.clone() for k, v in s.model.state_dict().items()}
    s.store.close()
    again = _session(digits, path)  # a restart: labels from the store, weights from the file
    assert again.trained and again.phase == "look-ahead"
    assert again.learner.labelled_indices.size == 10 + during
    for k, v in again.model.state_dict().items():
        assert torch.equal(v, weights[k])
    assert again.next_item("z")["index"] not in again.store.labelled()[0].tolist()


def test_store_of_another_pool_is_refused(digits, tmp_path):
    LabelStore(tmp_path / "other.sqlite", pool_size=99, num_classes=10).close()
    with pytest.raises(ValueError, match="created with pool_size=99, not 150"):
        _session(digits, tmp_path / "other.sqlite")


def test_default_retrain_is_stable_on_colour_images(tmp_path):
    """A flat MLP on 3x12x12 images diverged at MSE's default rate until gradients were clipped."""
    from PIL import Image

    from ntkal.data import read_file_source
    from ntkal.labelling import default_train_config

    rng = np.random.default_rng(0)
    for cls, level in (("cat", 60), ("dog", 190)):
        (tmp_path / "imgs" / cls).mkdir(parents=True)
        for i in range(8):
            arr = np.clip(level + rng.normal(0, 30, (20, 16, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(arr).save(tmp_path / "imgs" / cls / f"{i}.png")
    src = read_file_source(tmp_path / "imgs", image_size=[12, 12], test_fraction=0.2)
    torch.manual_seed(0)
    model = build_model("mlp", src.dataset.in_shape, 2)
    s = LabellingSession(
        src.dataset,
        ":memory:",
        model,
        source=src,
        use_dataset_labels=True,
        warmup=5,
        train_config=default_train_config(5),
    )
    assert s.wait_for_retrain(120)  # started by itself: the file had enough labelled images
    st = s.stats()
    assert st["retrain"]["state"] == "done", st["retrain"]["error"]
    assert st["retrain"]["accuracy"] == 1.0 and s.phase == "look-ahead"


def _reference_pick(s, name, digits):
    """The strategy's own sequential session over the store's labels, driven by hand."""
    idx, lab = s.store.labelled()
    unl = np.setdiff1d(np.arange(digits.num_train), idx)
    ctx = QueryContext(
        model=copy.deepcopy(s.model),
        x_candidates=digits.x_train[unl],
        x_labelled=digits.x_train[idx],
        y_labelled=torch.from_numpy(lab),
        num_classes=10,
    )
    pos, _ = get_strategy(name).begin_sequential(ctx).propose()
    return int(unl[pos])


def test_skip_advances_in_both_phases_and_the_skipped_list_gives_it_back(digits, tmp_path):
    truth = digits.y_train.numpy()
    s = _session(digits, tmp_path / "l.sqlite", warmup=12, strategy="mlmoc")
    first = s.next_item("a")["index"]
    assert s.release(first, "a", skip=True) and s.next_item("a")["index"] != first
    assert [r["index"] for r in s.skipped()] == [first]
    for _ in range(3):  # never handed out again by itself
        item = s.next_item("a")
        assert item["index"] != first
        s.add_label(item["index"], int(truth[item["index"]]), "a")
    assert s.open_item(first, "a")["index"] == first and s.skipped() == []
    assert s.next_item("a")["index"] == first  # opened: now held by a
    held = _label_first(s, truth, 12)["index"]
    assert s.wait_for_retrain(60) and s.phase == "look-ahead"
    s.release(held, "a")  # the warm-up item goes back
    pick = s.next_item("a")
    assert pick["source"].startswith("look-ahead")
    s.release(pick["index"], "a", skip=True)  # the look-ahead pick itself is skipped
    after = s.next_item("a")
    assert after["index"] != pick["index"] and after["source"].startswith("smallest margin")
    with pytest.raises(LabelConflict, match="another annotator"):
        s.open_item(after["index"], "b")


def test_relabel_is_an_event_and_conditions_the_look_ahead_anew(digits, tmp_path):
    truth = digits.y_train.numpy()
    s = _session(digits, tmp_path / "l.sqlite", warmup=12, strategy="mlmoc")
    held = _label_first(s, truth, 12)["index"]
    assert s.wait_for_retrain(60) and s.phase == "look-ahead"
    s.release(held, "a")
    before = s.next_item("a")["index"]
    assert before == _reference_pick(s, "mlmoc", digits)
    target = int(s.store.labelled()[0][3])
    wrong = (int(truth[target]) + 5) % 10
    res = s.relabel(target, wrong, "a")
    assert res["changed"] and res["previous"] == int(truth[target])
    assert s.store.label_of(target) == wrong
    assert [(c["index"], c["label"], c["previous"]) for c in s.store.changes()] == [
        (target, wrong, int(truth[target]))
    ]
    learner = dict(zip(s.learner.labelled_indices.tolist(), s.learner.labels.tolist()))
    assert learner[target] == wrong  # the learner holds the corrected label
    expected = _reference_pick(s, "mlmoc", digits)
    assert res["next"]["index"] == expected  # the pick under the corrected labels
    assert s.history(2)[0]["class"] == s.classes[s.store.labelled()[1][-1]]
    with pytest.raises(ValueError, match="has no label yet"):
        s.relabel(res["next"]["index"], 1, "a")


def test_a_strategy_without_a_sequential_mode_is_requeried(digits, tmp_path):
    truth = digits.y_train.numpy()
    s = _session(digits, tmp_path / "l.sqlite", warmup=12, strategy="margin", subset=1000)
    assert not s.picks.sequential and "re-queried" in s.stats()["strategy_text"]
    held = _label_first(s, truth, 12)["index"]
    assert s.wait_for_retrain(60)
    s.release(held, "a")
    item = s.next_item("a")
    assert item["source"] == "margin (re-queried)"
    probs = torch.softmax(s.learner.predict_logits(digits.x_train).double(), 1)
    top2 = probs.topk(2, dim=1).values
    margin = (top2[:, 0] - top2[:, 1]).numpy()
    margin[s.store.labelled()[0]] = np.inf
    assert item["index"] == int(np.argmin(margin))  # the smallest margin, as margin defines it
    nxt = s.add_label(item["index"], int(truth[item["index"]]), "a")["next"]
    margin[item["index"]] = np.inf
    assert nxt["index"] == int(np.argmin(margin))


def test_grid_and_counts_are_honest(digits, tmp_path):
    s = _session(digits, tmp_path / "l.sqlite", subset=500)
    held = s.next_item("a")["index"]
    other = s.next_item("b")["index"]
    tiles = s.grid(10, "a")
    shown = [t["index"] for t in tiles]
    assert len(shown) == 10 and len(set(shown)) == 10
    assert held not in shown and other not in shown  # nobody's item is offered twice
    assert all(0 < t["prediction"]["probability"] <= 1 for t in tiles)
    assert s.stats()["scored"] == min(500, 150) - 0  # never more than the pool holds
    with pytest.raises(ValueError, match="n must be <= 100"):
        s.grid(1000)
