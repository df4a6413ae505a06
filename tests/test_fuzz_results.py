"""Result files mutated by hypothesis, fed to the commands that read them: `check` (a side given as
a result file), `calibrate` (measured runs) and `allreduce-summary` (a folder of results). Any
value changed to another type, NaN, infinite, negative or dropped, in the current schema and in
the untyped files of before (schema 0, as bench/results/ holds them); the kind or schema changed;
the text cut short. Each command must answer with its documented codes (check: 0 / 1 / 2 or 64;
the others: 0 or 64), one message, no traceback."""

from __future__ import annotations

import copy
import json

from hypothesis import given
from hypothesis import strategies as st

from streamlab.results import to_json
from tests.fuzzing import BAD, ROOT, SCENARIOS, Case, check, examples
from tests.synthetic import run_result

CURRENT = to_json(run_result("serial", latency=300.0))
CANDIDATE = json.dumps(to_json(run_result("a_v4", latency=280.0))).encode()
LEGACY = json.loads((ROOT / "bench/results/h200x2-2026-11-21/runs/serial-b4-w2-nccl.json").read_text())
MATRIX = json.loads((ROOT / "bench/results/h100-2026-11-22/matrix.json").read_text())
VERDICTS = frozenset({0, 1, 2}) | BAD
OK_OR_BAD = frozenset({0}) | BAD
FIXED = examples(40)
VALUES = st.one_of(
    st.sampled_from([None, 0, -1, -1e300, 1e300, "", "x", True, [], {}, [1], {"median": "x"}, "../../x"]),
    st.floats(allow_nan=True, allow_infinity=True), st.integers(-2**64, 2**64), st.text(max_size=8))


def _paths(doc, path=(), depth=0):
    if depth > 6:
        return
    items = doc.items() if isinstance(doc, dict) else enumerate(doc) if isinstance(doc, list) else ()
    for k, v in list(items)[:40]:
        yield (*path, k)
        yield from _paths(v, (*path, k), depth + 1)


PATHS = {"current": list(_paths(CURRENT)), "legacy": list(_paths(LEGACY))}
DOCS = {"current": CURRENT, "legacy": LEGACY}


def _mutate(doc, paths, data) -> object:
    doc = copy.deepcopy(doc)
    for _ in range(data.draw(st.integers(1, 2))):
        path = data.draw(st.sampled_from(paths))
        where = doc
        try:
            for k in path[:-1]:
                where = where[k]
            if data.draw(st.booleans()) and isinstance(where, dict):
                where.pop(path[-1], None)
            else:
                where[path[-1]] = data.draw(VALUES)
        except (KeyError, IndexError, TypeError):  # an earlier change moved the path away
            pass
    return doc


@FIXED
@given(kind=st.sampled_from(sorted(DOCS)), data=st.data())
def test_check_on_a_result_file_with_values_changed(kind, data):
    doc = _mutate(DOCS[kind], PATHS[kind], data)
    check(Case("result files given to check (value mutations)",
               ("check", "--baseline", "a.json", "--candidate", "b.json", "--json"), VERDICTS,
               files={"a.json": json.dumps(doc).encode(), "b.json": CANDIDATE}))


@FIXED
@given(cut=st.floats(0, 1), schema=st.sampled_from([None, 0, 1, 2, 3, "2", -1]),
       kind=st.sampled_from([None, "run", "compare", "check", "trace-summary", "allreduce-sweep", "nope", 5]))
def test_check_on_a_result_of_another_kind_schema_or_cut_short(cut, schema, kind):
    doc = {**CURRENT, "schema": schema, "kind": kind}
    text = json.dumps(doc).encode()
    check(Case("result files given to check (kind, schema, cut short)",
               ("check", "--baseline", "a.json", "--candidate", "b.json"), VERDICTS,
               files={"a.json": text[:max(1, int(cut * len(text)))] if cut < 0.99 else text, "b.json": CANDIDATE}))


MATRIX_PATHS = list(_paths(MATRIX[:2]))


@FIXED
@given(data=st.data())
def test_calibrate_on_runs_with_values_changed(data):
    doc = _mutate(MATRIX[:6], MATRIX_PATHS, data)
    check(Case("measured runs given to calibrate (value mutations)",
               ("calibrate", "m.json", "--name", "x", "--out", "out/x.yaml"), OK_OR_BAD,
               files={"m.json": json.dumps(doc).encode()}))


@FIXED
@given(data=st.data())
def test_allreduce_summary_on_a_folder_of_damaged_results(data):
    doc = _mutate(LEGACY, PATHS["legacy"], data)
    check(Case("result folders given to allreduce-summary", ("allreduce-summary", "runs"), OK_OR_BAD,
               files={"runs/a.json": json.dumps(doc).encode(), "runs/b.json": CANDIDATE}))


def test_a_compare_report_of_several_layouts_is_not_a_side_of_check():
    from streamlab.results import CompareResult
    report = to_json(CompareResult((run_result("serial"), run_result("a_v4"))))
    got = check(Case("result files given to check (kind, schema, cut short)",
                     ("check", "--baseline", "r.json", "--candidate", str(SCENARIOS / "a_v4.yaml"), "--out", "out"),
                     BAD, files={"r.json": json.dumps(report).encode()}))
    assert "holds serial and a_v4 at batch 4" in " ".join(got.output.split())


def test_calibrate_refuses_a_run_without_in_graph_latencies():
    doc = json.loads(json.dumps(MATRIX[:6]))
    serial = next(r for r in doc if r["scenario"] == "serial")
    serial["measured"]["nodes"]["input_norm"]["in_graph_us"] = None
    got = check(Case("measured runs given to calibrate (value mutations)",
                     ("calibrate", "m.json", "--name", "x", "--out", "out/x.yaml"), BAD,
                     files={"m.json": json.dumps(doc).encode()}))
    assert "node input_norm has no in-graph latency" in " ".join(got.output.split())


def test_calibrate_refuses_an_old_run_whose_mean_is_not_a_number():
    doc = json.loads(json.dumps(MATRIX[:6]))
    next(r for r in doc if r["scenario"] == "serial")["measured"]["nodes"]["input_norm"]["in_graph_us"]["mean"] = ""
    got = check(Case("measured runs given to calibrate (value mutations)",
                     ("calibrate", "m.json", "--name", "x", "--out", "out/x.yaml"), BAD,
                     files={"m.json": json.dumps(doc).encode()}))
    assert "input_norm.in_graph_us.mean" in " ".join(got.output.split())
