"""SQLite label store: durability, validation, syncing into a learner."""

from __future__ import annotations

import json

import numpy as np
import pytest

from ntkal.labelstore import LabelStore


def test_labels_persist_in_order_and_requests_clear(tmp_path):
    path = tmp_path / "labels.sqlite"
    with LabelStore(path, pool_size=50, num_classes=3) as store:
        store.request([7, 3, 9])
        store.add([9, 3], [2, 0], annotator="ana")
        np.testing.assert_array_equal(store.pending(), [7])
    with LabelStore(path) as store:
        idx, lab = store.labelled()
        assert idx.tolist() == [9, 3] and lab.tolist() == [2, 0] and len(store) == 2
        with pytest.raises(ValueError, match="created with num_classes=3"):
            LabelStore(path, num_classes=4)


def test_invalid_adds_change_nothing(tmp_path):
    store = LabelStore(":memory:", pool_size=10, num_classes=3)
    store.add([1], [1])
    for indices, labels, match in [
        ([2, 1], [0, 0], "already labelled"),
        ([12], [0], "out of range"),
        ([2], [3], r"label 3 is out of range"),
        ([2, 2], [0, 0], "more than once"),
        ([2], [0.5], "integers"),
        ([2, 3], [0], "2 indices but 1 labels"),
    ]:
        with pytest.raises(ValueError, match=match):
            store.add(indices, labels)
    assert len(store) == 1
    with pytest.raises(ValueError, match="required"):
        LabelStore(":memory:", pool_size=10)


def test_sync_teaches_only_new_labels():
    import torch
    from torch import nn

    from ntkal.learner import ActiveLearner

    x = torch.randn(20, 2)
    model = nn.Linear(2, 3)
    learner = ActiveLearner(
        model, "random", x, labelled=[0], labels=[1], num_classes=3, train_config=None
    )
    store = LabelStore(":memory:", pool_size=20, num_classes=3)
    store.add([0, 5, 6], [1, 2, 0])
    assert store.sync(learner).tolist() == [5, 6]
    assert learner.labelled_indices.tolist() == [0, 5, 6]
    assert store.sync(learner).size == 0
    other = LabelStore(":memory:", pool_size=20, num_classes=3)
    other.add([0], [2])
    with pytest.raises(ValueError, match="different one"):
        other.sync(learner)


# ----------------------------------------------------------------------------- hardening
import multiprocessing as mp  # noqa: E402
import os  # noqa: E402
import sqlite3  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402

from ntkal.labelstore import LabelStoreError  # noqa: E402


def _create_and_add(path, barrier, i, results):
    barrier.wait()  # every process opens the new file at the same moment
    try:
        store = LabelStore(path, pool_size=64, num_classes=4, timeout=10)
        store.add([i], [i % 4], annotator=f"p{i}")
        store.close()
        results.put((i, "ok"))
    except Exception as err:  # noqa: BLE001 - reported to the parent
        results.put((i, f"{type(err).__name__}: {err}"))


def test_many_processes_creating_one_store_at_once(tmp_path):
    ctx = mp.get_context("fork")
    n = 8
    for attempt in range(3):  # several rounds: a race shows up only sometimes
        path = str(tmp_path / f"race{attempt}.sqlite")
        barrier, results = ctx.Barrier(n), ctx.Queue()
        procs = [
            ctx.Process(target=_create_and_add, args=(path, barrier, i, results)) for i in range(n)
        ]
        for p in procs:
            p.start()
        outcome = dict(results.get(timeout=60) for _ in procs)
        for p in procs:
            p.join(timeout=30)
        assert outcome == dict.fromkeys(range(n), "ok"), outcome
        with LabelStore(path) as store:
            idx, lab = store.labelled()
            assert sorted(idx.tolist()) == list(range(n)) and store.pool_size == 64
            assert all(y == i % 4 for i, y in zip(idx.tolist(), lab.tolist()))


def test_a_writer_waits_for_another_then_fails_clearly(tmp_path):
    path = str(tmp_path / "busy.sqlite")
    LabelStore(path, pool_size=10, num_classes=2).close()
    blocker = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    blocker.execute("BEGIN IMMEDIATE")  # another writer holds the write lock
    release = threading.Timer(0.5, lambda: blocker.execute("COMMIT"))
    release.start()
    t0 = time.perf_counter()
    store = LabelStore(path, timeout=5)
    store.add([1], [1])  # waits for the other writer instead of failing with "database is locked"
    assert time.perf_counter() - t0 >= 0.3 and store.labelled()[0].tolist() == [1]
    release.join()
    blocker.execute("BEGIN IMMEDIATE")
    quick = LabelStore(path, timeout=0.05)
    with pytest.raises(LabelStoreError, match=r"busy\.sqlite stayed locked by another writer"):
        quick.add([2], [0])
    blocker.execute("ROLLBACK")
    quick.add([2], [0])
    assert len(quick) == 2


def test_unusable_paths_name_the_file(tmp_path):
    junk = tmp_path / "notes.sqlite"
    junk.write_text("these are my notes, not a database " * 20)
    with pytest.raises(LabelStoreError, match=r"notes\.sqlite is not a label store"):
        LabelStore(junk)
    with pytest.raises(LabelStoreError, match=r"/proc/ntkal-labels\.sqlite"):
        LabelStore("/proc/ntkal-labels.sqlite", pool_size=5, num_classes=2)  # read-only file system
    with pytest.raises(LabelStoreError, match="does not exist"):
        LabelStore(tmp_path / "no" / "such" / "dir.sqlite", pool_size=5, num_classes=2)
    (tmp_path / "adir").mkdir()
    with pytest.raises(LabelStoreError, match="is a folder"):
        LabelStore(tmp_path / "adir", pool_size=5, num_classes=2)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_folder_names_the_file(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        with pytest.raises(LabelStoreError, match=r"ro/l\.sqlite"):
            LabelStore(folder / "l.sqlite", pool_size=5, num_classes=2)
    finally:
        folder.chmod(0o755)


def test_undo_export_import_and_evaluations(tmp_path):
    store = LabelStore(tmp_path / "l.sqlite", pool_size=20, num_classes=3)
    assert store.undo_last() is None
    store.add([4], [2], annotator="ana")
    store.add([7, 9], [0, 1], annotator="bo")
    store.add([11], [1], annotator="bo")
    assert store.undo_last(annotator="ana") == (4, 2)
    assert store.undo_last() == (11, 1) and store.label_of(11) is None
    assert store.pending().tolist() == [4, 11]  # undone points are asked for again
    assert store.labelled()[0].tolist() == [7, 9] and store.counts().tolist() == [1, 1, 0]
    text = store.export_csv(classes=["a", "b", "c"])
    assert text.splitlines()[0] == "index,label,class,annotator,created"
    assert text.splitlines()[1].startswith("7,0,a,bo,")
    doc = json.loads(store.export_json())
    assert doc["pool_size"] == 20 and [r["index"] for r in doc["labels"]] == [7, 9]
    other = LabelStore(":memory:", pool_size=20, num_classes=3)
    other.add([9], [1])
    assert other.import_labels([7, 9, 3], [0, 1, 2]) == {"added": 2, "skipped": 1}
    with pytest.raises(ValueError, match="index 7 is already labelled 0, the import says 2"):
        other.import_labels([5, 7], [1, 2])
    assert other.label_of(5) is None and len(other) == 3  # all or nothing
    store.add_evaluation(2, 0.5)
    store.add_evaluation(6, 0.75)
    assert store.evaluations() == [(2, 0.5), (6, 0.75)]
    with pytest.raises(ValueError, match="accuracy must lie in"):
        store.add_evaluation(3, float("nan"))


def test_relabel_is_logged_keeps_the_order_and_refuses_unlabelled(tmp_path):
    path = tmp_path / "l.sqlite"
    with LabelStore(path, pool_size=10, num_classes=3) as store:
        store.add([4, 2, 7], [0, 1, 2], annotator="ana")
        assert store.relabel(2, 0, annotator="bo") == 1
        idx, lab = store.labelled()
        assert idx.tolist() == [4, 2, 7] and lab.tolist() == [0, 0, 2]
        assert [
            (c["index"], c["label"], c["previous"], c["annotator"]) for c in store.changes()
        ] == [(2, 0, 1, "bo")]
        assert [r["index"] for r in store.recent(2)] == [7, 2]
        for bad, match in [
            ((5, 1), "has no label to change"),
            ((2, 3), "out of range"),
            ((2, 0.5), "integers"),
        ]:
            with pytest.raises(ValueError, match=match):
                store.relabel(*bad)
        assert len(store.changes()) == 1
    with LabelStore(path) as store:  # durable
        assert store.label_of(2) == 0 and len(store.changes()) == 1


def test_a_store_from_before_relabelling_gains_the_event_log(tmp_path):
    import sqlite3

    path = tmp_path / "old.sqlite"
    with LabelStore(path, pool_size=10, num_classes=3) as store:
        store.add([1], [2])
    conn = sqlite3.connect(path)
    conn.execute("DROP TABLE events")
    conn.commit()
    conn.close()
    with LabelStore(path) as store:
        assert store.changes() == [] and store.relabel(1, 0) == 2


def test_csv_cells_that_spreadsheets_would_run_are_escaped():
    from ntkal.labelstore import csv_safe

    assert [csv_safe(v) for v in ("=1+1", "+1", "-1", "@A1", "\tx", "ok", 5, -3.0)] == [
        "'=1+1",
        "'+1",
        "'-1",
        "'@A1",
        "'\tx",
        "ok",
        5,
        -3.0,
    ]
    store = LabelStore(":memory:", pool_size=5, num_classes=2)
    store.add([1], [0], annotator="=cmd|' /C calc'!A0")
    text = store.export_csv(["=a", "b"], origin=lambda i: {"file": f"-x{i}.png"})
    header, row = text.splitlines()
    assert header == "index,label,class,file,annotator,created"
    assert row.split(",")[2:5] == ["'=a", "'-x1.png", "'=cmd|' /C calc'!A0"]


def test_one_claim_per_store(tmp_path):
    from ntkal.labelstore import LabelStoreError, claim_store

    claim = claim_store(tmp_path / "s.sqlite")
    with pytest.raises(LabelStoreError, match="already being served"):
        claim_store(tmp_path / "s.sqlite")
    claim_store(tmp_path / "other.sqlite").release()
    claim.release()
    claim_store(tmp_path / "s.sqlite").release()
