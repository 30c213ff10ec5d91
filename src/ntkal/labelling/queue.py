"""Handing items to annotators: the held item, the next pick, opened, skipped and grid items.

Everything here runs under the session's lock and reads the session's store, leases, pick policy
and item view; :class:`~ntkal.labelling.engine.LabellingSession` delegates to it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from ntkal.labelling.validation import LabelConflict, as_client, as_index

__all__ = ["ItemQueue", "dashboard"]


class ItemQueue:
    """Which item each client sees (``session``: the :class:`LabellingSession` it serves)."""

    def __init__(self, session: Any) -> None:
        self.s = session

    def _free(self) -> Any:
        labelled = np.zeros(self.s.pool_size, dtype=bool)
        labelled[self.s.learner.labelled_indices] = True
        leases, skipped = self.s.leases, self.s.leases.skipped
        return labelled, (lambda i: not labelled[i] and i not in leases and i not in skipped)

    def release(self, index: Any, client: Any = None, *, skip: bool = False) -> bool:
        """Give back an item handed to ``client``; True if it was leased to it. ``skip=True``
        also puts it on the skipped list (not handed out again until opened from there) and
        drops the cached pick, so the next item differs."""
        index = as_index(index, self.s.pool_size)
        client = as_client(client)
        with self.s._lock:
            released = self.s.leases.release(index, client)
            if skip and self.s.store.label_of(index) is None:
                self.s.leases.skip(index, client)
                self.s.picks.forget_pick()
            return released

    def next_item(self, client: Any = "default") -> dict:
        """The item for ``client``: the one it holds, else a new one leased to it."""
        client = as_client(client)
        with self.s._lock:
            self.s.leases.expire()
            held = self.s.leases.held(client)
            if held is not None and self.s.store.label_of(held) is None:
                self.s.leases.lease(held, client)
                return self.describe(held, source="held")
            labelled, is_free = self._free()
            if labelled.all():
                return {"index": None, "done": True, "reason": "done"}
            index, source, seconds = self.s.picks.choose(self.s.trained, is_free)
            if index is None:
                reason = (
                    "every remaining item is skipped or with another annotator"
                    if self.s.leases.skipped
                    else "all remaining items are with other annotators"
                )
                return {"index": None, "done": False, "reason": reason}
            self.s.leases.lease(index, client)
            item = self.describe(index, source=source)
            item["query_ms"] = 1000 * seconds
            if source.startswith("look-ahead") and "prediction" in item:
                self.s.picks.speculate(index, item["prediction"]["label"])
            return item

    def open_item(self, index: Any, client: Any = "default") -> dict:
        """Hand a chosen item to ``client`` (from the skipped list, the grid or the history):
        labelled items are shown with their label; one held by another annotator is refused."""
        index = as_index(index, self.s.pool_size)
        client = as_client(client)
        with self.s._lock:
            holder = self.s.leases.holder(index)
            if holder is not None and holder != client:
                raise LabelConflict(f"item {index} is being labelled by another annotator")
            stored = self.s.store.label_of(index)
            self.s.leases.unskip(index)
            if stored is None:
                self.s.leases.lease(index, client)
            item = self.describe(index, source="opened")
            item["label"] = stored
            return item

    def skipped(self) -> list[dict]:
        """The skipped items, oldest first, with where they came from."""
        with self.s._lock:
            return [
                dict(index=i, skipped_by=who, **self.s.items.origin(i))
                for i, who in self.s.leases.skipped.items()
            ]

    def grid(self, n: Any, client: Any = "default") -> list[dict]:
        """Up to ``n`` upcoming free items (not leased) for fast triage on one screen."""
        from ntkal.arguments import as_int

        n = as_int(n, "n", minimum=1, maximum=100)
        with self.s._lock:
            _, is_free = self._free()
            held = self.s.leases.held(as_client(client))
            picks = self.s.picks.upcoming(self.s.trained, lambda i: i != held and is_free(i), n)
            return self._describe_many(picks, source="grid")

    def _describe_many(self, indices: Sequence[int], source: str) -> list[dict]:
        if not indices:
            return []
        logits = self.s.learner.predict_logits(
            self.s.x_pool[torch.as_tensor(list(indices))]
        ).double()
        probs = torch.softmax(logits, dim=1).numpy()
        out = []
        for index, p in zip(indices, probs):
            item = self.s.items.describe(index, p, self.s.classes, self.s.trained)
            item["source"] = source
            out.append(item)
        return out

    def describe(self, index: int, source: str = "") -> dict:
        """What the page shows about pool point ``index`` (see
        :meth:`~ntkal.labelling.items.ItemView.describe`)."""
        return self._describe_many([int(index)], source)[0]


def dashboard(session: Any) -> dict:
    """The page's dashboard for ``session``: counts, phase, strategy, the real number of scored
    candidates, latencies, retraining progress and the learning curve (caller holds the lock)."""
    counts = session.store.counts().tolist()
    total = [entry["total_ms"] for entry in session._latencies]
    labelled = int(sum(counts))
    spec = session.picks.speculator
    return {
        "pool_size": session.pool_size,
        "labelled": labelled,
        "unlabelled": session.pool_size - labelled,
        "classes": list(session.classes),
        "per_class": dict(zip(session.classes, counts)),
        "phase": session.phase,
        "trained": session.trained,
        "warmup": session.warmup,
        "strategy": session.strategy,
        "strategy_text": session.picks.description,
        "subset": session.subset,
        "scored": session.picks.scored(),
        "kind": session.kind,
        "latency": {
            "last": session._last_latency,
            "median_total_ms": float(np.median(total)) if total else None,
            "max_total_ms": float(np.max(total)) if total else None,
            "count": len(total),
        },
        "retrain": dict(vars(session._retrainer.status)),
        "curve": [{"labels": n, "accuracy": a} for n, a in session.store.evaluations()],
        "test_size": session.dataset.num_test,
        "leased": len(session.leases),
        "skipped": len(session.leases.skipped),
        "speculation": None
        if spec is None
        else {
            "hits": spec.hits,
            "relabelled": spec.relabelled,
            "misses": spec.misses,
            "disabled": spec.disabled,
        },
    }
