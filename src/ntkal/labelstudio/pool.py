"""A Label Studio project's tasks as ntkal's pool: images or table rows, in task-id order.

Pool point ``i`` is the ``i``-th task by increasing id; the id list is saved beside the label
store (``<store>.tasks.json``), so that after a restart (or ``kill -9``) every stored label still
means the same task. Tasks added to the project later are not in the pool until the backend is
started on a new store.
"""

from __future__ import annotations

import dataclasses
import io
import json
import math
import numbers
import urllib.parse
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ntkal.atomic_files import atomic_write_text
from ntkal.data.dataset import UNLABELLED, Dataset
from ntkal.labelstudio.protocol import LabelConfig, ProtocolError, sorted_task_ids, tasks_by_id

__all__ = ["ProjectPool", "build_pool", "load_task_ids", "save_task_ids", "MAX_IMAGE_PIXELS"]

#: Images larger than this many pixels are refused (decompression bombs).
MAX_IMAGE_PIXELS = 64 * 2**20


@dataclasses.dataclass(frozen=True)
class ProjectPool:
    """The pool built from a project: ``dataset`` (no labels, no test split) and the task ids."""

    dataset: Dataset
    task_ids: tuple
    config: LabelConfig

    def index_of(self, task_id: int) -> int | None:
        """Pool index of a task, ``None`` if the task is not in the pool."""
        return self._positions.get(int(task_id))

    @property
    def _positions(self) -> dict:
        cache = self.__dict__.get("_pos")
        if cache is None:
            cache = {t: i for i, t in enumerate(self.task_ids)}
            object.__setattr__(self, "_pos", cache)
        return cache


def _image_array(blob: bytes, what: str) -> Any:
    from PIL import Image

    try:
        img = Image.open(io.BytesIO(blob))
        if img.size[0] * img.size[1] > MAX_IMAGE_PIXELS:
            raise ProtocolError(f"{what}: image of {img.size[0]}x{img.size[1]} pixels is too large")
        img.load()
    except ProtocolError:
        raise
    except Exception as err:  # noqa: BLE001 - any decoder failure is one clear message
        raise ProtocolError(
            f"{what} is not a readable image ({type(err).__name__}: {err})"
        ) from None
    return img


def _local_file(url: str, root: Path | None) -> bytes | None:
    """Bytes of a ``/data/local-files/?d=REL`` URL or a plain path under ``root``; ``None`` when
    the URL is not a local file."""
    parsed = urllib.parse.urlparse(url)
    rel = None
    if parsed.path.rstrip("/").endswith("/data/local-files"):
        rel = urllib.parse.parse_qs(parsed.query).get("d", [None])[0]
    elif parsed.scheme == "file":
        rel = urllib.parse.unquote(parsed.path)
    elif not parsed.scheme and not url.startswith("/data/"):
        rel = url
    if rel is None:
        return None
    if root is None:
        raise ProtocolError(
            f"task image {url!r} is a local file: pass --data-root, the folder "
            "Label Studio serves local files from"
        )
    base = root.resolve()
    path = Path(rel).resolve() if Path(rel).is_absolute() else (base / rel).resolve()
    if base not in path.parents:
        raise ProtocolError(f"task image {url!r} lies outside --data-root {root}")
    try:
        return path.read_bytes()
    except OSError as err:
        raise ProtocolError(f"task image {url!r}: cannot read {path} ({err.strerror})") from None


def _images(
    tasks: list[dict],
    key: str,
    fetch: Callable[[str], bytes],
    data_root: Path | None,
    size: Sequence[int] | None,
) -> torch.Tensor:
    pics = []
    for task in tasks:
        url = task.get("data", {}).get(key)
        if not isinstance(url, str) or not url:
            raise ProtocolError(f"task {task.get('id')} has no image URL in data[{key!r}]")
        blob = _local_file(url, data_root)
        if blob is None:
            blob = fetch(url)
        pics.append(_image_array(blob, f"task {task.get('id')} ({url})"))
    gray = all(p.mode in ("1", "L", "LA", "I", "I;16", "F") for p in pics)
    if size is None:
        size = (pics[0].size[1], pics[0].size[0])
    h, w = int(size[0]), int(size[1])
    arrays = []
    for p in pics:
        p = p.convert("L" if gray else "RGB")
        if p.size != (w, h):
            p = p.resize((w, h))
        a = np.asarray(p, dtype=np.float64) / 255.0
        arrays.append(a[None] if gray else np.transpose(a, (2, 0, 1)))
    x = np.stack(arrays)
    mean = x.mean(axis=(0, 2, 3), keepdims=True)
    std = x.std(axis=(0, 2, 3), keepdims=True)
    return torch.from_numpy((x - mean) / np.where(std > 0, std, 1.0)).float()


def _rows(tasks: list[dict], key: str, features: Sequence[str] | None) -> tuple:
    def numeric(v: Any) -> bool:
        return isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v)

    datas = []
    for task in tasks:
        data = task.get("data", {})
        if key and isinstance(data.get(key), dict):  # <Table value="$item">: a dict of columns
            data = data[key]
        datas.append(data)
    if features is None:
        features = sorted(k for k, v in datas[0].items() if numeric(v))
        if not features:
            raise ProtocolError(
                f"task {tasks[0].get('id')} has no numeric data fields: ntkal "
                "learns from images or table rows of numbers"
            )
    x = np.zeros((len(tasks), len(features)))
    for r, (task, data) in enumerate(zip(tasks, datas)):
        for c, name in enumerate(features):
            value = data.get(name)
            if not numeric(value):
                raise ProtocolError(
                    f"task {task.get('id')}: data field {name!r} is {value!r}, not a finite number"
                )
            x[r, c] = value
    std = x.std(axis=0)
    x = (x - x.mean(axis=0)) / np.where(std > 0, std, 1.0)
    return torch.from_numpy(x).float(), tuple(features)


def build_pool(
    tasks: list[dict],
    config: LabelConfig,
    *,
    fetch: Callable[[str], bytes],
    task_ids: Sequence[int] | None = None,
    data_root: Path | None = None,
    image_size: Sequence[int] | None = None,
    features: Sequence[str] | None = None,
    name: str = "labelstudio",
) -> ProjectPool:
    """The pool of ``tasks`` (Label Studio task objects) for ``config``.

    Parameters
    ----------
    task_ids : sequence of int, optional
        The pool's task ids in order (a restart: from :func:`load_task_ids`); default: every task,
        by increasing id. A listed task missing from ``tasks`` is an error (it was deleted).
    fetch : callable
        ``url -> bytes`` for files Label Studio serves.
    image_size : (H, W), optional
        Resize images to it (default: the first image's size).
    features : sequence of str, optional
        Table rows: the data fields to use (default: every numeric field of the first task).
    """
    by_id = tasks_by_id(tasks)
    ids = list(task_ids) if task_ids is not None else sorted_task_ids(tasks)
    missing = [t for t in ids if t not in by_id]
    if missing:
        raise ProtocolError(
            f"task {missing[0]} of this label store is no longer in the project; "
            "use a new --store for the changed project"
        )
    if not ids:
        raise ProtocolError("the project has no tasks: import data into Label Studio first")
    ordered = [by_id[t] for t in ids]
    if config.kind == "image":
        x = _images(ordered, config.data_key, fetch, data_root, image_size)
    else:
        x, _ = _rows(ordered, config.data_key, features)
    y = torch.full((x.shape[0],), UNLABELLED, dtype=torch.int64)
    empty = torch.zeros((0, *x.shape[1:]))
    dataset = Dataset(name, x, y, empty, torch.zeros(0, dtype=torch.int64), config.classes)
    return ProjectPool(dataset, tuple(int(t) for t in ids), config)


def save_task_ids(path: Path, project: int, task_ids: Sequence[int]) -> None:
    """Record which task each pool index is (written atomically)."""
    atomic_write_text(
        path, json.dumps({"project": int(project), "task_ids": [int(t) for t in task_ids]})
    )


def load_task_ids(path: Path, project: int) -> list[int] | None:
    """The saved task ids, ``None`` if there is no file; an error if it is for another project."""
    if not path.is_file():
        return None
    try:
        doc = json.loads(path.read_text())
        ids = [int(t) for t in doc["task_ids"]]
        saved = int(doc["project"])
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ProtocolError(
            f"{path} is damaged ({err}); it maps the label store's items to "
            "tasks: restore it or use a new --store"
        ) from None
    if saved != int(project):
        raise ProtocolError(
            f"label store belongs to Label Studio project {saved}, not {project}; "
            "use another --store"
        )
    return ids
