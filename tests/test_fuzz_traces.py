"""Profiler traces damaged by hypothesis: cut short (compressed or not), bytes spliced in, an
event's timestamp or duration made NaN, negative, infinite, text or missing, an event's keys
dropped, the document replaced by another JSON value. `trace summary` must exit 0, 4 (not a
step) or 64 with one message, never a traceback; under --json its output is one JSON object with
no bare NaN (what `json.loads` of a strict reader refuses), errors included."""

from __future__ import annotations

import gzip
import json

from hypothesis import given
from hypothesis import strategies as st

from streamlab.errors import EXIT_NOT_A_STEP
from tests.fuzzing import BAD, TRACES, Case, check, examples

TRACE_FILES = {"streamlab": TRACES / "h100-a_v4-b4.trace.json.gz", "kineto": TRACES / "h100-a_v4_moe_dual-b4.kineto.json.gz"}
DOCS = {k: json.loads(gzip.decompress(p.read_bytes())) for k, p in TRACE_FILES.items()}
CODES = frozenset({0, EXIT_NOT_A_STEP}) | BAD
FIXED = examples(30)


def _strict(text: str) -> object:
    def refuse(name):
        raise AssertionError(f"bare {name} in the JSON output")
    return json.loads(text, parse_constant=refuse)


def _summary(data: bytes, cls: str, as_json: bool = False):
    got = check(Case(cls, ("trace", "summary", "t.json.gz", *(["--json"] if as_json else [])), CODES,
                     files={"t.json.gz": data}))
    if as_json:
        doc = _strict(got.stdout)
        assert isinstance(doc, dict) and (got.code in (0, EXIT_NOT_A_STEP) or doc["exit_code"] == got.code)
    return got


@FIXED
@given(kind=st.sampled_from(sorted(TRACE_FILES)), cut=st.floats(0, 1), compressed=st.booleans(),
       junk=st.binary(max_size=20), as_json=st.booleans())
def test_a_trace_cut_short(kind, cut, compressed, junk, as_json):
    raw = TRACE_FILES[kind].read_bytes() if compressed else gzip.decompress(TRACE_FILES[kind].read_bytes())
    _summary(raw[:int(cut * len(raw))] + junk, "traces (cut short, bytes spliced in)", as_json)


BAD_VALUES = st.one_of(st.sampled_from([float("nan"), float("inf"), -float("inf"), -1.0, -1e12, 1e300, 0, None,
                                        "x", "", [], {}, True]),
                       st.floats(allow_nan=True, allow_infinity=True), st.integers(-2**63, 2**64))


@FIXED
@given(kind=st.sampled_from(sorted(TRACE_FILES)), data=st.data(), as_json=st.booleans())
def test_a_trace_with_events_damaged(kind, data, as_json):
    doc = json.loads(json.dumps(DOCS[kind]))  # a copy
    events = doc["traceEvents"]
    for _ in range(data.draw(st.integers(1, 3))):
        ev = events[data.draw(st.integers(0, len(events) - 1))]
        key = data.draw(st.sampled_from(["ts", "dur", "pid", "tid", "ph", "name", "args", "cat", "id"]))
        if data.draw(st.booleans()):
            ev.pop(key, None)
        else:
            ev[key] = data.draw(BAD_VALUES)
    text = json.dumps(doc)  # NaN / Infinity as Python writes them: what a careless writer leaves
    _summary(gzip.compress(text.encode(), mtime=0), "traces (events damaged: NaN, negative, wrong type)", as_json)


@FIXED
@given(doc=st.one_of(st.none(), st.integers(), st.text(max_size=20), st.lists(st.integers(), max_size=3),
                     st.dictionaries(st.text(max_size=8), st.integers(), max_size=3),
                     st.fixed_dictionaries({"traceEvents": st.one_of(st.none(), st.integers(), st.lists(
                         st.dictionaries(st.sampled_from(["ph", "ts", "dur", "name", "pid", "tid", "cat"]),
                                         st.one_of(st.integers(), st.text(max_size=5), st.floats()), max_size=7),
                         max_size=5))})),
       raw=st.binary(max_size=60), use_raw=st.booleans())
def test_a_file_that_is_no_trace(doc, raw, use_raw):
    data = raw if use_raw else json.dumps(doc).encode()
    _summary(data, "traces (not a trace: other JSON, random bytes)", as_json=True)


def test_a_layer_marker_that_is_not_a_time_is_refused():
    """A streamlab trace whose layer marker starts at NaN once gave a per-layer wall of NaN, and
    under --json a crash (no bare NaN in JSON)."""
    doc = json.loads(json.dumps(DOCS["streamlab"]))
    marker = next(ev for ev in doc["traceEvents"] if ev.get("cat") == "layer")
    marker["ts"] = float("nan")
    got = _summary(gzip.compress(json.dumps(doc).encode(), mtime=0), "traces (events damaged: NaN, negative, wrong type)",
                   as_json=True)
    assert got.code == 64 and "marker spans nan" in json.loads(got.stdout)["error"]


def test_a_kernel_whose_time_is_not_a_number_is_refused():
    doc = json.loads(json.dumps(DOCS["streamlab"]))
    kernel = next(ev for ev in doc["traceEvents"] if ev.get("cat") == "kernel")
    kernel["ts"] = float("nan")
    got = _summary(gzip.compress(json.dumps(doc).encode(), mtime=0), "traces (events damaged: NaN, negative, wrong type)",
                   as_json=True)
    assert got.code == 64 and "spans nan" in json.loads(got.stdout)["error"]


def test_a_runtime_event_whose_name_is_not_text_is_read_past():
    doc = json.loads(json.dumps(DOCS["kineto"]))
    doc["traceEvents"][2027]["name"] = float("nan")  # a runtime call (hypothesis found it)
    _summary(gzip.compress(json.dumps(doc).encode(), mtime=0), "traces (events damaged: NaN, negative, wrong type)")
