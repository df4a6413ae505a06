"""Incremental JSON over a byte stream, for trace files too large to decode at once.

A file is read 2 MB of decompressed bytes at a time (`CHUNK`). Objects are walked by hand
(`object`, with a callback per key that may read the value itself); the large arrays of records
(Kineto's `traceEvents`, rocprofv3's `buffer_records.kernel_dispatch`) go a block of whole
elements at a time to a `Sink`, whose vectorised path (module scan) reads the fields it needs
from the raw bytes, and one element at a time through json where that path stops; every other
value is decoded by json's raw_decode from a window of the buffer. `skip` walks a value without
decoding it. The buffer holds about one to two chunks.

Errors are one `Failure` (EXIT_BAD_INPUT) naming the file, the offset in the decompressed data
and the element being read: truncated gzip, a file cut inside an element, malformed JSON, bytes
that are not UTF-8.
"""

from __future__ import annotations

import codecs
import gzip
import json
import re
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from streamlab.errors import EXIT_BAD_INPUT, Failure
from streamlab.trace import scan

__all__ = ["CHUNK", "BadEvent", "JsonStream", "Sink"]

CHUNK = 2 << 20  # decompressed bytes read at a time; about the scanner's block size, small
# enough for its working set to stay in the CPU's caches (larger blocks are slower)
SLACK = 1 << 22  # a JSON error further than this before the buffer's end cannot be a cut-off event
_WS = re.compile(rb"[ \t\n\r]*")
WINDOW = 1 << 16  # bytes first decoded for json to read one value from


class BadEvent(Exception):
    """An element that is valid JSON but not a record the sink can use."""


class Sink(Protocol):
    def take(self, data, first: int) -> tuple[int, int]:
        """Whole elements at the start of `data` (the `first`-th of the array onwards) read by
        the vectorised path; (elements taken, bytes used). It stops before an element it
        leaves to `add`."""

    def add(self, element, index: int) -> None:
        """One element decoded by json; raises BadEvent when it is no usable record."""


class _Skip:
    """A sink that keeps nothing: the elements are checked for structure only."""

    def take(self, data, first: int) -> tuple[int, int]:
        block = scan.Block(data, ())
        return block.count, block.end

    def add(self, element, index: int) -> None:
        pass


class JsonStream:
    """Incremental JSON over the byte stream `binary` (see the module doc). `document` names
    what the file should be, for error messages ("Chrome/Kineto trace")."""

    def __init__(self, binary, path: Path, document: str) -> None:
        self.binary = binary
        self.utf8 = codecs.getincrementaldecoder("utf-8")()  # checks what is read
        self.read_bytes = 0  # decompressed bytes read so far
        self.pending: str | None = None  # a read error, raised once the data before it is used
        self.path = path
        self.document = document
        self.decoder = json.JSONDecoder()
        self.buf = b""
        self.pos = 0
        self.base = 0  # bytes dropped before buf[0]
        self.eof = False
        self.array = ""  # name of the array of records being read
        self.index = -1  # element of that array being read; -1 outside it

    # --- buffer -------------------------------------------------------------------------
    def _read(self) -> bytes:
        """Up to CHUNK decompressed bytes. Data that arrives before a read error is returned
        first and the error raised on the next call, so the message says exactly how far the
        file got."""
        if self.pending is not None:
            raise self.fail(self.pending, at=False)
        parts, got = [], 0
        while got < CHUNK:
            try:
                data = self.binary.read1(CHUNK - got)
            except EOFError:
                error = ("the gzip stream is truncated (the file ends before the end of the "
                         f"compressed data) after {self.read_bytes + got:,} decompressed bytes")
            except (gzip.BadGzipFile, zlib.error) as e:
                error = f"corrupt gzip data after {self.read_bytes + got:,} decompressed bytes ({e})"
            except OSError as e:
                error = f"read error after {self.read_bytes + got:,} decompressed bytes: {e}"
            else:
                if not data:
                    break
                parts.append(data)
                got += len(data)
                continue
            self.pending = error
            break
        return b"".join(parts)

    def fill(self, eager: bool = False) -> bool:
        """Append the next chunk to the buffer; False at the end of the file. A read error or
        bytes that are not UTF-8 are raised when the data before them is used up; reading
        ahead (`eager`), they are kept for the call that needs the data."""
        if self.eof or (eager and self.pending is not None):
            return False
        data = self._read()
        if self.pending is None and (not data.isascii() or self.utf8.getstate()[0] or not data):
            try:
                self.utf8.decode(data, final=not data)
            except UnicodeDecodeError as e:
                self.pending = f"not UTF-8 text at decompressed byte {self.read_bytes + e.start:,}"
                data = b""
        if not data and self.pending is not None:
            if eager:
                return False
            raise self.fail(self.pending, at=False)
        self.read_bytes += len(data)
        if not data:
            self.eof = True
            return False
        if self.pos > CHUNK:
            self.base += self.pos
            self.buf = self.buf[self.pos:]
            self.pos = 0
        self.buf += data
        return True

    def peek(self) -> str:
        """The next non-whitespace character, or '' at the end of the file."""
        while True:
            self.pos = _WS.match(self.buf, self.pos).end()
            if self.pos < len(self.buf):
                c = self.buf[self.pos]
                return chr(c) if c < 0x80 else \
                    self.buf[self.pos:self.pos + 4].decode("utf-8", "replace")[:1]
            if not self.fill():
                return ""

    def expect(self, ch: str, what: str) -> None:
        got = self.peek()
        if got != ch:
            raise self.unexpected(got, f"expected {ch!r} {what}")
        self.pos += 1

    def value(self):
        """The JSON value here, decoded by json from a window of the buffer that grows, then
        from the buffer that fills, until the value is whole."""
        self.peek()
        size = WINDOW
        while True:
            window = self.buf[self.pos:self.pos + size]
            cut = self.pos + size < len(self.buf)  # more of the buffer lies beyond the window
            text = window.decode("utf-8", "surrogateescape")  # a character cut at its end
            try:
                obj, end = self.decoder.raw_decode(text)
            except json.JSONDecodeError as e:
                if cut and len(text) - e.pos < SLACK:
                    size *= 4
                    continue
                if not cut and not self.eof and len(text) - e.pos < SLACK and self.fill():
                    continue
                if not cut and self.eof and (e.pos >= len(text.rstrip())
                                             or e.msg.startswith("Unterminated string")):
                    raise self.truncated() from None
                at = self.base + self.pos + _byte_length(text, e.pos, window)
                raise self.fail(f"malformed JSON: {e.msg}", offset=at) from None
            except RecursionError:
                raise self.fail("malformed JSON: nested too deeply") from None
            if end >= len(text):  # a number may go on
                if cut:
                    size *= 4
                    continue
                if not self.eof and self.fill():
                    continue
            self.pos += _byte_length(text, end, window)
            return obj

    # --- errors -------------------------------------------------------------------------
    def where(self, offset: int | None = None) -> str:
        off = self.base + self.pos if offset is None else offset
        at = f"decompressed offset {off:,}"
        return at + (f", {self.array}[{self.index}]" if self.index >= 0 else "")

    def fail(self, message: str, offset: int | None = None, at: bool = True) -> Failure:
        where = f" (at {self.where(offset)})" if at else (
            f" (in {self.array}[{self.index}])" if self.index >= 0 else "")
        return Failure(f"{self.path}: {message}{where}; not a complete {self.document}",
                       EXIT_BAD_INPUT)

    def truncated(self) -> Failure:
        what = (f"inside {self.array}[{self.index}]" if self.index >= 0
                else "before the JSON is complete")
        return Failure(f"{self.path}: the file ends {what} at decompressed offset "
                       f"{self.base + len(self.buf):,}: truncated (was the profiler still writing "
                       "it, or the copy cut short?)", EXIT_BAD_INPUT)

    def unexpected(self, got: str, message: str) -> Failure:
        if got == "":
            return self.truncated()
        return self.fail(f"malformed JSON: {message}, found {got!r}")


    # --- structure ----------------------------------------------------------------------
    def end(self) -> None:
        """Nothing but white space may follow the document."""
        if self.peek() != "":
            raise self.fail("malformed JSON: data after the end of the trace")

    def object(self, on_key: Callable[[str], bool] | None = None) -> dict:
        """The object here. For each key, `on_key(key)` may read the value itself and return
        True; otherwise the value is decoded whole. Returns the decoded values (None for
        those on_key read)."""
        self.expect("{", "at the start of an object")
        out: dict = {}
        if self.peek() == "}":
            self.pos += 1
            return out
        while True:
            if self.peek() != '"':
                raise self.unexpected(self.peek(), "expected a key")
            key = self.value()
            self.expect(":", f"after key {key!r}")
            out[key] = None if on_key is not None and on_key(key) else self.value()
            c = self.peek()
            self.pos += 1
            if c == "}":
                return out
            if c != ",":
                self.pos -= 1
                raise self.unexpected(c, "expected ',' or '}' in an object")

    def each(self, read_one: Callable[[int], None]) -> int:
        """The array here, calling read_one(i) at the start of each element (which must read
        it); how many elements there were."""
        self.expect("[", "at the start of an array")
        n = 0
        if self.peek() == "]":
            self.pos += 1
            return 0
        while True:
            read_one(n)
            n += 1
            c = self.peek()
            self.pos += 1
            if c == "]":
                return n
            if c != ",":
                self.pos -= 1
                raise self.unexpected(c, "expected ',' or ']' in an array")

    def skip(self) -> None:
        """Walk the value here without decoding it (structure checked only)."""
        c = self.peek()
        if c == "[":
            self.records("", _Skip())
        elif c == "{":
            self.object(lambda key: self.skip() or True)
        else:
            self.value()

    def records(self, name: str, sink: Sink, *, closing_optional: bool = False) -> int:
        """The elements of the array of records here, called `name` in messages: blocks of
        whole elements through sink.take, and one element at a time through json and sink.add
        where it stops (an element cut at the buffer's end, or anything it leaves to json,
        errors included). `closing_optional`: the array may end with the file (the Chrome
        "JSON Array Format"). Returns the number of elements."""
        if self.peek() != "[":
            raise self.unexpected(self.peek(), f"expected {name} to be an array")
        self.pos += 1
        outer = (self.array, self.index)
        self.array, self.index = name, 0
        c = self.peek()
        if c == "]":
            self.pos += 1
            self.array, self.index = outer
            return 0
        while True:
            if c == "" and closing_optional:
                break
            if not self._take(sink):
                element = self.value()
                try:
                    sink.add(element, self.index)
                except BadEvent as e:
                    raise self.fail(f"bad event: {e}") from None
                self.index += 1
            c = self.peek()
            if c == ",":
                self.pos += 1
                c = self.peek()
                if c == "]":  # a trailing comma: tolerated
                    self.pos += 1
                    break
                continue
            if c == "]":
                self.pos += 1
                break
            if c == "" and closing_optional:
                break
            raise self.unexpected(c, f"expected ',' or ']' after {name}[{self.index - 1}]")
        count = self.index
        self.array, self.index = outer
        return count

    def _take(self, sink: Sink) -> int:
        """Elements from here (the start of an element) read by the sink's vectorised path, a
        buffer of at least CHUNK at a time; how many it took."""
        while len(self.buf) - self.pos < CHUNK and self.fill(eager=True):
            pass
        taken, used = sink.take(memoryview(self.buf)[self.pos:], self.index)
        self.pos += used
        self.index += taken
        return taken


def _byte_length(text: str, n: int, raw: bytes) -> int:
    """How many bytes of `raw` the first n characters of `text` (its decoding) take."""
    return n if raw.isascii() else len(text[:n].encode("utf-8", "surrogateescape"))
