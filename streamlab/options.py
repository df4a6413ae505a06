"""The command-line options the commands share, and the checks typer cannot declare.

Every option is checked where it enters. What an option accepts is declared with it: a range
(`min` / `max`, from scenario.RANGES where a scenario setting has one), a choice (a Literal type),
a folder rather than a file; typer refuses anything else, naming the option and what it accepts,
with EXIT_BAD_INPUT (errors.Commands). What cannot be declared is checked here, once: comma lists
(`batches`: scenario.parse_batches, `impls`), a profile name, a file name part. The same ranges check scenario files and
overrides (scenario.out_of_range), so a value means the same wherever it is given.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Optional

import typer

from streamlab.errors import EXIT_BAD_INPUT, Failure
from streamlab.io import NAME, is_name
from streamlab.models import MODELS
from streamlab.scenario import BACKENDS, COLLECTIVES, KV_CACHES, MAX_LAYERS, RANGES
from streamlab.scenario import parse_batches as batches

__all__ = ["Backend", "Device", "KvCache", "Model", "batches", "impls", "name", "range_of"]

Model = Literal[tuple(MODELS)]  # type: ignore[valid-type]
KvCache = Literal[KV_CACHES]  # type: ignore[valid-type]
Backend = Literal[BACKENDS]  # type: ignore[valid-type]
Device = Literal["auto", "cpu", "cuda"]


def range_of(key: str) -> dict:
    """`min=` and `max=` of a typer option for the scenario setting `key` (scenario.RANGES)."""
    lo, _, hi, _ = RANGES[key]
    return {"min": lo, "max": hi}


SCENARIO = typer.Argument(..., help="scenario YAML file", show_default=False)
MODEL = typer.Option(None, help="model config")
BATCH = typer.Option(None, help="decode tokens per rank", **range_of("shape.batch"))
CONTEXT = typer.Option(None, help="context length (tokens) of every request", **range_of("shape.context"))
TP = typer.Option(None, help="tensor-parallel size (sets per-rank shapes)", **range_of("shape.tp"))
PAGE = typer.Option(None, "--page-size", help="KV cache page size", **range_of("shape.page_size"))
KV = typer.Option(None, "--kv-cache", help="KV cache dtype")
LAYERS = typer.Option(None, help="layers captured (or simulated) in one graph (default: the scenario's "
                                 "measure.layers)", min=1, max=MAX_LAYERS)
DEVICE = typer.Option("auto", help="auto (a GPU if there is one), cpu or cuda")
BACKEND = typer.Option(None, help="kernels (default: the scenario's backend)")
PROFILE = typer.Option("mi355x", help="simulator profile when there is no GPU: a shipped name or a YAML path")
OUT = typer.Option(Path("traces/runs"), file_okay=False, help="folder for results and traces")
FORCE = typer.Option(False, "--force", help="replace result files that exist (without it they are refused)")
RANK_TIMEOUT = typer.Option(180.0, min=1.0, max=86400.0, help="seconds a rank may make no progress before "
                                                                "every rank is stopped")
WORLD = dict(min=1, max=64)  # ranks per node


def impls(text: Optional[str], option: str = "--impl") -> list[str] | None:
    """A comma list of all-reduce implementations (scenario.COLLECTIVES); None when not given."""
    if text is None:
        return None
    out = [i.strip() for i in text.split(",") if i.strip()]
    unknown = [i for i in out if i not in COLLECTIVES]
    if unknown or not out:
        raise Failure(f"{option}: unknown all-reduce {', '.join(map(repr, unknown)) or '(none given)'}; "
                      f"choose from {', '.join(COLLECTIVES)}", EXIT_BAD_INPUT)
    return list(dict.fromkeys(out))


def name(text: str, option: str) -> str:
    """A name that will name files (a profile's): io.NAME's characters only."""
    if not is_name(text):
        raise Failure(f"{option} {text!r} cannot name files; accepted: {NAME}", EXIT_BAD_INPUT)
    return text
