"""Labelled / unlabelled bookkeeping for a pool of training points."""

from __future__ import annotations

import numbers
from collections.abc import Iterable
from typing import Any

import numpy as np

from ntkal.arguments import is_integer
from ntkal.data.labels import as_class_labels
from ntkal.data.sampling import stratified_indices

__all__ = ["Pool"]

_STATE_VERSION = 1


def _check_size(size: Any) -> int:
    if not is_integer(size):
        raise TypeError(f"pool size must be an integer, got {type(size).__name__}")
    if size < 0:
        raise ValueError(f"pool size must be >= 0, got {size}")
    return int(size)


def _as_index_array(indices: int | Iterable[int] | np.ndarray) -> np.ndarray:
    """Indices as an ``int64`` array, refusing anything that is not an integer (floats, bools)."""
    if isinstance(indices, (bool, np.bool_)):
        raise ValueError("indices must be integers, got a bool")
    if isinstance(indices, (int, numbers.Integral)):  # is_integer, as bools were refused above
        return np.array([int(indices)], dtype=np.int64)
    if isinstance(indices, (str, bytes)):
        raise ValueError(f"indices must be integers, got {type(indices).__name__}")
    if hasattr(indices, "detach"):  # torch tensors, without importing torch here
        indices = np.asarray(indices.detach().cpu().numpy())
    if not isinstance(indices, np.ndarray):
        indices = list(indices)
        bad = next((v for v in indices if not is_integer(v)), None)
        if bad is not None:
            raise ValueError(f"indices must be integers, got {bad!r}")
    arr = np.asarray(indices)
    if arr.ndim > 1:
        raise ValueError(f"indices must be one-dimensional, got shape {arr.shape}")
    if arr.size == 0:
        return np.zeros(0, dtype=np.int64)
    if arr.dtype == np.bool_ or not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"indices must be integers, got dtype {arr.dtype}")
    return arr.astype(np.int64).reshape(-1)


class Pool:
    """Which points of a size-``size`` pool are labelled, and in which order they were labelled.

    The order matters: experiments report accuracy against the number of labels, and a saved run
    must resume with exactly the same labelled set. Every mutating call validates all its input
    first, so a rejected call leaves the pool unchanged.

    Parameters
    ----------
    size : int
        Number of points in the pool; indices are ``0 .. size - 1``.
    labelled : iterable of int, optional
        Indices labelled from the start, in labelling order.

    Notes
    -----
    ``len(pool)`` is the pool size (labelled + unlabelled).
    """

    def __init__(self, size: int, labelled: Iterable[int] = ()) -> None:
        self._size = _check_size(size)
        self._mask = np.zeros(self._size, dtype=bool)
        self._order: list[int] = []
        self.label(labelled)

    # ------------------------------------------------------------------ views
    @property
    def size(self) -> int:
        """Total number of points in the pool."""
        return self._size

    @property
    def labelled_indices(self) -> np.ndarray:
        """Labelled indices in the order they were labelled (a fresh ``int64`` array)."""
        return np.array(self._order, dtype=np.int64)

    @property
    def unlabelled_indices(self) -> np.ndarray:
        """Unlabelled indices, sorted ascending (a fresh ``int64`` array)."""
        return np.flatnonzero(~self._mask).astype(np.int64)

    @property
    def num_labelled(self) -> int:
        return len(self._order)

    @property
    def num_unlabelled(self) -> int:
        return self._size - len(self._order)

    def __len__(self) -> int:
        return self._size

    def __repr__(self) -> str:
        return f"Pool(size={self._size}, labelled={self.num_labelled}, unlabelled={self.num_unlabelled})"

    def is_labelled(self, index: int) -> bool:
        """Whether pool index ``index`` is labelled."""
        i = _as_index_array(index)
        if i.shape[0] != 1:
            raise ValueError("is_labelled takes a single index")
        self._check_range(i)
        return bool(self._mask[i[0]])

    def class_counts(self, y, num_classes: int | None = None) -> np.ndarray:
        """How many labelled points fall in each class.

        Parameters
        ----------
        y : array of int, shape (size,)
            Labels of the whole pool (only the labelled entries are read).
        num_classes : int, optional
            Length of the result; defaults to ``max(y) + 1`` over the whole pool so that classes
            with no labelled point yet still appear as zeros.
        """
        y = as_class_labels(y, None, name="y")
        if y.shape[0] != self._size:
            raise ValueError(f"y has {y.shape[0]} labels but the pool has {self._size} points")
        if num_classes is None:
            num_classes = int(y.max()) + 1 if y.size else 0
        labels = as_class_labels(
            y[self.labelled_indices], int(num_classes), name="the labelled points' y"
        )
        return np.bincount(labels, minlength=int(num_classes)).astype(np.int64)

    # --------------------------------------------------------------- mutation
    def _check_range(self, idx: np.ndarray) -> None:
        bad = idx[(idx < 0) | (idx >= self._size)]
        if bad.size:
            raise ValueError(f"index {int(bad[0])} is out of range for a pool of size {self._size}")

    def label(self, indices: int | Iterable[int] | np.ndarray) -> np.ndarray:
        """Mark ``indices`` as labelled, appending them to the labelling order.

        Raises
        ------
        ValueError
            On a non-integer, out-of-range, repeated (within the call) or already-labelled index.
            Nothing is labelled when an error is raised.

        Returns
        -------
        numpy.ndarray
            The newly labelled indices as ``int64``.
        """
        idx = _as_index_array(indices)
        if idx.size == 0:
            return idx
        self._check_range(idx)
        uniq, counts = np.unique(idx, return_counts=True)
        if (counts > 1).any():
            raise ValueError(
                f"index {int(uniq[counts > 1][0])} appears more than once in this call"
            )
        already = idx[self._mask[idx]]
        if already.size:
            raise ValueError(f"index {int(already[0])} is already labelled")
        self._mask[idx] = True
        self._order.extend(idx.tolist())
        return idx

    def copy(self) -> Pool:
        """An independent copy (labelling one does not affect the other)."""
        return Pool(self._size, self._order)

    # -------------------------------------------------------- construction
    @classmethod
    def random_initial(
        cls, size: int, n_initial: int, seed: int, y=None, stratified: bool = False
    ) -> Pool:
        """A pool with ``n_initial`` points labelled at random, reproducibly from ``seed``.

        Parameters
        ----------
        size, n_initial : int
            Pool size and number of initially labelled points (``0 <= n_initial <= size``).
        seed : int
        y : array of int, optional
            Pool labels; required when ``stratified``.
        stratified : bool
            Keep class proportions, with at least one point per class whenever
            ``n_initial >= number of classes`` (so the first model sees every class).
        """
        size = _check_size(size)
        if not is_integer(n_initial):
            raise TypeError(f"n_initial must be an integer, got {type(n_initial).__name__}")
        if not 0 <= n_initial <= size:
            raise ValueError(
                f"n_initial must be between 0 and the pool size {size}, got {n_initial}"
            )
        rng = np.random.default_rng(seed)
        if y is not None:
            y = as_class_labels(y, None, name="y")
            if y.shape[0] != size:
                raise ValueError(f"y has {y.shape[0]} labels but the pool has {size} points")
        if stratified:
            if y is None:
                raise ValueError("stratified=True needs the pool labels y")
            chosen = stratified_indices(y, int(n_initial), rng)
        else:
            chosen = np.sort(rng.choice(size, size=int(n_initial), replace=False)).astype(np.int64)
        return cls(size, chosen)

    def state_dict(self) -> dict[str, Any]:
        """JSON-serialisable state (plain ints and lists) for saving and resuming a run."""
        return {"version": _STATE_VERSION, "size": self._size, "labelled": list(self._order)}

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> Pool:
        """Rebuild a pool from :meth:`state_dict`, validating it like any other input."""
        if not isinstance(state, dict) or "size" not in state or "labelled" not in state:
            raise ValueError("a Pool state must be a dict with keys 'size' and 'labelled'")
        version = state.get("version", _STATE_VERSION)
        if version != _STATE_VERSION:
            raise ValueError(
                f"unsupported Pool state version {version!r} (expected {_STATE_VERSION})"
            )
        return cls(state["size"], state["labelled"])
