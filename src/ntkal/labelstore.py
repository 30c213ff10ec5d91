"""A durable label store for people labelling their own pool (standard-library SQLite).

Labels typed by a person are the expensive part of active learning; keeping them in a SQLite file
(one transaction per call, committed before the call returns) means a crash, a ``kill -9`` or a
closed notebook loses nothing, several labelling sessions (threads or processes) can append to one
file, and the learner can be rebuilt from the store at any time::

    store = LabelStore("labels.sqlite", pool_size=len(x_pool), num_classes=10)
    idx = learner.query(20)
    store.request(idx)                      # what to show the annotator
    store.add([idx[0]], [3], annotator="ana")
    store.sync(learner)                     # teach the learner every label it does not have yet

Concurrency: the file is in WAL mode, so readers never block the writer; a writer waits at most
``timeout`` seconds in all for another one (SQLite's busy timeout, retried until that deadline)
and then fails with :class:`LabelStoreError` naming the file. A labelling server passes a short
timeout so that a stuck writer fails that one request, not the whole page; :func:`claim_store`
keeps a second server off the same file for the first one's life. Creating a store is idempotent:
several processes
opening a new file at once agree on one ``meta`` row set, or fail if they disagree on the sizes.
One :class:`LabelStore` object may be shared by threads (its calls are serialised by a lock).
"""

from __future__ import annotations

import csv
import errno
import io
import json
import numbers
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

import numpy as np

__all__ = ["LabelStore", "LabelStoreError", "StoreClaim", "claim_store", "csv_safe"]

_EVENTS = """CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    pool_index INTEGER NOT NULL,
    label INTEGER NOT NULL,
    previous INTEGER NOT NULL,
    annotator TEXT,
    created REAL NOT NULL
)"""
_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL)",
    """CREATE TABLE IF NOT EXISTS labels (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    pool_index INTEGER NOT NULL UNIQUE,
    label INTEGER NOT NULL,
    annotator TEXT,
    created REAL NOT NULL
)""",
    "CREATE TABLE IF NOT EXISTS requests (pool_index INTEGER PRIMARY KEY, created REAL NOT NULL)",
    _EVENTS,
    """CREATE TABLE IF NOT EXISTS evaluations (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    num_labels INTEGER NOT NULL,
    accuracy REAL NOT NULL,
    created REAL NOT NULL
)""",
)
T = TypeVar("T")
#: First characters a spreadsheet reads as a formula (OWASP "CSV injection"), tab and CR included.
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def csv_safe(value: Any) -> Any:
    """``value`` for a CSV cell: text that a spreadsheet would run as a formula gets a leading
    ``'`` (OWASP's advice on CSV injection); numbers and other text are unchanged."""
    if isinstance(value, str) and value.startswith(_FORMULA_START):
        return "'" + value
    return value


class LabelStoreError(RuntimeError):
    """The label file cannot be opened, created or written (locked, read-only, not a database);
    the message names the file."""


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
    timeout : float
        Seconds a write waits for another writer before :class:`LabelStoreError`.

    Raises
    ------
    LabelStoreError
        The file is not a SQLite database, its folder is not writable, or it stays locked.
    ValueError
        Sizes missing for a new file, or different from the file's.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        pool_size: int | None = None,
        num_classes: int | None = None,
        timeout: float = 10.0,
    ) -> None:
        self.path = str(path)
        self.timeout = float(timeout)
        self._lock = threading.RLock()
        if self.path != ":memory:":
            folder = os.path.dirname(os.path.abspath(self.path))
            if not os.path.isdir(folder):
                raise LabelStoreError(
                    f"cannot create label store {self.path}: folder {folder} does not exist"
                )
            if os.path.isdir(self.path):
                raise LabelStoreError(f"label store {self.path} is a folder, not a file")
        try:
            # isolation_level=None: transactions are explicit (BEGIN IMMEDIATE ... COMMIT).
            self._conn = sqlite3.connect(
                self.path, timeout=self.timeout, isolation_level=None, check_same_thread=False
            )
        except sqlite3.Error as err:
            raise LabelStoreError(f"cannot open label store {self.path}: {err}") from None
        try:
            self._setup(pool_size, num_classes)
        except BaseException:
            self._conn.close()
            raise

    # ------------------------------------------------------------------ set-up
    def _explain(self, err: sqlite3.Error) -> LabelStoreError:
        text = str(err)
        if isinstance(err, sqlite3.DatabaseError) and "not a database" in text:
            return LabelStoreError(f"{self.path} is not a label store (not a SQLite database)")
        if "readonly" in text or "read-only" in text or "unable to open" in text:
            return LabelStoreError(
                f"label store {self.path} cannot be written ({text}); check the "
                "permissions of the file and of its folder (SQLite writes "
                "journal files beside it)"
            )
        if "locked" in text or "busy" in text:
            return LabelStoreError(
                f"label store {self.path} stayed locked by another writer for "
                f"{self.timeout:g} s; nothing was changed by this request. Is "
                "another process (a sqlite3 shell, a stuck script) holding it?"
            )
        return LabelStoreError(f"label store {self.path}: {text}")

    def _retry(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` (one whole transaction), retrying while the database is locked, for at most
        ``timeout`` seconds in all (SQLite's busy handler waits inside each try)."""
        deadline = time.monotonic() + self.timeout
        attempt = 0
        while True:
            try:
                with self._lock:
                    return fn()
            except sqlite3.OperationalError as err:
                locked = "locked" in str(err) or "busy" in str(err)
                if not locked or time.monotonic() + 0.05 * (attempt + 1) >= deadline:
                    raise self._explain(err) from None
                time.sleep(0.05 * (attempt + 1))
                attempt += 1
            except sqlite3.IntegrityError:
                raise  # a constraint (e.g. an index labelled twice): the caller explains it
            except sqlite3.DatabaseError as err:
                raise self._explain(err) from None

    def _transaction(self, body: Callable[[sqlite3.Connection], T]) -> T:
        """``body`` inside ``BEGIN IMMEDIATE`` (the write lock taken up front), committed before
        returning, rolled back on any error."""

        def run() -> T:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                out = body(self._conn)
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")
            return out

        return self._retry(run)

    def _read(self, sql: str, params: tuple = ()) -> list[tuple]:
        return self._retry(lambda: self._conn.execute(sql, params).fetchall())

    def _setup(self, pool_size: int | None, num_classes: int | None) -> None:
        def pragmas() -> None:
            self._conn.execute(f"PRAGMA busy_timeout = {int(self.timeout * 1000)}")
            if self.path != ":memory:":
                self._conn.execute("PRAGMA journal_mode = WAL")
            self._conn.execute("PRAGMA synchronous = FULL")

        self._retry(pragmas)
        given = {}
        for key, value in (("pool_size", pool_size), ("num_classes", num_classes)):
            if value is not None:
                value = _ints(key, value)[0]
                if value < (2 if key == "num_classes" else 1):
                    raise ValueError(f"{key} must be positive (>= 2 classes), got {value}")
                given[key] = value

        def create(conn: sqlite3.Connection) -> dict:
            for statement in _SCHEMA:
                conn.execute(statement)
            meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
            missing = [k for k in ("pool_size", "num_classes") if k not in meta]
            if missing and not all(k in given for k in missing):
                need = [k for k in missing if k not in given]
                raise ValueError(
                    f"{' and '.join(need)} required to create a new label store ({self.path})"
                )
            for key in missing:  # first creator wins; INSERT OR IGNORE never races
                conn.execute("INSERT OR IGNORE INTO meta VALUES (?, ?)", (key, given[key]))
            return dict(conn.execute("SELECT key, value FROM meta").fetchall())

        meta = self._existing_meta()
        if meta is None:  # a new file (or one being created right now by another process)
            meta = self._transaction(create)
        elif not self._has_table("events"):  # a file written before relabelling existed
            self._transaction(lambda c: c.execute(_EVENTS))
        for key, value in given.items():
            if meta[key] != value:
                raise ValueError(f"{self.path} was created with {key}={meta[key]}, not {value}")
        self.pool_size = int(meta["pool_size"])
        self.num_classes = int(meta["num_classes"])

    def _existing_meta(self) -> dict | None:
        """The sizes of a fully created store, read without taking the write lock; None if the
        file still needs creating."""

        def read() -> dict | None:
            try:
                tables = {
                    r[0]
                    for r in self._conn.execute(
                        "SELECT name FROM sqlite_master WHERE type = 'table'"
                    ).fetchall()
                }
                if not {"meta", "labels", "requests", "evaluations"} <= tables:
                    return None
                meta = dict(self._conn.execute("SELECT key, value FROM meta").fetchall())
            except sqlite3.OperationalError as err:
                if "no such table" in str(err):
                    return None
                raise
            return meta if {"pool_size", "num_classes"} <= set(meta) else None

        return self._retry(read)

    def _has_table(self, name: str) -> bool:
        return bool(
            self._read("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (name,))
        )

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __enter__(self) -> LabelStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __len__(self) -> int:
        return int(self._read("SELECT COUNT(*) FROM labels")[0][0])

    # ------------------------------------------------------------------ requests
    def request(self, indices: Iterable[int]) -> None:
        """Mark pool points as asked for (e.g. a learner's query), until they are labelled."""
        idx = self._check_indices(_ints("indices", indices))
        now = time.time()
        self._transaction(
            lambda c: c.executemany(
                "INSERT OR IGNORE INTO requests VALUES (?, ?)", [(i, now) for i in idx]
            )
        )

    def pending(self) -> np.ndarray:
        """Requested pool indices not labelled yet, oldest request first."""
        rows = self._read("SELECT pool_index FROM requests ORDER BY created, pool_index")
        return np.array([r[0] for r in rows], dtype=np.int64)

    # ------------------------------------------------------------------ labels
    def _check_indices(self, idx: list[int]) -> list[int]:
        bad = [i for i in idx if not 0 <= i < self.pool_size]
        if bad:
            raise ValueError(f"index {bad[0]} is out of range for a pool of size {self.pool_size}")
        if len(set(idx)) != len(idx):
            raise ValueError("an index appears more than once in this call")
        return idx

    def _check_labels(self, idx: list[int], labels: Iterable[int]) -> list[int]:
        lab = _ints("labels", labels)
        if len(lab) != len(idx):
            raise ValueError(f"got {len(idx)} indices but {len(lab)} labels")
        bad = [y for y in lab if not 0 <= y < self.num_classes]
        if bad:
            raise ValueError(f"label {bad[0]} is out of range [0, {self.num_classes})")
        return lab

    def add(
        self, indices: Iterable[int], labels: Iterable[int], *, annotator: str | None = None
    ) -> None:
        """Record labels in one transaction: all of them, or none if any is invalid or already
        labelled. The labels are on disk when this returns."""
        idx = self._check_indices(_ints("indices", indices))
        lab = self._check_labels(idx, labels)
        now = time.time()

        def insert(conn: sqlite3.Connection) -> None:
            conn.executemany(
                "INSERT INTO labels (pool_index, label, annotator, created) VALUES (?, ?, ?, ?)",
                [(i, y, annotator, now) for i, y in zip(idx, lab)],
            )
            conn.executemany("DELETE FROM requests WHERE pool_index = ?", [(i,) for i in idx])

        try:
            self._transaction(insert)
        except sqlite3.IntegrityError:
            taken = {
                r[0]
                for r in self._read(
                    f"SELECT pool_index FROM labels WHERE pool_index IN ({','.join('?' * len(idx))})",
                    tuple(idx),
                )
            }
            raise ValueError(f"index {min(taken)} is already labelled") from None

    def label_of(self, index: int) -> int | None:
        """The stored label of pool point ``index``, or None."""
        rows = self._read("SELECT label FROM labels WHERE pool_index = ?", (int(index),))
        return int(rows[0][0]) if rows else None

    def undo_last(self, annotator: str | None = None) -> tuple[int, int] | None:
        """Delete the most recent label (of ``annotator`` if given); returns ``(index, label)``,
        or None if there is none. The point becomes unlabelled (and requested) again."""

        def undo(conn: sqlite3.Connection) -> tuple[int, int] | None:
            if annotator is None:
                row = conn.execute(
                    "SELECT seq, pool_index, label FROM labels ORDER BY seq DESC LIMIT 1"
                ).fetchone()
            else:
                row = conn.execute(
                    "SELECT seq, pool_index, label FROM labels WHERE annotator = ? "
                    "ORDER BY seq DESC LIMIT 1",
                    (annotator,),
                ).fetchone()
            if row is None:
                return None
            conn.execute("DELETE FROM labels WHERE seq = ?", (row[0],))
            conn.execute("INSERT OR IGNORE INTO requests VALUES (?, ?)", (row[1], time.time()))
            return int(row[1]), int(row[2])

        return self._transaction(undo)

    def labelled(self) -> tuple[np.ndarray, np.ndarray]:
        """``(indices, labels)`` in the order they were recorded."""
        rows = self._read("SELECT pool_index, label FROM labels ORDER BY seq")
        arr = np.array(rows, dtype=np.int64).reshape(-1, 2)
        return arr[:, 0].copy(), arr[:, 1].copy()

    def counts(self) -> np.ndarray:
        """Number of labels per class, ``(num_classes,)``."""
        out = np.zeros(self.num_classes, dtype=np.int64)
        for label, n in self._read("SELECT label, COUNT(*) FROM labels GROUP BY label"):
            out[int(label)] = int(n)
        return out

    # ------------------------------------------------------------------ export / import
    def records(
        self,
        classes: Iterable[str] | None = None,
        origin: Callable[[int], dict] | None = None,
    ) -> list[dict]:
        """Every label as ``{index, label, annotator, created}`` (``class`` too when ``classes``
        names the labels; the fields of ``origin(index)`` too, e.g. the file or data row the pool
        point came from), in the order recorded."""
        names = list(classes) if classes is not None else None
        rows = self._read("SELECT pool_index, label, annotator, created FROM labels ORDER BY seq")
        out = []
        for i, y, who, created in rows:
            rec: dict[str, Any] = {"index": int(i), "label": int(y)}
            if names is not None:
                rec["class"] = names[int(y)]
            if origin is not None:
                rec.update(origin(int(i)))
            rec.update(annotator=who, created=float(created))
            out.append(rec)
        return out

    def export_csv(
        self,
        classes: Iterable[str] | None = None,
        origin: Callable[[int], dict] | None = None,
    ) -> str:
        """:meth:`records` as CSV text with a header (``index,label[,class][,origin
        fields],annotator,created``). Text cells a spreadsheet would run as a formula are escaped
        (:func:`csv_safe`)."""
        recs = self.records(classes, origin)
        fields = (
            list(recs[0])
            if recs
            else (
                ["index", "label"]
                + (["class"] if classes is not None else [])
                + (list(origin(0)) if origin is not None and self.pool_size else [])
                + ["annotator", "created"]
            )
        )
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
        writer.writeheader()
        writer.writerows({k: csv_safe(v) for k, v in rec.items()} for rec in recs)
        return buf.getvalue()

    def export_json(
        self,
        classes: Iterable[str] | None = None,
        origin: Callable[[int], dict] | None = None,
    ) -> str:
        """:meth:`records` as a JSON document ``{"pool_size", "num_classes", "labels": [...]}``."""
        return json.dumps(
            {
                "pool_size": self.pool_size,
                "num_classes": self.num_classes,
                "labels": self.records(classes, origin),
            },
            indent=1,
        )

    def import_labels(
        self, indices: Iterable[int], labels: Iterable[int], *, annotator: str | None = "import"
    ) -> dict:
        """Add labels from elsewhere in one transaction. Labels already stored with the same value
        are skipped; a different stored value is an error and nothing is added. Returns
        ``{"added": n, "skipped": n}``."""
        idx = self._check_indices(_ints("indices", indices))
        lab = self._check_labels(idx, labels)
        now = time.time()

        def merge(conn: sqlite3.Connection) -> dict:
            added = skipped = 0
            for i, y in zip(idx, lab):
                row = conn.execute("SELECT label FROM labels WHERE pool_index = ?", (i,)).fetchone()
                if row is not None:
                    if int(row[0]) != y:
                        raise ValueError(
                            f"index {i} is already labelled {int(row[0])}, the import "
                            f"says {y}; nothing was imported"
                        )
                    skipped += 1
                    continue
                conn.execute(
                    "INSERT INTO labels (pool_index, label, annotator, created) "
                    "VALUES (?, ?, ?, ?)",
                    (i, y, annotator, now),
                )
                conn.execute("DELETE FROM requests WHERE pool_index = ?", (i,))
                added += 1
            return {"added": added, "skipped": skipped}

        return self._transaction(merge)

    # ------------------------------------------------------------------ relabelling
    def relabel(self, index: int, label: int, *, annotator: str | None = None) -> int:
        """Change the stored label of ``index`` to ``label``; returns the previous label.

        The change is a new row of the ``events`` log (who, when, from what), so nothing typed is
        ever overwritten without a trace; the point keeps its place in the labelling order.
        """
        idx = self._check_indices(_ints("index", [index]))
        lab = self._check_labels(idx, [label])

        def change(conn: sqlite3.Connection) -> int:
            row = conn.execute("SELECT label FROM labels WHERE pool_index = ?", idx).fetchone()
            if row is None:
                raise ValueError(f"item {idx[0]} has no label to change")
            conn.execute("UPDATE labels SET label = ? WHERE pool_index = ?", (lab[0], idx[0]))
            conn.execute(
                "INSERT INTO events (pool_index, label, previous, annotator, created) "
                "VALUES (?, ?, ?, ?, ?)",
                (idx[0], lab[0], int(row[0]), annotator, time.time()),
            )
            return int(row[0])

        return self._transaction(change)

    def changes(self) -> list[dict]:
        """Every relabelling, oldest first: ``{index, label, previous, annotator, created}``."""
        rows = self._read(
            "SELECT pool_index, label, previous, annotator, created FROM events ORDER BY seq"
        )
        return [
            {
                "index": int(i),
                "label": int(y),
                "previous": int(p),
                "annotator": who,
                "created": float(t),
            }
            for i, y, p, who, t in rows
        ]

    def recent(self, limit: int) -> list[dict]:
        """The ``limit`` most recently labelled points, newest first:
        ``{index, label, annotator, created}`` (``label`` is the current one)."""
        rows = self._read(
            "SELECT pool_index, label, annotator, created FROM labels ORDER BY seq DESC LIMIT ?",
            (int(limit),),
        )
        return [
            {"index": int(i), "label": int(y), "annotator": who, "created": float(t)}
            for i, y, who, t in rows
        ]

    # ------------------------------------------------------------------ evaluations
    def add_evaluation(self, num_labels: int, accuracy: float) -> None:
        """Record a held-out accuracy after training on ``num_labels`` labels (a learning curve)."""
        accuracy = float(accuracy)
        if not 0.0 <= accuracy <= 1.0:
            raise ValueError(f"accuracy must lie in [0, 1], got {accuracy}")
        self._transaction(
            lambda c: c.execute(
                "INSERT INTO evaluations (num_labels, accuracy, created) VALUES (?, ?, ?)",
                (int(num_labels), accuracy, time.time()),
            )
        )

    def evaluations(self) -> list[tuple[int, float]]:
        """``(num_labels, accuracy)`` in the order recorded."""
        return [
            (int(n), float(a))
            for n, a in self._read("SELECT num_labels, accuracy FROM evaluations ORDER BY seq")
        ]

    # ------------------------------------------------------------------ learners
    def sync(self, learner: Any) -> np.ndarray:
        """Teach ``learner`` (an :class:`ntkal.ActiveLearner` over the same pool) every stored label
        it does not have; returns the indices taught. A stored label that contradicts the learner's
        is an error rather than silently ignored."""
        if learner.pool.size != self.pool_size:
            raise ValueError(
                f"the learner's pool has {learner.pool.size} points, the store {self.pool_size}"
            )
        idx, lab = self.labelled()
        known = dict(zip(learner.labelled_indices.tolist(), learner.labels.tolist()))
        clash = [i for i, y in zip(idx.tolist(), lab.tolist()) if i in known and known[i] != y]
        if clash:
            raise ValueError(
                f"index {clash[0]} has label {known[clash[0]]} in the learner but a "
                "different one in the store"
            )
        new = np.array([i not in known for i in idx.tolist()], dtype=bool)
        if new.any():
            learner.teach(idx[new], lab[new])
        return idx[new]


class StoreClaim:
    """An exclusive ``flock`` on ``<store>.lock``, held until :meth:`release` (or the process
    ends: the kernel drops it even after ``kill -9``, so a stale file never blocks a restart)."""

    def __init__(self, path: str, handle: Any) -> None:
        self.path = path
        self._handle = handle

    def release(self) -> None:
        if self._handle is not None:
            self._handle.close()  # closing the descriptor drops the lock
            self._handle = None

    def __enter__(self) -> StoreClaim:
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def claim_store(path: str | os.PathLike) -> StoreClaim:
    """Claim the label store at ``path`` for one server.

    Two servers on one store would hand out items the other has labelled, undo each other's
    labels and write one weights file; the second therefore fails here with a message naming the
    store (several *clients* of one server are fine, as are scripts using :class:`LabelStore`).

    Raises
    ------
    LabelStoreError
        Another process holds the claim, or the lock file cannot be created.
    """
    import fcntl

    lock_path = os.fspath(path) + ".lock"
    try:
        handle = open(lock_path, "a+")
    except OSError as err:
        raise LabelStoreError(f"cannot create the lock file {lock_path}: {err.strerror}") from None
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as err:
        handle.close()
        if err.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
            raise LabelStoreError(
                f"label store {os.fspath(path)} is already being served by "
                "another ntkal label process; open that server's page, stop it "
                "first, or pass another --store"
            ) from None
        raise LabelStoreError(f"cannot lock {lock_path}: {err.strerror}") from None
    return StoreClaim(lock_path, handle)
