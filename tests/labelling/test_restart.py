"""kill -9 the labelling server, start it again: every acknowledged label is there."""

from __future__ import annotations

import numpy as np

from ntkal.data import load_dataset
from ntkal.labelstore import LabelStore

ARGS = ["digits", "--width", "16", "--subset", "100", "--warmup", "1000"]


def test_kill9_loses_no_acknowledged_label_and_the_queue_continues(tmp_path, label_server):
    store = tmp_path / "labels.sqlite"
    truth = load_dataset("digits").y_train.numpy()
    server = label_server(ARGS + ["--store", str(store)])
    acknowledged = {}
    item = server.get("/api/next?client=a")
    for _ in range(12):
        res = server.post(
            "/api/labels",
            {"index": item["index"], "label": int(truth[item["index"]]), "client": "a"},
        )
        assert res["duplicate"] is False
        acknowledged[item["index"]] = int(truth[item["index"]])
        item = res["next"]
    held = item["index"]  # handed out, not labelled: must not count as labelled after the crash
    server.kill9()  # no shutdown handler runs

    with LabelStore(store) as s:
        idx, lab = s.labelled()
    assert dict(zip(idx.tolist(), lab.tolist())) == acknowledged

    again = label_server(ARGS + ["--store", str(store)])
    stats = again.get("/api/stats")
    assert stats["labelled"] == 12 and sum(stats["per_class"].values()) == 12
    nxt = again.get("/api/next?client=b")
    assert nxt["index"] not in acknowledged and nxt["done"] is False
    assert held not in acknowledged
    res = again.post(
        "/api/labels", {"index": nxt["index"], "label": int(truth[nxt["index"]]), "client": "b"}
    )
    assert res["next"]["index"] not in acknowledged and res["next"]["index"] != nxt["index"]
    # A label repeated after the restart is acknowledged once, not stored twice.
    first = next(iter(acknowledged))
    dup = again.post("/api/labels", {"index": first, "label": acknowledged[first], "client": "b"})
    assert dup["duplicate"] is True
    exported = again.get("/api/export?format=json")
    got = {r["index"]: r["label"] for r in exported["labels"]}
    assert got == {**acknowledged, nxt["index"]: int(truth[nxt["index"]])}
    assert np.unique([r["index"] for r in exported["labels"]]).size == 13
