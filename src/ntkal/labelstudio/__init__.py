"""ntkal inside Label Studio: an ML backend with a live look-ahead loop, and label exchange.

Label Studio Community Edition asks an ML backend for predictions (each with a ``score``) and
tells it about annotations through webhooks; its Data Manager sorts tasks by prediction score.
``ntkal serve-backend`` is such a backend: every annotation is stored in a
:class:`~ntkal.labelstore.LabelStore`, conditions the sequential look-ahead of the labelling
session in closed form (Mohamadi, Bae & Sutherland, NeurIPS 2022), and ntkal writes the network's
class as a pre-annotation and the acquisition score as ``score`` for every unlabelled task.

- :mod:`ntkal.labelstudio.protocol`: labelling configs, results, predictions, webhook events;
- :mod:`ntkal.labelstudio.exchange`: Label Studio's JSON export format to and from a store;
- :mod:`ntkal.labelstudio.pool`: a project's tasks (images, table rows) as ntkal's pool;
- :mod:`ntkal.labelstudio.client`: the few REST calls to Label Studio (stdlib HTTP);
- :mod:`ntkal.labelstudio.backend`: the loop; :mod:`ntkal.labelstudio.server`: its HTTP API
  (needs the ``label`` extra: FastAPI + uvicorn).
"""

from __future__ import annotations

from ntkal.labelstudio.exchange import (
    default_config,
    export_tasks,
    import_tasks,
    read_export,
    write_export,
)
from ntkal.labelstudio.protocol import LabelConfig, ProtocolError, parse_label_config

__all__ = [
    "LabelConfig",
    "ProtocolError",
    "parse_label_config",
    "export_tasks",
    "import_tasks",
    "read_export",
    "write_export",
    "default_config",
    "export_store",
    "import_store",
]


def export_store(store, classes, out, **kwargs) -> int:
    """Write every label of ``store`` (a :class:`~ntkal.labelstore.LabelStore`) to ``out`` as a
    Label Studio JSON export; returns the number of tasks written. ``kwargs`` go to
    :func:`export_tasks` (``task_ids``, ``data``) or name the config (``from_name``,
    ``to_name``)."""
    names = {k: kwargs.pop(k) for k in ("from_name", "to_name") if k in kwargs}
    tasks = export_tasks(store.records(), default_config(classes, **names), **kwargs)
    write_export(out, tasks)
    return len(tasks)


def import_store(store, classes, path, **kwargs) -> dict:
    """Add the labels of a Label Studio JSON export at ``path`` to ``store`` (all or nothing;
    equal labels already stored are skipped). ``kwargs`` go to :func:`import_tasks`."""
    tasks = read_export(path)
    from_name = kwargs.pop("from_name", None) or _choices_name(tasks)
    config = default_config(classes, from_name=from_name or "label")
    indices, labels = import_tasks(tasks, config, **kwargs)
    if not indices:
        return {"added": 0, "skipped": 0}
    return store.import_labels(indices, labels, annotator="labelstudio-import")


def _choices_name(tasks) -> str | None:
    """The ``from_name`` of the first ``choices`` region in an export (its control's name)."""
    for task in tasks if isinstance(tasks, list) else []:
        for ann in (task.get("annotations") or []) if isinstance(task, dict) else []:
            for region in (ann.get("result") or []) if isinstance(ann, dict) else []:
                if isinstance(region, dict) and region.get("type") == "choices":
                    return region.get("from_name")
    return None
