"""The :class:`Dataset` container every other part of ntkal consumes."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ntkal.data.labels import as_class_labels
from ntkal.data.sampling import subset_positions

__all__ = ["Dataset", "DatasetNotFoundError", "UNLABELLED"]


class DatasetNotFoundError(FileNotFoundError):
    """The files of a dataset are not where they were looked for; the message says how to get them."""


#: Label of a training point whose class is not known yet (an unlabelled pool point).
UNLABELLED = -1


def _unlabelled(y):
    """``(y with UNLABELLED replaced by 0, mask)`` for integer labels holding UNLABELLED, else None:
    the class-label checks then see valid labels there, and the mask puts them back."""
    y = torch.as_tensor(y)
    if y.is_floating_point() or y.is_complex() or y.dtype == torch.bool or y.ndim != 1:
        return None
    mask = y == UNLABELLED
    if not bool(mask.any()):
        return None
    return torch.where(mask, torch.zeros_like(y), y), mask


def _as_inputs(name: str, x) -> torch.Tensor:
    x = torch.as_tensor(x)
    if not x.is_floating_point():
        raise ValueError(
            f"{name} must hold normalised floating-point inputs, got dtype {x.dtype}; "
            "scale raw pixels before building a Dataset"
        )
    if x.ndim < 2:
        raise ValueError(
            f"{name} must have shape (N, ...) with at least 2 dimensions, got {tuple(x.shape)}"
        )
    x = x.to(torch.float32)
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name} contains NaN or infinite values")
    return x


@dataclass(frozen=True, eq=False, repr=False, init=False)
class Dataset:
    """A labelled train/test split, ready for training.

    Inputs are ``float32`` tensors (images as ``N x C x H x W``), already normalised with fixed
    per-dataset constants so that results never depend on which subset was loaded; labels are
    ``int64`` class indices. Arrays passed in are converted and validated on construction, so a
    malformed dataset fails here rather than deep inside training.

    Attributes
    ----------
    name : str
    x_train, y_train : Tensor
        Training inputs ``(N, *in_shape)`` and labels ``(N,)``; a label of :data:`UNLABELLED`
        (``-1``) marks a pool point whose class is not known yet (see :attr:`num_unlabelled`).
    x_test, y_test : Tensor
        Test inputs ``(M, *in_shape)`` and labels ``(M,)``.
    classes : tuple of str
        Class names; label ``i`` means ``classes[i]``.
    """

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    classes: tuple[str, ...]

    def __init__(
        self,
        name: str,
        x_train: torch.Tensor | np.ndarray,
        y_train: torch.Tensor | np.ndarray,
        x_test: torch.Tensor | np.ndarray,
        y_test: torch.Tensor | np.ndarray,
        classes: Sequence[str],
    ) -> None:
        # The dataclass __init__, taking arrays as well as tensors: __post_init__ converts them.
        for field, value in (
            ("name", name),
            ("x_train", x_train),
            ("y_train", y_train),
            ("x_test", x_test),
            ("y_test", y_test),
            ("classes", classes),
        ):
            object.__setattr__(self, field, value)
        self.__post_init__()

    def __post_init__(self) -> None:
        classes = tuple(str(c) for c in self.classes)
        if not classes:
            raise ValueError("a Dataset needs at least one class")
        if len(set(classes)) != len(classes):
            raise ValueError(f"class names must be distinct, got {classes}")
        unknown = _unlabelled(self.y_train)  # unlabelled pool points: training split only
        if unknown is not None:
            object.__setattr__(self, "y_train", unknown[0])
        k = len(classes)
        x_train = _as_inputs("x_train", self.x_train)
        x_test = _as_inputs("x_test", self.x_test)
        y_train = torch.from_numpy(as_class_labels(self.y_train, k, name="y_train"))
        y_test = torch.from_numpy(as_class_labels(self.y_test, k, name="y_test"))
        if x_train.shape[0] != y_train.shape[0]:
            raise ValueError(
                f"x_train has {x_train.shape[0]} rows but y_train has {y_train.shape[0]}"
            )
        if x_test.shape[0] != y_test.shape[0]:
            raise ValueError(f"x_test has {x_test.shape[0]} rows but y_test has {y_test.shape[0]}")
        if x_train.shape[1:] != x_test.shape[1:]:
            raise ValueError(
                f"train inputs have shape {tuple(x_train.shape[1:])} but test inputs "
                f"{tuple(x_test.shape[1:])}"
            )
        for field, value in (
            ("classes", classes),
            ("x_train", x_train),
            ("y_train", y_train),
            ("x_test", x_test),
            ("y_test", y_test),
        ):
            object.__setattr__(self, field, value)
        if unknown is not None:
            object.__setattr__(self, "y_train", torch.where(unknown[1], UNLABELLED, self.y_train))

    @property
    def num_classes(self) -> int:
        """Number of classes, ``len(classes)``."""
        return len(self.classes)

    @property
    def in_shape(self) -> tuple[int, ...]:
        """Shape of one input, e.g. ``(1, 28, 28)``; what ``build_model`` needs."""
        return tuple(int(s) for s in self.x_train.shape[1:])

    @property
    def num_unlabelled(self) -> int:
        """Training points whose label is unknown (:data:`UNLABELLED`)."""
        return int((self.y_train == UNLABELLED).sum())

    @property
    def num_train(self) -> int:
        return int(self.x_train.shape[0])

    @property
    def num_test(self) -> int:
        return int(self.x_test.shape[0])

    def subset(
        self, train_size: int | None = None, test_size: int | None = None, *, seed: int = 0
    ) -> Dataset:
        """A seeded, stratified subset of the train and/or test split (``None`` keeps a split whole).

        The train and test choices use independent streams of ``seed``, so changing ``test_size``
        does not change which training points are kept.
        """
        train_idx = subset_positions(self.y_train.numpy(), train_size, seed, 0, "train_size")
        test_idx = subset_positions(self.y_test.numpy(), test_size, seed, 1, "test_size")

        def pick(t, i):
            return t if i is None else t[torch.from_numpy(i)]

        return Dataset(
            self.name,
            pick(self.x_train, train_idx),
            pick(self.y_train, train_idx),
            pick(self.x_test, test_idx),
            pick(self.y_test, test_idx),
            self.classes,
        )

    def __repr__(self) -> str:
        return (
            f"Dataset(name={self.name!r}, train={self.num_train}, test={self.num_test}, "
            f"in_shape={self.in_shape}, num_classes={self.num_classes})"
        )
