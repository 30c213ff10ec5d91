"""load_dataset: digits, CIFAR-10 / SVHN on generated files, path resolution and error messages."""

from __future__ import annotations

import dataclasses
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from ntkal.data import DatasetNotFoundError, available_datasets, load_dataset, loaders, write_idx


def test_available_datasets():
    from ntkal.data.packaged import PACKAGED_LOADERS

    assert available_datasets() == [
        "digits",
        "fashion_mnist",
        "mnist",
        "cifar10",
        "svhn",
        "synthetic",
        "clustered",
    ] + list(PACKAGED_LOADERS) + ["digits_lt", "fashion_mnist_lt"]


def test_unknown_name_lists_valid_names():
    with pytest.raises(ValueError, match="valid names: digits, fashion_mnist"):
        load_dataset("imagenet")


def test_digits_shapes_split_and_normalisation():
    d = load_dataset("digits")
    assert d.name == "digits" and d.classes == tuple("0123456789")
    assert d.x_train.shape == (1347, 1, 8, 8) and d.x_test.shape == (450, 1, 8, 8)
    assert d.in_shape == (1, 8, 8) and d.num_classes == 10
    assert d.x_train.dtype == torch.float32 and d.y_train.dtype == torch.int64
    # Fixed constants: pixel 0 maps to -mean/std, pixel 16 to (1-mean)/std, for every split.
    lo, hi = -0.3053 / 0.3760, (1 - 0.3053) / 0.3760
    assert d.x_train.min().item() == pytest.approx(lo, abs=1e-5)
    assert d.x_train.max().item() == pytest.approx(hi, abs=1e-5)
    both = torch.cat([d.x_train, d.x_test])
    assert abs(both.mean().item()) < 1e-3 and both.std().item() == pytest.approx(1.0, abs=1e-3)
    # Stratified split: each class's test count is its share of 450, rounded.
    full = torch.bincount(torch.cat([d.y_train, d.y_test]), minlength=10).double()
    counts = torch.bincount(d.y_test, minlength=10).double()
    assert counts.sum() == 450 and torch.all((counts - 450 * full / full.sum()).abs() < 1)


def test_digits_split_is_fixed_and_independent_of_seed():
    a, b = load_dataset("digits", seed=0), load_dataset("digits", seed=7)
    assert torch.equal(a.x_test, b.x_test) and torch.equal(a.y_train, b.y_train)
    # No test image occurs in the training split (the split is a partition of the 1797 images).
    from sklearn.datasets import load_digits

    assert a.num_train + a.num_test == load_digits().data.shape[0]


def test_subsets_are_seeded_stratified_and_nested_by_seed():
    a = load_dataset("digits", train_size=100, test_size=50, seed=3)
    b = load_dataset("digits", train_size=100, test_size=50, seed=3)
    c = load_dataset("digits", train_size=100, test_size=50, seed=4)
    assert a.num_train == 100 and a.num_test == 50
    assert torch.equal(a.x_train, b.x_train) and torch.equal(a.y_test, b.y_test)
    assert not torch.equal(a.x_train, c.x_train)
    assert torch.bincount(a.y_train, minlength=10).tolist() == [10] * 10
    # Changing the test size leaves the training subset alone.
    d = load_dataset("digits", train_size=100, test_size=20, seed=3)
    assert torch.equal(a.x_train, d.x_train)


@pytest.mark.parametrize("size", [0, 1348, -1])
def test_subset_size_out_of_range(size):
    with pytest.raises(ValueError, match="train_size must be between 1 and 1347"):
        load_dataset("digits", train_size=size)


def test_synthetic_is_seeded():
    a, b = load_dataset("synthetic", seed=1), load_dataset("synthetic", seed=1)
    assert torch.equal(a.x_train, b.x_train) and a.in_shape == (8,) and a.num_classes == 4
    assert not torch.equal(a.x_train, load_dataset("synthetic", seed=2).x_train)
    small = load_dataset("synthetic", train_size=40, test_size=12)
    assert small.num_train == 40 and small.num_test == 12
    assert torch.bincount(small.y_train).tolist() == [10] * 4


def test_cifar10_from_generated_files(cifar_dir):
    d = load_dataset("cifar10", root=cifar_dir)
    assert d.x_train.shape == (100, 3, 32, 32) and d.x_test.shape == (30, 3, 32, 32)
    assert d.classes[0] == "airplane" and d.classes[9] == "truck" and d.num_classes == 10
    # Row layout: the first 1024 bytes are the red plane, row-major.
    with open(cifar_dir / "data_batch_1", "rb") as fh:
        raw = pickle.load(fh, encoding="bytes")[b"data"]
    red = (raw[0, :1024].reshape(32, 32) / 255.0 - 0.4914) / 0.2470
    np.testing.assert_allclose(d.x_train[0, 0].numpy(), red, rtol=1e-5, atol=1e-5)
    assert d.y_train[:12].tolist() == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1]
    # The folder holding cifar-10-batches-py works as root too.
    assert load_dataset("cifar10", root=cifar_dir.parent).num_train == 100


def test_cifar10_pickle_refuses_code(tmp_path, make_cifar):
    folder = make_cifar(tmp_path / "cifar-10-batches-py")

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    with open(folder / "test_batch", "wb") as fh:
        pickle.dump({b"data": Evil(), b"labels": []}, fh, protocol=2)
    with pytest.raises(ValueError, match=r"refusing to load \w+\.print"):
        load_dataset("cifar10", root=folder)


def test_svhn_from_generated_files(svhn_dir):
    d = load_dataset("svhn", root=svhn_dir)
    assert d.x_train.shape == (40, 3, 32, 32) and d.x_test.shape == (20, 3, 32, 32)
    # Label 10 means the digit 0.
    assert d.y_train[:10].tolist() == [1, 2, 3, 4, 5, 6, 7, 8, 9, 0]
    from scipy.io import loadmat

    x = loadmat(svhn_dir / "train_32x32.mat")["X"]
    green = (x[:, :, 1, 3] / 255.0 - 0.4438) / 0.2010  # X is (H, W, C, N)
    np.testing.assert_allclose(d.x_train[3, 1].numpy(), green, rtol=1e-5, atol=1e-5)
    sub = load_dataset("svhn", root=svhn_dir, train_size=20, test_size=10)
    assert torch.bincount(sub.y_train).tolist() == [2] * 10


def _write_tiny_idx(folder: Path, value: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", 20), ("t10k", 10)):
        write_idx(folder / f"{split}-images-idx3-ubyte.gz", np.full((n, 28, 28), value, np.uint8))
        write_idx(folder / f"{split}-labels-idx1-ubyte.gz", (np.arange(n) % 10).astype(np.uint8))
    return folder


def test_env_var_is_used_and_root_beats_it(tmp_path, monkeypatch, make_cifar, make_svhn):
    env = tmp_path / "env"
    _write_tiny_idx(env / "fashion-mnist", 255)
    _write_tiny_idx(env / "mnist", 0)
    make_cifar(env / "cifar-10-batches-py", per_batch=2, n_test=3)
    make_svhn(env / "svhn", n_train=4, n_test=2)
    monkeypatch.setenv("NTKAL_DATA", str(env))
    fm = load_dataset("fashion_mnist")
    assert fm.num_train == 20 and fm.x_train[0, 0, 0, 0].item() == pytest.approx(
        (1 - 0.2860) / 0.3530
    )
    mn = load_dataset("mnist")
    assert mn.num_train == 20 and mn.x_train[0, 0, 0, 0].item() == pytest.approx(-0.1307 / 0.3081)
    assert load_dataset("cifar10").num_train == 10
    assert load_dataset("svhn").num_test == 2
    other = _write_tiny_idx(tmp_path / "explicit", 0)
    assert load_dataset("fashion_mnist", root=other).x_train.max().item() < 0


def test_env_var_base_is_not_a_dataset_folder(tmp_path, monkeypatch):
    # MNIST and Fashion-MNIST share file names, so files directly in $NTKAL_DATA must not be used.
    _write_tiny_idx(tmp_path, 0)
    monkeypatch.setenv("NTKAL_DATA", str(tmp_path))
    no_defaults = dataclasses.replace(loaders._SPECS["mnist"], default_dirs=())
    monkeypatch.setitem(loaders._SPECS, "mnist", no_defaults)
    with pytest.raises(DatasetNotFoundError):
        load_dataset("mnist")


@pytest.mark.parametrize(
    "name, command",
    [
        ("fashion_mnist", "apt-get install dataset-fashion-mnist"),
        ("mnist", "make datasets"),
        ("cifar10", "NTKAL_DATA"),
        ("svhn", "NTKAL_DATA"),
    ],
)
def test_missing_data_names_install_command(tmp_path, name, command):
    with pytest.raises(DatasetNotFoundError, match=command) as info:
        load_dataset(name, root=tmp_path / "nowhere")
    assert isinstance(info.value, FileNotFoundError)
    assert str(tmp_path / "nowhere") in str(info.value)


def test_mismatched_idx_counts(tmp_path):
    folder = _write_tiny_idx(tmp_path / "mnist", 0)
    write_idx(folder / "t10k-labels-idx1-ubyte.gz", np.zeros(9, np.uint8))
    with pytest.raises(ValueError, match=r"10 images but .* 9 labels"):
        load_dataset("mnist", root=folder)


def test_default_locations_include_repo_data_folder():
    roots = loaders._repo_roots()
    assert Path(loaders.__file__).resolve().parents[3] in roots
    spec = loaders._SPECS["mnist"]
    cands = loaders._candidates(spec, None)
    assert any(str(c).endswith("data/mnist/package/data") for c in cands)


def test_real_fashion_mnist_subset_loads():
    if not Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz").is_file():
        pytest.skip("Fashion-MNIST not installed (`sudo apt-get install dataset-fashion-mnist`)")
    d = load_dataset("fashion_mnist", train_size=500, test_size=100, seed=0)
    assert (
        d.in_shape == (1, 28, 28) and d.classes[0] == "T-shirt/top" and d.classes[9] == "Ankle boot"
    )
    assert torch.bincount(d.y_train).tolist() == [50] * 10


def test_repo_default_found_from_any_working_directory(tmp_path, monkeypatch):
    repo_mnist = Path(loaders.__file__).resolve().parents[3] / "data" / "mnist" / "package" / "data"
    if not (repo_mnist / "train-images-idx3-ubyte").is_file():
        pytest.skip("MNIST not installed in the repository (`make datasets`)")
    monkeypatch.delenv("NTKAL_DATA", raising=False)
    monkeypatch.chdir(tmp_path)
    d = load_dataset("mnist", train_size=100, test_size=50)
    assert d.in_shape == (1, 28, 28) and d.num_train == 100 and torch.bincount(d.y_train).min() >= 9
