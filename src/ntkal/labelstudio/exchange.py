"""Labels between a :class:`~ntkal.labelstore.LabelStore` and Label Studio's JSON export format.

Label Studio exports (and imports) a JSON list of tasks::

    [{"id": 7, "data": {"image": "/data/upload/1/a.png", "ntkal_index": 3},
      "annotations": [{"id": 12, "completed_by": 1, "was_cancelled": false,
                       "result": [{"from_name": "label", "to_name": "image", "type": "choices",
                                   "value": {"choices": ["cat"]}}]}]}]

:func:`export_tasks` writes one such task per stored label (``data.ntkal_index`` is the pool
index, so the file comes back to the same item); :func:`import_tasks` reads a Label Studio export
into ``(indices, labels)`` for :meth:`LabelStore.import_labels` (all or nothing). A task's label is
its most recent non-cancelled annotation with a choice of the control (Label Studio keeps every
annotator's annotation; ntkal keeps one label per item).
"""

from __future__ import annotations

import datetime as _dt
import json
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from ntkal.arguments import is_integer
from ntkal.atomic_files import atomic_write_text
from ntkal.labelstudio.protocol import LabelConfig, ProtocolError, choice_of

__all__ = [
    "export_tasks",
    "import_tasks",
    "write_export",
    "read_export",
    "default_config",
    "INDEX_FIELD",
    "MAX_EXPORT_BYTES",
]

#: The task data field carrying ntkal's pool index.
INDEX_FIELD = "ntkal_index"
#: Larger export files are refused (read into memory whole).
MAX_EXPORT_BYTES = 256 * 2**20


def default_config(
    classes: Sequence[str],
    *,
    from_name: str = "label",
    to_name: str = "image",
    object_tag: str = "Image",
    data_key: str = "image",
) -> LabelConfig:
    """The config an export is written for when there is no Label Studio project."""
    return LabelConfig(
        from_name=from_name,
        to_name=to_name,
        object_tag=object_tag,
        data_key=data_key,
        classes=tuple(str(c) for c in classes),
    )


def _iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return (
        _dt.datetime.fromtimestamp(float(ts), _dt.timezone.utc).isoformat().replace("+00:00", "Z")
    )


def export_tasks(
    records: Iterable[dict],
    config: LabelConfig,
    *,
    task_ids: Sequence[int] | None = None,
    data: Callable[[int], dict] | None = None,
) -> list[dict]:
    """Label Studio tasks (JSON export format) for ``records`` (:meth:`LabelStore.records`).

    Parameters
    ----------
    records : iterable of dict
        ``{"index", "label", "annotator", "created"}`` per label, in the order recorded.
    config : LabelConfig
        Names the control, object and classes (:func:`default_config` without a project).
    task_ids : sequence of int, optional
        Pool index -> Label Studio task id (the backend's pool); default: ``index + 1``.
    data : callable, optional
        ``index -> dict`` of extra task data (e.g. the image URL or file name).
    """
    out = []
    for n, rec in enumerate(records):
        index, label = int(rec["index"]), int(rec["label"])
        if not 0 <= label < len(config.classes):
            raise ProtocolError(
                f"label {label} of item {index} is not a class of the config "
                f"({len(config.classes)} classes)"
            )
        tid = int(task_ids[index]) if task_ids is not None else index + 1
        task_data = dict(data(index)) if data is not None else {}
        task_data[INDEX_FIELD] = index
        created = _iso(rec.get("created"))
        out.append(
            {
                "id": tid,
                "data": task_data,
                "annotations": [
                    {
                        "id": n + 1,
                        "completed_by": rec.get("annotator"),
                        "was_cancelled": False,
                        "ground_truth": False,
                        "created_at": created,
                        "updated_at": created,
                        "result": [
                            {
                                "from_name": config.from_name,
                                "to_name": config.to_name,
                                "type": "choices",
                                "value": {"choices": [config.classes[label]]},
                            }
                        ],
                    }
                ],
                "predictions": [],
            }
        )
    return out


def _when(ann: dict) -> str:
    return str(ann.get("updated_at") or ann.get("created_at") or "")


def task_label(task: dict, config: LabelConfig) -> int | None:
    """The class a task's annotations give: its latest non-cancelled annotation with a choice."""
    anns = task.get("annotations") or []
    if not isinstance(anns, list):
        raise ProtocolError(f'task {task.get("id")}: "annotations" must be a list')
    best = None
    for ann in sorted((a for a in anns if isinstance(a, dict)), key=_when):
        if ann.get("was_cancelled"):
            continue
        label = choice_of(ann.get("result"), config)
        if label is not None:
            best = label
    return best


def import_tasks(
    tasks: Any, config: LabelConfig, *, index_of: Callable[[dict], int | None] | None = None
) -> tuple[list[int], list[int]]:
    """``(indices, labels)`` from a Label Studio JSON export, for ``LabelStore.import_labels``.

    Parameters
    ----------
    tasks : list of dict
        The export (tasks without an annotation choosing a class are skipped).
    index_of : callable, optional
        ``task -> pool index`` (``None``: the task is not in the pool, skipped); default: the
        task's ``data.ntkal_index`` (written by :func:`export_tasks`), which must be there.

    Raises
    ------
    ProtocolError
        Not a list of tasks, a task without a pool index, two tasks for one index, or an
        annotation :func:`~ntkal.labelstudio.protocol.choice_of` refuses; the message names the
        task.
    """
    if not isinstance(tasks, list):
        raise ProtocolError("a Label Studio export is a JSON list of tasks")
    indices: list[int] = []
    labels: list[int] = []
    seen: dict[int, Any] = {}
    for task in tasks:
        if not isinstance(task, dict):
            raise ProtocolError("a Label Studio export is a JSON list of task objects")
        try:
            label = task_label(task, config)
        except ProtocolError as err:
            raise ProtocolError(f"task {task.get('id')}: {err}") from None
        if label is None:
            continue
        if index_of is not None:
            index = index_of(task)
            if index is None:
                continue
        else:
            index = (task.get("data") or {}).get(INDEX_FIELD)
            if index is None or not is_integer(index) or index < 0:
                raise ProtocolError(
                    f"task {task.get('id')} has no data.{INDEX_FIELD} (the pool "
                    "index ntkal writes on export); import it through the "
                    "backend's project instead"
                )
        index = int(index)
        if index in seen:
            raise ProtocolError(f"tasks {seen[index]} and {task.get('id')} are both item {index}")
        seen[index] = task.get("id")
        indices.append(index)
        labels.append(label)
    return indices, labels


def write_export(path: Path, tasks: list[dict]) -> None:
    """Write tasks as a Label Studio JSON export file (atomically)."""
    atomic_write_text(Path(path), json.dumps(tasks, indent=1))


def read_export(path: Path) -> list:
    """Read a Label Studio JSON export file."""
    path = Path(path)
    try:
        size = path.stat().st_size
        if size > MAX_EXPORT_BYTES:
            raise ProtocolError(f"{path} is {size} bytes; at most {MAX_EXPORT_BYTES} are read")
        doc = json.loads(path.read_text(encoding="utf-8"))
    except OSError as err:
        raise ProtocolError(f"cannot read {path} ({err.strerror})") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ProtocolError(f"{path} is not a JSON file ({err})") from None
    except RecursionError:
        raise ProtocolError(f"{path} nests too deeply to be a Label Studio export") from None
    if not isinstance(doc, list):
        raise ProtocolError(f"{path} is not a Label Studio JSON export (a list of tasks)")
    return doc
