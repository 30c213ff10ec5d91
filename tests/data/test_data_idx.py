"""IDX parser: real MNIST / Fashion-MNIST files, round trips, and corrupted input."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest

from ntkal.data import IDXFormatError, read_idx, write_idx

FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
MNIST_DIR = Path(__file__).resolve().parents[2] / "data" / "mnist" / "package" / "data"


def _need(path: Path, how: str) -> Path:
    if not path.is_file():
        pytest.skip(f"{path} is absent; install it with {how}")
    return path


def _check_real(folder: Path, suffix: str, how: str) -> tuple[np.ndarray, np.ndarray]:
    x = read_idx(_need(folder / f"train-images-idx3-ubyte{suffix}", how), ndim=3)
    y = read_idx(_need(folder / f"train-labels-idx1-ubyte{suffix}", how), ndim=1)
    xt = read_idx(_need(folder / f"t10k-images-idx3-ubyte{suffix}", how), ndim=3)
    yt = read_idx(_need(folder / f"t10k-labels-idx1-ubyte{suffix}", how), ndim=1)
    assert x.shape == (60000, 28, 28) and xt.shape == (10000, 28, 28)
    assert y.shape == (60000,) and yt.shape == (10000,)
    assert x.dtype == np.uint8 and y.dtype == np.uint8
    assert y.min() == 0 and y.max() == 9 and yt.min() == 0 and yt.max() == 9
    return y, yt


def test_real_fashion_mnist():
    y, yt = _check_real(FASHION_DIR, ".gz", "`sudo apt-get install dataset-fashion-mnist`")
    # Fashion-MNIST is exactly balanced: 6000 train and 1000 test images per class.
    assert np.bincount(y).tolist() == [6000] * 10
    assert np.bincount(yt).tolist() == [1000] * 10


def test_real_mnist():
    y, yt = _check_real(MNIST_DIR, "", "`make datasets`")
    # Well-known MNIST class counts (digit 0 and digit 1 of the training split, digit 0 of test).
    assert np.bincount(y)[0] == 5923 and np.bincount(y)[1] == 6742
    assert np.bincount(yt)[0] == 980
    assert np.bincount(y).sum() == 60000


@pytest.mark.parametrize("name", ["a-idx3-ubyte", "a-idx3-ubyte.gz"])
def test_round_trip(tmp_path, name):
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 256, size=(7, 5, 3), dtype=np.uint8)
    path = write_idx(tmp_path / name, arr)
    assert (path.read_bytes()[:2] == b"\x1f\x8b") == name.endswith(".gz")
    out = read_idx(path, ndim=3)
    assert out.dtype == np.uint8 and np.array_equal(out, arr)
    labels = np.arange(10, dtype=np.uint8)
    assert np.array_equal(read_idx(write_idx(tmp_path / "l", labels), ndim=1), labels)


def test_gzip_detected_by_content_not_name(tmp_path):
    arr = np.arange(12, dtype=np.uint8).reshape(3, 2, 2)
    path = write_idx(tmp_path / "no-suffix", arr, compress=True)
    assert np.array_equal(read_idx(path), arr)


def _header(magic: int, *dims: int) -> bytes:
    return magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in dims)


@pytest.mark.parametrize(
    "blob, expected",
    [
        (_header(0x12340803, 2, 2, 2) + bytes(8), "bad magic"),
        (_header(0x00000D03, 2, 2, 2) + bytes(8), "element type"),
        (_header(0x00000803, 4, 2, 2) + bytes(10), "truncated"),
        (_header(0x00000803, 1, 2, 2) + bytes(5), "trailing"),
        (_header(0x00000801, 5)[:6], "truncated header"),
        (b"\x00\x00", "too short"),
        (_header(0x00000800), "dimensions"),
    ],
)
def test_corrupted_input(tmp_path, blob, expected):
    path = tmp_path / "bad-idx"
    path.write_bytes(blob)
    with pytest.raises(IDXFormatError, match=expected) as info:
        read_idx(path)
    assert str(path) in str(info.value)
    # The same bytes behind gzip are reported the same way.
    gz = tmp_path / "bad-idx.gz"
    gz.write_bytes(gzip.compress(blob))
    with pytest.raises(IDXFormatError, match=expected):
        read_idx(gz)


def test_wrong_dimension_count(tmp_path):
    labels = write_idx(tmp_path / "labels", np.zeros(4, dtype=np.uint8))
    with pytest.raises(IDXFormatError, match=r"1 dimensions .* but 3 were expected"):
        read_idx(labels, ndim=3)


def test_truncated_gzip_stream(tmp_path):
    path = write_idx(tmp_path / "x.gz", np.zeros((50, 4, 4), dtype=np.uint8))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(IDXFormatError, match="gzip"):
        read_idx(path)


def test_is_a_value_error_and_writer_rejects_non_bytes(tmp_path):
    assert issubclass(IDXFormatError, ValueError)
    with pytest.raises(ValueError, match="uint8"):
        write_idx(tmp_path / "f", np.zeros(3, dtype=np.float32))
