"""Simulator profiles mutated by hypothesis: any value of the shipped profiles (a parameter, its
spread, a node latency, a pair measurement, the provenance) set to zero, a negative number, NaN,
infinity, text or nothing, or dropped with its section; the text cut short; a name that would
lead files out of --out; aliases. `sim` on such a profile must exit 0 or 64 with one message,
never a traceback, and write only under --out."""

from __future__ import annotations

import copy

import yaml
from hypothesis import given
from hypothesis import strategies as st

from streamlab.sim.profile_file import profile_path
from tests.fuzzing import BAD, SCENARIOS, Case, check, examples

PROFILES = {name: yaml.safe_load(profile_path(name).read_text()) for name in ("mi355x", "h100")}
OK_OR_BAD = frozenset({0}) | BAD
FIXED = examples(60)
VALUES = st.one_of(
    st.sampled_from([0, 0.0, -1, -1e-9, float("nan"), float("inf"), -float("inf"), 1e308, 1e-308, None, "", "x",
                     True, [], {}, [1, 2], {"value": 1}, {"value": float("nan"), "source": "s"},
                     {"by_batch": {}, "source": "s"}, {"by_batch": {0: 1.0}, "source": "s"}, "../../x", "a/b"]),
    st.floats(allow_nan=True, allow_infinity=True), st.integers(-2**64, 2**64), st.text(max_size=10))


def _leaves(doc, path=()):
    """Every key path of the document, inner ones included (to drop whole sections)."""
    if isinstance(doc, dict):
        for k, v in doc.items():
            yield (*path, k)
            yield from _leaves(v, (*path, k))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            yield (*path, i)
            yield from _leaves(v, (*path, i))


LEAVES = {name: list(_leaves(doc)) for name, doc in PROFILES.items()}


def _sim(name: str, data: bytes, cls: str = "device profiles (value mutations)") -> int:
    return check(Case(cls, ("sim", str(SCENARIOS / "a_v4.yaml"), "--profile", "p.yaml", "--out", "out"),
                      OK_OR_BAD, files={"p.yaml": data})).code


@FIXED
@given(name=st.sampled_from(sorted(PROFILES)), data=st.data())
def test_a_profile_with_one_value_changed_or_dropped(name, data):
    doc = copy.deepcopy(PROFILES[name])
    path = data.draw(st.sampled_from(LEAVES[name]))
    where = doc
    for k in path[:-1]:
        where = where[k]
    if data.draw(st.booleans()) and isinstance(where, dict):
        del where[path[-1]]
    else:
        where[path[-1]] = data.draw(VALUES)
    _sim(name, yaml.safe_dump(doc, allow_unicode=True).encode())


@FIXED
@given(name=st.sampled_from(sorted(PROFILES)), cut=st.floats(0, 1), junk=st.binary(max_size=30))
def test_a_profile_cut_short(name, cut, junk):
    text = profile_path(name).read_bytes()
    _sim(name, text[:int(cut * len(text))] + junk, "device profiles (cut short, bytes spliced in)")


def test_the_issue_s_profiles_are_refused_naming_the_key():
    """A zero bandwidth (a ZeroDivisionError once), a missing section (an AttributeError once),
    NaN and negative parameters, a name with a path in it, an alias bomb."""
    base = PROFILES["mi355x"]
    cases = {"hbm_gbs": {**base, "hbm_gbs": {"value": 0, "source": "s"}},
             "fence_us": {k: v for k, v in base.items() if k != "fence_us"},
             "launch_gap_us": {**base, "launch_gap_us": {"value": float("nan"), "source": "s"}},
             "graph_entry_us": {**base, "graph_entry_us": {"value": -1.0, "source": "s"}},
             "name": {**base, "name": "../../escape"},
             "provenance.shape": {**base, "provenance": {**base["provenance"],  # tp 3 does not divide 64 heads
                                                         "shape": {**base["provenance"]["shape"], "tp": 3}}}}
    for key, doc in cases.items():
        got = check(Case("device profiles (value mutations)", ("sim", str(SCENARIOS / "a_v4.yaml"), "--profile",
                                                               "p.yaml", "--out", "out"), BAD,
                         files={"p.yaml": yaml.safe_dump(doc).encode()}))
        assert f"p.yaml: {key}" in got.output.replace("\n", "")
    bomb = profile_path("mi355x").read_text().replace("reference:", "bomb: &a [x, x, x]\nbomb2: [*a, *a]\nreference:")
    got = check(Case("device profiles (value mutations)", ("sim", str(SCENARIOS / "a_v4.yaml"), "--profile",
                                                           "p.yaml", "--out", "out"), BAD,
                     files={"p.yaml": bomb.encode()}))
    assert "alias" in got.output
