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


ROWS = 1 << 16  # rows fetched at a time: the Python tuples of a million rows would outweigh the file


def int_columns(db: sqlite3.Connection, sql: str, n: int, params=()) -> list[np.ndarray]:
    """The n integer columns of a query (NULL -> -1)."""
    count = db.execute(f"SELECT COUNT(*) FROM ({sql})", params).fetchone()[0]
    out = np.empty((n, count), np.int64)  # filled a chunk at a time: one copy of the columns
    cursor, at = db.execute(sql, params), 0
    while rows := cursor.fetchmany(ROWS):
        out[:, at:at + len(rows)] = _ints(rows).T
        at += len(rows)
    return list(out[:, :at])


def _ints(rows: list[tuple]) -> np.ndarray:
    try:
        return np.array(rows, dtype=np.int64)
    except (TypeError, ValueError):  # NULLs (or text): -1, else a clear error
        try:
            return np.array([[-1 if v is None else v for v in r] for r in rows], dtype=np.int64)
        except (TypeError, ValueError) as e:
            raise sqlite3.DataError(f"a column that should hold integers does not ({e})") from None
