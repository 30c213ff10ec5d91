"""Label Studio's side of the wire: labelling configs, annotation results, predictions, events.

Pure functions over the JSON (and XML) Label Studio sends and expects; no HTTP here, so every rule
is tested without a server. The shapes are those of Label Studio's ML backend protocol and its
REST API (Label Studio Community Edition 1.23):

- a labelling config is XML; ntkal needs one ``<Choices name=... toName=...>`` control with
  ``<Choice value=...>`` children over one object tag (``<Image value="$image">``,
  ``<Text value="$text">``, ...), whose ``value`` names the task's data field;
- an annotation's (or prediction's) ``result`` is a list of regions; a classification is
  ``{"from_name", "to_name", "type": "choices", "value": {"choices": [name]}}``;
- a prediction is ``{"result", "score", "model_version"}``: the Data Manager can sort tasks by
  the score, so ntkal writes its acquisition score there;
- a webhook is ``{"action": "ANNOTATION_CREATED" | "ANNOTATION_UPDATED" | "ANNOTATIONS_DELETED",
  "annotation" | "annotations", "task", "project"}``.
"""

from __future__ import annotations

import dataclasses
import math
import re
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Sequence
from typing import Any

from ntkal.arguments import is_integer

__all__ = [
    "LabelConfig",
    "ProtocolError",
    "parse_label_config",
    "choice_of",
    "prediction",
    "scaled_scores",
    "AnnotationEvent",
    "parse_event",
    "task_id_of",
    "MAX_CONFIG_CHARS",
]

#: Longer labelling configs are refused before parsing (a classification config is a few lines).
MAX_CONFIG_CHARS = 200_000

#: Object tags whose data ntkal can turn into model inputs: images, and table / text rows whose
#: data fields are numbers.
IMAGE_TAGS = ("Image",)
ROW_TAGS = ("Text", "HyperText", "Table", "Paragraphs")

CREATED, UPDATED, DELETED = "ANNOTATION_CREATED", "ANNOTATION_UPDATED", "ANNOTATIONS_DELETED"


class ProtocolError(ValueError):
    """A config, task, annotation or event ntkal cannot use; the message says what and why."""


@dataclasses.dataclass(frozen=True)
class LabelConfig:
    """What ntkal reads from a labelling config: the ``Choices`` control and the object it labels.

    Attributes
    ----------
    from_name : str
        The ``Choices`` control's ``name`` (``from_name`` in results).
    to_name : str
        The object tag's ``name`` (``to_name`` in results).
    object_tag : str
        ``"Image"``, ``"Text"``, ...
    data_key : str
        The task data field the object shows (``value="$image"`` gives ``"image"``); ``""`` when
        the object's value is not a plain ``$field`` (a table row: every numeric field is used).
    classes : tuple of str
        The choices in config order: class ``i`` of the network is ``classes[i]``.
    """

    from_name: str
    to_name: str
    object_tag: str
    data_key: str
    classes: tuple

    @property
    def kind(self) -> str:
        """``"image"`` or ``"row"``: how a task's data becomes a model input."""
        return "image" if self.object_tag in IMAGE_TAGS else "row"


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def parse_label_config(xml: str, *, from_name: str | None = None) -> LabelConfig:
    """The ``Choices`` control of a labelling config and the object tag it labels.

    Parameters
    ----------
    xml : str
        The project's ``label_config``.
    from_name : str, optional
        Which ``Choices`` to use when the config has several (default: the only one).

    Raises
    ------
    ProtocolError
        Not XML, a DOCTYPE (entities are never expanded), no or several ``Choices``, fewer than
        two choices, repeated choice names, or a ``toName`` that names no object tag.
    """
    if not isinstance(xml, str) or not xml.strip():
        raise ProtocolError("the labelling config is empty")
    if len(xml) > MAX_CONFIG_CHARS:
        raise ProtocolError(f"the labelling config is longer than {MAX_CONFIG_CHARS} characters")
    if re.search(r"<!\s*(DOCTYPE|ENTITY)", xml, re.IGNORECASE):
        raise ProtocolError(
            "the labelling config declares a DOCTYPE or entities; ntkal reads plain XML only"
        )
    try:
        root = ET.fromstring(xml)
    except ET.ParseError as err:
        raise ProtocolError(f"the labelling config is not valid XML ({err})") from None
    tags = list(root.iter())
    choices = [t for t in tags if _local(t.tag) == "Choices"]
    if from_name is not None:
        choices = [t for t in choices if t.get("name") == from_name]
        if not choices:
            raise ProtocolError(f'the labelling config has no <Choices name="{from_name}">')
    if not choices:
        raise ProtocolError(
            "the labelling config has no <Choices> control: ntkal labels whole "
            'items with one class (e.g. <Choices name="label" toName="image">)'
        )
    if len(choices) > 1:
        names = ", ".join(repr(t.get("name")) for t in choices)
        raise ProtocolError(
            f"the labelling config has several <Choices> ({names}); name the one "
            "ntkal learns with --from-name"
        )
    control = choices[0]
    name, to_name = control.get("name"), control.get("toName")
    if not name or not to_name:
        raise ProtocolError("the <Choices> control needs both name and toName attributes")
    if "," in to_name:
        raise ProtocolError(
            f'<Choices name="{name}"> labels several objects ({to_name}); ntkal needs exactly one'
        )
    classes = []
    for choice in control.iter():
        if _local(choice.tag) == "Choice":
            value = choice.get("alias") or choice.get("value")
            if not value:
                raise ProtocolError(f'a <Choice> of "{name}" has no value')
            classes.append(value)
    if len(classes) < 2:
        raise ProtocolError(
            f'<Choices name="{name}"> has {len(classes)} choice(s); a classifier needs at least two'
        )
    if len(set(classes)) != len(classes):
        dup = next(c for c in classes if classes.count(c) > 1)
        raise ProtocolError(f'<Choices name="{name}"> lists the choice {dup!r} twice')
    objects = [t for t in tags if t.get("name") == to_name and t is not control]
    if not objects:
        raise ProtocolError(
            f'<Choices name="{name}"> has toName="{to_name}", but no tag of '
            "the config has that name"
        )
    obj = objects[0]
    tag = _local(obj.tag)
    if tag not in IMAGE_TAGS + ROW_TAGS:
        raise ProtocolError(
            f'ntkal learns from images and table rows; <{tag} name="{to_name}"> '
            f"is neither ({', '.join(IMAGE_TAGS + ROW_TAGS)} are)"
        )
    value = obj.get("value") or ""
    match = re.fullmatch(r"\$([A-Za-z_][\w.-]*)", value.strip())
    if tag in IMAGE_TAGS and not match:
        raise ProtocolError(f'<Image name="{to_name}"> needs value="$field", got {value!r}')
    return LabelConfig(
        from_name=name,
        to_name=to_name,
        object_tag=tag,
        data_key=match.group(1) if match else "",
        classes=tuple(classes),
    )


def choice_of(result: Any, config: LabelConfig) -> int | None:
    """The class index an annotation ``result`` gives (``None`` if it has no choice of this
    control: e.g. an empty or cancelled annotation).

    Raises
    ------
    ProtocolError
        Several choices (ntkal learns one class per item) or a choice the config does not list.
    """
    if result is None:
        return None
    if not isinstance(result, list):
        raise ProtocolError("an annotation's result must be a list of regions")
    picked: list[str] = []
    for region in result:
        if not isinstance(region, dict) or region.get("from_name") != config.from_name:
            continue
        value = region.get("value")
        names = value.get("choices") if isinstance(value, dict) else None
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise ProtocolError(f"region of {config.from_name!r} has no list of choice names")
        picked.extend(names)
    if not picked:
        return None
    if len(set(picked)) > 1:
        raise ProtocolError(
            f"the annotation picks several classes ({', '.join(picked)}); ntkal "
            "learns one class per item"
        )
    if picked[0] not in config.classes:
        raise ProtocolError(
            f"unknown class {picked[0]!r}; the config's classes: {', '.join(config.classes)}"
        )
    return config.classes.index(picked[0])


def scaled_scores(scores: Sequence[float]) -> list[float]:
    """Acquisition scores mapped onto [0, 1], order kept: ``(s - min) / (max - min)``.

    Label Studio refuses prediction scores outside [0, 1]; the map is increasing, so sorting by it
    sorts by the acquisition score (the best candidate gets 1; all equal: all 1).
    """
    values = [float(s) for s in scores]
    if not all(math.isfinite(v) for v in values):
        raise ProtocolError("acquisition scores are not finite")
    if not values:
        return []
    lo, hi = min(values), max(values)
    if hi <= lo:
        return [1.0] * len(values)
    return [(v - lo) / (hi - lo) for v in values]


def prediction(
    config: LabelConfig,
    label: int,
    score: float | None,
    model_version: str,
    task: int | None = None,
) -> dict:
    """A Label Studio prediction: ``label`` as the pre-annotation, ``score`` for sorting.

    ``score`` must be ``None`` or lie in [0, 1] (:func:`scaled_scores`): Label Studio silently
    drops a prediction with any other score.
    """
    if not is_integer(label) or not 0 <= int(label) < len(config.classes):
        raise ProtocolError(f"label {label!r} is not a class index of this config")
    if score is not None and not (math.isfinite(float(score)) and 0.0 <= float(score) <= 1.0):
        raise ProtocolError(f"prediction score {score!r} is not a number in [0, 1]")
    out = {
        "model_version": str(model_version),
        "score": None if score is None else float(score),
        "result": [
            {
                "from_name": config.from_name,
                "to_name": config.to_name,
                "type": "choices",
                "value": {"choices": [config.classes[int(label)]]},
            }
        ],
    }
    if task is not None:
        out["task"] = int(task)
    return out


@dataclasses.dataclass(frozen=True)
class AnnotationEvent:
    """One annotation change from a Label Studio webhook.

    ``action`` is ``"created"``, ``"updated"`` or ``"deleted"``; ``label`` is ``None`` for a
    deletion and for an annotation that chooses nothing (cancelled, or empty).
    """

    action: str
    annotation_id: int
    task_id: int | None
    label: int | None
    user: str | None = None


def task_id_of(value: Any) -> int | None:
    """A task id from an annotation's ``task`` field (an id, or a task object)."""
    if isinstance(value, dict):
        value = value.get("id")
    return int(value) if is_integer(value) else None


def _user(annotation: dict) -> str | None:
    who = annotation.get("completed_by")
    if isinstance(who, dict):
        who = who.get("email") or who.get("id")
    return None if who is None else str(who)[:100]


def parse_event(payload: Any, config: LabelConfig) -> list[AnnotationEvent]:
    """The annotation changes a webhook carries (none for other actions).

    Raises
    ------
    ProtocolError
        A payload without ``action``, an annotation without an integer ``id`` or task, or a result
        :func:`choice_of` refuses.
    """
    if not isinstance(payload, dict) or not isinstance(payload.get("action"), str):
        raise ProtocolError('a webhook body must be a JSON object with an "action"')
    action = payload["action"]
    if action in (CREATED, UPDATED):
        ann = payload.get("annotation")
        if not isinstance(ann, dict) or not is_integer(ann.get("id")):
            raise ProtocolError(f"{action} without an annotation id")
        task = task_id_of(ann.get("task"))
        if task is None:
            task = task_id_of(payload.get("task"))
        if task is None:
            raise ProtocolError(f"{action} for annotation {ann['id']} names no task")
        label = None if ann.get("was_cancelled") else choice_of(ann.get("result"), config)
        return [
            AnnotationEvent(
                "created" if action == CREATED else "updated",
                int(ann["id"]),
                task,
                label,
                _user(ann),
            )
        ]
    if action in (DELETED, "ANNOTATION_DELETED"):
        anns = payload.get("annotations")
        if anns is None and isinstance(payload.get("annotation"), dict):
            anns = [payload["annotation"]]
        if not isinstance(anns, list):
            raise ProtocolError(f"{action} without a list of annotations")
        out = []
        for ann in anns:
            if not isinstance(ann, dict) or not is_integer(ann.get("id")):
                raise ProtocolError(f"{action} lists an annotation without an integer id")
            out.append(
                AnnotationEvent("deleted", int(ann["id"]), task_id_of(ann.get("task")), None)
            )
        return out
    return []


def tasks_by_id(tasks: Iterable[dict]) -> dict[int, dict]:
    """``{task id: task}``; refuses tasks without an integer id."""
    out = {}
    for task in tasks:
        tid = task_id_of(task)
        if tid is None:
            raise ProtocolError("a task without an integer id")
        out[tid] = task
    return out


def sorted_task_ids(tasks: Sequence[dict]) -> list[int]:
    """Task ids in increasing order: pool index ``i`` is the ``i``-th task."""
    return sorted(tasks_by_id(tasks))
