"""Check the entry-point table against aiter: its installed Python sources (no import, no GPU)
or the imported objects (`inspect.signature`). Both reduce a definition to the same parameter
list and apply one comparison, so a renamed, reordered, new required or re-defaulted parameter
is caught the same way before a user hits it.

`import aiter` raises on a machine without ROCm, so the source side locates the package with
`importlib.util.find_spec("aiter")` (which, for a top-level package, does not execute it) and
reads the defining module's file directly; it never imports a submodule.
"""

from __future__ import annotations

import ast
import importlib.metadata
import importlib.util
import inspect
import re
from dataclasses import dataclass
from pathlib import Path

from streamlab.kernels.aiter.api import Constant, EntryPoint

_NO_DEFAULT = object()


@dataclass(frozen=True)
class Opaque:
    """A default that is not a Python literal (an enum member, a dtype): compared as source text."""

    text: str


@dataclass(frozen=True)
class Param:
    name: str
    positional: bool
    keyword: bool
    default: object = _NO_DEFAULT

    @property
    def has_default(self) -> bool:
        return self.default is not _NO_DEFAULT


# -- locating the installed package without importing it -----------------------------------------

def package_root() -> Path | None:
    """Folder of the installed `aiter` package, or None if it is not installed."""
    spec = importlib.util.find_spec("aiter")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def installed_version(root: Path) -> str:
    """The amd-aiter distribution's version; a source checkout without metadata falls back to
    the `__version__` assigned in aiter/_version.py."""
    for dist in ("amd-aiter", "aiter"):
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            pass
    tree = _parse(root / "_version.py")
    for node in tree.body if tree else ():
        if (isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "__version__"
                                                  for t in node.targets)
                and isinstance(node.value, ast.Constant)):
            return str(node.value.value)
    return "unknown"


def version_tuple(version: str) -> tuple[int, ...]:
    """Leading numeric release parts: '0.1.7.post2.dev18' -> (0, 1, 7)."""
    out = []
    for part in version.split("."):
        m = re.match(r"\d+", part)
        if not m:
            break
        out.append(int(m.group()))
        if m.group() != part:
            break
    return tuple(out)


def module_file(root: Path, module: str) -> Path:
    """`aiter.ops.cache` -> <root>/ops/cache.py (or .../__init__.py for a package)."""
    parts = module.split(".")[1:]
    base = root.joinpath(*parts)
    return base / "__init__.py" if base.is_dir() else base.with_suffix(".py")


def _parse(path: Path) -> ast.Module | None:
    try:
        return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    except (OSError, SyntaxError, UnicodeDecodeError):
        return None


def _module_level(body: list[ast.stmt]):
    """Statements executed at import, through if/try/with blocks (not into defs)."""
    for node in body:
        yield node
        if isinstance(node, (ast.If, ast.Try, ast.With)):
            nested = [*node.body, *getattr(node, "orelse", []), *getattr(node, "finalbody", [])]
            for handler in getattr(node, "handlers", []):
                nested += handler.body
            yield from _module_level(nested)


def _last_def(body: list[ast.stmt], name: str):
    """The last definition of `name` in `body` (the one that wins at import)."""
    found = None
    for node in _module_level(body):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and (
                node.name == name):
            found = node
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if any(isinstance(t, ast.Name) and t.id == name for t in targets):
                found = node
    return found


def _ast_default(node: ast.expr) -> object:
    try:
        return ast.literal_eval(node)
    except ValueError:
        return Opaque(ast.unparse(node))


def _ast_params(fn: ast.FunctionDef, drop_self: bool) -> tuple[list[Param], bool]:
    """Parameters of a def, and whether it is only *args/**kwargs."""
    a = fn.args
    positional = [*a.posonlyargs, *a.args]
    defaults = [_NO_DEFAULT] * (len(positional) - len(a.defaults)) + [_ast_default(d) for d in a.defaults]
    params = [Param(p.arg, True, i >= len(a.posonlyargs), d)
              for i, (p, d) in enumerate(zip(positional, defaults))]
    params += [Param(p.arg, False, True, _NO_DEFAULT if d is None else _ast_default(d))
               for p, d in zip(a.kwonlyargs, a.kw_defaults)]
    if drop_self and params:
        params = params[1:]
    return params, not params and bool(a.vararg or a.kwarg)


def source_problem(entry: EntryPoint, root: Path) -> str | None:
    """Why the installed source of `entry` does not take the call we make, or None."""
    path = module_file(root, entry.module)
    tree = _parse(path)
    if tree is None:
        return f"{path.relative_to(root.parent)} is missing or unreadable"
    cls_name, _, method = entry.name.partition(".")
    node = _last_def(tree.body, cls_name)
    if node is None:
        return f"{entry.name} is not defined in {path.relative_to(root.parent)}"
    if isinstance(node, ast.ClassDef):
        node = _last_def(node.body, method or "__init__")
        if node is None:
            return f"{entry.name}: class {cls_name} has no {method or '__init__'}"
        drop_self = True
    elif method:
        return f"{cls_name} in {path.relative_to(root.parent)} is not a class"
    else:
        drop_self = False
    if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
        return f"{entry.name} is assigned, not defined, in {path.relative_to(root.parent)}"
    params, opaque = _ast_params(node, drop_self)
    return None if opaque else call_problem(entry, params)


def constant_problem(const: Constant, root: Path) -> str | None:
    """Whether the first attribute of `const.path` is bound at the top of its module."""
    path = module_file(root, const.module)
    tree = _parse(path)
    if tree is None:
        return f"{path.relative_to(root.parent)} is missing or unreadable"
    head = const.path.split(".")[0]
    if _last_def(tree.body, head) is None:
        return f"{head} is not defined in {path.relative_to(root.parent)}"
    return None


# -- the imported object -----------------------------------------------------------------------

def live_problem(entry: EntryPoint, obj: object) -> str | None:
    """Why the imported `obj` does not take the call we make, or None. Wrappers that only show
    (*args, **kwargs) (aiter registers its C++ ops as torch custom ops) pass: their source was
    checked already."""
    try:
        sig = inspect.signature(obj)
    except (TypeError, ValueError):
        return None
    params = [Param(p.name, p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD),
                    p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY),
                    _NO_DEFAULT if p.default is p.empty else p.default)
              for p in sig.parameters.values() if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    if "." in entry.name and params and params[0].name == "self":
        params = params[1:]  # a method looked up on its class
    if not params and any(p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) for p in sig.parameters.values()):
        return None
    return call_problem(entry, params)


# -- the one comparison --------------------------------------------------------------------------

def call_problem(entry: EntryPoint, params: list[Param]) -> str | None:
    """Compare a definition's parameters with the call `entry` describes."""
    positional = [p for p in params if p.positional]
    for i, want in enumerate(entry.positional):
        if i >= len(positional):
            return (f"takes {len(positional)} positional parameters; we pass {want!r} as "
                    f"parameter {i + 1}")
        if positional[i].name != want:
            return f"parameter {i + 1} is {positional[i].name!r}; we pass {want!r} there"
    by_name = {p.name: p for p in params}
    for want in entry.keywords:
        if want not in by_name or not by_name[want].keyword:
            return f"has no keyword parameter {want!r}"
    passed = {*entry.positional, *entry.keywords}
    for p in params:
        if p.name not in passed and not p.has_default:
            return f"parameter {p.name!r} is required and we do not pass it"
    for name, literal in entry.defaults:
        p = by_name.get(name)
        if p is None:
            continue
        want = ast.literal_eval(literal)
        got = p.default
        if not p.has_default or isinstance(got, Opaque) or got != want or type(got) is not type(want):
            shown = got.text if isinstance(got, Opaque) else ("none" if not p.has_default else repr(got))
            return f"default of {name!r} is {shown}; we rely on {literal}"
    return None
