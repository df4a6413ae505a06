"""Vectorised reading of a block of Chrome-trace events: numpy over the raw bytes finds where
each element of the traceEvents array begins and ends and reads the few fields the loader uses,
so that events it never uses (CPU ops, Python functions, annotations, metadata) are never
decoded, and those it uses are read column-wise rather than as one dict each: a 1 GB trace of
ours loads in 8-9 s instead of 19 s (bench/results/trace-2026-11-21).

How a block is read (`Block`):
- the unescaped quotes delimit the strings; brackets outside strings give the nesting depth,
  hence the elements (objects at depth 1) and, inside each, its nested objects;
- a string directly followed by ':' is a key; the keys asked for are recognised by length and
  bytes; a key's value starts after the ':' and at most one space;
- numbers are parsed from fixed-width windows of bytes, many at once, as Python's int() and
  float() read them (so a few spellings JSON forbids, as 01 or 1., pass).

Exact, not heuristic: where a field cannot be read with certainty this way (a key written with
escapes or followed by other white space, a duplicate key, a value of another type, nested
objects besides one), the element is reported UNSURE and the caller decodes it whole with json.
Anything structurally unexpected (an element that is not an object, a separator other than one
comma) ends the block before that element, so that the caller's JSON parser takes it, with its
own error messages. The elements a caller skips are checked for structure only (strings closed,
brackets balanced, one comma between elements), never decoded: a malformed number inside a CPU
op goes unnoticed.
"""

from __future__ import annotations

from functools import lru_cache
from itertools import pairwise

import numpy as np

PAD = b" " * 32  # room for the 8-byte word and number-window reads past a block's last byte
ABSENT, UNSURE = -1, -2  # field() / codes() for an element without the key / one to decode whole
FLOAT_WIDTH, INT_WIDTH = 24, 16  # longest number read, in bytes (longer: UNSURE)
KEY_LENGTHS = 32  # keys are looked up by length (below this) and first byte
_QUOTE, _COLON, _SPACE, _COMMA = 0x22, 0x3A, 0x20, 0x2C
_OPEN, _CLOSE = 0x7B, 0x7D  # { and }; [ and ] fold onto them with | 0x20
_WS = np.zeros(256, bool)
_WS[[0x20, 0x09, 0x0A, 0x0D]] = True
_ENDS_NUMBER = _WS.copy()  # what may follow a number in JSON
_ENDS_NUMBER[[_COMMA, ord("]"), _CLOSE]] = True
_NOT_FLOAT = np.ones(256, bool)
_NOT_FLOAT[list(b"0123456789+-.eE")] = False
_NOT_INT = np.ones(256, bool)
_NOT_INT[list(b"0123456789-")] = False
_MASKS = np.array([(1 << 8 * n) - 1 for n in range(8)] + [(1 << 64) - 1], np.uint64)


def _word(text: bytes) -> np.uint64:
    return np.uint64(int.from_bytes(text[:8], "little"))


@lru_cache(maxsize=8)
def _key_table(keys: tuple[bytes, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Key number (1-based) by (length, first byte), and per number the key's first, second and
    third 8 bytes: a candidate string is that key if its bytes are."""
    table = np.zeros(KEY_LENGTHS * 256, np.int16)
    words = np.zeros((3, len(keys) + 1), np.uint64)
    for k, key in enumerate(keys, 1):
        slot = len(key) * 256 + key[0]
        if len(key) >= min(KEY_LENGTHS, 25) or table[slot]:
            raise ValueError(f"keys {keys} are not told apart by length and first byte")
        table[slot] = k
        words[:, k] = [_word(key), _word(key[8:]), _word(key[16:])]
    return table, words


class Block:
    """The elements of a stretch of a JSON array, read from `data` (bytes-like), which starts
    at the first byte of an element (after the previous element and its comma). `count`
    elements are whole, objects, and separated by single commas; `end` is the offset just after
    the last of them. `keys`: the keys whose occurrences `field` can report."""

    def __init__(self, data, keys: tuple[bytes, ...]) -> None:
        self.size = len(data)
        self.data = b"".join((data, PAD))
        self.u8 = np.frombuffer(self.data, np.uint8)
        self.words = np.ndarray((len(self.data) - 7,), "<u8", self.data, 0, (1,))  # at each byte
        self.keys = keys
        self.has_escapes = b"\\" in self.data
        quotes, brackets = self._tokens()
        self._elements(brackets)
        self._strings(quotes)
        self._nesting()
        self._find_keys()

    # --- structure ----------------------------------------------------------------------
    def _tokens(self) -> tuple[np.ndarray, np.ndarray]:
        """Offsets of the quotes that delimit strings, and of the brackets outside strings."""
        u8 = self.u8[:self.size]
        folded = u8 | 0x20  # [ ] -> { }
        marks = np.flatnonzero((u8 == _QUOTE) | (folded == _OPEN) | (folded == _CLOSE))
        quote = u8[marks] == _QUOTE
        if self.has_escapes:
            quote[quote] = ~_escaped(marks[quote], np.flatnonzero(u8 == ord("\\")))
            marks = marks[quote | (u8[marks] != _QUOTE)]
            quote = u8[marks] == _QUOTE
        at = np.flatnonzero(~quote)  # brackets among the marks: those after an odd number of
        outside = (at - np.arange(at.size)) % 2 == 0  # quotes lie in strings
        return marks[quote], marks[at[outside]]

    def _elements(self, brackets: np.ndarray) -> None:
        """The whole elements, from the nesting depth the brackets give, up to the first that
        is no object or is not separated from the one before by a single comma."""
        which = self.u8[brackets]
        opens = (which | 0x20) == _OPEN
        curly = which >= _OPEN
        depth = np.cumsum(np.where(opens, 1, -1))  # after each bracket; 0 between elements
        out = np.flatnonzero(depth < 0)  # the array's closing bracket, if in this block
        limit = int(out[0]) if out.size else brackets.size
        ends = np.flatnonzero(~opens[:limit] & (depth[:limit] == 0))
        starts = np.flatnonzero(opens[:limit] & (depth[:limit] == 1))[:ends.size]
        good = curly[starts] & curly[ends] & self._separated(brackets[starts], brackets[ends])
        bad = np.flatnonzero(~good)
        n = int(bad[0]) if bad.size else int(ends.size)
        if n and brackets[starts[0]] != 0:  # the block does not start with an element
            n = 0
        self.count = n
        self.starts, self.ends = brackets[starts[:n]], brackets[ends[:n]]
        self.end = int(self.ends[-1]) + 1 if n else 0
        last = int(ends[n - 1]) + 1 if n else 0
        self.brackets, self.opens, self.curly, self.depth = (
            brackets[:last], opens[:last], curly[:last], depth[:last])

    def _strings(self, quotes: np.ndarray) -> None:
        """Each string's opening and closing quote (o, e) in the whole elements, and whether
        it holds a backslash."""
        quotes = quotes[:np.searchsorted(quotes, self.end)]
        self.o, self.e = quotes[0::2].copy(), quotes[1::2].copy()
        self.escaped = np.zeros(self.o.size, bool)
        if self.has_escapes:
            slashes = np.flatnonzero(self.u8[:self.end] == ord("\\"))
            inside = np.searchsorted(self.o, slashes, "right")
            self.escaped[inside[inside > 0] - 1] = True

    def _separated(self, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
        """Whether the gap before each element holds one comma and white space only. Gaps
        are nearly always alike (as ",\n  "): those equal to the first are checked once."""
        ok = np.ones(starts.size, bool)
        if starts.size < 2:
            return ok
        lo, hi = ends[:-1] + 1, starts[1:]
        width = hi - lo
        head = self.words[lo] & _MASKS[np.minimum(width, 8)]
        tail = self.words[lo + 8] & _MASKS[np.clip(width - 8, 0, 8)]
        same = (width == width[0]) & (head == head[0]) & (tail == tail[0]) & (width <= 16)
        for i in np.flatnonzero(~same | (np.arange(same.size) == 0)):
            ok[i + 1] = self.data[lo[i]:hi[i]].strip(b" \t\n\r") == b","
        ok[1:][same] = ok[1]
        return ok

    def _nesting(self) -> None:
        """Each element's nested object, when it has exactly one and it is a value of the
        element (the usual `args`): a key inside it is at depth 2, any other key at depth 1.
        `multi`: other nested objects (several, or inside arrays)."""
        n = self.count
        self.inner_open = np.full(n, -1, np.int64)
        self.inner_close = np.full(n, -1, np.int64)
        nested = np.flatnonzero(self.opens & self.curly & (self.depth >= 2))
        owner = self._owner(self.brackets[nested])
        per = np.bincount(owner, minlength=n)
        single = (per[owner] == 1) & (self.depth[nested] == 2)
        self.multi = per > 0
        self.multi[owner[single]] = False
        closes = np.flatnonzero(~self.opens & self.curly)
        match = closes[np.searchsorted(closes, nested[single])]  # nothing else nested: next }
        self.inner_open[owner[single]] = self.brackets[nested[single]]
        self.inner_close[owner[single]] = self.brackets[match]

    def _owner(self, pos: np.ndarray) -> np.ndarray:
        """The element each position lies in."""
        return np.searchsorted(self.starts, pos, "right") - 1

    def _string_owner(self) -> np.ndarray:
        """The element each string lies in (every string lies in one: the gaps between
        elements hold none)."""
        first = np.searchsorted(self.o, self.starts)
        return np.repeat(np.arange(self.count), np.diff(np.append(first, self.o.size)))

    # --- keys ---------------------------------------------------------------------------
    def _find_keys(self) -> None:
        """For each key asked for, the strings that are that key: string index, element,
        depth. Elements where a key may hide (escapes, white space before ':') become
        unsure."""
        o, e, u8 = self.o, self.e, self.u8
        table, words = _key_table(self.keys)
        number = table[np.minimum(e - o - 1, KEY_LENGTHS - 1) * 256 + u8[o + 1]]
        cand = np.flatnonzero(number)
        number = number[cand]
        at = o[cand] + 1
        length = e[cand] - at
        same = (self.words[at] & _MASKS[np.minimum(length, 8)]) == words[0][number]
        for w in (1, 2):
            long = np.flatnonzero(length > 8 * w)
            same[long] &= ((self.words[at[long] + 8 * w] & _MASKS[np.minimum(length[long] - 8 * w, 8)])
                           == words[w][number[long]])
        cand, number = cand[same], number[same]
        after = u8[e[cand] + 1]
        owner = self._string_owner()[cand]
        self.unsure = np.zeros(self.count, bool)
        self.unsure[owner[_WS[after]]] = True
        if self.escaped.any():  # a key spelled with escapes could be any key
            esc = np.flatnonzero(self.escaped)
            follow = u8[e[esc] + 1]
            self.unsure[self._owner(o[esc[(follow == _COLON) | _WS[follow]]])] = True
        keyed = after == _COLON
        cand, number, owner = cand[keyed], number[keyed], owner[keyed]
        depth = self._depth(o[cand], owner)
        order = np.argsort(number, kind="stable")
        cuts = np.searchsorted(number[order], np.arange(1, len(self.keys) + 2)).tolist()
        parts = (order[a:b] for a, b in pairwise(cuts))
        self.hits = {key: (cand[part], owner[part], depth[part])
                     for key, part in zip(self.keys, parts)}

    def _depth(self, pos: np.ndarray, owner: np.ndarray) -> np.ndarray:
        """Depth of positions inside elements: 1 in the element, 2 in its nested object; exact
        (from the brackets) where the element has several nested objects."""
        depth = np.where((pos > self.inner_open[owner]) & (pos < self.inner_close[owner]), 2, 1)
        many = self.multi[owner]
        if many.any():
            depth[many] = self.depth[np.searchsorted(self.brackets, pos[many]) - 1]
        return depth

    def field(self, key: bytes, depth: int | None = 1) -> np.ndarray:
        """Per element, the string index of `key` at `depth` (2: inside the element's only
        nested object; None: at any depth), ABSENT, or UNSURE (it occurs more than once, or the
        element cannot be read here)."""
        js, own, at = self.hits[key]
        if depth is not None:
            js, own = js[at == depth], own[at == depth]
        out = np.full(self.count, ABSENT, np.int64)
        out[own] = js
        out[np.bincount(own, minlength=self.count) > 1] = UNSURE
        out[self.unsure] = UNSURE
        if depth == 2:
            out[self.multi] = UNSURE
        return out

    def inner_key(self, j: np.ndarray, inner: bytes) -> np.ndarray:
        """For key strings j whose value is an object that starts with key `inner` (written
        `"key":{"inner":`, at most one space after the colon), the string index of `inner`;
        -1 elsewhere."""
        at = self.value_at(j)
        k = np.minimum(j + 1, self.o.size - 1)
        first = np.zeros(self.o.size, bool)
        first[self.hits[inner][0]] = True
        ok = (at >= 0) & (self.u8[np.maximum(at, 0)] == _OPEN) & (self.o[k] == at + 1) & first[k]
        return np.where(ok, k, -1)

    def value_at(self, j: np.ndarray) -> np.ndarray:
        """Offset of the value of key string j (after ':' and at most one space), or -1 where
        more white space follows."""
        at = self.e[j] + 2
        at += self.u8[at] == _SPACE
        return np.where(_WS[self.u8[at]], -1, at)

    def string_value(self, j: np.ndarray, at: np.ndarray | None = None) -> np.ndarray:
        """String index of the value of key string j (whose value_at is `at`), or -1 where
        the value is no string."""
        at = self.value_at(j) if at is None else at
        nxt = np.minimum(j + 1, self.o.size - 1)
        return np.where((at >= 0) & (self.o[nxt] == at), nxt, -1)

    def codes(self, key: bytes, table: dict[bytes, int]) -> np.ndarray:
        """Per element, table[value of `key`] (at depth 1) for string values listed in the
        table (of at most 16 bytes); ABSENT when the key is missing or its value is something
        else; UNSURE when the element cannot be read here."""
        j = self.field(key)
        out = np.where(j == UNSURE, UNSURE, ABSENT)
        has = np.flatnonzero(j >= 0)
        at = self.value_at(j[has])
        s = self.string_value(j[has], at)
        unclear = (at < 0) | ((s >= 0) & self.escaped[s])
        out[has[unclear]] = UNSURE
        has, s = has[(s >= 0) & ~unclear], s[(s >= 0) & ~unclear]
        at = self.o[s] + 1
        length = self.e[s] - at
        w1 = self.words[at] & _MASKS[np.minimum(length, 8)]
        w2 = self.words[at + 8] & _MASKS[np.clip(length - 8, 0, 8)]
        for text, code in table.items():
            out[has[(length == len(text)) & (w1 == _word(text)) & (w2 == _word(text[8:]))]] = code
        return out

    def texts(self, s: np.ndarray) -> list[bytes]:
        """The raw bytes (escapes as written) of strings s."""
        data = self.data
        return [data[a + 1:b] for a, b in zip(self.o[s].tolist(), self.e[s].tolist())]

    def raw(self, i: int) -> bytes:
        """Element i as written."""
        return self.data[self.starts[i]:self.ends[i] + 1]

    def numbers(self, j: np.ndarray, integer: bool,
                width: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Values of key strings j that are plain numbers (int64 if `integer`, else float64),
        and a mask of those that are not (another type, longer than `width` bytes, malformed)."""
        at = self.value_at(j)
        ok = at >= 0
        at[~ok] = 0
        width = width or (INT_WIDTH if integer else FLOAT_WIDTH)
        window = np.stack([self.words[at + i] for i in range(0, width, 8)], 1).view(np.uint8)
        foreign = (_NOT_INT if integer else _NOT_FLOAT)[window]
        length = foreign.argmax(1)  # the first byte that is no part of a number ends it
        rows = np.arange(j.size)
        ok &= (length > 0) & foreign[rows, length] & _ENDS_NUMBER[window[rows, length]]
        window[np.arange(width) >= length[:, None]] = 0
        window[~ok, 0] = ord("0")  # a placeholder that converts
        values, bad = _convert(window, np.int64 if integer else np.float64)
        return values, ~ok | bad


def _convert(window: np.ndarray, dtype) -> tuple[np.ndarray, np.ndarray]:
    """Rows of NUL-padded ASCII numbers as `dtype`, and which would not convert."""
    text = window.view(f"S{window.shape[1]}").ravel()
    try:
        return text.astype(dtype), np.zeros(text.size, bool)
    except (ValueError, OverflowError):  # malformed, as 1.2.3, or too large: find which
        return _one_by_one(text, dtype)


def _escaped(quotes: np.ndarray, backslashes: np.ndarray) -> np.ndarray:
    """Whether each quote is escaped: preceded by an odd run of backslashes."""
    prev = np.searchsorted(backslashes, quotes) - 1
    touching = (prev >= 0) & (backslashes[np.maximum(prev, 0)] == quotes - 1)
    if not touching.any():
        return touching
    breaks = np.flatnonzero(np.diff(backslashes) != 1) + 1
    run_start = np.zeros(backslashes.size, np.int64)
    run_start[breaks] = breaks
    run_start = np.maximum.accumulate(run_start)  # index of the first backslash of each run
    first = backslashes[run_start[np.maximum(prev, 0)]]
    return touching & ((quotes - first) % 2 == 1)


def _one_by_one(text: np.ndarray, dtype) -> tuple[np.ndarray, np.ndarray]:
    """Parse values one at a time where a bulk conversion failed: which ones are bad."""
    values = np.zeros(text.size, dtype)
    bad = np.zeros(text.size, bool)
    convert = int if dtype is np.int64 else float
    for i, t in enumerate(text.tolist()):
        try:
            values[i] = convert(t)
        except (ValueError, OverflowError):
            bad[i] = True
    return values, bad
