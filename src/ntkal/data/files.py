"""A user's own data from files: ``.npz`` arrays, CSV / Parquet tables and folders of images.

Every reader returns a :class:`~ntkal.data.Dataset`, so the runner, the learner and ``ntkal label``
treat a user's files like a built-in dataset. Unlabelled pool points are first-class: their label
in ``y_train`` is :data:`~ntkal.data.dataset.UNLABELLED` (``-1``). ``ntkal run`` simulates an
oracle and refuses such a pool; ``ntkal label`` is how they get labels.

=================  ==========================================================================
source             layout
=================  ==========================================================================
``data.npz``       ``x`` (required), ``y`` (optional; ``-1`` = unknown), ``x_test`` / ``y_test``
                   (optional), ``classes`` (optional class names)
``data.csv``       a header row; numeric feature columns and one label column
                   (``label_column``, default ``label`` when present); an empty label cell is an
                   unlabelled pool point
``data.parquet``   the same as a table (needs ``pandas`` and ``pyarrow``: ``ntkal[parquet]``)
``images/``        one subfolder per class (its name is the class name); image files directly in
                   ``images/`` are unlabelled pool points, so a flat folder is an unlabelled pool
=================  ==========================================================================

Held-out test set: the file's own (``x_test`` / ``y_test`` of an ``.npz``), otherwise a seeded
stratified ``test_fraction`` (default 0.2) of the *labelled* rows; unlabelled rows always stay in
the pool. Inputs are normalised with statistics of the training inputs (labelled and unlabelled)
unless ``normalise="none"``: per feature for tables and flat arrays, per channel for images.
Images are read with PIL, scaled to ``[0, 1]``, converted to grey when every image is grey (one
channel) and to RGB otherwise.
"""

from __future__ import annotations

import csv
import math
import os
import warnings
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ntkal.arguments import as_float
from ntkal.data.dataset import UNLABELLED, Dataset
from ntkal.data.sampling import stratified_indices

__all__ = [
    "load_file_dataset",
    "read_file_source",
    "FileSource",
    "is_file_source",
    "DataWarning",
    "IMAGE_SUFFIXES",
    "TABLE_SUFFIXES",
    "NORMALISE",
]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
TABLE_SUFFIXES = (".csv", ".parquet", ".pq")
NORMALISE = ("standard", "none")
_PathLike = str | os.PathLike


class DataWarning(UserWarning):
    """Something in a user's data that is legal but probably not meant (a class with no rows, a
    class too small to appear in both splits); the message names the file and the fix."""


@dataclass
class FileSource:
    """What was read besides the :class:`Dataset`: how to show a pool point to a person.

    Attributes
    ----------
    dataset : Dataset
    kind : {"table", "image", "array"}
    feature_names : tuple of str
        Column names of a table (``()`` otherwise).
    raw_train : ndarray, optional
        Un-normalised training inputs as read (table values, images in ``[0, 1]``), in the order of
        ``dataset.x_train``.
    train_files : tuple of str
        Image file of each training point (image folders only).
    train_rows : tuple of int
        Data row of each training point in the file (1-based, header excluded: the numbering of
        the reader's error messages), so that labels can be mapped back to the file.
    """

    dataset: Dataset
    kind: str
    feature_names: tuple[str, ...] = ()
    raw_train: np.ndarray | None = None
    train_files: tuple[str, ...] = field(default_factory=tuple)
    train_rows: tuple[int, ...] = field(default_factory=tuple)


def is_file_source(name: Any) -> bool:
    """Whether ``name`` names a file or folder :func:`load_file_dataset` reads (rather than a
    built-in dataset name): an existing path, or a name with a known suffix."""
    if isinstance(name, os.PathLike):
        return True
    if not isinstance(name, str):
        return False
    text = name.strip()
    return (
        os.sep in text
        or "/" in text
        or Path(text).suffix.lower() in (".npz",) + TABLE_SUFFIXES
        or Path(text).expanduser().exists()
    )


# ----------------------------------------------------------------------------- shared helpers
def _check_options(path: Path, normalise: str, test_fraction: float) -> None:
    if normalise not in NORMALISE:
        raise ValueError(f"normalise must be one of {', '.join(NORMALISE)}, got {normalise!r}")
    fraction = as_float(test_fraction, "test_fraction", minimum=0.0)
    if fraction >= 1.0:
        raise ValueError(f"test_fraction must lie in [0, 1), got {test_fraction!r}")


def _class_names(path: Path, classes: Sequence[Any] | None) -> tuple[str, ...] | None:
    if classes is None:
        return None
    names = tuple(str(c) for c in classes)
    if len(names) < 2 or len(set(names)) != len(names):
        raise ValueError(f"{path}: classes must be at least two distinct names, got {list(names)}")
    return names


def _labels_from_names(
    path: Path, raw: Sequence[str | None], classes: tuple[str, ...] | None, where: str
) -> tuple[np.ndarray, tuple[str, ...]]:
    """Class names (None = unknown) -> int labels, with the class list (given or discovered)."""
    present = sorted(
        {r for r in raw if r is not None},
        key=lambda s: (0, float(s), s) if _is_number(s) else (1, 0.0, s),
    )
    if classes is None:
        if not present:
            raise ValueError(
                f"{path} has no labels at all: pass classes=[...] (dataset.classes) "
                "to say which classes the annotator chooses from"
            )
        if len(present) < 2:
            raise ValueError(
                f"{path}: only one class ({present[0]!r}) appears in {where}; pass "
                "classes=[...] to list every class"
            )
        _check_spellings(path, present, where)
        classes = tuple(present)
    lookup = {c: i for i, c in enumerate(classes)}
    unknown = [r for r in present if r not in lookup]
    if unknown:
        raise ValueError(
            f"{path}: label {unknown[0]!r} in {where} is not one of the classes {list(classes)}"
        )
    return np.array([UNLABELLED if r is None else lookup[r] for r in raw], dtype=np.int64), classes


def _spelling_key(name: str) -> str:
    """What two spellings of one class share: case folded, and a number by its value (``1``,
    ``1.0`` and ``1e0`` are one label)."""
    return repr(float(name)) if _is_number(name) else name.strip().casefold()


def _check_spellings(path: Path, present: Sequence[str], where: str) -> None:
    """ValueError when discovered class names differ only in case or number format (``Cat`` /
    ``cat``, ``1`` / ``1.0``): they would silently become separate classes."""
    seen: dict[str, str] = {}
    for name in present:
        first = seen.setdefault(_spelling_key(name), name)
        if first != name:
            raise ValueError(
                f"{path}: labels {first!r} and {name!r} in {where} differ only in "
                "case or number format and would become two classes; write every "
                "label of a class the same way, or pass classes=[...] "
                "(dataset.classes) to list the classes as they are spelt"
            )


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _held_out(y: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Positions of a stratified ``fraction`` of the labelled points (empty if too few). A class
    with a single labelled row stays in training (held out, it would leave the model no example of
    it)."""
    labelled = np.flatnonzero(y != UNLABELLED)
    if fraction > 0 and labelled.size:
        values, counts = np.unique(y[labelled], return_counts=True)
        single = values[counts == 1]
        labelled = labelled[~np.isin(y[labelled], single)]
    n = math.floor(fraction * labelled.size)
    if n < 1 or labelled.size - n < 1:
        return np.zeros(0, dtype=np.int64)
    rng = np.random.default_rng([int(seed), 3])
    return labelled[stratified_indices(y[labelled], n, rng)]


def _statistics(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and std per feature (2-D) or per channel (N, C, ...), in float64; std 0 -> 1."""
    x64 = x.astype(np.float64)
    axes = (0,) if x.ndim == 2 else (0,) + tuple(range(2, x.ndim))
    mean = x64.mean(axis=axes, keepdims=True)
    std = x64.std(axis=axes, keepdims=True)
    std[std == 0] = 1.0
    return mean, std


def _finish(
    path: Path,
    name: str,
    x: np.ndarray,
    y: np.ndarray,
    x_test: np.ndarray | None,
    y_test: np.ndarray | None,
    classes: tuple[str, ...],
    normalise: str,
    test_fraction: float,
    seed: int,
) -> tuple[Dataset, np.ndarray]:
    """Split off the test set if the source has none, normalise, build the Dataset; also returns
    the training positions kept (into ``x``)."""
    keep = np.arange(x.shape[0])
    _warn_small_classes(path, y, y_test, classes, test_fraction if x_test is None else 0.0)
    if x_test is None:
        test = _held_out(y, test_fraction, seed)
        keep = np.setdiff1d(keep, test)
        x_test, y_test = x[test], y[test]
        x, y = x[keep], y[keep]
    assert y_test is not None  # the file's own test set comes with labels, or it was split off
    if x.shape[0] == 0:
        raise ValueError(f"{path}: no training points left")
    if normalise == "standard":
        mean, std = _statistics(x)
        x = (x.astype(np.float64) - mean) / std
        x_test = (x_test.astype(np.float64) - mean) / std
    try:
        dataset = Dataset(name, x.astype(np.float32), y, x_test.astype(np.float32), y_test, classes)
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from None
    return dataset, keep


def _warn_small_classes(
    path: Path,
    y: np.ndarray,
    y_test: np.ndarray | None,
    classes: tuple[str, ...],
    test_fraction: float,
) -> None:
    """:class:`DataWarning` for classes with no labelled row (when every point is labelled: an
    unlabelled pool is expected to have them) and, with a held-out split, for classes with a
    single row (kept for training, so the test set has none of it)."""
    known = y[y != UNLABELLED]
    if y_test is not None:
        known = np.concatenate([known, y_test])
    counts = np.bincount(known, minlength=len(classes))
    empty = [classes[i] for i in np.flatnonzero(counts == 0)]
    if empty and known.size and not (y == UNLABELLED).any():
        warnings.warn(
            f"{path}: class(es) {', '.join(map(repr, empty))} of {list(classes)} have no "
            "labelled rows: the model is never shown them; remove them from classes, or "
            "add rows of them",
            DataWarning,
            stacklevel=4,
        )
    single = [classes[i] for i in np.flatnonzero(counts == 1)]
    if single and test_fraction > 0:
        warnings.warn(
            f"{path}: class(es) {', '.join(map(repr, single))} have a single labelled "
            "row: it stays in training and the test set has none of it; add rows of "
            "them (at least two each) for a test score that covers them",
            DataWarning,
            stacklevel=4,
        )


# ----------------------------------------------------------------------------- .npz
def _npz_arrays(path: Path) -> dict[str, np.ndarray]:
    """The arrays of an ``.npz``, with ``x`` present, numeric and finite, and no stray names."""
    try:
        with open(path, "rb") as fh:
            magic = fh.read(4)
        if not magic.startswith(b"PK"):
            raise ValueError(
                "it is not a zip archive"
                + (
                    ": it is a single .npy array; save it with np.savez(path, x=..., y=...)"
                    if magic.startswith(b"\x93NUM")
                    else ""
                )
            )
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
        raise ValueError(
            f"{path} is not a readable .npz file ({err}); an .npz is the zip "
            "archive np.savez writes, with arrays x, y and optionally x_test, y_test, "
            "classes"
        ) from None
    if "x" not in arrays:
        raise ValueError(
            f"{path} has no array 'x' (it holds: {', '.join(sorted(arrays)) or 'nothing'})"
        )
    allowed = {"x", "y", "x_test", "y_test", "classes"}
    extra = sorted(set(arrays) - allowed)
    if extra:
        raise ValueError(
            f"{path}: unexpected array(s) {', '.join(extra)}; "
            f"expected x, y, x_test, y_test, classes"
        )
    x = arrays["x"]
    if x.ndim < 2 or x.shape[0] == 0:
        raise ValueError(f"{path}: 'x' must have shape (n, ...) with n >= 1, got {x.shape}")
    if not (np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer)):
        raise ValueError(f"{path}: 'x' must be numeric, got dtype {x.dtype}")
    if not np.isfinite(x.astype(np.float64)).all():
        raise ValueError(f"{path}: 'x' contains NaN or infinite values")
    return arrays


def _npz_labels(path: Path, arrays: dict[str, np.ndarray], key: str, n: int) -> np.ndarray:
    """Array ``key`` as ``n`` int64 labels (all unknown when absent)."""
    if key not in arrays:
        return np.full(n, UNLABELLED, dtype=np.int64)
    v = arrays[key]
    if v.ndim != 1 or v.shape[0] != n or not np.issubdtype(v.dtype, np.integer):
        raise ValueError(
            f"{path}: '{key}' must be {n} integer labels (-1 = unknown), got "
            f"dtype {v.dtype} shape {v.shape}"
        )
    if (v < UNLABELLED).any():
        raise ValueError(
            f"{path}: '{key}' holds {int(v.min())}; labels are >= 0, or -1 for unknown"
        )
    return v.astype(np.int64)


def _read_npz(path: Path, classes, normalise, test_fraction, seed) -> FileSource:
    arrays = _npz_arrays(path)
    x = arrays["x"]
    names = _class_names(path, classes)
    if names is None and "classes" in arrays:
        names = _class_names(path, arrays["classes"].tolist())

    def labels(key: str, n: int) -> np.ndarray:
        return _npz_labels(path, arrays, key, n)

    y = labels("y", x.shape[0])
    x_test = arrays.get("x_test")
    y_test = None
    if x_test is not None:
        if x_test.shape[1:] != x.shape[1:]:
            raise ValueError(
                f"{path}: 'x_test' has shape {x_test.shape[1:]} per point but 'x' {x.shape[1:]}"
            )
        if "y_test" not in arrays:
            raise ValueError(
                f"{path}: 'x_test' needs labels 'y_test' (a test set must be labelled)"
            )
        y_test = labels("y_test", x_test.shape[0])
        if (y_test == UNLABELLED).any():
            raise ValueError(
                f"{path}: 'y_test' has unknown (-1) labels; a test set must be labelled"
            )
    elif "y_test" in arrays:
        raise ValueError(f"{path}: 'y_test' given without 'x_test'")
    if names is None:
        known = np.concatenate([y[y >= 0], y_test if y_test is not None else np.zeros(0, np.int64)])
        if known.size == 0:
            raise ValueError(
                f"{path} has no labels at all: pass classes=[...] (dataset.classes) "
                "or store a 'classes' array"
            )
        _check_dense_ids(path, known)
        names = tuple(str(i) for i in range(max(int(known.max()) + 1, 2)))
    top = max(int(y.max()), int(y_test.max()) if y_test is not None and y_test.size else -1)
    if top >= len(names):
        raise ValueError(
            f"{path}: label {top} is out of range for {len(names)} classes {list(names)}"
        )
    dataset, keep = _finish(
        path, path.stem, x, y, x_test, y_test, names, normalise, test_fraction, seed
    )
    kind = "image" if x.ndim == 4 else "array"
    return FileSource(dataset, kind, raw_train=x[keep], train_rows=tuple(int(i) + 1 for i in keep))


def _check_dense_ids(path: Path, known: np.ndarray) -> None:
    """ValueError when integer labels skip ids (e.g. {0, 7}: 8 classes, 6 of them empty)."""
    ids = np.unique(known)
    top = int(ids.max())
    if ids.size != top + 1 and top >= 1:
        missing = sorted(set(range(top + 1)) - set(ids.tolist()))
        shown = ", ".join(map(str, missing[:8])) + (", ..." if len(missing) > 8 else "")
        raise ValueError(
            f"{path}: the labels are {_ids_text(ids)}, so ids {shown} have no rows and "
            f"would be {len(missing)} empty classes of {top + 1}; renumber the labels "
            "0..k-1 (np.unique(y, return_inverse=True)), or store a 'classes' array "
            "naming every class"
        )


def _ids_text(ids: np.ndarray) -> str:
    shown = ", ".join(map(str, ids[:8].tolist())) + (", ..." if ids.size > 8 else "")
    return "{" + shown + "}"


# ----------------------------------------------------------------------------- tables
def _read_csv_rows(path: Path) -> tuple[list[str], list[list[str]]]:
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            rows = list(csv.reader(fh))
    except UnicodeDecodeError:
        raise ValueError(f"{path} is not a UTF-8 text CSV file") from None
    except csv.Error as err:
        raise ValueError(f"{path} is not a valid CSV file ({err})") from None
    rows = [r for r in rows if any(c.strip() for c in r)]
    if not rows:
        raise ValueError(f"{path} is empty: expected a header row and data rows")
    header = [h.strip() for h in rows[0]]
    if len(set(header)) != len(header) or any(not h for h in header):
        raise ValueError(f"{path}: the header row must name every column once, got {header}")
    body = rows[1:]
    if not body:
        raise ValueError(f"{path} has a header but no data rows")
    for i, r in enumerate(body, start=2):
        if len(r) != len(header):
            raise ValueError(f"{path}, line {i}: {len(r)} fields but the header has {len(header)}")
    return header, [[c.strip() for c in r] for r in body]


def _read_parquet_rows(path: Path) -> tuple[list[str], list[list[Any]]]:
    try:
        import pandas as pd
    except ImportError:
        raise ImportError(
            f"reading {path} needs pandas and pyarrow: pip install 'ntkal[parquet]'"
        ) from None
    try:
        frame = pd.read_parquet(path)
    except ImportError as err:
        raise ImportError(
            f"reading {path} needs pyarrow: pip install 'ntkal[parquet]' ({err})"
        ) from None
    except Exception as err:  # noqa: BLE001 - pyarrow raises its own types for corrupt files
        raise ValueError(f"{path} is not a readable Parquet file ({err})") from None
    header = [str(c) for c in frame.columns]
    rows = [
        ["" if v is None or (isinstance(v, float) and math.isnan(v)) else v for v in row]
        for row in frame.itertuples(index=False, name=None)
    ]
    if not rows:
        raise ValueError(f"{path} has no rows")
    return header, rows


def _label_text(v: Any) -> str | None:
    if v is None:
        return None
    if isinstance(v, float):
        if math.isnan(v):
            return None
        if v.is_integer():
            v = int(v)
    text = str(v).strip()
    return text or None


def _read_table(path: Path, label_column, classes, normalise, test_fraction, seed) -> FileSource:
    header, rows = (
        _read_csv_rows(path) if path.suffix.lower() == ".csv" else _read_parquet_rows(path)
    )
    if label_column is None and "label" in header:
        label_column = "label"
    if label_column is not None and label_column not in header:
        raise ValueError(f"{path}: no label column {label_column!r}; columns: {', '.join(header)}")
    features = [h for h in header if h != label_column]
    if not features:
        raise ValueError(f"{path}: no feature columns besides the label column {label_column!r}")
    cols = [header.index(f) for f in features]
    x = np.empty((len(rows), len(features)), dtype=np.float64)
    for r, row in enumerate(rows):
        for c, j in enumerate(cols):
            v = row[j]
            try:
                x[r, c] = float(v)
            except (TypeError, ValueError):
                what = "empty" if v == "" else f"{v!r} is not a number"
                raise ValueError(
                    f"{path}, row {r + 1}, column {features[c]!r}: {what}; feature "
                    "columns must be numeric and complete"
                ) from None
    if not np.isfinite(x).all():
        r, c = np.argwhere(~np.isfinite(x))[0]
        raise ValueError(f"{path}, row {r + 1}, column {features[c]!r}: not a finite number")
    raw = (
        [None] * len(rows)
        if label_column is None
        else [_label_text(row[header.index(label_column)]) for row in rows]
    )
    y, names = _labels_from_names(
        path, raw, _class_names(path, classes), f"column {label_column!r}"
    )
    dataset, keep = _finish(
        path, path.stem, x, y, None, None, names, normalise, test_fraction, seed
    )
    return FileSource(
        dataset,
        "table",
        feature_names=tuple(features),
        raw_train=x[keep],
        train_rows=tuple(int(i) + 1 for i in keep),
    )


# ----------------------------------------------------------------------------- image folders
def _image_files(folder: Path) -> list[Path]:
    return sorted(
        p
        for p in folder.iterdir()
        if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")
    )


def _read_images(path: Path, classes, image_size, normalise, test_fraction, seed) -> FileSource:
    """An image folder as a source: class subfolders (or a flat unlabelled pool), each file read,
    resized and checked in one pass so that every error names the image it comes from."""
    from PIL import Image, UnidentifiedImageError

    subdirs = sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))
    labelled = [(d.name, f) for d in subdirs for f in _image_files(d)]
    loose = _image_files(path)
    if not labelled and not loose:
        raise ValueError(
            f"{path} holds no images ({', '.join(IMAGE_SUFFIXES)}), neither directly "
            "(an unlabelled pool) nor in one subfolder per class"
        )
    names = _class_names(path, classes)
    folder_classes = [d.name for d in subdirs if _image_files(d)]
    if names is None:
        if len(folder_classes) < 2:
            raise ValueError(
                f"{path}: found {len(folder_classes)} class subfolder(s) with images; "
                "pass classes=[...] (dataset.classes) to name the classes, or make "
                "one subfolder per class"
            )
        names = tuple(folder_classes)
    stray = [c for c in folder_classes if c not in names]
    if stray:
        raise ValueError(f"{path}: subfolder {stray[0]!r} is not one of the classes {list(names)}")
    if image_size is not None:
        size = tuple(
            int(s)
            for s in (
                image_size if isinstance(image_size, (list, tuple)) else (image_size, image_size)
            )
        )
        if len(size) != 2 or min(size) < 1:
            raise ValueError(
                f"image_size must be [height, width] of positive integers, got {image_size!r}"
            )
    else:
        size = None
    files = [f for _, f in labelled] + loose
    images = []
    for f in files:
        try:
            with Image.open(f) as im:
                im.load()
                images.append(im.copy())
        except (UnidentifiedImageError, OSError) as err:
            raise ValueError(f"{f} is not a readable image ({err})") from None
    grey = all(im.mode in ("1", "L", "LA", "I", "I;16", "F") for im in images)
    mode = "L" if grey else "RGB"
    first = images[0].size  # PIL sizes are (width, height)
    arrays = []
    for f, im in zip(files, images):
        im = im.convert(mode)
        if size is not None:
            im = im.resize((size[1], size[0]), Image.Resampling.BILINEAR)
        elif im.size != first:
            raise ValueError(
                f"{f} is {im.size[0]}x{im.size[1]} pixels but {files[0]} is "
                f"{first[0]}x{first[1]}; pass image_size=[height, width] to resize"
            )
        a = np.asarray(im, dtype=np.float64) / 255.0
        arrays.append(a[None] if a.ndim == 2 else np.transpose(a, (2, 0, 1)))
    x = np.stack(arrays)
    raw = [c for c, _ in labelled] + [None] * len(loose)
    y, names = _labels_from_names(path, raw, names, "the class subfolders")
    dataset, keep = _finish(
        path, path.name, x, y, None, None, names, normalise, test_fraction, seed
    )
    return FileSource(
        dataset,
        "image",
        raw_train=x[keep],
        train_files=tuple(str(files[i]) for i in keep),
        train_rows=tuple(int(i) + 1 for i in keep),
    )


# ----------------------------------------------------------------------------- entry points
def read_file_source(
    path: _PathLike,
    *,
    label_column: str | None = None,
    image_size: Sequence[int] | None = None,
    normalise: str = "standard",
    classes: Sequence[Any] | None = None,
    test_fraction: float = 0.2,
    seed: int = 0,
) -> FileSource:
    """Read ``path`` into a :class:`FileSource` (the dataset and how to display its points).

    Parameters are those of :func:`load_file_dataset`.
    """
    p = Path(path).expanduser()
    _check_options(p, normalise, test_fraction)
    if not p.exists():
        raise FileNotFoundError(f"{p} does not exist")
    if p.is_dir():
        if label_column is not None:
            raise ValueError(f"{p} is an image folder: label_column applies to tables only")
        return _read_images(p, classes, image_size, normalise, float(test_fraction), seed)
    if image_size is not None and p.suffix.lower() != ".npz":
        raise ValueError(f"{p}: image_size applies to image folders only")
    suffix = p.suffix.lower()
    if suffix == ".npz":
        if label_column is not None:
            raise ValueError(f"{p} is an .npz file: label_column applies to tables only")
        if image_size is not None:
            raise ValueError(f"{p}: image_size applies to image folders only")
        return _read_npz(p, classes, normalise, float(test_fraction), seed)
    if suffix in TABLE_SUFFIXES:
        return _read_table(p, label_column, classes, normalise, float(test_fraction), seed)
    raise ValueError(
        f"{p}: unsupported file type {suffix or '(none)'}; expected .npz, "
        f"{', '.join(TABLE_SUFFIXES)} or a folder of images"
    )


def load_file_dataset(
    path: _PathLike,
    *,
    label_column: str | None = None,
    image_size: Sequence[int] | None = None,
    normalise: str = "standard",
    classes: Sequence[Any] | None = None,
    test_fraction: float = 0.2,
    seed: int = 0,
) -> Dataset:
    """A :class:`Dataset` from a user's ``.npz``, CSV / Parquet table or image folder.

    Parameters
    ----------
    path : path
        The file or folder (see the module docstring for the layouts).
    label_column : str, optional
        Tables: the column holding class labels (default ``label`` if there is one; with no label
        column every row is an unlabelled pool point).
    image_size : (height, width), optional
        Image folders: resize every image (bilinear); without it all images must have one size.
    normalise : {"standard", "none"}
        Standardise with the training inputs' mean and std (per feature / per channel), or keep
        the values as read (images in ``[0, 1]``).
    classes : sequence of str, optional
        The class names, in label order. Needed when the source names no classes (an unlabelled
        pool); otherwise they are the sorted label values / subfolder names.
    test_fraction : float
        Share of the labelled points held out as the test set when the source has none.
    seed : int
        Seeds that held-out split.

    Raises
    ------
    FileNotFoundError
        ``path`` does not exist.
    ValueError
        Malformed content; the message names the file (and row / column or image) and the problem.
    ImportError
        A Parquet file without pandas / pyarrow installed.
    """
    return read_file_source(
        path,
        label_column=label_column,
        image_size=image_size,
        normalise=normalise,
        classes=classes,
        test_fraction=test_fraction,
        seed=seed,
    ).dataset
