"""Class labels: the one validator every entry point (learner, trainer, datasets, pool, look-ahead)
checks labels with, so a bad label gets the same clear message wherever it comes in."""

from __future__ import annotations

import numbers
from typing import Any

import numpy as np

__all__ = ["as_class_labels"]


def as_class_labels(
    labels: Any,
    num_classes: int | None,
    *,
    name: str = "labels",
    expected: int | None = None,
    against: str = "inputs",
) -> np.ndarray:
    """``labels`` as a 1-D ``int64`` array of class indices in ``[0, num_classes)``.

    Parameters
    ----------
    labels : array-like of int, Tensor, or a single int
        Floats (even integral ones), bools, strings and complex values are refused: a float label
        is almost always a regression target or a probability passed by mistake.
    num_classes : int or None
        Labels must be below it; ``None`` checks only that they are ``>= 0``.
    name : str
        How the message names the labels (``"y_train"``, ``"labels"``...).
    expected : int, optional
        Required number of labels; ``against`` names what they must match one to one.

    Raises
    ------
    ValueError
        On any of the above, naming ``name``.
    """
    if hasattr(labels, "detach"):  # torch tensors, without importing torch here
        labels = labels.detach().cpu().numpy()
    if isinstance(labels, numbers.Integral) and not isinstance(labels, (bool, np.bool_)):
        labels = [labels]
    arr = np.asarray(labels)
    if arr.ndim == 0:
        arr = arr.reshape(1)
    if arr.size == 0 and arr.ndim == 1:
        arr = arr.astype(np.int64)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be a 1-D array of class indices, got shape {arr.shape}")
    if arr.dtype == np.bool_ or not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"{name} must hold integer class indices, got dtype {arr.dtype}")
    if expected is not None and arr.shape[0] != expected:
        raise ValueError(
            f"{name} and the {against} have different lengths: {expected} {against}, "
            f"{arr.shape[0]} labels; they must match one to one"
        )
    arr = arr.astype(np.int64)
    if arr.size:
        low, high = int(arr.min()), int(arr.max())
        if low < 0 or (num_classes is not None and high >= num_classes):
            bad = low if low < 0 else high
            if num_classes is None:
                raise ValueError(f"{name} has label {bad}: class labels must be >= 0")
            raise ValueError(
                f"{name} has labels in [{low}, {high}] but there are {num_classes} "
                f"classes: label {bad} is out of range (labels must lie in "
                f"[0, {num_classes}), i.e. valid labels are 0..{num_classes - 1})"
            )
    return arr
