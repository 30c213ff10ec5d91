"""Labelling configs, annotation results, predictions and webhook events (no server)."""

from __future__ import annotations

import numpy as np
import pytest
from ls_doubles import DIGIT_CONFIG

from ntkal.labelstudio.protocol import (
    LabelConfig,
    ProtocolError,
    choice_of,
    parse_event,
    parse_label_config,
    prediction,
    scaled_scores,
)


def test_config_image_choices():
    cfg = parse_label_config(DIGIT_CONFIG)
    assert cfg == LabelConfig("digit", "image", "Image", "image", ("zero", "one", "two"))
    assert cfg.kind == "image"


def test_config_text_row_and_alias():
    xml = """<View><Text name="row" value="$text"/>
             <Choices name="c" toName="row"><Choice value="A" alias="a"/><Choice value="B"/>
             </Choices></View>"""
    cfg = parse_label_config(xml)
    assert (cfg.kind, cfg.data_key, cfg.classes) == ("row", "text", ("a", "B"))


def test_config_picks_named_choices_among_several():
    xml = """<View><Image name="img" value="$image"/>
             <Choices name="a" toName="img"><Choice value="x"/><Choice value="y"/></Choices>
             <Choices name="b" toName="img"><Choice value="p"/><Choice value="q"/></Choices>
             </View>"""
    with pytest.raises(ProtocolError, match=r"several <Choices>.*--from-name"):
        parse_label_config(xml)
    assert parse_label_config(xml, from_name="b").classes == ("p", "q")


@pytest.mark.parametrize(
    "xml, message",
    [
        ("", "empty"),
        ("<View><Image", "not valid XML"),
        ('<!DOCTYPE x [<!ENTITY a "b">]><View/>', "DOCTYPE"),
        ('<View><Image name="i" value="$image"/></View>', "no <Choices>"),
        (
            '<View><Image name="i" value="$image"/><Choices name="c" toName="i">'
            '<Choice value="x"/></Choices></View>',
            "at least two",
        ),
        (
            '<View><Image name="i" value="$image"/><Choices name="c" toName="i">'
            '<Choice value="x"/><Choice value="x"/></Choices></View>',
            "twice",
        ),
        (
            '<View><Image name="i" value="$image"/><Choices name="c" toName="j">'
            '<Choice value="x"/><Choice value="y"/></Choices></View>',
            "no tag",
        ),
        (
            '<View><Audio name="i" value="$a"/><Choices name="c" toName="i">'
            '<Choice value="x"/><Choice value="y"/></Choices></View>',
            "neither",
        ),
        (
            '<View><Image name="i" value="http://x"/><Choices name="c" toName="i">'
            '<Choice value="x"/><Choice value="y"/></Choices></View>',
            r"\$field",
        ),
    ],
)
def test_config_errors_are_one_clear_line(xml, message):
    with pytest.raises(ProtocolError, match=message):
        parse_label_config(xml)


def _region(name="digit", choices=("one",)):
    return {
        "from_name": name,
        "to_name": "image",
        "type": "choices",
        "value": {"choices": list(choices)},
    }


def test_choice_of():
    cfg = parse_label_config(DIGIT_CONFIG)
    assert choice_of([_region()], cfg) == 1
    assert choice_of([_region("other", ("zz",)), _region(choices=("two",))], cfg) == 2
    assert choice_of([], cfg) is None and choice_of(None, cfg) is None
    with pytest.raises(ProtocolError, match="several classes"):
        choice_of([_region(choices=("one", "two"))], cfg)
    with pytest.raises(ProtocolError, match="unknown class 'three'"):
        choice_of([_region(choices=("three",))], cfg)
    with pytest.raises(ProtocolError, match="list"):
        choice_of({"from_name": "digit"}, cfg)


def test_prediction_shape_and_score_range():
    cfg = parse_label_config(DIGIT_CONFIG)
    p = prediction(cfg, 2, 0.25, "ntkal-vr", task=7)
    assert p == {
        "model_version": "ntkal-vr",
        "score": 0.25,
        "task": 7,
        "result": [
            {
                "from_name": "digit",
                "to_name": "image",
                "type": "choices",
                "value": {"choices": ["two"]},
            }
        ],
    }
    assert prediction(cfg, 0, None, "v")["score"] is None
    for bad in (1.5, -0.1, float("nan")):  # Label Studio drops these without an error
        with pytest.raises(ProtocolError, match=r"\[0, 1\]"):
            prediction(cfg, 0, bad, "v")
    with pytest.raises(ProtocolError, match="class index"):
        prediction(cfg, 3, 0.5, "v")
    with pytest.raises(ProtocolError, match="class index"):
        prediction(cfg, True, 0.5, "v")


def test_scaled_scores_keep_order_within_unit_interval():
    raw = np.random.default_rng(0).normal(size=50) * 40 + 7
    scaled = np.array(scaled_scores(raw.tolist()))
    assert scaled.min() == 0.0 and scaled.max() == 1.0
    assert (np.argsort(raw, kind="stable") == np.argsort(scaled, kind="stable")).all()
    np.testing.assert_allclose(scaled, (raw - raw.min()) / (raw.max() - raw.min()))
    assert scaled_scores([3.0, 3.0]) == [1.0, 1.0]
    assert scaled_scores([]) == []
    with pytest.raises(ProtocolError, match="not finite"):
        scaled_scores([1.0, float("inf")])


def test_parse_events():
    cfg = parse_label_config(DIGIT_CONFIG)
    created = {
        "action": "ANNOTATION_CREATED",
        "annotation": {"id": 5, "task": 9, "completed_by": 2, "result": [_region()]},
        "task": {"id": 9},
        "project": {"id": 1},
    }
    [ev] = parse_event(created, cfg)
    assert (ev.action, ev.annotation_id, ev.task_id, ev.label, ev.user) == ("created", 5, 9, 1, "2")
    updated = dict(
        created,
        action="ANNOTATION_UPDATED",
        annotation={"id": 5, "task": {"id": 9}, "result": [_region(choices=["two"])]},
    )
    assert parse_event(updated, cfg)[0].label == 2
    cancelled = dict(created, annotation=dict(created["annotation"], was_cancelled=True))
    assert parse_event(cancelled, cfg)[0].label is None
    deleted = {"action": "ANNOTATIONS_DELETED", "annotations": [{"id": 5}, {"id": 6}]}
    assert [(e.action, e.annotation_id) for e in parse_event(deleted, cfg)] == [
        ("deleted", 5),
        ("deleted", 6),
    ]
    assert parse_event({"action": "TASKS_CREATED", "tasks": []}, cfg) == []


@pytest.mark.parametrize(
    "payload, message",
    [
        ([], "JSON object"),
        ({"annotation": {}}, "action"),
        ({"action": "ANNOTATION_CREATED", "annotation": {"id": "5"}}, "annotation id"),
        ({"action": "ANNOTATION_CREATED", "annotation": {"id": 5, "result": []}}, "names no task"),
        ({"action": "ANNOTATIONS_DELETED", "annotations": [{"id": None}]}, "integer id"),
        ({"action": "ANNOTATIONS_DELETED"}, "list of annotations"),
    ],
)
def test_bad_events(payload, message):
    with pytest.raises(ProtocolError, match=message):
        parse_event(payload, parse_label_config(DIGIT_CONFIG))
