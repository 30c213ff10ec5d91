"""The live loop against an in-memory Label Studio: store, conditioning, scores, restart."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch
from ls_doubles import FakeLabelStudio, png

from ntkal.kernels import empirical_ntk
from ntkal.labelstore import LabelStore
from ntkal.labelstudio.backend import Backend, annotation_of, annotator_tag, make_session
from ntkal.labelstudio.client import LabelStudioError
from ntkal.labelstudio.pool import build_pool
from ntkal.labelstudio.protocol import AnnotationEvent, ProtocolError, parse_label_config


def _backend(fake, store, **kw):
    kw.setdefault("warmup", 1000)  # no retrain unless a test asks for one
    kw.setdefault("strategy", "vr")  # the loop is checked against a direct variance-reduction solve
    backend = Backend.from_project(fake, fake.project_id, str(store), epochs=2, **kw)
    assert backend.wait_scored(60)
    return backend


def _label(backend, fake, j, annotation=None, label="truth", action="created"):
    task = fake.tasks[j]
    label = int(fake.truth[j]) if label == "truth" else label
    ann = 500 + j if annotation is None else annotation
    return backend.apply([AnnotationEvent(action, ann, task["id"], label, "ann@x")])


def _direct_vr(model, x, labelled, unlabelled):
    """Variance reduction by a direct solve: Σ = Θ_EE − Θ_EL Θ_LL⁻¹ Θ_LE on E = the unlabelled
    points (the pseudo-NTK), score_j = Σ_i Σ_ij² / Σ_jj."""
    pts = np.concatenate([labelled, unlabelled])
    theta = empirical_ntk(model, x[torch.from_numpy(pts)], kind="pseudo").double()
    n = labelled.size
    t_ll, t_le, t_ee = theta[:n, :n], theta[:n, n:], theta[n:, n:]
    sigma = t_ee - t_le.T @ torch.linalg.solve(t_ll, t_le)
    return ((sigma**2).sum(0) / torch.diagonal(sigma)).numpy()


def test_annotation_is_on_disk_when_apply_returns(tmp_path, fake_ls):
    backend = _backend(fake_ls, tmp_path / "s.sqlite")
    try:
        backend.stop()  # nothing else may write it for us
        _label(backend, fake_ls, 3)
        with LabelStore(str(tmp_path / "s.sqlite")) as other:  # another connection
            assert other.labelled()[0].tolist() == [3]
            assert annotation_of(other.records()[0]["annotator"]) == 503
    finally:
        backend.stop()


def test_scores_change_after_each_label_and_follow_the_conditioned_lookahead(tmp_path, fake_ls):
    backend = _backend(fake_ls, tmp_path / "s.sqlite")
    try:
        assert set(fake_ls.scores()) == {t["id"] for t in fake_ls.tasks}  # pre-annotations
        assert all(s is None for s in fake_ls.scores().values())  # no labels: no score
        before = None
        for _n, j in enumerate([0, 5, 9, 14, 2, 20], start=1):
            _label(backend, fake_ls, j)
            assert backend.wait_scored(60), backend.stats()
            scores = fake_ls.scores()
            labelled_tasks = {fake_ls.tasks[i]["id"] for i in backend.store.labelled()[0]}
            assert labelled_tasks.isdisjoint(scores)  # labelled tasks get no prediction
            assert all(0.0 <= s <= 1.0 for s in scores.values())
            if before is not None:
                common = sorted(set(scores) & set(before))
                assert any(scores[t] != before[t] for t in common), "scores did not change"
            before = scores
            top = max(scores, key=scores.get)
            assert top == backend.scores.task_pick  # the Data Manager's first task
            # against a direct solve on the backend's network, not the look-ahead engine
            learner = backend.scores.model
            idx = learner.labelled_indices
            un = learner.unlabelled_indices
            direct = _direct_vr(learner.model, backend.pool.dataset.x_train, idx, un)
            raw = np.array([backend.scores.raw[i] for i in un.tolist()])
            np.testing.assert_allclose(raw, direct, rtol=1e-6, atol=1e-9)
            assert fake_ls.tasks[int(un[np.argmax(direct)])]["id"] == top
    finally:
        backend.stop()


def test_sequential_pick_equals_a_fresh_session_on_the_same_labels(tmp_path, fake_ls):
    from ntkal.learner import ActiveLearner
    from ntkal.strategies import get_strategy

    backend = _backend(fake_ls, tmp_path / "s.sqlite")
    try:
        for _n, j in enumerate([1, 7, 11, 16], start=1):
            _label(backend, fake_ls, j)
        assert backend.wait_scored(60)
        idx, lab = backend.store.labelled()
        fresh = ActiveLearner(
            backend.scores.model.model,
            get_strategy("vr"),
            backend.pool.dataset.x_train,
            labelled=idx,
            labels=lab,
            num_classes=3,
            train_config=None,
            mode="sequential",
        )
        assert int(fresh.query(1)[0]) == backend.scores.pick
    finally:
        backend.stop()


def test_update_and_delete_rewrite_the_store_in_order(tmp_path, fake_ls):
    backend = _backend(fake_ls, tmp_path / "s.sqlite")
    try:
        for j in (0, 1, 2, 3):
            _label(backend, fake_ls, j, label=0)
        # the second annotation is changed in Label Studio: label 2, order of the others kept
        assert (
            _label(backend, fake_ls, 1, annotation=501, label=2, action="updated")["changed"] == 1
        )
        idx, lab = backend.store.labelled()
        assert dict(zip(idx.tolist(), lab.tolist())) == {0: 0, 1: 2, 2: 0, 3: 0}
        assert idx.tolist() == [0, 2, 3, 1]
        assert backend.wait_scored(60)
        # the same label again, from another annotator's annotation: nothing changes
        assert _label(backend, fake_ls, 2, annotation=900, label=0)["ignored"] == 1
        # deleted by annotation id only (Label Studio's ANNOTATIONS_DELETED carries no task)
        assert backend.apply([AnnotationEvent("deleted", 502, None, None)])["removed"] == 1
        assert sorted(backend.store.labelled()[0].tolist()) == [0, 1, 3]
        assert backend.apply([AnnotationEvent("deleted", 777, None, None)])["ignored"] == 1
        assert backend.wait_scored(60)
        # the learner was rebuilt: it holds exactly the store's labels
        learner = backend.scores.model
        assert sorted(learner.labelled_indices.tolist()) == [0, 1, 3]
        assert dict(zip(learner.labelled_indices.tolist(), learner.labels.tolist()))[1] == 2
        # a cancelled annotation removes the label it had given
        _label(backend, fake_ls, 3, annotation=503, label=None, action="updated")
        assert sorted(backend.store.labelled()[0].tolist()) == [0, 1]
    finally:
        backend.stop()


def test_restart_keeps_the_task_mapping_and_catches_up(tmp_path):
    fake = FakeLabelStudio()
    store = tmp_path / "s.sqlite"
    backend = _backend(fake, store)
    for j in (0, 4, 8):
        _label(backend, fake, j)
    backend.stop()
    backend.store.close()
    # while the backend is down: a task with a smaller id appears (it must not shift the pool),
    # one annotation is made, and the annotation of item 4 is deleted in Label Studio
    fake.tasks.insert(0, {"id": 1, "data": {"image": "/data/upload/3/new.png"}, "annotations": []})
    fake.files["/data/upload/3/new.png"] = next(iter(fake.files.values()))
    region = {
        "from_name": "digit",
        "to_name": "image",
        "type": "choices",
        "value": {"choices": [("zero", "one", "two")[int(fake.truth[10])]]},
    }
    for j, task in (
        (0, fake.tasks[1]),
        (8, fake.tasks[9]),
    ):
        task["annotations"] = [
            {
                "id": 500 + j,
                "result": [
                    dict(region, value={"choices": [("zero", "one", "two")[int(fake.truth[j])]]})
                ],
                "created_at": "a",
            }
        ]
    fake.tasks[11]["annotations"] = [
        {"id": 42, "result": [region], "completed_by": 7, "created_at": "b"}
    ]
    again = _backend(fake, store)
    try:
        assert again.pool.task_ids[0] == 101 and 1 not in again.pool.task_ids
        labels = dict(zip(*[a.tolist() for a in again.store.labelled()]))
        assert labels == {0: int(fake.truth[0]), 8: int(fake.truth[8]), 10: int(fake.truth[10])}
        assert again.wait_scored(60)
    finally:
        again.stop()


def test_a_store_without_its_task_file_is_refused(tmp_path, fake_ls):
    store = tmp_path / "s.sqlite"
    LabelStore(str(store), pool_size=24, num_classes=3).close()
    with pytest.raises(ProtocolError, match=r"tasks.json does not"):
        Backend.from_project(fake_ls, 3, str(store), start_worker=False)


def test_retrain_runs_in_the_background_and_scores_follow_it(tmp_path, fake_ls):
    backend = _backend(fake_ls, tmp_path / "s.sqlite", warmup=4)
    try:
        first = backend.session.learner
        for _n, j in enumerate([0, 3, 6, 9], start=1):
            _label(backend, fake_ls, j)
        assert backend.wait_scored(60)
        assert backend.session.wait_for_retrain(120)
        assert backend.session.trained and backend.stats()["retrain"]["state"] == "done"
        deadline = time.monotonic() + 30
        while backend.scores.model is not backend.session.learner:
            assert time.monotonic() < deadline, "scores never followed the retrain"
            time.sleep(0.05)
        assert backend.session.learner is not first
    finally:
        backend.stop()


def test_a_failed_push_is_reported_and_the_next_event_recovers(tmp_path, fake_ls):
    backend = _backend(fake_ls, tmp_path / "s.sqlite")
    try:
        fake_ls.fail_next = LabelStudioError("Label Studio POST /x answered 500: boom", 500)
        _label(backend, fake_ls, 0)
        deadline = time.monotonic() + 30
        while backend.stats()["scores"]["error"] is None:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert "boom" in backend.stats()["scores"]["error"]
        _label(backend, fake_ls, 1)
        assert backend.wait_scored(60)
        assert len(fake_ls.scores()) == 22 and backend.stats()["scores"]["error"] is None
    finally:
        backend.stop()


def test_annotator_tags_round_trip():
    assert annotation_of(annotator_tag("a@b:c", 17)) == 17
    assert annotation_of(annotator_tag(None, 3)) == 3
    assert annotation_of("import") is None and annotation_of(None) is None


def test_make_session_refuses_strategies_without_a_lookahead(fake_ls):
    pool = build_pool(fake_ls.tasks, parse_label_config(fake_ls.config), fetch=fake_ls.file)
    with pytest.raises(ValueError, match="look-ahead strategy"):
        make_session(pool.dataset, ":memory:", torch.nn.Linear(64, 3), strategy="margin")


# ----------------------------------------------------------------------------- the pool
def test_lookahead_strategies_are_read_from_the_registry():
    """Every registered look-ahead criterion, and nothing else (a strategy registered later
    joins without a list to keep by hand)."""
    from ntkal.labelstudio.backend import lookahead_strategies

    names = lookahead_strategies()
    assert {"auto", "vr", "mlmoc", "emoc", "eer", "ntk_epig", "ntk_bald"} <= set(names)
    assert not {"random", "margin", "coreset", "badge"} & set(names)


def test_image_pool_in_task_id_order(fake_ls):
    cfg = parse_label_config(fake_ls.config)
    shuffled = list(reversed(fake_ls.tasks))
    pool = build_pool(shuffled, cfg, fetch=fake_ls.file)
    assert list(pool.task_ids) == sorted(t["id"] for t in fake_ls.tasks)
    x = pool.dataset.x_train
    assert x.shape == (24, 1, 8, 8)
    np.testing.assert_allclose(float(x.mean()), 0.0, atol=1e-5)
    assert pool.index_of(fake_ls.tasks[2]["id"]) == 2 and pool.index_of(99999) is None
    resized = build_pool(fake_ls.tasks, cfg, fetch=fake_ls.file, image_size=(4, 6))
    assert resized.dataset.x_train.shape == (24, 1, 4, 6)


def test_row_pool_and_its_errors():
    xml = (
        '<View><Text name="row" value="$text"/><Choices name="c" toName="row">'
        '<Choice value="a"/><Choice value="b"/></Choices></View>'
    )
    cfg = parse_label_config(xml)
    tasks = [
        {"id": i + 1, "data": {"text": f"row {i}", "h": float(i), "w": 2.0 * i * i}}
        for i in range(5)
    ]
    pool = build_pool(tasks, cfg, fetch=None)
    raw = np.array([[i, 2.0 * i * i] for i in range(5)])  # columns h, w (sorted)
    want = (raw - raw.mean(0)) / raw.std(0)
    np.testing.assert_allclose(pool.dataset.x_train.numpy(), want, rtol=1e-5)
    tasks[3]["data"]["w"] = "n/a"
    with pytest.raises(ProtocolError, match="task 4: data field 'w'"):
        build_pool(tasks, cfg, fetch=None)
    with pytest.raises(ProtocolError, match="no numeric data"):
        build_pool([{"id": 1, "data": {"text": "x"}}], cfg, fetch=None)


def test_local_files_only_under_the_data_root(tmp_path, fake_ls):
    cfg = parse_label_config(fake_ls.config)
    root = tmp_path / "files"
    root.mkdir()
    blob = next(iter(fake_ls.files.values()))
    (root / "a.png").write_bytes(blob)
    (tmp_path / "secret.png").write_bytes(blob)
    ok = [
        {"id": 1, "data": {"image": "/data/local-files/?d=a.png"}},
        {"id": 2, "data": {"image": "a.png"}},
    ]
    assert build_pool(ok, cfg, fetch=None, data_root=root).dataset.x_train.shape[0] == 2
    for url in ("/data/local-files/?d=../secret.png", str(tmp_path / "secret.png")):
        with pytest.raises(ProtocolError, match="outside --data-root"):
            build_pool([{"id": 1, "data": {"image": url}}], cfg, fetch=None, data_root=root)
    with pytest.raises(ProtocolError, match="pass --data-root"):
        build_pool(ok, cfg, fetch=None)
    with pytest.raises(ProtocolError, match="not a readable image"):
        build_pool(
            [{"id": 1, "data": {"image": "/data/upload/x"}}], cfg, fetch=lambda url: b"not a png"
        )
    assert png(np.zeros((2, 2)))  # the double itself works
