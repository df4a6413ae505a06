"""Expected failures: each carries one clear message and the exit code the CLI returns."""

from __future__ import annotations

import functools

EXIT_CHECK_FAILED = 1  # also `check`: do not enable
EXIT_BAD_INPUT = 2
EXIT_INCONCLUSIVE = 2  # `check`: the difference is inside the noise, or the sides are not comparable
EXIT_ENVIRONMENT = 3
EXIT_NOT_A_STEP = 4  # a trace of a graph capture or of warm-up: no step to measure (trace summary)
EXIT_INTERRUPTED = 130  # Ctrl-C (128 + SIGINT, as shells report it): `calibrate --measure` says how to resume


class Failure(Exception):
    def __init__(self, message: str, code: int = EXIT_ENVIRONMENT) -> None:
        super().__init__(message)
        self.code = code

    def __reduce__(self):  # keeps the exit code across processes (fresh-process runs)
        return type(self), (str(self), self.code)


def guard(fn):
    """A CLI command whose expected failures end in one line on stderr and their exit code,
    never a traceback."""
    import typer
    from rich.console import Console

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except Failure as e:
            Console(stderr=True, highlight=False).print(f"[bold red]error:[/] {e}", markup=True,
                                                        soft_wrap=True)
            raise typer.Exit(e.code) from None
    return wrapper
