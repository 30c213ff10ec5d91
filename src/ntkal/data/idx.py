"""Reader and writer for the IDX format used by MNIST and Fashion-MNIST.

An IDX file is a 4-byte big-endian magic number ``0x0000TTDD`` (``TT`` the element type, ``DD``
the number of dimensions), then ``DD`` big-endian uint32 sizes, then the row-major payload. Only
unsigned bytes (``TT == 0x08``) are supported: it is the only type the image datasets use. Every
check raises :class:`IDXFormatError` naming the file, so a corrupted download is reported as such
instead of surfacing later as a reshape error or silently wrong data.
"""

from __future__ import annotations

import gzip
import os
import zlib
from pathlib import Path
from typing import Union

import numpy as np

__all__ = ["IDXFormatError", "read_idx", "write_idx", "UBYTE"]

#: Type byte of unsigned 8-bit elements, the only type supported.
UBYTE = 0x08
_GZIP_MAGIC = b"\x1f\x8b"
_MAX_NDIM = 4

PathLike = Union[str, "os.PathLike[str]"]


class IDXFormatError(ValueError):
    """An IDX file is malformed (bad magic number, wrong dimensions, truncated or padded payload)."""


def _read_bytes(path: Path) -> bytes:
    """The file's bytes, decompressed if it is gzip (detected by content, not by file name)."""
    with open(path, "rb") as fh:
        raw = fh.read()
    if raw[:2] != _GZIP_MAGIC:
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as exc:
        raise IDXFormatError(f"{path}: corrupted gzip stream ({exc})") from exc


def read_idx(path: PathLike, *, ndim: int | None = None) -> np.ndarray:
    """Parse an IDX file (raw or gzip-compressed) into a read-only ``uint8`` array.

    Parameters
    ----------
    path : str or PathLike
        The ``.gz`` or uncompressed IDX file.
    ndim : int, optional
        Expected number of dimensions (1 for labels, 3 for images); checked so that swapping an
        images file for a labels file is caught here.

    Returns
    -------
    numpy.ndarray
        ``uint8`` array of the shape in the header (a zero-copy view of the file's bytes).

    Raises
    ------
    IDXFormatError
        If the header or the payload size is wrong.
    FileNotFoundError
        If ``path`` does not exist.
    """
    path = Path(path)
    data = _read_bytes(path)
    if len(data) < 4:
        raise IDXFormatError(f"{path}: file is {len(data)} bytes, too short for an IDX header")
    zero, dtype_byte, nd = data[0:2], data[2], data[3]
    magic = int.from_bytes(data[0:4], "big")
    if zero != b"\x00\x00":
        raise IDXFormatError(
            f"{path}: bad magic number 0x{magic:08x} (IDX files start with two zero bytes); "
            "not an IDX file or a corrupted one"
        )
    if dtype_byte != UBYTE:
        raise IDXFormatError(
            f"{path}: bad magic number 0x{magic:08x}: element type 0x{dtype_byte:02x} is not "
            f"supported (expected 0x{UBYTE:02x}, unsigned byte)"
        )
    if not 1 <= nd <= _MAX_NDIM:
        raise IDXFormatError(f"{path}: header declares {nd} dimensions (expected 1 to {_MAX_NDIM})")
    if ndim is not None and nd != ndim:
        raise IDXFormatError(
            f"{path}: header declares {nd} dimensions (magic 0x{magic:08x}) but {ndim} were expected "
            f"(0x{0x800 + ndim:08x}); is this the right file?"
        )
    header_len = 4 + 4 * nd
    if len(data) < header_len:
        raise IDXFormatError(f"{path}: truncated header ({len(data)} bytes, expected {header_len})")
    shape = tuple(int(s) for s in np.frombuffer(data, dtype=">u4", count=nd, offset=4))
    expected = int(np.prod(shape, dtype=np.int64))
    payload = len(data) - header_len
    if payload != expected:
        what = "truncated" if payload < expected else "has trailing bytes"
        raise IDXFormatError(
            f"{path}: payload {what}: header shape {shape} needs {expected} bytes, found {payload}"
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header_len).reshape(shape)


def write_idx(path: PathLike, array: np.ndarray, *, compress: bool | None = None) -> Path:
    """Write a ``uint8`` array as an IDX file; gzip-compressed if ``compress`` (default: the name
    ends in ``.gz``). Used to build small fixtures and to re-export subsets in the same format."""
    path = Path(path)
    array = np.asarray(array)
    if array.dtype != np.uint8:
        raise ValueError(f"only uint8 arrays can be written as IDX, got {array.dtype}")
    if not 1 <= array.ndim <= _MAX_NDIM:
        raise ValueError(f"IDX arrays need 1 to {_MAX_NDIM} dimensions, got {array.ndim}")
    header = bytes([0, 0, UBYTE, array.ndim]) + np.asarray(array.shape, dtype=">u4").tobytes()
    blob = header + np.ascontiguousarray(array).tobytes()
    if compress is None:
        compress = path.suffix == ".gz"
    if compress:
        blob = gzip.compress(blob, compresslevel=6)
    path.write_bytes(blob)
    return path
