"""The import direction of the package: every module's imports (module level and inside
functions, read with ast) go to its own layer or a lower one, never up, and there is no circle.

The layers, lowest first (README, "Architecture"). Modules in one layer may import each other
(no circle); the producers of Timelines (exec, sim, trace) import none of each other.
"""

from __future__ import annotations

import ast
from pathlib import Path

import streamlab

PACKAGE = Path(streamlab.__file__).parent

LAYERS: list[tuple[str, ...]] = [
    ("streamlab.errors", "streamlab.io", "streamlab.timeline", "streamlab.models"),  # the base
    ("streamlab.analysis",),  # pure functions over the Timeline
    ("streamlab.layer",),
    ("streamlab.schedule",),
    ("streamlab.scenario",),
    ("streamlab.results",),  # the result files' types and their one reader
    ("streamlab.kernels",),  # incl. the all-reduce implementations (kernels.allreduce)
    ("streamlab.exec", "streamlab.sim", "streamlab.trace"),  # producers of Timelines
    ("streamlab.runs",),  # Timeline + timings -> RunResult
    ("streamlab.check",),
    ("streamlab.report",),  # rendering: rich, matplotlib, Markdown
    ("streamlab.session", "streamlab.collective", "streamlab.search", "streamlab.calibration"),  # orchestration
    ("streamlab.cli", "streamlab.options", "streamlab.__main__", "streamlab.trace.cli",
     "streamlab.search.cli"),  # trace.cli, search.cli: the `streamlab trace` and `search` commands
]
INDEPENDENT = ("streamlab.exec", "streamlab.sim", "streamlab.trace")


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in PACKAGE.rglob("*.py")}


def imports(name: str, path: Path) -> set[str]:
    """Every streamlab module `name` imports, wherever in the file (function bodies included)."""
    known = set(modules())
    out = set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
            # `from pkg import sub` depends on the module pkg.sub; `from mod import name` on mod
            subs = {f"{base}.{a.name}" for a in node.names} & known
            out |= subs or {base}
            if len(subs) < len(node.names):
                out.add(base)
    return {m for m in out if m in known and m != name}


def layer_of(name: str) -> tuple[int, str]:
    """The layer of the longest prefix that names the module (a module may sit in another layer
    than its package: streamlab.trace.cli)."""
    if name == "streamlab":  # the package's own __init__: a docstring
        return 0, name
    found = [(len(prefix), i, prefix) for i, layer in enumerate(LAYERS) for prefix in layer
             if name == prefix or name.startswith(prefix + ".")]
    if found:
        _, i, prefix = max(found)
        return i, prefix
    raise AssertionError(f"{name} is in no layer: add it to LAYERS (tests/test_architecture.py) and to "
                         "the README's Architecture picture")


def graph() -> dict[str, set[str]]:
    return {name: imports(name, path) for name, path in modules().items()}


def violations(g: dict[str, set[str]]) -> list[str]:
    wrong = []
    for name, deps in sorted(g.items()):
        mine, my_prefix = layer_of(name)
        for dep in sorted(deps):
            theirs, their_prefix = layer_of(dep)
            if theirs > mine:
                wrong.append(f"{name} (layer {mine}) imports {dep} (layer {theirs}, above it)")
            elif my_prefix in INDEPENDENT and their_prefix in INDEPENDENT and my_prefix != their_prefix:
                wrong.append(f"{name} imports {dep}: exec, sim and trace are independent producers")
    return wrong


def circles(g: dict[str, set[str]]) -> list[list[str]]:
    """Every back edge of a depth-first walk, as the circle it closes."""
    state: dict[str, int] = {}
    stack: list[str] = []
    found = []

    def visit(n: str) -> None:
        state[n] = 1
        stack.append(n)
        for d in sorted(g.get(n, ())):
            if state.get(d) == 1:
                found.append(stack[stack.index(d):] + [d])
            elif d not in state:
                visit(d)
        stack.pop()
        state[n] = 2

    for n in sorted(g):
        if n not in state:
            visit(n)
    return found


def test_every_import_goes_down_or_sideways():
    wrong = violations(graph())
    assert not wrong, "\n".join(wrong)


def test_there_is_no_circle():
    found = circles(graph())
    assert not found, "\n".join(" -> ".join(c) for c in found)


def test_the_checks_see_what_they_must():
    """An upward import, a producer importing another, and a circle are each reported."""
    assert violations({"streamlab.exec.measure": {"streamlab.report.result", "streamlab.sim.engine"},
                       "streamlab.report.result": {"streamlab.results"}}) == [
        "streamlab.exec.measure (layer 7) imports streamlab.report.result (layer 10, above it)",
        "streamlab.exec.measure imports streamlab.sim.engine: exec, sim and trace are independent producers"]
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c", "a"]]


def test_the_checker_sees_function_level_and_relative_imports(tmp_path):
    """The two ways an import hides: inside a function body, and relative."""
    src = tmp_path / "m.py"
    src.write_text("def f():\n    from streamlab.report import result\n    from .errors import Failure\n")
    found = imports("streamlab.check", src)
    assert found == {"streamlab.report.result", "streamlab.errors"}


def test_the_readme_lists_the_exit_codes_as_errors_does():
    from streamlab.errors import EXIT_CODES

    readme = (PACKAGE.parent / "README.md").read_text()
    section = readme.split("## Exit codes", 1)[1].split("\n## ", 1)[0]
    rows = [line.split("|")[1:3] for line in section.splitlines() if line.startswith("| ")]
    assert [(int(c), m.strip()) for c, m in rows[1:]] == list(EXIT_CODES)  # rows[0]: the header
