"""A durable label store for people labelling their own pool (standard-library SQLite).

Labels typed by a person are the expensive part of active learning; keeping them in a SQLite file
(one transaction per call) means a crash or a closed notebook loses nothing, several labelling
sessions can append to one file, and the learner can be rebuilt from the store at any time::

    store = LabelStore("labels.sqlite", pool_size=len(x_pool), num_classes=10)
    idx = learner.query(20)
    store.request(idx)                      # what to show the annotator
    store.add([idx[0]], [3], annotator="ana")
    store.sync(learner)                     # teach the learner every label it does not have yet
"""
from __future__ import annotations

import numbers
import os
import sqlite3
import time
from typing import Any, Iterable, Optional, Union

import numpy as np

__all__ = ["LabelStore"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS labels (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    pool_index INTEGER NOT NULL UNIQUE,
    label INTEGER NOT NULL,
    annotator TEXT,
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS requests (pool_index INTEGER PRIMARY KEY, created REAL NOT NULL);
"""


def _ints(name: str, values: Any) -> list[int]:
    if isinstance(values, numbers.Integral) and not isinstance(values, bool):
        values = [values]
    if hasattr(values, "tolist"):
        values = values.tolist()
    out = list(values)
    bad = next((v for v in out if isinstance(v, bool) or not isinstance(v, numbers.Integral)), None)
    if bad is not None:
        raise ValueError(f"{name} must be integers, got {bad!r}")
    return [int(v) for v in out]


class LabelStore:
    """Pool labels in a SQLite file, in the order they were given.

    Parameters
    ----------
    path : path or ":memory:"
    pool_size, num_classes : int, optional
        Required when creating the file; checked against the file when opening an existing one,
        so labels of one pool are never applied to another.
    """

    def __init__(self, path: Union[str, os.PathLike], *, pool_size: Optional[int] = None,
                 num_classes: Optional[int] = None) -> None:
        self.path = str(path)
        self._conn = sqlite3.connect(self.path)
        with self._conn:
            self._conn.executescript(_SCHEMA)
        meta = dict(self._conn.execute("SELECT key, value FROM meta"))
        for key, given in (("pool_size", pool_size), ("num_classes", num_classes)):
            if key in meta:
                if given is not None and int(given) != meta[key]:
                    raise ValueError(f"{self.path} was created with {key}={meta[key]}, not {given}")
            elif given is None:
                raise ValueError(f"{key} is required to create a new label store")
            else:
                given = _ints(key, given)[0]
                if given < (2 if key == "num_classes" else 1):
                    raise ValueError(f"{key} must be positive (>= 2 classes), got {given}")
                with self._conn:
                    self._conn.execute("INSERT INTO meta VALUES (?, ?)", (key, given))
                meta[key] = given
        self.pool_size = int(meta["pool_size"])
        self.num_classes = int(meta["num_classes"])

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> "LabelStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __len__(self) -> int:
        return int(self._conn.execute("SELECT COUNT(*) FROM labels").fetchone()[0])

    # ------------------------------------------------------------------ requests
    def request(self, indices: Iterable[int]) -> None:
        """Mark pool points as asked for (e.g. a learner's query), until they are labelled."""
        idx = self._check_indices(_ints("indices", indices))
        now = time.time()
        with self._conn:
            self._conn.executemany("INSERT OR IGNORE INTO requests VALUES (?, ?)",
                                   [(i, now) for i in idx])

    def pending(self) -> np.ndarray:
        """Requested pool indices not labelled yet, oldest request first."""
        rows = self._conn.execute("SELECT pool_index FROM requests ORDER BY created, pool_index")
        return np.array([r[0] for r in rows], dtype=np.int64)

    # ------------------------------------------------------------------ labels
    def _check_indices(self, idx: list[int]) -> list[int]:
        bad = [i for i in idx if not 0 <= i < self.pool_size]
        if bad:
            raise ValueError(f"index {bad[0]} is out of range for a pool of size {self.pool_size}")
        if len(set(idx)) != len(idx):
            raise ValueError("an index appears more than once in this call")
        return idx

    def add(self, indices: Iterable[int], labels: Iterable[int], *,
            annotator: Optional[str] = None) -> None:
        """Record labels in one transaction: all of them, or none if any is invalid or already
        labelled."""
        idx = self._check_indices(_ints("indices", indices))
        lab = _ints("labels", labels)
        if len(lab) != len(idx):
            raise ValueError(f"got {len(idx)} indices but {len(lab)} labels")
        bad = [y for y in lab if not 0 <= y < self.num_classes]
        if bad:
            raise ValueError(f"label {bad[0]} is out of range [0, {self.num_classes})")
        now = time.time()
        try:
            with self._conn:
                self._conn.executemany(
                    "INSERT INTO labels (pool_index, label, annotator, created) VALUES (?, ?, ?, ?)",
                    [(i, y, annotator, now) for i, y in zip(idx, lab)])
                self._conn.executemany("DELETE FROM requests WHERE pool_index = ?",
                                       [(i,) for i in idx])
        except sqlite3.IntegrityError:
            taken = {r[0] for r in self._conn.execute(
                f"SELECT pool_index FROM labels WHERE pool_index IN ({','.join('?' * len(idx))})", idx)}
            raise ValueError(f"index {min(taken)} is already labelled") from None

    def labelled(self) -> tuple[np.ndarray, np.ndarray]:
        """``(indices, labels)`` in the order they were recorded."""
        rows = self._conn.execute("SELECT pool_index, label FROM labels ORDER BY seq").fetchall()
        arr = np.array(rows, dtype=np.int64).reshape(-1, 2)
        return arr[:, 0].copy(), arr[:, 1].copy()

    def sync(self, learner: Any) -> np.ndarray:
        """Teach ``learner`` (an :class:`ntkal.ActiveLearner` over the same pool) every stored label
        it does not have; returns the indices taught. A stored label that contradicts the learner's
        is an error rather than silently ignored."""
        if learner.pool.size != self.pool_size:
            raise ValueError(f"the learner's pool has {learner.pool.size} points, the store "
                             f"{self.pool_size}")
        idx, lab = self.labelled()
        known = dict(zip(learner.labelled_indices.tolist(), learner.labels.tolist()))
        clash = [i for i, y in zip(idx.tolist(), lab.tolist()) if i in known and known[i] != y]
        if clash:
            raise ValueError(f"index {clash[0]} has label {known[clash[0]]} in the learner but a "
                             "different one in the store")
        new = np.array([i not in known for i in idx.tolist()], dtype=bool)
        if new.any():
            learner.teach(idx[new], lab[new])
        return idx[new]
