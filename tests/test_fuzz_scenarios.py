"""Scenario files mutated by hypothesis, as a user's editor or a script might leave them: a value
of another type, out of range, NaN or infinite; a key gone, a key unknown; a schedule step that is
not one; a name that would lead files out of --out; the text cut short, bytes that are not
UTF-8, YAML aliases (the billion-laughs expansion). `graph` (which loads and checks a scenario in
full and runs in milliseconds) must exit 0 or 64 with one message, never a traceback; a mutation
it accepts must also simulate (`sim`) without one."""

from __future__ import annotations

import copy

import yaml
from hypothesis import given
from hypothesis import strategies as st

from tests.fuzzing import BAD, SCENARIOS, Case, check, examples

SHIPPED = {p.stem: yaml.safe_load(p.read_text()) for p in sorted(SCENARIOS.glob("*.yaml"))}
OK_OR_BAD = frozenset({0}) | BAD
FIXED = examples(60)

VALUES = st.one_of(
    st.integers(-2**70, 2**70), st.sampled_from([0, -1, 1, 3, 65536, 65537, 2**24, 2**24 + 1, 257]),
    st.floats(allow_nan=True, allow_infinity=True), st.sampled_from([float("nan"), float("inf"), -0.0, 1e-300]),
    st.booleans(), st.none(), st.text(max_size=20),
    st.sampled_from(["../../escape", "/tmp/abs", "a/b", "..", ".", "", "[red]x[/]", "x" * 300, "int4", "bf16"]),
    st.lists(st.integers(), max_size=3), st.dictionaries(st.text(max_size=5), st.integers(), max_size=2))
KEYS = [("name",), ("model",), ("backend",), ("description",), ("shape", "batch"), ("shape", "context"),
        ("shape", "tp"), ("shape", "page_size"), ("shape", "kv_cache"), ("measure", "layers"),
        ("measure", "warmup"), ("measure", "iters"), ("measure", "repeats"), ("measure", "seconds"),
        ("measure", "profile_replays"), ("collective", "impl"), ("collective", "emulated_us"),
        ("variant", "fused_rope_cat_cache"), ("variant", "shared_expert_fused"), ("shape",), ("measure",),
        ("schedule",), ("variant",), ("collective",), ("shape", "nope"), ("nope",)]


def _graph(doc_text: bytes) -> int:
    return check(Case("scenario files (YAML mutations)", ("graph", "s.yaml"), OK_OR_BAD,
                      files={"s.yaml": doc_text})).code


@FIXED
@given(base=st.sampled_from(sorted(SHIPPED)), key=st.sampled_from(KEYS), value=VALUES, drop=st.booleans())
def test_a_scenario_with_one_value_changed(base, key, value, drop):
    doc = copy.deepcopy(SHIPPED[base])
    where = doc
    for k in key[:-1]:
        where = where.setdefault(k, {}) if isinstance(where.get(k, {}), dict) else {}
    if drop:
        where.pop(key[-1], None)
    else:
        where[key[-1]] = value
    code = _graph(yaml.safe_dump(doc, allow_unicode=True).encode())
    if code == 0 and not drop:
        check(Case("scenario files (YAML mutations)", ("sim", "s.yaml", "--out", "out"), OK_OR_BAD,
                   files={"s.yaml": yaml.safe_dump(doc, allow_unicode=True).encode()}))


@FIXED
@given(base=st.sampled_from(sorted(SHIPPED)), data=st.data())
def test_a_scenario_with_its_schedule_broken(base, data):
    doc = copy.deepcopy(SHIPPED[base])
    steps = doc["schedule"]
    i = data.draw(st.integers(0, len(steps) - 1))
    steps[i] = data.draw(st.one_of(
        VALUES, st.fixed_dictionaries({"run": VALUES}), st.fixed_dictionaries({"fork": VALUES}),
        st.fixed_dictionaries({"join": st.sampled_from(["alt", "main", "nope"]), "into": VALUES}),
        st.fixed_dictionaries({"run": st.lists(st.sampled_from(["moe", "input_norm", "nope", "indexer"]),
                                               max_size=3), "on": VALUES})))
    if data.draw(st.booleans()):
        steps.insert(data.draw(st.integers(0, len(steps))), copy.deepcopy(steps[i]))
    _graph(yaml.safe_dump(doc, allow_unicode=True).encode())


@FIXED
@given(base=st.sampled_from(sorted(SHIPPED)), cut=st.floats(0, 1), junk=st.binary(max_size=40))
def test_a_scenario_cut_short_or_with_bytes_spliced_in(base, cut, junk):
    text = (SCENARIOS / f"{base}.yaml").read_bytes()
    at = int(cut * len(text))
    _graph(text[:at] + junk)


ALIASES = [
    "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{n}: &{n} [{', '.join([f'*{p}'] * 9)}]\n" for p, n in zip("abcdefgh", "bcdefghi"))
    + "description: *i\nschedule: [{run: [input_norm]}]\n",
    "name: &n a_v4\ndescription: *n\nschedule: [{run: [input_norm]}]\n",
    "shape: &s {batch: 4}\nmeasure: *s\nschedule: [{run: [input_norm]}]\n",
    "schedule: &s [{run: [input_norm]}, *s]\n",
    "x: &x {<<: *x}\n",
]


def test_yaml_aliases_are_refused_at_once():
    for text in ALIASES:
        got = _graph(text.encode())
        assert got == 64


def test_bytes_that_are_not_utf8_and_nesting_beyond_reading():
    _graph(b"name: \xff\xfe\nschedule: []\n")
    _graph(b"[" * 100000)
    _graph(b"schedule:\n" + b"  - run:\n" * 2000)
