"""Found layouts as scenario files: the schedule as steps, a comment block saying how it was
found, and the API the GPU measurement step calls (`top_scenarios`).

A written scenario loads, validates and runs like a shipped one (`streamlab run`, `check`,
`compare`): every wait is a step (`fork` / `join` / `record` + `wait`) with a comment naming the
kernel it waits for, and runs of nodes that make up a whole group are written as the group.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date
from pathlib import Path

from streamlab.errors import EXIT_BAD_INPUT, Failure
from streamlab.io import claim, write_atomic
from streamlab.results import SearchOverlap
from streamlab.schedule.program import Launch, Program, Record, WaitEvent, WaitStream
from streamlab.search.find import BatchOutcome, Ranked, Request, SearchResult
from streamlab.search.layout import build_program, group_names
from streamlab.search.predict import Predicted, layer_at
from streamlab.search.space import Space

PAD = 34  # column of the step comments


@dataclass(frozen=True)
class Found:
    """A written candidate: what the GPU step measures, and which overlaps it needs measured."""

    path: Path
    rank: int
    predicted: Predicted  # with its interval, and `unmeasured`: the overlaps the profile lacks
    may_overlap: tuple[tuple[str, str], ...]  # node pairs it may run side by side
    overlaps: tuple[SearchOverlap, ...]  # those the simulation ran side by side, longest first

    @property
    def unmeasured(self) -> tuple[tuple[str, str], ...]:
        """Ordered pairs (first, second) to measure before trusting the prediction
        (`streamlab calibrate --measure --for` measures and adds them)."""
        return self.predicted.unmeasured


def schedule_lines(space: Space, program: Program) -> list[str]:
    """The program as scenario steps (YAML lines under `schedule:`)."""
    lines: list[str] = []
    seen: dict[str, list[str]] = {}  # stream -> the kernels a wait on it now waits for
    recorded: dict[str, list[str]] = {}  # event -> the same, when recorded
    ops = program.ops
    i = 0
    while i < len(ops):
        op = ops[i]
        if isinstance(op, Launch):
            run = [op.node]
            while (i + 1 < len(ops) and isinstance(ops[i + 1], Launch) and ops[i + 1].stream == op.stream
                   and ops[i + 1].sms == op.sms):
                i += 1
                run.append(ops[i].node)
            seen[op.stream] = [run[-1]]
            names = ", ".join(group_names(space, run))
            lines += [f"  - run: [{names}]"] if op.stream == "main" else [f"  - on: {op.stream}", f"    run: [{names}]"]
            if op.sms is not None:
                lines[-1] = f"{lines[-1]:<{PAD}}# at most {op.sms} SMs / CUs at once"
                lines.append(f"    sms: {op.sms}")
        else:
            upcoming = _next_launch(ops, i)
            if isinstance(op, WaitStream):
                why = f"{upcoming} waits for {', '.join(seen.get(op.source, ['the layer start']))}"
                seen[op.waiter] = list(dict.fromkeys(seen.get(op.waiter, []) + seen.get(op.source, [])))
                if op.source == "main":
                    step = [f"  - fork: {op.waiter}"]
                elif op.waiter == "main":
                    step = [f"  - join: {op.source}"]
                else:
                    step = [f"  - fork: {op.waiter}", f"    from: {op.source}"]
            elif isinstance(op, Record):
                recorded[op.event] = seen[op.stream]
                why = f"after {', '.join(seen[op.stream])}"
                step = [f"  - record: {op.event}"] + ([f"    on: {op.stream}"] if op.stream != "main" else [])
            else:
                assert isinstance(op, WaitEvent)
                why = f"{upcoming} waits for {', '.join(recorded[op.event])}"
                seen[op.waiter] = list(dict.fromkeys(seen.get(op.waiter, []) + recorded[op.event]))
                step = [f"  - wait: {op.event}"] + ([f"    on: {op.waiter}"] if op.waiter != "main" else [])
            step[0] = f"{step[0]:<{PAD}}# {why}"
            lines += step
        i += 1
    return lines


def _next_launch(ops, i: int) -> str:
    waiter = getattr(ops[i], "waiter", None) or ops[i].stream
    return next((op.node for op in ops[i + 1:] if isinstance(op, Launch) and op.stream == waiter), "the layer end")


def scenario_name(result: SearchResult, batch: int) -> str:
    req = result.request
    return re.sub(r"[^A-Za-z0-9_]+", "_", f"found_{req.model}_b{batch}_s{req.limits.streams}_{result.profile.name}")


def file_name(result: SearchResult, batch: int, rank: int | None = None) -> str:
    return file_name_for(result.request, result.profile.name, batch, rank)


def file_name_for(req: Request, profile: str, batch: int, rank: int | None = None) -> str:
    """A found scenario's file name, from what is known before the search (the profile's name)."""
    tail = f"-top{rank}" if rank is not None else ""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{req.model}-b{batch}-s{req.limits.streams}-{profile}{tail}") + ".yaml"


def scenario_text(result: SearchResult, outcome: BatchOutcome, entry: Ranked, *, command: str,
                  measured: Sequence[str] = ()) -> str:
    """A scenario file for one ranked layout of one batch; `measured`: comment lines with what the
    GPU measured (search --measure), which then replace "Predicted, not measured"."""
    req, c = result.request, entry.candidate
    shape = {**vars(req.shape), "batch": outcome.batch}
    space = Space.of(layer_at(req.model, req.shape.with_(batch=outcome.batch), c.layout.variant))
    program = build_program(space, c.layout)
    variant = ", ".join(f"{k}: {str(v).lower()}" for k, v in vars(c.layout.variant).items())
    lines = [f"# {line}" if line else "#" for line in comment(result, outcome, entry, command=command,
                                                              measured=measured)]
    lines += [
        f"name: {scenario_name(result, outcome.batch)}" + (f"_top{entry.rank}" if entry.rank != 1 else ""),
        f"description: \"found by streamlab search: {c.name}\"",
        f"model: {req.model}",
        "shape: {" + ", ".join(f"{k}: {v}" for k, v in shape.items()) + "}",
        "variant: {" + variant + "}",
        "schedule:",
        *schedule_lines(space, program),
        "collective: {impl: auto}",
        f"measure: {{layers: {req.layers}, warmup: 20, iters: 50, repeats: 5}}",
    ]
    return "\n".join(lines) + "\n"


def comment(result: SearchResult, outcome: BatchOutcome, entry: Ranked, *, command: str,
            measured: Sequence[str] = ()) -> list[str]:
    req, p, t = result.request, result.profile, outcome.tally
    c = entry.candidate
    us = c.predicted.us
    interval = (f"{c.predicted.low:.1f} - {c.predicted.high:.1f} us" if c.predicted.low is not None
                else "not given by this simulator (a point prediction)")
    versus = [f"serial {outcome.serial.candidate.predicted.us:.1f} us ({us - outcome.serial.candidate.predicted.us:+.1f})"]
    best = outcome.best_shipped()
    if best is not None:
        versus.append(f"best shipped {best.name} {best.predicted.us:.1f} us ({us - best.predicted.us:+.1f})")
    space = (f"{t.classes:,} equivalence classes ({t.pruned:,} dominated), {t.considered:,} considered"
             if t.complete else f"{t.classes:,} classes reached by a walk that cut {t.cut:,} subtrees by their bound")
    sources = [f"node latencies: {p.node_source or 'roofline fit'}",
               f"pairs measured together: {len(p.pair_excess) or 'none'}"
               + (f" ({p.pair_source})" if p.pair_excess else "")]
    overlaps = ", ".join(f"{o.first} || {o.second} {o.us:.1f} us" for o in entry.explanation.overlaps) or "none"
    lim = req.limits
    left = (f"no layout it did not simulate can predict below {min(t.floor, us):.1f} us"
            if t.stopped or not t.complete else
            f"every layout it left out has a bound above its top {req.top}: none can enter them")
    rules = (f"sequential nodes on main, each stream in reference order, <= {lim.max_waits} cross-stream "
             f"waits and <= {lim.max_barriers} barrier(s) per region")
    return [
        f"Found by `streamlab search` ({date.today().isoformat()}): rank {entry.rank} of the layouts it simulated",
        f"for {req.model} at batch {outcome.batch} on {lim.streams} streams. "
        + ("Predicted, then measured on the GPU." if measured else "Predicted, not measured."),
        f"  command:   {command}",
        f"  profile:   {p.name} ({p.streams} lanes); " + "; ".join(sources),
        *([f"  warning:   {result.warning}"] if result.warning else []),
        f"  predicted: {us:.1f} us per layer ({req.layers} layers per graph); interval: {interval}",
        "             " + ", ".join(versus),
        f"  rank:      {entry.rank} of {t.simulated:,} simulated; {space}; {t.bounded:,} left out by their bound",
        f"             ({left})",
        f"  layout:    {c.name}",
        f"  overlaps:  {overlaps}",
        f"  space:     {rules}",
        *_budget_lines(outcome, entry),
        *measured,
        "",
    ]


def claim_winners(req: Request, profile: str, out: Path, *, force: bool) -> list[Path]:
    """The files `write_winners` will write for `req` on the profile named `profile`, refused
    before the search when they exist (unless `force`)."""
    return [claim(out / file_name_for(req, profile, b), force=force, what="found scenario") for b in req.batches]


def _budget_lines(outcome: BatchOutcome, entry: Ranked) -> list[str]:
    """What the budget pass tried, and whether this layout's budgets rest on a measurement."""
    b = outcome.budget
    if b is None:
        return []
    shares = ", ".join(f"{f:.2g}" for f in b.shares)
    mine = ("this layout has SM budgets (sms:), their effect modelled from the Triton grids (sim/costs.py "
            "BudgetCosts), not measured" if entry.candidate.layout.options else "this layout has no SM budget")
    tried = (f"  budgets:   shares {shares} of {b.units} SMs / CUs tried on the overlapped pairs of the top "
             f"{b.layouts} plain layouts ({b.tried} budgeted layouts simulated);")
    return [tried, f"             {mine}"]


def write_winners(result: SearchResult, out: Path, *, command: str) -> list[Path]:
    """The best layout of each batch as a scenario file in `out`."""
    return [write_atomic(out / file_name(result, o.batch), scenario_text(result, o, o.best, command=command))
            for o in result.batches]


def top_scenarios(result: SearchResult, batch: int, out: Path, k: int | None = None, *,
                  command: str = "streamlab.search.top_scenarios") -> list[Found]:
    """The top `k` layouts of one batch (default: all reported) as scenario files in `out`, with
    the overlaps each needs: the entry point of the GPU measurement step."""
    outcome = next((o for o in result.batches if o.batch == batch), None)
    if outcome is None:
        raise Failure(f"batch {batch} was not searched (searched: {[o.batch for o in result.batches]})",
                      EXIT_BAD_INPUT)
    found = []
    for entry in outcome.top[:k]:
        path = write_atomic(out / file_name(result, batch, entry.rank),
                            scenario_text(result, outcome, entry, command=command))
        found.append(Found(path, entry.rank, entry.candidate.predicted, entry.may_overlap,
                           entry.explanation.overlaps))
    return found
