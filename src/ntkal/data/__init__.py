"""Datasets, their loaders and the labelled/unlabelled pool.

:func:`load_dataset` returns a :class:`Dataset` of normalised float32 tensors; :class:`Pool` tracks
which training points an active learner has labelled, and in which order.
"""

from __future__ import annotations

from ntkal.data.dataset import UNLABELLED, Dataset
from ntkal.data.files import load_file_dataset, read_file_source
from ntkal.data.idx import IDXFormatError, read_idx, write_idx
from ntkal.data.loaders import (
    NO_FILES,
    DatasetNotFoundError,
    available_datasets,
    builtin_dataset_name,
    load_dataset,
)
from ntkal.data.pool import Pool

__all__ = [
    "Dataset",
    "load_dataset",
    "load_file_dataset",
    "read_file_source",
    "UNLABELLED",
    "available_datasets",
    "builtin_dataset_name",
    "NO_FILES",
    "Pool",
    "DatasetNotFoundError",
    "IDXFormatError",
    "read_idx",
    "write_idx",
]
