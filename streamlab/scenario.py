"""Scenario files: model, shape, variant, schedule, collective and measurement, from YAML.

Loading never ends in a traceback for bad input: every problem becomes a `ScenarioError` whose
lines read `file:line: what is wrong`, naming the nodes involved and what is accepted. Every value
is checked here, once, whether it comes from the file or from a command-line override
(`Scenario.override`): types, ranges (finite, positive where it must be), the model, the cache
format, the name (it names result files: `io.NAME`). YAML aliases (`*name`) are refused: a
scenario never needs them, and a few lines of them expand to billions of values.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field, fields, replace
from functools import cached_property
from pathlib import Path
from typing import Any

import yaml

from streamlab.errors import EXIT_BAD_INPUT, Failure
from streamlab.io import NAME, is_name
from streamlab.layer import Layer, Variant, build_layer
from streamlab.models import MODELS, ModelConfig, RankDims, Shape
from streamlab.schedule.program import (
    MAIN,
    Launch,
    Op,
    Program,
    Record,
    WaitEvent,
    WaitStream,
)
from streamlab.schedule.validate import check

COLLECTIVES = ("auto", "emulated", "nccl", "symm_mem", "aiter")
BACKENDS = ("auto", "reference", "triton", "aiter")
KV_CACHES = ("fp8", "bf16")
MAX_LAYERS = 256  # layers in one graph: a whole model has 61 to 78; more only makes a run slower
MAX_BATCH = 1 << 16  # decode tokens per rank
MAX_CONTEXT = 1 << 24  # tokens per request (16 Mi; GLM-5 serves 200 Ki)
# accepted values of the numeric settings: (lowest, lowest allowed itself, highest, in words)
RANGES = {
    "shape.batch": (1, True, MAX_BATCH, f"an integer from 1 to {MAX_BATCH}"),
    "shape.context": (1, True, MAX_CONTEXT, f"an integer from 1 to {MAX_CONTEXT}"),
    "shape.tp": (1, True, 1024, "an integer from 1 to 1024 dividing the model's heads"),
    "shape.page_size": (1, True, 1 << 16, "an integer from 1 to 65536"),
    "measure.layers": (1, True, MAX_LAYERS, f"an integer from 1 to {MAX_LAYERS}"),
    "measure.warmup": (1, True, 1 << 20, "a positive integer"),
    "measure.iters": (1, True, 1 << 20, "a positive integer"),
    "measure.repeats": (1, True, 1 << 10, "a positive integer up to 1024"),
    "measure.seconds": (0.0, False, 86400.0, "a number of seconds above 0, at most 86400"),
    "measure.profile_replays": (1, True, 1 << 10, "a positive integer up to 1024"),
    "collective.emulated_us": (0.0, False, 1e6, "microseconds above 0, at most 1e6"),
}


class ScenarioError(Failure):
    """Bad scenario input; str() is one `file:line: message` line per problem."""

    def __init__(self, path: str, problems: list[tuple[int, str]]) -> None:
        self.path = path
        self.problems = problems
        super().__init__("\n".join(f"{path}:{line}: {msg}" if line else f"{path}: {msg}"
                                   for line, msg in problems), EXIT_BAD_INPUT)


class _Map(dict):
    line = 0

    def __init__(self) -> None:
        super().__init__()
        self.lines: dict[str, int] = {}


class _Seq(list):
    line = 0

    def __init__(self) -> None:
        super().__init__()
        self.lines: list[int] = []


class _Loader(yaml.SafeLoader):
    """SafeLoader whose mappings and sequences remember the line of each entry, which reads
    only true/false as booleans (YAML 1.1 would turn the step key `on:` into True), and which
    refuses aliases (the billion-laughs expansion: 30 lines, 10^9 strings when printed)."""

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise _Bad(event.start_mark.line + 1, f"YAML alias *{event.anchor} is not accepted in a scenario; "
                                                 "write the value out")
        return super().compose_node(parent, index)


_Loader.yaml_implicit_resolvers = {
    k: [(tag, rx) for tag, rx in v if tag != "tag:yaml.org,2002:bool"]
    for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()}
_Loader.add_implicit_resolver("tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
                              list("tTfF"))


def _construct_map(loader: _Loader, node: yaml.MappingNode) -> _Map:
    out = _Map()
    out.line = node.start_mark.line + 1
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        line = key_node.start_mark.line + 1
        if not isinstance(key, (str, int, float, bool)) and key is not None:
            raise _Bad(line, f"a key must be a name, got {_short(key)}")
        if key in out:
            raise _Bad(line, f"key {_short(key)} appears twice")
        out[key] = loader.construct_object(value_node, deep=True)
        out.lines[key] = line
    return out


def _construct_seq(loader: _Loader, node: yaml.SequenceNode) -> _Seq:
    out = _Seq()
    out.line = node.start_mark.line + 1
    for item in node.value:
        out.append(loader.construct_object(item, deep=True))
        out.lines.append(item.start_mark.line + 1)
    return out


_Loader.add_constructor("tag:yaml.org,2002:map", _construct_map)
_Loader.add_constructor("tag:yaml.org,2002:seq", _construct_seq)


class _Bad(Exception):
    def __init__(self, line: int, message: str) -> None:
        super().__init__(message)
        self.line = line


def _type_name(t: type | tuple) -> str:
    names = {int: "an integer", bool: "true or false", str: "a string", float: "a number",
             list: "a list", dict: "a mapping"}
    ts = t if isinstance(t, tuple) else (t,)
    return " or ".join(names.get(x, x.__name__) for x in ts)


def _section(doc: _Map, key: str, cls: type, **defaults: Any) -> Any:
    """Build dataclass `cls` from mapping doc[key], checking keys and types against its fields."""
    raw = doc.get(key, _Map())
    line = doc.lines.get(key, doc.line)
    if not isinstance(raw, dict):
        raise _Bad(line, f"{key} must be a mapping")
    known = {f.name: f for f in fields(cls) if f.init}
    values = dict(defaults)
    for k, v in raw.items():
        kline = raw.lines.get(k, line)
        if k not in known:
            raise _Bad(kline, f"unknown key {key}.{k}{_suggest(k, known)}; known: {', '.join(known)}")
        want = type(getattr(cls(), k))
        ok = (isinstance(v, want) and not (want is int and isinstance(v, bool))) or (
            want is float and isinstance(v, int) and not isinstance(v, bool))
        if not ok:
            raise _Bad(kline, f"{key}.{k} must be {_type_name(want)}, got {_short(v)}")
        problem = out_of_range(f"{key}.{k}", v)
        if problem:
            raise _Bad(kline, problem)
        values[k] = float(v) if want is float else v
    return cls(**values)


def out_of_range(key: str, value) -> str | None:
    """What is wrong with `value` for the numeric setting `key` (RANGES), or None."""
    if key not in RANGES:
        return None
    lo, inclusive, hi, words = RANGES[key]
    if not (value > lo or (inclusive and value == lo)) or not value <= hi:  # NaN fails both
        return f"{key} must be {words}, got {_short(value)}"
    return None


def parse_batches(text: str | None, option: str = "--batch") -> list[int] | None:
    """A comma list of batch sizes (a command-line option), each in RANGES' range, repeats
    dropped; None when not given."""
    if text is None:
        return None
    try:
        out = [int(b) for b in str(text).split(",") if b.strip()]
    except ValueError:
        out = []
    if not out:
        raise Failure(f"{option} takes a comma-separated list of integers, got {text!r}", EXIT_BAD_INPUT)
    for b in out:
        problem = out_of_range("shape.batch", b)
        if problem:
            raise Failure(f"{option}: {problem}", EXIT_BAD_INPUT)
    return list(dict.fromkeys(out))


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _suggest(word: str, choices) -> str:
    close = difflib.get_close_matches(str(word), list(choices), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


@dataclass(frozen=True)
class Collective:
    impl: str = "auto"
    emulated_us: float = 10.0  # duration of the emulated all-reduce (reference: 10.3 us on MI355X)


@dataclass(frozen=True)
class Measure:
    layers: int = 4
    warmup: int = 20
    iters: int = 50  # replays per block between synchronisations (the unit of `drift`)
    repeats: int = 5  # interleaved over the timed window (exec.measure.time_graph)
    seconds: float = 2.0  # the timed window lasts at least this long
    profile_replays: int = 5


@dataclass
class Scenario:
    name: str
    path: str
    model: ModelConfig
    shape: Shape
    variant: Variant
    steps: tuple[Step, ...]
    collective: Collective = field(default_factory=Collective)
    measure: Measure = field(default_factory=Measure)
    backend: str = "auto"
    description: str = ""

    @cached_property
    def program(self) -> Program:
        return compile_steps(self.steps, self.layer)

    @cached_property
    def dims(self) -> RankDims:
        return RankDims(self.model, self.shape)

    @cached_property
    def layer(self) -> Layer:
        return build_layer(self.dims, self.variant)

    def override(self, model: str | None = None, **shape: int | str | None) -> Scenario:
        """A copy with another model or shape (the schedule is shape-independent), re-validated."""
        if model is not None and model not in MODELS:
            raise ScenarioError(self.path, [(0, (f"unknown model {model!r}{_suggest(model, MODELS)}; "
                                                f"known: {', '.join(MODELS)}"))])
        problems = [(0, f"{p} (overriding the scenario's shape)") for k, v in shape.items() if v is not None
                    for p in [_shape_problem(k, v)] if p]
        if problems:
            raise ScenarioError(self.path, problems[:1])
        return _validated(replace(self, model=MODELS[model] if model else self.model,
                                  shape=self.shape.with_(**shape)))


def _shape_problem(key: str, value) -> str | None:
    """What is wrong with one shape value (from the file or an override), or None."""
    if key == "kv_cache":
        return None if value in KV_CACHES else f"shape.kv_cache must be one of {', '.join(KV_CACHES)}, got {value!r}"
    if isinstance(value, bool) or not isinstance(value, int):
        return f"shape.{key} must be an integer, got {value!r}"
    return out_of_range(f"shape.{key}", value)


STEP_KINDS = ("run", "fork", "join", "record", "wait")
STEP_KEYS = {"run": {"on", "sms"}, "fork": {"from"}, "join": {"into"}, "record": {"on"}, "wait": {"on"}}


@dataclass(frozen=True)
class Step:
    """One schedule step as written: `names` for run, `stream`/`other` for the rest.

    `sms` (run steps): an SM / CU budget for each node the step runs, `sms: 66` beside `run:`:
    each of their kernels runs on at most that many SMs (CUs) at once, so that a kernel on another
    stream keeps the rest (the Triton kernels honour it through their grid, kernels/triton/common.py;
    the simulator models it, sim/costs.py). Parsing takes a whole number >= 1; the device's own
    count bounds it where the scenario runs or is simulated (`check_budgets`)."""

    kind: str
    line: int
    stream: str = MAIN  # run/record/wait: the stream; fork/join: the forked / joined stream
    other: str = MAIN  # fork: from; join: into; record/wait: the event
    names: tuple[str, ...] = ()
    sms: int | None = None


def _parse_steps(raw: Any, line: int) -> tuple[Step, ...]:
    if not isinstance(raw, list) or not raw:
        raise _Bad(line, "schedule must be a non-empty list of steps (run / fork / join / record / wait)")
    steps: list[Step] = []
    for step, sline in zip(raw, raw.lines):
        if not isinstance(step, dict):
            raise _Bad(sline, f"a schedule step must be a mapping such as `run: [...]`, got {_short(step)}")
        kinds = [k for k in step if k in STEP_KINDS]
        if len(kinds) != 1:
            what = "none" if not kinds else ", ".join(kinds)
            raise _Bad(sline, f"a step needs exactly one of {', '.join(STEP_KINDS)} (found {what})")
        kind = kinds[0]
        for k in step:
            if k != kind and k not in STEP_KEYS[kind]:
                raise _Bad(step.lines.get(k, sline), f"unknown key {k!r} in a {kind} step"
                           f"{_suggest(k, STEP_KEYS[kind])}; allowed: {', '.join(sorted(STEP_KEYS[kind]))}")
        for k, v in step.items():
            if k == "sms":
                if type(v) is not int or v < 1:
                    raise _Bad(step.lines.get(k, sline), f"sms takes the SMs / CUs the step's nodes may use "
                               f"at once, a whole number from 1 to the device's count, got {_short(v)}")
            elif k != "run" and not (isinstance(v, str) and v):
                raise _Bad(step.lines.get(k, sline), f"{k} takes a stream or event name, got {_short(v)}")
        if kind == "run":
            names = step["run"]
            names = [names] if isinstance(names, str) else names
            if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
                raise _Bad(sline, "run takes a node or group name or a list of them")
            steps.append(Step("run", sline, step.get("on", MAIN), names=tuple(names), sms=step.get("sms")))
        elif kind == "fork":
            src = step.get("from", MAIN)
            if step["fork"] == src:
                raise _Bad(sline, f"fork: {src} waits on itself; fork another stream from {src}")
            steps.append(Step("fork", sline, step["fork"], src))
        elif kind == "join":
            into = step.get("into", MAIN)
            if step["join"] == into:
                raise _Bad(sline, f"join: {into} into itself does nothing; join another stream")
            steps.append(Step("join", sline, step["join"], into))
        else:
            steps.append(Step(kind, sline, step.get("on", MAIN), step[kind]))
    return tuple(steps)


def compile_steps(steps: tuple[Step, ...], layer: Layer) -> Program:
    """Expand group names against the layer's variant and lower steps to stream operations."""
    ops: list[Op] = []
    for st in steps:
        if st.kind == "run":
            for name in st.names:
                nodes = layer.expand(name)
                if nodes is None:
                    raise _Bad(st.line, _unknown(name, layer))
                if st.sms is not None:
                    shared = [n for n in nodes if layer.node(n).is_collective]
                    if shared:
                        raise _Bad(st.line, f"sms: {shared[0]} is a collective (the all-reduce), which takes "
                                            "no SM budget; give sms to a step of compute nodes")
                ops += [Launch(n, st.stream, st.line, sms=st.sms) for n in nodes]
        elif st.kind == "fork":
            ops.append(WaitStream(st.stream, st.other, st.line, "fork"))
        elif st.kind == "join":
            ops.append(WaitStream(st.other, st.stream, st.line, "join"))
        elif st.kind == "record":
            ops.append(Record(st.other, st.stream, st.line))
        else:
            ops.append(WaitEvent(st.other, st.stream, st.line))
    return Program(ops)


def _unknown(name: str, layer: Layer) -> str:
    known = layer.names + list(layer.groups)
    other = [v for v in (Variant(fused_rope_cat_cache=f, shared_expert_fused=s)
                         for f in (True, False) for s in (True, False))
             if layer.expand(name) is None and build_layer(layer.dims, v).expand(name) is not None]
    hint = ""
    if other:
        v = other[0]
        hint = (f"; it exists with variant fused_rope_cat_cache: {str(v.fused_rope_cat_cache).lower()}, "
                f"shared_expert_fused: {str(v.shared_expert_fused).lower()}")
    return f"unknown node or group {name!r}{_suggest(name, known)}{hint}"


TEXT = "<scenario>"  # the path of a scenario given as text


def parse(text: str, path: str = TEXT) -> Scenario:
    """Parse and validate scenario text; raises ScenarioError naming file and line."""
    try:
        doc = yaml.load(text, Loader=_Loader)
    except _Bad as e:
        raise ScenarioError(path, [(e.line, str(e))]) from None
    except RecursionError:
        raise ScenarioError(path, [(0, "not a scenario: YAML nested too deeply to read")]) from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        msg = f"{getattr(e, 'problem', None) or e}".strip()
        raise ScenarioError(path, [(mark.line + 1 if mark else 0, f"not valid YAML: {msg}")]) from None
    if not isinstance(doc, dict):
        raise ScenarioError(path, [(1, "a scenario is a mapping with at least a `schedule:` list")])
    try:
        return _validated(_scenario(doc, path))
    except _Bad as e:
        raise ScenarioError(path, [(e.line, str(e))]) from None


TOP_KEYS = ("name", "description", "model", "shape", "variant", "schedule", "collective",
            "measure", "backend")


def _scenario(doc: _Map, path: str) -> Scenario:
    for k in doc:
        if k not in TOP_KEYS:
            raise _Bad(doc.lines[k], f"unknown key {k!r}{_suggest(k, TOP_KEYS)}; known: {', '.join(TOP_KEYS)}")
    if "schedule" not in doc:
        raise _Bad(doc.line, "missing `schedule:` (the list of run / fork / join steps)")
    for k in ("name", "description", "model", "backend"):
        if k in doc and not isinstance(doc[k], str):
            raise _Bad(doc.lines[k], f"{k} must be a string, got {_short(doc[k])}")
    name = doc.get("name", Path(path).stem if path != TEXT else "scenario")  # text without a file: no stem
    if not is_name(name):
        where = doc.lines["name"] if "name" in doc else doc.line
        raise _Bad(where, f"name {_short(name)} cannot name result files; accepted: {NAME}"
                          + ("" if "name" in doc else " (the file's name stands in for a missing `name:`)"))
    model_name = doc.get("model", "glm5")
    if model_name not in MODELS:
        raise _Bad(doc.lines["model"], f"unknown model {model_name!r}{_suggest(model_name, MODELS)}; "
                                       f"known: {', '.join(MODELS)}")
    shape = _section(doc, "shape", Shape)
    if shape.kv_cache not in KV_CACHES:
        raise _Bad(doc["shape"].lines["kv_cache"], _shape_problem("kv_cache", shape.kv_cache))
    collective = _section(doc, "collective", Collective)
    if collective.impl not in COLLECTIVES:
        raise _Bad(doc["collective"].lines["impl"],
                   f"collective.impl must be one of {', '.join(COLLECTIVES)}, got {collective.impl!r}")
    backend = doc.get("backend", "auto")
    if backend not in BACKENDS:
        raise _Bad(doc.lines["backend"], f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    scen = Scenario(
        name=name, path=path, model=MODELS[model_name], shape=shape,
        variant=_section(doc, "variant", Variant),
        steps=_parse_steps(doc["schedule"], doc.lines["schedule"]), collective=collective,
        measure=_section(doc, "measure", Measure), backend=backend,
        description=doc.get("description", ""))
    return scen


def _validated(scen: Scenario) -> Scenario:
    """Build the layer at the scenario's shape, compile the schedule and check it."""
    bad = [p for k, v in vars(scen.shape).items() for p in [_shape_problem(k, v)] if p]
    if bad:
        raise ScenarioError(scen.path, [(0, bad[0])])
    try:
        layer = scen.layer
    except ValueError as e:
        raise ScenarioError(scen.path, [(0, f"shape: {e}")]) from None
    try:
        program = scen.program
    except _Bad as e:
        raise ScenarioError(scen.path, [(e.line, str(e))]) from None
    problems = check(layer, program)
    if problems:
        raise ScenarioError(scen.path, [(p.line, p.message) for p in problems])
    return scen


def check_budgets(scen: Scenario, units: int, device: str) -> None:
    """Every `sms:` of the scenario within the `units` SMs (CUs) of `device`: one ScenarioError
    naming each step over it."""
    over = sorted({(op.line, op.sms) for op in scen.program.launches if op.sms is not None and op.sms > units})
    if over:
        raise ScenarioError(scen.path, [(line, _over_budget(sms, units, device)) for line, sms in over])


def _over_budget(sms: int, units: int, device: str) -> str:
    return f"sms: {sms} is more than the {units} SMs / CUs of {device}; give 1 to {units}"


def load(path: str | Path) -> Scenario:
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as e:
        raise ScenarioError(str(path), [(0, f"cannot read: {e.strerror or e}")]) from None
    except UnicodeDecodeError as e:
        raise ScenarioError(str(path), [(0, f"not a scenario: not UTF-8 text ({e.reason} at byte {e.start})")]) from None
    return parse(text, str(path))
