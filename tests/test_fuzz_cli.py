"""Every command's options with values they do not accept: just outside their range, of the
wrong type, empty, not a number, infinite; plus hypothesis's integers and text for each. Each
must end in one message and exit 64 (EXIT_BAD_INPUT), with nothing written anywhere; values the
options accept (hypothesis draws some for `graph`, which runs in milliseconds) must exit 0.
The harness (tests/fuzzing.py) runs each command line in a fresh folder and checks for
tracebacks, the exit code, files outside --out and files replaced."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from streamlab.scenario import RANGES
from tests.fuzzing import BAD, ROOT, SCENARIOS, TRACES, Case, check, examples

A_V4, SERIAL = str(SCENARIOS / "a_v4.yaml"), str(SCENARIOS / "serial.yaml")
TRACE, KINETO = str(TRACES / "h100-a_v4-b4.trace.json.gz"), str(TRACES / "h100-a_v4_moe_dual-b4.kineto.json.gz")
MATRIX = str(ROOT / "bench/results/h100-2026-11-22/matrix.json")

BASE = {
    "graph": ("graph", A_V4),
    "run": ("run", A_V4, "--out", "out"),
    "sim": ("sim", A_V4, "--out", "out"),
    "compare": ("compare", SERIAL, A_V4, "--out", "out"),
    "check": ("check", "--baseline", SERIAL, "--candidate", A_V4, "--out", "out"),
    "allreduce": ("allreduce", "--world", "2", "--device", "cpu", "--out", "out"),
    "calibrate": ("calibrate", MATRIX, "--name", "x", "--out", "out/x.yaml"),
    "compile": ("compile", A_V4),
    "trace summary": ("trace", "summary", TRACE),
    "trace diff": ("trace", "diff", TRACE, KINETO),
    "sim --step --explain": ("sim", A_V4, "--step", "--explain", "--out", "out"),
    "calibrate --measure": ("calibrate", "--measure", "--out", "out/x.yaml"),
    "calibrate --for": ("calibrate", "--measure", "--for", A_V4, "--profile", "h100", "--out", "out/x.yaml"),
    "search": ("search", "--out", "out"),
    "schema": ("schema",),
    "allreduce-summary": ("allreduce-summary",),
}


def _int(lo: int | None, hi: int | None) -> list[str]:
    bad = ["abc", "1.5", "", "nan", "1e3"]
    return bad + ([str(lo - 1), str(lo - 10**12)] if lo is not None else []) + \
        ([str(hi + 1), str(10**30)] if hi is not None else [])


def _float(lo: float, hi: float) -> list[str]:
    return ["abc", "", "nan", "inf", "-inf", str(lo - 1), str(hi * 10), "1e400"]


def _shape(key: str) -> list[str]:
    lo, _, hi, _ = RANGES[key]
    return _int(lo, hi)


CHOICE = ["", "nope", "FP8", "glm5,tiny", " "]
BATCHES = ["", ",", "x", "4,x", "0", "-4", "4,0", "65537", "4;64", "1e3"]
IMPLS = ["", ",", "mpi", "nccl,mpi", "NCCL"]
PROFILES = ["", "nope", "/nonexistent/p.yaml", A_V4, str(TRACES / "README.md"), "../../etc/passwd"]

# (command, option, values it must refuse)
OPTIONS: list[tuple[str, str, list[str]]] = [
    ("graph", "--model", CHOICE), ("graph", "--batch", _shape("shape.batch")),
    ("graph", "--context", _shape("shape.context")), ("graph", "--tp", _shape("shape.tp") + ["3", "7"]),
    ("graph", "--page-size", _shape("shape.page_size")), ("graph", "--kv-cache", CHOICE + ["int4"]),
    ("graph", "--hardware", CHOICE + ["mi300"]), ("graph", "--queues", _int(1, 64)),
    ("graph", "--layers", _int(1, 256)),
    ("run", "--model", CHOICE), ("run", "--batch", BATCHES), ("run", "--context", _shape("shape.context")),
    ("run", "--tp", _shape("shape.tp")), ("run", "--page-size", _shape("shape.page_size")),
    ("run", "--kv-cache", CHOICE + ["int4"]), ("run", "--backend", CHOICE), ("run", "--device", CHOICE + ["gpu"]),
    ("run", "--layers", _int(1, 256)), ("run", "--profile", PROFILES), ("run", "--world", _int(1, 64)),
    ("run", "--impl", IMPLS), ("run", "--rank-timeout", _float(1.0, 86400.0)), ("run", "--launcher", ["'x", '"']),
    ("sim", "--profile", PROFILES), ("sim", "--layers", _int(1, 256)), ("sim", "--batch", _shape("shape.batch")),
    ("sim", "--model", CHOICE), ("sim", "--kv-cache", CHOICE),
    ("compare", "--batch", BATCHES), ("compare", "--context", _shape("shape.context")),
    ("compare", "--device", CHOICE), ("compare", "--backend", CHOICE), ("compare", "--profile", PROFILES),
    ("check", "--batch", BATCHES), ("check", "--device", CHOICE), ("check", "--profile", PROFILES),
    ("allreduce", "--world", _int(1, 64)), ("allreduce", "--impl", IMPLS),
    ("allreduce", "--sizes", ["", "x", "8K..4K", "0", "15", "8X", "-8K", "1K..", "..1K"]),
    ("allreduce", "--iters", _int(1, 1 << 20)), ("allreduce", "--warmup", _int(0, 1 << 20)),
    ("allreduce", "--calls", _int(1, 1 << 12)), ("allreduce", "--device", CHOICE),
    ("allreduce", "--rank-timeout", _float(1.0, 86400.0)), ("allreduce", "--launcher", ["'x"]),
    ("calibrate", "--name", ["", "../x", "a/b", ".hidden", "-x", "x" * 101, "a b", "[red]"]),
    ("calibrate", "--pairwise-state", CHOICE), ("calibrate", "--fence-us", _float(0.0, 1000.0)),
    ("calibrate", "--concurrency-slowdown", _float(0.0, 10.0)),
    ("calibrate", "--pairwise", ["/nonexistent.json", A_V4]),
    ("compile", "--for", CHOICE + ["mi300"]), ("compile", "--batch", BATCHES),
    ("trace summary", "--top", _int(0, 100000)), ("trace summary", "--ars-per-layer", _int(1, 64)),
    ("trace summary", "--ar-offset", _int(0, 1000)), ("trace summary", "--layer-regex", ["(", "[", "*x", "(?P<"]),
    ("trace summary", "--what-if", ["x", "=", "gemm=", "gemm=-5us", "gemm=nanus", "gemm=1e400us", "gemm=5parsecs",
                                    "nosuchkernel=5us", "gemm=-0.5x"]),
    ("trace summary", "--nodes", ["/nonexistent.yaml", A_V4, TRACE]),
    ("trace diff", "--top", _int(0, 100000)), ("trace diff", "--ars-per-layer", _int(1, 64)),
    ("sim --step --explain", "--profile", PROFILES), ("sim --step --explain", "--layers", _int(1, 256)),
    ("sim --step --explain", "--context", _shape("shape.context")),
    ("calibrate --measure", "--batch", BATCHES), ("calibrate --measure", "--world", _int(1, 64)),
    ("calibrate --measure", "--backend", CHOICE + ["reference"]), ("calibrate --measure", "--work", [A_V4]),
    ("calibrate --measure", "--scenarios", [A_V4, "/nonexistent-folder"]),
    ("calibrate --measure", "--name", ["../x", "a/b", ""]), ("calibrate --measure", "--profile", ["h100"]),
    ("calibrate --measure", "--pairwise", [A_V4]), ("calibrate --measure", "--out", ["out", "out/../../x.yaml"]),
    ("calibrate --for", "--profile", PROFILES), ("calibrate --for", "--batch", BATCHES),
    ("calibrate --for", "--world", ["2", "0"]),
    ("search", "--model", CHOICE), ("search", "--batch", BATCHES), ("search", "--context", _shape("shape.context")),
    ("search", "--tp", _shape("shape.tp") + ["3"]), ("search", "--page-size", _shape("shape.page_size")),
    ("search", "--kv-cache", CHOICE + ["int4"]), ("search", "--profile", PROFILES), ("search", "--streams", _int(1, 4) + ["1"]),
    ("search", "--top", _int(1, 1000)), ("search", "--layers", _int(1, 256)), ("search", "--workers", _int(1, 256)),
    ("search", "--budget", _float(0.001, 86400.0) + ["0"]), ("search", "--max-waits", _int(0, 64)),
    ("search", "--barriers", _int(0, 64)), ("search", "--variant", ["x", "shared_expert_fused=maybe", "nope=true"]),
    ("search", "--shipped", [A_V4, "/nonexistent-folder"]),
    ("schema", "--out", [A_V4]),
    ("allreduce-summary", None, [A_V4, "/nonexistent-folder", ".", str(ROOT / "scenarios")]),
]
CASES = [(cmd, flag, value) for cmd, flag, values in OPTIONS for value in values]


@pytest.mark.parametrize("command, flag, value", CASES, ids=[f"{c}{f}={v!r}" for c, f, v in CASES])
def test_an_option_value_that_is_refused(command, flag, value):
    got = check(Case(f"options: `{command.split()[0]}`", (*BASE[command], *([flag] if flag else []), value), BAD))
    assert "error" in got.output.lower() or "invalid value" in got.output.lower()


FIXED = examples(25)


def _valid_int(key: str, v: int) -> bool:
    lo, _, hi, _ = RANGES[key]
    return lo <= v <= hi


@FIXED
@given(option=st.sampled_from(["--batch", "--context", "--page-size", "--layers", "--queues", "--tp"]),
       value=st.one_of(st.integers(-2**40, 2**40), st.integers(-8, 300), st.text(max_size=12)))
def test_graph_options_drawn_by_hypothesis(option, value):
    """`graph` validates the whole scenario at the shape asked for and runs in milliseconds, so
    hypothesis may draw valid values too: those must exit 0, the others 64."""
    text = str(value)
    try:  # what typer reads from the text: " 7", "+7", "7_0" are integers too; "٣" is not
        value = int(text) if text.isascii() else value
    except ValueError:
        pass
    valid = isinstance(value, int) and {
        "--batch": _valid_int("shape.batch", value), "--context": _valid_int("shape.context", value),
        "--page-size": _valid_int("shape.page_size", value), "--layers": 1 <= value <= 256,
        "--queues": 1 <= value <= 64, "--tp": value in (1, 2, 4, 8, 16, 32, 64)}[option]
    if option == "--tp" and isinstance(value, int) and valid:
        valid = 64 % value == 0  # heads of GLM-5, 2048 / tp of its MoE intermediate
    check(Case("options: hypothesis (graph, every command)", (*BASE["graph"], option, text),
               frozenset({0}) if valid else BAD))


REFUSED_INTS = {  # (command, option): the accepted range (every value outside it is refused)
    ("run", "--layers"): (1, 256), ("run", "--world"): (1, 64), ("sim", "--layers"): (1, 256),
    ("allreduce", "--iters"): (1, 1 << 20), ("allreduce", "--calls"): (1, 1 << 12),
    ("trace summary", "--top"): (0, 100000), ("compare", "--context"): (1, RANGES["shape.context"][2]),
    ("search", "--top"): (1, 1000), ("search", "--streams"): (1, 4), ("search", "--workers"): (1, 256),
    ("calibrate --measure", "--world"): (1, 64), ("sim --step --explain", "--layers"): (1, 256),
}


@FIXED
@given(where=st.sampled_from(sorted(REFUSED_INTS)), data=st.data())
def test_out_of_range_integers_drawn_by_hypothesis(where, data):
    lo, hi = REFUSED_INTS[where]
    value = data.draw(st.one_of(st.integers(max_value=lo - 1), st.integers(min_value=hi + 1)))
    command, option = where
    check(Case("options: hypothesis (graph, every command)", (*BASE[command], option, str(value)), BAD))


NUMBERS = {("run", "--rank-timeout"): (float, 1.0, 86400.0), ("calibrate", "--fence-us"): (float, 0.0, 1000.0),
           ("calibrate", "--concurrency-slowdown"): (float, 0.0, 10.0), ("sim", "--layers"): (int, 1, 256)}


@FIXED
@given(where=st.sampled_from(sorted(NUMBERS)),
       value=st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=8)))
def test_number_options_drawn_by_hypothesis(where, value):
    """NaN, infinity, text, values out of range: refused like any other; a value the option
    accepts is not this test's business (it would run the command for real)."""
    kind, lo, hi = NUMBERS[where]
    text = repr(value) if isinstance(value, float) else value
    try:
        accepted = lo <= kind(text) <= hi  # what typer parses: int() / float()
    except (ValueError, OverflowError):
        accepted = False
    if accepted:
        return
    command, option = where
    check(Case("options: hypothesis (graph, every command)", (*BASE[command], option, text), BAD))
