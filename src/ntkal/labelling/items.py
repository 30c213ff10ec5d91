"""How the page shows a pool point: a table row, the model-input rendering, the original file.

The model sees a resized, normalised array; a person needs the file as it is (a 400x300 photo
shrunk to 32x32 is unreadable). So an image item has two renderings: ``image.png`` (what the
model gets, scaled up without smoothing) and ``original`` (the source file's bytes, served by pool
index, never by a path from the client). Every item also names where it came from (the file, or
the data row of a table), and so does every export.
"""

from __future__ import annotations

import io
import mimetypes
import os
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["ItemView", "IMAGE_TYPES"]

#: Media types an original file may be served as (anything else is not an image we show).
IMAGE_TYPES = {
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".gif": "image/gif",
    ".bmp": "image/bmp",
    ".webp": "image/webp",
    ".tif": "image/tiff",
    ".tiff": "image/tiff",
}


class ItemView:
    """Renderings and provenance of the pool points of ``dataset`` (read through ``source``,
    a :class:`ntkal.data.files.FileSource`, when the pool is the user's file)."""

    def __init__(self, dataset: Any, source: Any = None) -> None:
        self.dataset = dataset
        self.source = source
        self.x_pool = dataset.x_train
        self.pool_size = int(self.x_pool.shape[0])
        self.files = tuple(getattr(source, "train_files", ()) or ())
        self.rows = tuple(getattr(source, "train_rows", ()) or ())
        self._folder = (
            os.path.commonpath(self.files)
            if len(self.files) > 1
            else (os.path.dirname(self.files[0]) if self.files else "")
        )

    @property
    def kind(self) -> str:
        """``"image"``, ``"table"`` or ``"array"``."""
        kind = getattr(self.source, "kind", None)
        if kind is not None:
            return kind if kind in ("table", "image") else "array"
        x = self.x_pool
        return "image" if x.ndim == 4 and x.shape[1] in (1, 3) else "array"

    def _check(self, index: int) -> int:
        index = int(index)
        if not 0 <= index < self.pool_size:
            raise ValueError(f"index {index} is out of range for a pool of size {self.pool_size}")
        return index

    # ------------------------------------------------------------------ provenance
    def origin(self, index: int) -> dict:
        """Where pool point ``index`` came from: ``{"file": ...}`` (relative to the image folder)
        or ``{"row": n}`` (the file's data row, 1-based); ``{}`` for a built-in dataset."""
        if self.files:
            return {"file": os.path.relpath(self.files[index], self._folder or None)}
        if self.rows:
            return {"row": int(self.rows[index])}
        return {}

    # ------------------------------------------------------------------ renderings
    def row(self, index: int) -> dict:
        """A table row (or flat array) as ``{column: value}``, values as read from the file."""
        raw = getattr(self.source, "raw_train", None)
        values = (np.asarray(raw[index]) if raw is not None else self.x_pool[index].numpy()).ravel()
        names = tuple(getattr(self.source, "feature_names", ())) or tuple(
            f"x{j}" for j in range(values.size)
        )
        return {n: float(v) for n, v in zip(names, values.tolist())}

    def image_png(self, index: int, min_size: int = 224) -> bytes:
        """The model's input for pool image ``index`` as PNG bytes, scaled up (nearest
        neighbour) to at least ``min_size`` pixels on its shorter side."""
        from PIL import Image

        index = self._check(index)
        if self.kind != "image":
            raise ValueError(f"this pool holds {self.kind} items: table rows have no image")
        raw = getattr(self.source, "raw_train", None)
        img = np.asarray(raw[index] if raw is not None else self.x_pool[index].numpy(), np.float64)
        if raw is None or img.min() < 0 or img.max() > 1:
            lo, hi = float(img.min()), float(img.max())
            img = (img - lo) / (hi - lo) if hi > lo else np.zeros_like(img)
        pixels = np.clip(np.round(img * 255), 0, 255).astype(np.uint8)
        pil = (
            Image.fromarray(pixels[0])
            if pixels.shape[0] == 1
            else Image.fromarray(np.transpose(pixels, (1, 2, 0)))
        )
        scale = max(1, int(np.ceil(min_size / min(pil.size))))
        pil = pil.resize((pil.size[0] * scale, pil.size[1] * scale), Image.Resampling.NEAREST)
        buf = io.BytesIO()
        pil.save(buf, format="PNG")
        return buf.getvalue()

    def has_original(self, index: int) -> bool:
        return bool(self.files) and Path(self.files[index]).suffix.lower() in IMAGE_TYPES

    def original(self, index: int) -> tuple[bytes, str]:
        """The source file of image item ``index`` and its media type; for a pool without
        files (a built-in dataset, an .npz) the model-input rendering stands in."""
        index = self._check(index)
        if not self.has_original(index):
            return self.image_png(index, min_size=1), "image/png"
        path = Path(self.files[index])
        try:
            data = path.read_bytes()
        except OSError as err:
            raise ValueError(
                f"the file of item {index} cannot be read ({err.strerror}): {path.name}"
            ) from None
        return data, IMAGE_TYPES.get(path.suffix.lower()) or (
            mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        )

    def describe(self, index: int, probs: np.ndarray | None, classes: tuple, trained: bool) -> dict:
        """What the page shows about pool point ``index``: how to render it, where it came from,
        and the model's predicted class with its probability (the pre-annotation)."""
        item = {
            "index": int(index),
            "done": False,
            "kind": self.kind,
            "origin": self.origin(index),
            "image_url": f"/api/items/{index}/image.png" if self.kind == "image" else None,
            "original_url": f"/api/items/{index}/original" if self.kind == "image" else None,
            "row": self.row(index) if self.kind != "image" else None,
        }
        if probs is not None:
            order = np.argsort(-probs, kind="stable")[:3]
            pred = int(order[0])
            item["prediction"] = {
                "label": pred,
                "class": classes[pred],
                "probability": float(probs[pred]),
                "trained": bool(trained),
                "top": [
                    {"label": int(c), "class": classes[int(c)], "probability": float(probs[int(c)])}
                    for c in order
                ],
            }
        return item
