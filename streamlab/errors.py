"""Expected failures and the exit codes every command returns.

One table, `EXIT_CODES`, is the contract a CI system reads (README "Exit codes", `streamlab
--help`): the gate's three verdicts are 0 / 1 / 2, bad input has a code of its own (64, sysexits'
EX_USAGE) so that a typo never reads as a verdict, a run that could not be carried out (no GPU,
aiter missing, out of memory, a rank died, a file that cannot be written) is 3, and a bug in
streamlab is 70 (EX_SOFTWARE) with its traceback. A `Failure(message, code)` carries one message
and its code; `guard` turns it into one line on stderr (and, under `--json`, one JSON object on
stdout); `Commands` gives typer's own usage errors (an option that is not an integer, a value
outside its range) the bad-input code instead of click's 2.
"""

from __future__ import annotations

import functools
import json
import sys
import traceback

EXIT_OK = 0
EXIT_CHECK_FAILED = 1  # `check`: do not enable; `run`: outputs differ from serial; `compare`, `compile`: some failed
EXIT_INCONCLUSIVE = 2  # `check`: the difference is inside the noise, or the sides are not comparable
EXIT_ENVIRONMENT = 3  # the run itself failed: no GPU, aiter missing, out of memory, a rank died, a write failed
EXIT_NOT_A_STEP = 4  # a trace of a graph capture or of warm-up: no step to measure (trace summary)
EXIT_BAD_INPUT = 64  # an option, scenario, profile, trace or result file that is refused (sysexits EX_USAGE)
EXIT_INTERNAL = 70  # a bug in streamlab: the traceback is printed (sysexits EX_SOFTWARE)
EXIT_INTERRUPTED = 130  # Ctrl-C (128 + SIGINT): files written before are intact; `calibrate --measure` resumes

EXIT_CODES: tuple[tuple[int, str], ...] = (
    (EXIT_OK, "done; `check`: enable"),
    (EXIT_CHECK_FAILED, ("`check`: do not enable; `run`, `search --measure`: a layout's outputs differ from "
                        "serial's; `compare --keep-going`, `compile`: some runs or launches failed")),
    (EXIT_INCONCLUSIVE, "`check`: inconclusive (inside the noise, or the sides are not comparable)"),
    (EXIT_ENVIRONMENT, ("the run itself failed: no GPU, aiter missing, out of memory, a rank died, "
                       "a file could not be written")),
    (EXIT_NOT_A_STEP, "`trace summary`: a trace of a graph capture or of warm-up, not of a decode step"),
    (EXIT_BAD_INPUT, ("bad input: an option, scenario, profile, trace or result file refused, or a "
                     "result that exists (--force replaces it)")),
    (EXIT_INTERNAL, "a bug in streamlab (the traceback is printed: please report it)"),
    (EXIT_INTERRUPTED, "interrupted (Ctrl-C); files written before are intact"),
)


def exit_codes_help() -> str:
    """The exit-code table as `--help` prints it (one paragraph per code)."""
    return "Exit codes:\n\n" + "\n\n".join(f"{code}: {meaning}" for code, meaning in EXIT_CODES)


class Failure(Exception):
    def __init__(self, message: str, code: int = EXIT_ENVIRONMENT) -> None:
        super().__init__(message)
        self.code = code

    def __reduce__(self):  # keeps the exit code across processes (fresh-process runs)
        return type(self), (str(self), self.code)


def report(message: str, code: int, *, as_json: bool) -> None:
    """One line on stderr; under --json also `{"error": message, "exit_code": code}` on stdout,
    so a CI system that parses stdout always gets one JSON object."""
    from rich.console import Console
    from rich.text import Text

    if as_json:
        print(json.dumps({"error": message, "exit_code": code}), flush=True)
    Console(stderr=True, highlight=False, soft_wrap=True).print(Text.assemble(("error:", "bold red"), " ", message))


def guard(fn):
    """A CLI command whose failures end in one message and their exit code: a Failure in its
    own code, Ctrl-C in 130, a closed stdout (`| head`) in EXIT_ENVIRONMENT, and anything else,
    a bug, in EXIT_INTERNAL with the traceback. Never a bare traceback exiting 1, which `check`'s
    callers would read as "do not enable". A command with `--json` (`as_json`) prints its
    failure as JSON too."""
    import typer

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        as_json = bool(kwargs.get("as_json"))
        try:
            return fn(*args, **kwargs)
        except (typer.Exit, typer.Abort, typer.TyperException):
            raise
        except Failure as e:
            report(str(e), e.code, as_json=as_json)
            raise typer.Exit(e.code) from None
        except KeyboardInterrupt:
            report("interrupted; files written before are intact", EXIT_INTERRUPTED, as_json=as_json)
            raise typer.Exit(EXIT_INTERRUPTED) from None
        except BrokenPipeError:
            _silence_stdout()
            report("the output was closed before everything was printed (a pipe's reader ended)",
                   EXIT_ENVIRONMENT, as_json=False)
            raise typer.Exit(EXIT_ENVIRONMENT) from None
        except Exception as e:  # noqa: BLE001 - a bug: say so, with its traceback, under its own code
            traceback.print_exc()
            report(f"internal error ({type(e).__name__}: {e}); this is a bug in streamlab, please report "
                   "it with the traceback above", EXIT_INTERNAL, as_json=as_json)
            raise typer.Exit(EXIT_INTERNAL) from None
    return wrapper


def _silence_stdout() -> None:
    """After a broken pipe, later writes (the interpreter's final flush) must not fail again."""
    import os

    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


def commands_class():
    """The typer group class of streamlab's apps (`typer.Typer(cls=commands_class())`): typer's
    usage errors (a value that is not an integer, outside its range, an unknown option) exit
    with EXIT_BAD_INPUT, and print `{"error", "exit_code"}` on stdout when `--json` was given."""
    import typer
    from typer.core import TyperGroup

    class Commands(TyperGroup):
        def make_context(self, info_name, args, parent=None, **extra):
            wants_json = "--json" in args
            try:
                ctx = super().make_context(info_name, args, parent=parent, **extra)
            except typer.TyperException as e:
                raise _bad_input(e, wants_json) from None
            ctx.meta.setdefault("streamlab.json", wants_json)
            return ctx

        def invoke(self, ctx):
            try:
                return super().invoke(ctx)
            except typer.TyperException as e:
                raise _bad_input(e, ctx.meta.get("streamlab.json", False)) from None

    return Commands


def _bad_input(e, as_json: bool):
    if getattr(e, "exit_code", 0) != EXIT_BAD_INPUT:
        e.exit_code = EXIT_BAD_INPUT
        if as_json:
            print(json.dumps({"error": e.format_message(), "exit_code": EXIT_BAD_INPUT}), flush=True)
    return e
