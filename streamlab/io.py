"""Files streamlab writes: atomic, inside the folder they were asked for, never over an earlier
result unless asked to.

- `write_atomic`: a file is either the old one or the complete new one, never half written, even
  when serialization fails or the process dies (or is interrupted) mid-write;
- `name_part`: text (a scenario's, a profile's, a device's name) made safe as one component of a
  file name, so that no name can lead a file out of `--out`;
- `claim`: the path of a file about to be written, refused when it exists (unless `force`): a
  result is never silently replaced;
- `parse_yaml`: a YAML document read safely: UTF-8, libyaml's safe loader, and no aliases (a few
  lines of them expand to billions of values once anything walks or prints the document).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import tempfile
from pathlib import Path

import numpy as np
import yaml

from streamlab.errors import EXIT_BAD_INPUT, EXIT_ENVIRONMENT, Failure

__all__ = ["NAME", "claim", "claim_folder", "is_name", "name_part", "parse_yaml", "write_atomic",
           "write_json_atomic"]

SAFE_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml's safe loader where built: 5x faster

NAME = "letters, digits, '_', '.', '+', '-' (at most 100, not starting with '.' or '-')"
_NAME = re.compile(r"[A-Za-z0-9_+][A-Za-z0-9_.+-]{0,99}")
_UNSAFE = re.compile(r"[^A-Za-z0-9_.+-]+")


def is_name(text: object) -> bool:
    """`text` can stand as it is in a file name (see NAME): what scenario and profile names are."""
    return isinstance(text, str) and _NAME.fullmatch(text) is not None


def name_part(text: str) -> str:
    """`text` as one component of a file name: every run of other characters than NAME's becomes
    '_', and a leading '.' or '-' goes, so that '../x' or '/etc' stays inside its folder."""
    part = _UNSAFE.sub("_", str(text)).lstrip(".-")[:100]
    return part or "_"


def claim(path: str | os.PathLike, *, force: bool, what: str = "result") -> Path:
    """`path`, about to be written: refused (EXIT_BAD_INPUT) when it is a folder, or when it
    exists and `force` is off, with the path and the flag that replaces it."""
    path = Path(path)
    if path.is_dir():
        raise Failure(f"{path} is a folder; give the path of the {what} file to write", EXIT_BAD_INPUT)
    if path.exists() and not force:
        raise Failure(f"{path} exists: an earlier {what} is never replaced; pass --force to replace it, "
                      "or write elsewhere (--out)", EXIT_BAD_INPUT)
    if path.parent.exists() and not path.parent.is_dir():
        raise Failure(f"{path.parent} is a file, not a folder: {path} cannot be written there", EXIT_BAD_INPUT)
    return path


def claim_folder(folder: str | os.PathLike, option: str = "--out") -> Path:
    """An output folder named by `option`: refused when it (or a folder above it) is a file."""
    folder = Path(folder)
    for p in (folder, *folder.parents):
        if p.exists():
            if not p.is_dir():
                raise Failure(f"{option} {folder}: {p} is a file, not a folder", EXIT_BAD_INPUT)
            break
    return folder


def write_atomic(path: str | os.PathLike, data: str | bytes) -> Path:
    """Write to a temporary file beside `path`, fsync it, then rename it over `path`.

    The rename is atomic only within one file system, hence the temporary file in the same
    directory. An existing file keeps its permissions; a new one gets 0o644. A path that cannot
    be written (a file where a folder should be, no permission, a full disk) is one Failure
    naming it.
    """
    path = Path(path)
    payload = data.encode() if isinstance(data, str) else data
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        mode = path.stat().st_mode & 0o7777 if path.exists() else 0o644
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as e:
        raise _unwritable(path, e) from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException as e:
        os.unlink(tmp)
        if isinstance(e, OSError):
            raise _unwritable(path, e) from None
        raise
    if os.name == "posix":  # make the rename itself durable
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    return path


def _unwritable(path: Path, e: OSError) -> Failure:
    """A path problem is bad input; a device problem (full disk, I/O error) is the environment's."""
    bad_path = isinstance(e, (FileExistsError, NotADirectoryError, IsADirectoryError, PermissionError))
    return Failure(f"{path}: cannot write: {e.strerror or e}", EXIT_BAD_INPUT if bad_path else EXIT_ENVIRONMENT)


def parse_yaml(data: bytes | str, path: str, what: str) -> object:
    """The YAML document in `data` (the contents of `path`, a `what`: "profile", "node map");
    one Failure(EXIT_BAD_INPUT) naming the file when it is not UTF-8, not YAML, nested beyond
    reading, or holds an alias or a value that contains itself."""
    try:
        text = data.decode("utf-8") if isinstance(data, bytes) else data
        doc = yaml.load(text, Loader=SAFE_LOADER)
    except UnicodeDecodeError as e:
        raise Failure(f"{path}: not a {what}: not UTF-8 text ({e.reason} at byte {e.start})", EXIT_BAD_INPUT) from None
    except yaml.YAMLError as e:
        raise Failure(f"{path}: not valid YAML: {' '.join(str(e).split())}", EXIT_BAD_INPUT) from None
    except RecursionError:
        raise Failure(f"{path}: not a {what}: YAML nested too deeply to read", EXIT_BAD_INPUT) from None
    seen: set[int] = set()  # a mapping or list reached twice is an alias (*name) or a loop
    todo = [doc]
    while todo:
        x = todo.pop()
        if isinstance(x, (dict, list)):
            if id(x) in seen:
                raise Failure(f"{path}: a YAML alias (*name) or a value that contains itself; accepted: every "
                              f"value written out (a {what} needs no aliases)", EXIT_BAD_INPUT)
            seen.add(id(x))
            todo.extend(x.values() if isinstance(x, dict) else x)
    return doc


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
