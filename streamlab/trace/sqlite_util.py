"""Reading profiler SQLite databases (rocpd, Nsight Systems exports) with the standard sqlite3
module: opened read-only, tables looked up by name, columns by PRAGMA, rows as numpy columns,
and every database error one Failure naming the file."""

from __future__ import annotations

import sqlite3
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from streamlab.errors import EXIT_BAD_INPUT, Failure

__all__ = ["columns", "connect", "int_columns", "tables"]


@contextmanager
def connect(path: Path):
    """A read-only connection; database errors inside end in one Failure naming the file."""
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    except sqlite3.Error as e:
        raise Failure(f"{path}: cannot open the SQLite database: {e}", EXIT_BAD_INPUT) from None
    try:
        yield db
    except sqlite3.Error as e:
        raise Failure(f"{path}: the SQLite database cannot be read as expected: {e}",
                      EXIT_BAD_INPUT) from None
    finally:
        db.close()


def tables(db: sqlite3.Connection) -> set[str]:
    """Names of the tables and views."""
    return {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type IN ('table', 'view')")}


def columns(db: sqlite3.Connection, table: str) -> set[str]:
    return {r[1] for r in db.execute(f"PRAGMA table_info(`{table}`)")}


ROWS = 1 << 14  # rows fetched at a time: a chunk of Python tuples costs ~300 bytes a row


def int_columns(db: sqlite3.Connection, sql: str, dtypes: tuple, params=()) -> list[np.ndarray]:
    """The integer columns of a query, one per dtype (NULL -> -1), filled a chunk of rows at a
    time: the columns and one chunk of rows in memory, never all rows as Python objects."""
    count = db.execute(f"SELECT COUNT(*) FROM ({sql})", params).fetchone()[0]
    out = [np.empty(count, d) for d in dtypes]
    cursor, at = db.execute(sql, params), 0
    while rows := cursor.fetchmany(ROWS):
        block = _ints(rows)
        for col, values in zip(out, block.T):
            info = np.iinfo(col.dtype)
            if values.size and (values.min() < info.min or values.max() > info.max):
                raise sqlite3.DataError(f"a column holds {int(values.max())}, more than {col.dtype} "
                                        "holds: not the ids this reader knows")
            col[at:at + len(rows)] = values
        at += len(rows)
    return [col[:at] for col in out]


def _ints(rows: list[tuple]) -> np.ndarray:
    try:
        return np.array(rows, dtype=np.int64)
    except (TypeError, ValueError):  # NULLs (or text): -1, else a clear error
        try:
            return np.array([[-1 if v is None else v for v in r] for r in rows], dtype=np.int64)
        except (TypeError, ValueError) as e:
            raise sqlite3.DataError(f"a column that should hold integers does not ({e})") from None
