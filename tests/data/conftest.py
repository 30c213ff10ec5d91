"""Tiny on-disk datasets in the real formats, so loaders are tested without large downloads."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest

CIFAR_NAMES = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)


def write_cifar(folder: Path, per_batch: int = 20, n_test: int = 30, seed: int = 0) -> Path:
    """``cifar-10-batches-py`` with the real layout: pickled dicts with bytes keys."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)

    def dump(name: str, n: int) -> None:
        batch = {
            b"data": rng.integers(0, 256, size=(n, 3072), dtype=np.uint8),
            b"labels": [int(v) for v in np.arange(n) % 10],
            b"batch_label": name.encode(),
        }
        with open(folder / name, "wb") as fh:
            pickle.dump(batch, fh, protocol=2)

    for i in range(1, 6):
        dump(f"data_batch_{i}", per_batch)
    dump("test_batch", n_test)
    with open(folder / "batches.meta", "wb") as fh:
        pickle.dump({b"label_names": [n.encode() for n in CIFAR_NAMES]}, fh, protocol=2)
    return folder


def write_svhn(folder: Path, n_train: int = 40, n_test: int = 20, seed: int = 0) -> Path:
    """``train_32x32.mat`` / ``test_32x32.mat``: X is (32, 32, 3, n), y is (n, 1) with 10 for 0."""
    from scipy.io import savemat

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for name, n in (("train_32x32.mat", n_train), ("test_32x32.mat", n_test)):
        x = rng.integers(0, 256, size=(32, 32, 3, n), dtype=np.uint8)
        y = (np.arange(n) % 10 + 1).reshape(-1, 1).astype(np.uint8)  # labels 1..10
        savemat(folder / name, {"X": x, "y": y})
    return folder


@pytest.fixture
def make_cifar():
    """Factory writing a tiny ``cifar-10-batches-py`` folder (see :func:`write_cifar`)."""
    return write_cifar


@pytest.fixture
def make_svhn():
    """Factory writing tiny SVHN ``.mat`` files (see :func:`write_svhn`)."""
    return write_svhn


@pytest.fixture
def cifar_dir(tmp_path) -> Path:
    return write_cifar(tmp_path / "cifar-10-batches-py")


@pytest.fixture
def svhn_dir(tmp_path) -> Path:
    return write_svhn(tmp_path / "svhn")
