"""Test doubles for the Label Studio backend: digit images and an in-memory stand-in for the REST
calls the backend makes (the real server is exercised by test_labelstudio_integration.py)."""

from __future__ import annotations

import io

import numpy as np

DIGIT_CONFIG = """<View>
  <Image name="image" value="$image"/>
  <Choices name="digit" toName="image" choice="single">
    <Choice value="zero"/><Choice value="one"/><Choice value="two"/>
  </Choices>
</View>"""


def png(array: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.asarray(array, dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def digit_images(
    n: int, seed: int = 0, classes: int = 3, scale: int = 1
) -> tuple[list[bytes], np.ndarray]:
    """``n`` 8x8 digit images of classes ``0 .. classes-1`` from scikit-learn's digits (bundled
    with it: nothing is downloaded), enlarged ``scale`` times, as PNG bytes, and their classes."""
    from sklearn.datasets import load_digits

    d = load_digits()
    keep = np.flatnonzero(d.target < classes)
    pick = np.random.default_rng(seed).choice(keep, n, replace=False)
    big = np.ones((scale, scale))
    return [png(np.kron(d.images[i], big) * 255 / 16) for i in pick], d.target[pick]


class FakeLabelStudio:
    """Project ``project`` with image tasks; records what the backend writes."""

    def __init__(
        self, n: int = 24, project: int = 3, first_id: int = 101, config: str = DIGIT_CONFIG
    ) -> None:
        self.project_id = project
        self.config = config
        images, self.truth = digit_images(n)
        self.files = {}
        self.tasks = []
        for j, blob in enumerate(images):
            url = f"/data/upload/{project}/img{j}.png"
            self.files[url] = blob
            self.tasks.append({"id": first_id + 2 * j, "data": {"image": url}, "annotations": []})
        self.predictions: dict[str, list[dict]] = {}
        self.calls: list[str] = []
        self.fail_next = None
        self.hooks: list[dict] = []

    # the client's interface
    def project(self, project):
        assert project == self.project_id
        return {"id": project, "label_config": self.config}

    def export_tasks(self, project):
        self.calls.append("export")
        return [dict(t, annotations=list(t["annotations"])) for t in self.tasks]

    def file(self, url):
        return self.files[url]

    def import_predictions(self, project, predictions):
        if self.fail_next is not None:
            err, self.fail_next = self.fail_next, None
            raise err
        self.calls.append("import")
        for p in predictions:
            self.predictions.setdefault(p["model_version"], []).append(p)

    def delete_predictions(self, project, model_version):
        self.calls.append("delete")
        self.predictions.pop(model_version, None)

    def webhooks(self, project):
        return self.hooks

    def set_webhook_headers(self, webhook_id, headers):
        for hook in self.hooks:
            if hook["id"] == webhook_id:
                hook["headers"] = headers

    # helpers
    def scores(self, version="ntkal-vr") -> dict[int, float]:
        return {p["task"]: p["score"] for p in self.predictions.get(version, [])}
