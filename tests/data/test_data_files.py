"""A user's own data: .npz, CSV, Parquet and image folders, unlabelled points, clear errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ntkal.data import UNLABELLED, load_dataset, load_file_dataset, read_file_source


def _write_csv(path, header, rows):
    path.write_text("\n".join([",".join(header)] + [",".join(map(str, r)) for r in rows]) + "\n")
    return path


def _pngs(folder, n, value_of, size=(6, 5), mode="L"):
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        v = int(value_of(i))
        arr = np.full((size[1], size[0]) + ((3,) if mode == "RGB" else ()), v, dtype=np.uint8)
        Image.fromarray(arr, mode=mode).save(folder / f"img{i:03d}.png")


# ----------------------------------------------------------------------------- npz
def test_npz_with_test_split_keeps_values_and_standardises(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(3.0, 2.0, size=(40, 5))
    y = np.arange(40) % 3
    y[[1, 5]] = -1
    x_test = rng.normal(size=(9, 5))
    np.savez(tmp_path / "d.npz", x=x, y=y, x_test=x_test, y_test=np.arange(9) % 3)
    d = load_dataset(tmp_path / "d.npz")
    assert d.num_train == 40 and d.num_test == 9 and d.classes == ("0", "1", "2")
    assert d.num_unlabelled == 2 and d.y_train[1] == UNLABELLED and d.y_train[2] == 2
    # Standardised with the *training* statistics, applied to both splits.
    mean, std = x.mean(0), x.std(0)
    np.testing.assert_allclose(d.x_train.numpy(), (x - mean) / std, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(d.x_test.numpy(), (x_test - mean) / std, rtol=1e-5, atol=1e-5)
    raw = load_file_dataset(tmp_path / "d.npz", normalise="none")
    np.testing.assert_allclose(raw.x_train.numpy(), x, rtol=1e-6)


def test_npz_unlabelled_pool_needs_classes(tmp_path):
    np.savez(tmp_path / "u.npz", x=np.zeros((5, 1, 4, 4), np.uint8))
    with pytest.raises(ValueError, match=r"u\.npz has no labels at all: pass classes"):
        load_file_dataset(tmp_path / "u.npz")
    src = read_file_source(tmp_path / "u.npz", classes=["cat", "dog"])
    d = src.dataset
    assert src.kind == "image" and d.num_unlabelled == 5 and d.num_test == 0
    assert d.classes == ("cat", "dog") and d.in_shape == (1, 4, 4)


@pytest.mark.parametrize(
    "arrays, match",
    [
        (dict(y=np.arange(4)), r"has no array 'x'"),
        (dict(x=np.zeros((4, 2)), y=np.zeros(3, np.int64)), r"'y' must be 4 integer labels"),
        (dict(x=np.zeros((4, 2)), y=np.array([0, 1, -3, 0])), r"labels are >= 0, or -1"),
        (dict(x=np.full((4, 2), np.nan), y=np.arange(4) % 2), "NaN or infinite"),
        (
            dict(
                x=np.zeros((4, 2)),
                y=np.arange(4) % 2,
                x_test=np.zeros((2, 3)),
                y_test=np.zeros(2, np.int64),
            ),
            r"'x_test' has shape",
        ),
        (
            dict(x=np.zeros((4, 2)), y=np.arange(4) % 2, x_test=np.zeros((2, 2))),
            r"needs labels 'y_test'",
        ),
        (
            dict(
                x=np.zeros((4, 2)),
                y=np.arange(4) % 2,
                x_test=np.zeros((2, 2)),
                y_test=np.array([0, -1]),
            ),
            r"a test set must be labelled",
        ),
        (dict(x=np.zeros((4, 2)), y=np.arange(4) % 2, extra=np.zeros(1)), "unexpected array"),
    ],
)
def test_npz_errors_name_the_file(tmp_path, arrays, match):
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(ValueError, match=match) as err:
        load_file_dataset(tmp_path / "bad.npz")
    assert "bad.npz" in str(err.value)


def test_not_an_npz_and_missing_and_unknown_type(tmp_path):
    (tmp_path / "junk.npz").write_bytes(b"not a zip file")
    with pytest.raises(ValueError, match=r"junk\.npz is not a readable \.npz"):
        load_file_dataset(tmp_path / "junk.npz")
    with pytest.raises(FileNotFoundError, match=r"nothere.csv does not exist"):
        load_dataset(str(tmp_path / "nothere.csv"))
    (tmp_path / "x.txt").write_text("1,2\n")
    with pytest.raises(ValueError, match=r"x\.txt: unsupported file type \.txt"):
        load_file_dataset(tmp_path / "x.txt")


# ----------------------------------------------------------------------------- tables
def test_csv_labels_missing_labels_and_held_out_split(tmp_path):
    rows = [[i, 2 * i + 1, ["ant", "bee", "cat"][i % 3] if i % 5 else ""] for i in range(30)]
    path = _write_csv(tmp_path / "t.csv", ["a", "b", "kind"], rows)
    src = read_file_source(path, label_column="kind", normalise="none", test_fraction=0.25)
    d = src.dataset
    assert src.kind == "table" and src.feature_names == ("a", "b")
    assert d.classes == ("ant", "bee", "cat")
    labelled = 30 - 6
    assert d.num_test == labelled // 4 and d.num_train == 30 - labelled // 4
    assert d.num_unlabelled == 6  # empty label cells stay in the pool
    # Every point is where it came from: b = 2a + 1, and its label is row a's label.
    x = torch.cat([d.x_train, d.x_test]).numpy()
    y = torch.cat([d.y_train, d.y_test]).numpy()
    assert sorted(x[:, 0].astype(int).tolist()) == list(range(30))
    np.testing.assert_array_equal(x[:, 1], 2 * x[:, 0] + 1)
    for a, lab in zip(x[:, 0].astype(int), y):
        expected = -1 if a % 5 == 0 else a % 3
        assert lab == expected
    np.testing.assert_array_equal(src.raw_train, d.x_train.numpy())
    # test_fraction=0 keeps every row in the pool.
    assert load_file_dataset(path, label_column="kind", test_fraction=0).num_train == 30


def test_csv_numeric_labels_sort_numerically_and_default_column(tmp_path):
    rows = [[i, [2, 10, 1][i % 3]] for i in range(12)]
    d = load_file_dataset(_write_csv(tmp_path / "n.csv", ["f", "label"], rows), test_fraction=0)
    assert d.classes == ("1", "2", "10")
    assert d.y_train.tolist() == [[1, 2, 0][i % 3] for i in range(12)]


@pytest.mark.parametrize(
    "text, kwargs, match",
    [
        (
            "a,b,y\n1,2,x\n3,oops,y\n",
            dict(label_column="y"),
            r"row 2, column 'b': 'oops' is not a number",
        ),
        ("a,b,y\n1,,x\n3,4,y\n", dict(label_column="y"), r"row 1, column 'b': empty"),
        ("a,b,y\n1,2,x\n3,4\n", dict(label_column="y"), r"line 3: 2 fields but the header has 3"),
        ("a,b\n1,2\n", dict(label_column="y"), r"no label column 'y'; columns: a, b"),
        ("", {}, r"is empty"),
        ("a,a\n1,2\n", {}, r"name every column once"),
        ("a,y\n1,x\n2,x\n", dict(label_column="y"), r"only one class \('x'\)"),
        (
            "a,y\n1,x\n2,z\n",
            dict(label_column="y", classes=["x", "w"]),
            r"label 'z' .* is not one of",
        ),
        ("a,b\n1,2\n", {}, r"has no labels at all"),
    ],
)
def test_csv_errors_name_file_row_and_column(tmp_path, text, kwargs, match):
    path = tmp_path / "bad.csv"
    path.write_text(text)
    with pytest.raises(ValueError, match=match) as err:
        load_file_dataset(path, **kwargs)
    assert "bad.csv" in str(err.value)


def test_parquet_reads_like_csv(tmp_path):
    pd = pytest.importorskip("pandas")
    pytest.importorskip("pyarrow")
    frame = pd.DataFrame({"a": np.arange(10.0), "y": ["p", "q", None, "p", "q"] * 2})
    frame.to_parquet(tmp_path / "t.parquet")
    d = load_file_dataset(
        tmp_path / "t.parquet", label_column="y", test_fraction=0, normalise="none"
    )
    assert d.classes == ("p", "q") and d.num_unlabelled == 2
    assert d.y_train.tolist() == [0, 1, -1, 0, 1] * 2
    (tmp_path / "broken.parquet").write_bytes(b"PAR1 not really")
    with pytest.raises(ValueError, match=r"broken\.parquet is not a readable Parquet"):
        load_file_dataset(tmp_path / "broken.parquet")


def test_parquet_without_pandas_says_what_to_install(tmp_path, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_pandas(name, *args, **kwargs):
        if name == "pandas":
            raise ImportError("No module named 'pandas'")
        return real_import(name, *args, **kwargs)

    (tmp_path / "t.parquet").write_bytes(b"x")
    monkeypatch.setattr(builtins, "__import__", no_pandas)
    with pytest.raises(
        ImportError, match=r"t\.parquet needs pandas and pyarrow: pip install 'ntkal\[parquet\]'"
    ):
        load_file_dataset(tmp_path / "t.parquet")


# ----------------------------------------------------------------------------- images
def test_image_folder_classes_unlabelled_and_resize(tmp_path):
    root = tmp_path / "imgs"
    _pngs(root / "dark", 6, lambda i: 10 + i)
    _pngs(root / "light", 6, lambda i: 200 + i)
    _pngs(root, 3, lambda i: 128)  # loose files: the unlabelled part of the pool
    src = read_file_source(root, normalise="none", test_fraction=0.0)
    d = src.dataset
    assert src.kind == "image" and d.classes == ("dark", "light") and d.in_shape == (1, 5, 6)
    assert d.num_train == 15 and d.num_unlabelled == 3
    for x, y, f in zip(d.x_train, d.y_train.tolist(), src.train_files):
        value = float(x.mean()) * 255
        if "/dark/" in f:
            assert y == 0 and value == pytest.approx(10 + int(f[-7:-4]), abs=1e-3)
        elif "/light/" in f:
            assert y == 1 and value == pytest.approx(200 + int(f[-7:-4]), abs=1e-3)
        else:
            assert y == UNLABELLED and value == pytest.approx(128, abs=1e-3)
    resized = load_file_dataset(root, image_size=[8, 4], test_fraction=0.5)
    assert resized.in_shape == (1, 8, 4) and resized.num_test == 6
    # Standardised per channel with the training images' statistics.
    assert abs(float(resized.x_train.mean())) < 1e-5


def test_flat_folder_is_an_unlabelled_pool_and_rgb_detected(tmp_path):
    _pngs(tmp_path / "flat", 4, lambda i: 50 * i, mode="RGB")
    with pytest.raises(ValueError, match=r"pass classes=.* to name the classes"):
        load_file_dataset(tmp_path / "flat")
    d = load_file_dataset(tmp_path / "flat", classes=["a", "b", "c"])
    assert d.num_unlabelled == 4 and d.in_shape == (3, 5, 6) and d.num_test == 0


def test_image_errors_name_the_file(tmp_path):
    root = tmp_path / "imgs"
    _pngs(root / "a", 2, lambda i: 0)
    _pngs(root / "b", 2, lambda i: 0, size=(7, 7))
    with pytest.raises(ValueError, match=r"b/img000\.png is 7x7 pixels .* pass image_size"):
        load_file_dataset(root)
    (root / "b" / "img001.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match=r"b/img001\.png is not a readable image"):
        load_file_dataset(root, image_size=[4, 4])
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=r"empty holds no images"):
        load_file_dataset(tmp_path / "empty")
    with pytest.raises(ValueError, match="label_column applies to tables only"):
        load_file_dataset(root, label_column="y")


def test_builtin_names_still_win_and_file_options_rejected_for_them():
    assert load_dataset("digits").name == "digits"
    with pytest.raises(ValueError, match="label_column apply to a user's files"):
        load_dataset("digits", label_column="y")
