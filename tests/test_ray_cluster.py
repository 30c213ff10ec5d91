"""The shared wait/cancel loop of :mod:`ntkal.ray_cluster`, on a stand-in for the ``ray`` module
(the real one is exercised by tests/kernels/test_distributed.py and
tests/experiments/test_ray_runner.py)."""

from __future__ import annotations

import pytest

from ntkal.ray_cluster import RayTaskFailed, as_completed


class _TaskError(Exception):
    def __init__(self, cause):
        super().__init__(str(cause))
        self.cause = cause


class _FakeRay:
    """Refs are strings; ``results`` maps a ref to its value or to an exception it raises.
    ``wait`` hands back the pending refs in ``order``."""

    class exceptions:
        RayTaskError = _TaskError

    def __init__(self, results, order):
        self.results, self.order, self.cancelled = results, list(order), []

    def wait(self, refs, num_returns=1):
        ready = next(r for r in self.order if r in refs)
        self.order.remove(ready)
        return [ready], [r for r in refs if r != ready]

    def get(self, ref):
        value = self.results[ref]
        if isinstance(value, Exception):
            raise _TaskError(value)
        return value

    def cancel(self, ref, force=False):
        self.cancelled.append((ref, force))


def test_results_come_in_completion_order_and_pending_may_grow():
    ray = _FakeRay({"a": 1, "b": 2, "c": 3}, order=["b", "a", "c"])
    pending = {"a": "key-a", "b": "key-b"}
    seen = []
    for key, value in as_completed(ray, pending):
        seen.append((key, value))
        if key == "key-b":
            pending["c"] = "key-c"  # a freed worker gets the next part
    assert seen == [("key-b", 2), ("key-a", 1), ("key-c", 3)]
    assert ray.cancelled == []


def test_a_failed_task_names_its_key_and_cancels_the_rest():
    boom = ValueError("bad part")
    ray = _FakeRay({"a": boom, "b": 2}, order=["a", "b"])
    with pytest.raises(RayTaskFailed, match="ValueError: bad part") as err:
        list(as_completed(ray, {"a": (0, "actor"), "b": (1, "actor")}, force_cancel=True))
    assert err.value.key == (0, "actor") and err.value.cause is boom
    assert ray.cancelled == [("b", True)]


def test_leaving_the_loop_early_cancels_what_still_runs():
    ray = _FakeRay({"a": 1, "b": 2, "c": 3}, order=["a", "b", "c"])
    loop = as_completed(ray, {"a": "a", "b": "b", "c": "c"})
    assert next(loop) == ("a", 1)
    loop.close()  # the caller raised, or was interrupted
    assert sorted(ray.cancelled) == [("b", False), ("c", False)]
