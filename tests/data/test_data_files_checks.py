"""A user's files with nothing malformed but something probably not meant: each case is an
error or a :class:`~ntkal.data.files.DataWarning` naming the file and the fix, never silent."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from ntkal.data import load_dataset
from ntkal.data.files import DataWarning, load_file_dataset


def _csv(path, labels, d=2):
    rng = np.random.default_rng(0)
    lines = [",".join([f"f{j}" for j in range(d)] + ["label"])]
    for lab in labels:
        lines.append(",".join([f"{v:.3f}" for v in rng.normal(size=d)] + [lab]))
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize("a, b", [("Cat", "cat"), ("1", "1.0"), ("dog ", "DOG")])
def test_labels_spelt_two_ways_are_refused(tmp_path, a, b):
    path = _csv(tmp_path / "pets.csv", [a, b, "other"] * 4)
    with pytest.raises(
        ValueError,
        match=r"pets.csv: labels .* differ only in case or number "
        r"format .* pass classes=",
    ):
        load_file_dataset(path)


def test_spellings_listed_as_classes_are_kept_apart(tmp_path):
    path = _csv(tmp_path / "pets.csv", ["Cat", "cat", "other"] * 4)
    ds = load_file_dataset(path, classes=["Cat", "cat", "other"])
    assert ds.classes == ("Cat", "cat", "other")
    assert set(np.concatenate([ds.y_train.numpy(), ds.y_test.numpy()])) == {0, 1, 2}


def test_a_single_row_class_stays_in_training_with_a_warning(tmp_path):
    path = _csv(tmp_path / "rare.csv", ["a", "b"] * 10 + ["rare"])
    with pytest.warns(
        DataWarning, match=r"rare.csv: class\(es\) 'rare' have a single labelled row"
    ):
        ds = load_file_dataset(path, test_fraction=0.5)
    rare = ds.classes.index("rare")
    assert (ds.y_train.numpy() == rare).sum() == 1  # held out, no model would ever see it
    assert (ds.y_test.numpy() == rare).sum() == 0
    assert ds.num_test == 10  # the other classes are split as before


def test_split_without_single_row_classes_is_unchanged(tmp_path):
    path = _csv(tmp_path / "plain.csv", ["a", "b", "c"] * 10)
    with warnings.catch_warnings():
        warnings.simplefilter("error", DataWarning)
        ds = load_file_dataset(path, test_fraction=0.2)
    assert ds.num_test == 6 and sorted(np.bincount(ds.y_test.numpy())) == [2, 2, 2]


def test_a_named_class_without_rows_warns(tmp_path):
    path = tmp_path / "named.npz"
    x = np.random.default_rng(0).normal(size=(20, 3)).astype(np.float32)
    np.savez(path, x=x, y=np.arange(20) % 2, classes=np.array(["cat", "dog", "bird"]))
    with pytest.warns(DataWarning, match=r"named.npz: class\(es\) 'bird' .* have no labelled rows"):
        load_file_dataset(path)


def test_an_unlabelled_pool_may_have_empty_classes(tmp_path):
    path = tmp_path / "pool.npz"
    y = np.full(20, -1)
    y[:4] = [0, 1, 0, 1]
    np.savez(path, x=np.zeros((20, 3), np.float32), y=y, classes=np.array(["a", "b", "c"]))
    with warnings.catch_warnings():
        warnings.simplefilter("error", DataWarning)
        load_file_dataset(path, test_fraction=0.0)


@pytest.mark.parametrize(
    "ids, shown",
    [
        (
            (0, 7),
            r"\{0, 7\}, so ids 1, 2, 3, 4, 5, 6 have no rows "
            r"and would be 6 empty classes of 8",
        ),
        ((1, 2), r"\{1, 2\}, so ids 0 have no rows"),
    ],
)
def test_sparse_label_ids_are_refused(tmp_path, ids, shown):
    path = tmp_path / "sparse.npz"
    y = np.array(ids * 10)
    np.savez(path, x=np.zeros((y.size, 3), np.float32), y=y)
    with pytest.raises(ValueError, match=rf"sparse.npz: the labels are {shown}.*renumber"):
        load_file_dataset(path)


@pytest.mark.parametrize(
    "content, why",
    [
        (b"x,y\n1,2\n", r"it is not a zip archive\)"),
        (b"PK\x03\x04 cut short", r"(File is not a zip file|zip)"),
    ],
)
def test_an_npz_that_is_no_zip_names_the_file(tmp_path, content, why):
    path = tmp_path / "broken.npz"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=rf"broken.npz is not a readable .npz file \({why}"):
        load_dataset(str(path))


def test_an_npy_saved_as_npz_says_how_to_save_it(tmp_path):
    path = tmp_path / "array.npz"
    with open(path, "wb") as fh:
        np.save(fh, np.zeros((4, 2)))
    with pytest.raises(ValueError, match=r"array.npz .*single .npy array; save it with np.savez"):
        load_file_dataset(path)
