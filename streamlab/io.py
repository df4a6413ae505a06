"""Atomic file writes: a result file is either the old one or the complete new one, never half
written, even when serialization fails or the process dies mid-write."""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from pathlib import Path

import numpy as np


def write_atomic(path: str | os.PathLike, data: str | bytes) -> Path:
    """Write to a temporary file beside `path`, fsync it, then rename it over `path`.

    The rename is atomic only within one file system, hence the temporary file in the same
    directory. An existing file keeps its permissions; a new one gets 0o644.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = data.encode() if isinstance(data, str) else data
    mode = path.stat().st_mode & 0o7777 if path.exists() else 0o644
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
    if os.name == "posix":  # make the rename itself durable
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    return path


def _encode(obj: object) -> object:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.asdict(obj)
    if isinstance(obj, np.generic):
        return obj.item()
    raise TypeError(f"cannot write {type(obj).__name__} as JSON")


def write_json_atomic(path: str | os.PathLike, obj: object) -> Path:
    """JSON (indent 1, keys in insertion order, numbers unrounded); dataclasses become dicts.
    The text is built in full before the file is touched, so a failure leaves the old file."""
    return write_atomic(path, json.dumps(obj, indent=1, default=_encode) + "\n")
